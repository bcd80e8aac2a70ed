//! Retry with exponential backoff and symmetric jitter.

use std::future::Future;
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

use crate::{BreakerError, CircuitBreaker};

/// A retry policy: at most `max_attempts` attempts, the n-th retry waiting
/// `base_delay × multiplier^(n-1)` (capped at `max_delay`) with ±`jitter` applied, and
/// optionally an overall deadline across all attempts and waits.
///
/// The default is the ordersys policy: 3 attempts, 100 ms → 200 ms (→ 400 ms), ±10 %.
///
/// ```
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use resilience::Retry;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let calls = AtomicU32::new(0);
/// let result = Retry::default()
///     .call(|| async {
///         if calls.fetch_add(1, Ordering::SeqCst) < 2 { Err("flaky") } else { Ok("done") }
///     })
///     .await;
/// assert_eq!(result.unwrap(), "done");
/// assert_eq!(calls.load(Ordering::SeqCst), 3);
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retry {
    max_attempts: u32,
    base_delay: Duration,
    multiplier: u32,
    max_delay: Duration,
    jitter: f64,
    deadline: Option<Duration>,
    name: &'static str,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            base_delay: Duration::from_millis(100),
            multiplier: 2,
            max_delay: Duration::from_secs(30),
            jitter: 0.1,
            deadline: None,
            name: "unnamed",
        }
    }
}

/// Why a retried operation finally failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RetryError<E> {
    /// The last attempt failed and no retry is left (or the error is not retryable).
    #[error("failed after {attempts} attempt(s): {error}")]
    Failed {
        /// The last attempt's error.
        error: E,
        /// Attempts made.
        attempts: u32,
    },
    /// The overall deadline passed before an attempt succeeded.
    #[error("deadline exceeded after {attempts} attempt(s)")]
    DeadlineExceeded {
        /// The last completed attempt's error, if any attempt completed.
        last: Option<E>,
        /// Attempts started.
        attempts: u32,
    },
}

impl<E> RetryError<E> {
    /// The last error an attempt returned, if any.
    pub fn into_last(self) -> Option<E> {
        match self {
            Self::Failed { error, .. } => Some(error),
            Self::DeadlineExceeded { last, .. } => last,
        }
    }

    /// Attempts made (or started, for a deadline).
    pub fn attempts(&self) -> u32 {
        match self {
            Self::Failed { attempts, .. } | Self::DeadlineExceeded { attempts, .. } => *attempts,
        }
    }
}

impl Retry {
    /// The default policy (see the type docs).
    pub fn new() -> Self {
        Self::default()
    }

    /// A policy that makes one attempt and never retries.
    pub fn never() -> Self {
        Self::default().max_attempts(1)
    }

    /// Attempts in total, including the first (at least 1).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }

    /// Delay before the first retry.
    pub fn base_delay(mut self, d: Duration) -> Self {
        self.base_delay = d;
        self
    }

    /// Growth factor of the delay per retry (default 2).
    pub fn multiplier(mut self, m: u32) -> Self {
        self.multiplier = m.max(1);
        self
    }

    /// Upper bound on one delay, before jitter.
    pub fn max_delay(mut self, d: Duration) -> Self {
        self.max_delay = d;
        self
    }

    /// Symmetric jitter as a fraction of the delay, clamped to `0.0..=1.0` (default 0.1).
    pub fn jitter(mut self, fraction: f64) -> Self {
        self.jitter = if fraction.is_finite() {
            fraction.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self
    }

    /// Name the policy: the `retry` label of `resilience_retries_total`, the counter of
    /// retries made (attempts after the first). Default `unnamed`.
    ///
    /// ```
    /// let policy = resilience::Retry::default().named("payment-debit");
    /// assert_eq!(policy.name(), "payment-debit");
    /// ```
    pub fn named(mut self, name: &'static str) -> Self {
        self.name = name;
        // The counter exists from now on (at 0), for dashboards and alerts.
        metrics::counter!("resilience_retries_total", "retry" => name).increment(0);
        self
    }

    /// The policy's name (see [`named`](Self::named)).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Overall deadline across all attempts and waits.
    pub fn deadline(mut self, d: Duration) -> Self {
        self.deadline = Some(d);
        self
    }

    /// Attempts in total.
    pub fn attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The nominal (un-jittered) delay before retry number `retry` (1-based).
    pub fn nominal_delay(&self, retry: u32) -> Duration {
        let exp = retry.saturating_sub(1).min(31);
        let factor = self.multiplier.saturating_pow(exp);
        self.base_delay
            .checked_mul(factor)
            .unwrap_or(self.max_delay)
            .min(self.max_delay)
    }

    /// The delays between attempts, jittered: `max_attempts - 1` values.
    pub fn backoff(&self) -> Backoff {
        Backoff {
            policy: *self,
            retry: 0,
        }
    }

    /// Retry `f` on every error.
    pub async fn call<F, Fut, T, E>(&self, f: F) -> Result<T, RetryError<E>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.call_if(f, |_| true).await
    }

    /// Retry `f` while `retryable(&error)` holds.
    pub async fn call_if<F, Fut, T, E, P>(
        &self,
        mut f: F,
        mut retryable: P,
    ) -> Result<T, RetryError<E>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        P: FnMut(&E) -> bool,
    {
        let deadline = self.deadline.map(|d| Instant::now() + d);
        let mut delays = self.backoff();
        let mut attempts = 0;
        let mut last = None;
        loop {
            attempts += 1;
            let outcome = match deadline {
                Some(at) => match tokio::time::timeout_at(at, f()).await {
                    Ok(r) => r,
                    Err(_) => return Err(RetryError::DeadlineExceeded { last, attempts }),
                },
                None => f().await,
            };
            let error = match outcome {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            if !retryable(&error) {
                return Err(RetryError::Failed { error, attempts });
            }
            let Some(delay) = delays.next() else {
                return Err(RetryError::Failed { error, attempts });
            };
            if let Some(at) = deadline {
                if Instant::now() + delay >= at {
                    return Err(RetryError::DeadlineExceeded {
                        last: Some(error),
                        attempts,
                    });
                }
            }
            last = Some(error);
            metrics::counter!("resilience_retries_total", "retry" => self.name).increment(1);
            tokio::time::sleep(delay).await;
        }
    }

    /// Retry `f` through `breaker`: every attempt asks the breaker first, and an open
    /// breaker ends the retries at once (retrying into an open breaker only burns time).
    ///
    /// **Every attempt counts with the breaker**: a logical call retried three times
    /// that fails three times is three failures (two such calls open a breaker with a
    /// threshold of five). With a [`deadline`](Self::deadline), an attempt still running
    /// when it passes is abandoned, counted as a breaker failure, and reported as
    /// [`BreakerError::TimedOut`] — so a downstream that hangs opens the breaker like
    /// one that fails. To retry and count only the errors that mean the downstream is
    /// in trouble, use [`call_with_breaker_classified`](Self::call_with_breaker_classified).
    pub async fn call_with_breaker<F, Fut, T, E>(
        &self,
        breaker: &CircuitBreaker,
        f: F,
    ) -> Result<T, BreakerError<E>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.call_with_breaker_classified(breaker, f, |_| true)
            .await
    }

    /// [`call_with_breaker`](Self::call_with_breaker) for calls whose errors are not
    /// all the downstream's fault: only errors for which `is_failure` holds (down,
    /// overloaded, timed out) are retried and counted as breaker failures; any other
    /// error is the downstream's *answer* (not found, invalid argument) — returned at
    /// once as [`BreakerError::Inner`] and counted as a successful round trip. An
    /// attempt cut by the [`deadline`](Self::deadline) always counts as a failure.
    ///
    /// ```
    /// use resilience::{BreakerError, CircuitBreaker, Retry};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// #[derive(Debug, PartialEq)]
    /// enum E { Unavailable, NotFound }
    /// let breaker = CircuitBreaker::new("users");
    /// let policy = Retry::default().base_delay(std::time::Duration::from_millis(1));
    /// let transient = |e: &E| *e == E::Unavailable;
    ///
    /// let answer = policy
    ///     .call_with_breaker_classified(&breaker, || async { Err::<(), _>(E::NotFound) }, transient)
    ///     .await;
    /// assert!(matches!(answer, Err(BreakerError::Inner(E::NotFound))));
    /// assert_eq!(breaker.consecutive_failures(), 0); // an answer, not a failure
    ///
    /// let down = policy
    ///     .call_with_breaker_classified(&breaker, || async { Err::<(), _>(E::Unavailable) }, transient)
    ///     .await;
    /// assert!(matches!(down, Err(BreakerError::Inner(E::Unavailable))));
    /// assert_eq!(breaker.consecutive_failures(), 3); // three attempts, three failures
    /// # }
    /// ```
    pub async fn call_with_breaker_classified<F, Fut, T, E, C>(
        &self,
        breaker: &CircuitBreaker,
        mut f: F,
        is_failure: C,
    ) -> Result<T, BreakerError<E>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        C: Fn(&E) -> bool,
    {
        enum Attempt<E> {
            Failed(E),
            TimedOut,
        }
        let is_failure = &is_failure;
        // Taken before `call_if` takes its own: an attempt still running at the deadline
        // ends inside the breaker (a counted failure), not by being dropped outside it.
        let deadline = self.deadline.map(|d| Instant::now() + d);
        let result = self
            .call_if(
                || {
                    let fut = f();
                    breaker.call_classified(
                        move || async move {
                            match deadline {
                                Some(at) => match tokio::time::timeout_at(at, fut).await {
                                    Ok(r) => r.map_err(Attempt::Failed),
                                    Err(_) => Err(Attempt::TimedOut),
                                },
                                None => fut.await.map_err(Attempt::Failed),
                            }
                        },
                        |e| match e {
                            Attempt::Failed(e) => is_failure(e),
                            Attempt::TimedOut => true,
                        },
                    )
                },
                |e| matches!(e, BreakerError::Inner(Attempt::Failed(e)) if is_failure(e)),
            )
            .await;
        result.map_err(|e| match e.into_last() {
            Some(BreakerError::Open(o)) => BreakerError::Open(o),
            Some(BreakerError::Inner(Attempt::Failed(e))) => BreakerError::Inner(e),
            Some(BreakerError::Inner(Attempt::TimedOut) | BreakerError::TimedOut) | None => {
                BreakerError::TimedOut
            }
        })
    }
}

/// Iterator over the jittered delays of a [`Retry`] policy.
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: Retry,
    retry: u32,
}

impl Iterator for Backoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        if self.retry + 1 >= self.policy.max_attempts {
            return None;
        }
        self.retry += 1;
        let nominal = self.policy.nominal_delay(self.retry);
        let j = self.policy.jitter;
        if j == 0.0 {
            return Some(nominal);
        }
        let factor = rand::rng().random_range(1.0 - j..=1.0 + j);
        Some(nominal.mul_f64(factor))
    }
}

#[cfg(test)]
mod tests;
