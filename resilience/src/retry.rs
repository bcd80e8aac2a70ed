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
    attempt_timeout: Option<Duration>,
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
            attempt_timeout: None,
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
    /// The last attempt did not finish within the
    /// [`attempt_timeout`](Retry::attempt_timeout) and no retry is left.
    #[error("the last of {attempts} attempt(s) timed out")]
    TimedOut {
        /// The last error an attempt returned, if one did before the timeouts.
        last: Option<E>,
        /// Attempts made.
        attempts: u32,
    },
}

impl<E> RetryError<E> {
    /// The last error an attempt returned, if any.
    pub fn into_last(self) -> Option<E> {
        match self {
            Self::Failed { error, .. } => Some(error),
            Self::DeadlineExceeded { last, .. } | Self::TimedOut { last, .. } => last,
        }
    }

    /// Attempts made (or started, for a deadline).
    pub fn attempts(&self) -> u32 {
        match self {
            Self::Failed { attempts, .. }
            | Self::DeadlineExceeded { attempts, .. }
            | Self::TimedOut { attempts, .. } => *attempts,
        }
    }

    /// The same outcome with the attempts' error mapped by `f`.
    pub fn map<F>(self, f: impl FnOnce(E) -> F) -> RetryError<F> {
        match self {
            Self::Failed { error, attempts } => RetryError::Failed {
                error: f(error),
                attempts,
            },
            Self::DeadlineExceeded { last, attempts } => RetryError::DeadlineExceeded {
                last: last.map(f),
                attempts,
            },
            Self::TimedOut { last, attempts } => RetryError::TimedOut {
                last: last.map(f),
                attempts,
            },
        }
    }
}

/// The outcome of [`Retry::call_with_breaker`]: how many attempts were made, and the
/// breaker's answer to the last.
impl<E> RetryError<BreakerError<E>> {
    /// Whether the breaker rejected the last attempt (it was open, or its trial was
    /// taken).
    pub fn is_open(&self) -> bool {
        matches!(self, Self::Failed { error, .. } if error.is_open())
    }

    /// The downstream's own error from the last attempt that returned one.
    pub fn into_inner(self) -> Option<E> {
        self.into_last().and_then(BreakerError::into_inner)
    }
}

/// What a retry hook ([`Retry::call_notify`], [`Retry::call_with_breaker_notify`]) is
/// told before each wait.
#[derive(Debug)]
#[non_exhaustive]
pub struct RetryNotice<'a, E> {
    /// The attempt that just failed (1 for the first).
    pub attempt: u32,
    /// Its error; `None` if it timed out ([`Retry::attempt_timeout`]).
    pub error: Option<&'a E>,
    /// The wait before the next attempt.
    pub delay: Duration,
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

    /// Time limit of each attempt: one still running after `d` is abandoned (its future
    /// dropped) and retried like a failed one — a hung connection costs `d`, not the
    /// whole [`deadline`](Self::deadline). Through a breaker it counts as a failure.
    ///
    /// ```
    /// use std::time::Duration;
    /// use resilience::{Retry, RetryError};
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let calls = std::sync::atomic::AtomicU32::new(0);
    /// let policy = Retry::default().attempt_timeout(Duration::from_millis(50));
    /// let answer = policy
    ///     .call(|| async {
    ///         if calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
    ///             std::future::pending::<()>().await; // the first attempt hangs
    ///         }
    ///         Ok::<_, &str>("second attempt")
    ///     })
    ///     .await;
    /// assert_eq!(answer.unwrap(), "second attempt");
    /// # }
    /// ```
    pub fn attempt_timeout(mut self, d: Duration) -> Self {
        self.attempt_timeout = Some(d);
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
    pub async fn call_if<F, Fut, T, E, P>(&self, f: F, retryable: P) -> Result<T, RetryError<E>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        P: FnMut(&E) -> bool,
    {
        self.call_notify(f, retryable, |_| {}).await
    }

    /// [`call_if`](Self::call_if), telling `notify` about each retry before its wait —
    /// the attempt that failed, its error (or that it timed out) and the delay: the
    /// place to log or count retries per call.
    ///
    /// ```
    /// use std::time::Duration;
    /// use resilience::Retry;
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let mut seen = Vec::new();
    /// let answer = Retry::default()
    ///     .call_notify(
    ///         || async { Err::<(), _>("unavailable") },
    ///         |_| true,
    ///         |n| seen.push((n.attempt, n.error.copied())),
    ///     )
    ///     .await;
    /// assert_eq!(answer.unwrap_err().attempts(), 3);
    /// assert_eq!(seen, [(1, Some("unavailable")), (2, Some("unavailable"))]);
    /// # }
    /// ```
    pub async fn call_notify<F, Fut, T, E, P, N>(
        &self,
        f: F,
        retryable: P,
        notify: N,
    ) -> Result<T, RetryError<E>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        P: FnMut(&E) -> bool,
        N: FnMut(&RetryNotice<'_, E>),
    {
        self.run_attempts(f, retryable, notify, self.attempt_timeout)
            .await
    }

    /// The retry loop, each attempt cut at `attempt_timeout` (the breaker path cuts its
    /// attempts itself, inside the breaker, and passes `None`).
    async fn run_attempts<F, Fut, T, E, P, N>(
        &self,
        mut f: F,
        mut retryable: P,
        mut notify: N,
        attempt_timeout: Option<Duration>,
    ) -> Result<T, RetryError<E>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        P: FnMut(&E) -> bool,
        N: FnMut(&RetryNotice<'_, E>),
    {
        let deadline = self.deadline.map(|d| Instant::now() + d);
        let mut delays = self.backoff();
        let mut attempts = 0;
        let mut last = None;
        loop {
            attempts += 1;
            // This attempt's limit: its own timeout or the overall deadline, the earlier.
            let own = attempt_timeout.map(|t| Instant::now() + t);
            let limit = match (own, deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let outcome = match limit {
                Some(at) => match tokio::time::timeout_at(at, f()).await {
                    Ok(r) => Some(r),
                    Err(_) if deadline.is_some_and(|d| at >= d) => {
                        return Err(RetryError::DeadlineExceeded { last, attempts })
                    }
                    Err(_) => None,
                },
                None => Some(f().await),
            };
            let error = match outcome {
                Some(Ok(v)) => return Ok(v),
                Some(Err(e)) => Some(e),
                None => None,
            };
            match error {
                Some(error) if !retryable(&error) => {
                    return Err(RetryError::Failed { error, attempts })
                }
                _ => {}
            }
            let Some(delay) = delays.next() else {
                return Err(match error {
                    Some(error) => RetryError::Failed { error, attempts },
                    None => RetryError::TimedOut { last, attempts },
                });
            };
            if let Some(at) = deadline {
                if Instant::now() + delay >= at {
                    return Err(RetryError::DeadlineExceeded {
                        last: error.or(last),
                        attempts,
                    });
                }
            }
            notify(&RetryNotice {
                attempt: attempts,
                error: error.as_ref(),
                delay,
            });
            if error.is_some() {
                last = error;
            }
            metrics::counter!("resilience_retries_total", "retry" => self.name).increment(1);
            // A zero delay retries at once: tokio's timer would round it up to a tick.
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
        }
    }

    /// Retry `f` through `breaker`: every attempt asks the breaker first, and an open
    /// breaker ends the retries at once (retrying into an open breaker only burns time).
    /// The error says how many attempts were made ([`RetryError::attempts`]) and what
    /// the breaker answered to the last ([`RetryError::is_open`],
    /// [`RetryError::into_inner`]).
    ///
    /// **Every attempt counts with the breaker**: a logical call retried three times
    /// that fails three times is three failures (two such calls open a breaker with a
    /// threshold of five). An attempt cut by the [`attempt_timeout`](Self::attempt_timeout)
    /// or the [`deadline`](Self::deadline) is abandoned inside the breaker, counted as a
    /// failure and reported as [`BreakerError::TimedOut`] — so a downstream that hangs
    /// opens the breaker like one that fails. To retry and count only the errors that
    /// mean the downstream is in trouble, use
    /// [`call_with_breaker_classified`](Self::call_with_breaker_classified).
    ///
    /// ```
    /// use resilience::{CircuitBreaker, Retry};
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let breaker = CircuitBreaker::new("inventory");
    /// let failed = Retry::default()
    ///     .call_with_breaker(&breaker, || async { Err::<(), _>("unavailable") })
    ///     .await
    ///     .unwrap_err();
    /// assert_eq!(failed.attempts(), 3);
    /// assert!(!failed.is_open());
    /// assert_eq!(failed.into_inner(), Some("unavailable"));
    /// # }
    /// ```
    pub async fn call_with_breaker<F, Fut, T, E>(
        &self,
        breaker: &CircuitBreaker,
        f: F,
    ) -> Result<T, RetryError<BreakerError<E>>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.call_with_breaker_notify(breaker, f, |_| true, |_| {})
            .await
    }

    /// [`call_with_breaker`](Self::call_with_breaker) for calls whose errors are not
    /// all the downstream's fault: only errors for which `is_failure` holds (down,
    /// overloaded, timed out) are retried and counted as breaker failures; any other
    /// error is the downstream's *answer* (not found, invalid argument) — returned at
    /// once and counted as a successful round trip. An attempt cut by a timeout always
    /// counts as a failure.
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
    ///     .await
    ///     .unwrap_err();
    /// assert_eq!((answer.attempts(), answer.into_inner()), (1, Some(E::NotFound)));
    /// assert_eq!(breaker.consecutive_failures(), 0); // an answer, not a failure
    ///
    /// let down = policy
    ///     .call_with_breaker_classified(&breaker, || async { Err::<(), _>(E::Unavailable) }, transient)
    ///     .await
    ///     .unwrap_err();
    /// assert_eq!((down.attempts(), down.into_inner()), (3, Some(E::Unavailable)));
    /// assert_eq!(breaker.consecutive_failures(), 3); // three attempts, three failures
    /// # }
    /// ```
    pub async fn call_with_breaker_classified<F, Fut, T, E, C>(
        &self,
        breaker: &CircuitBreaker,
        f: F,
        is_failure: C,
    ) -> Result<T, RetryError<BreakerError<E>>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        C: Fn(&E) -> bool,
    {
        self.call_with_breaker_notify(breaker, f, is_failure, |_| {})
            .await
    }

    /// [`call_with_breaker_classified`](Self::call_with_breaker_classified), telling
    /// `notify` about each retry before its wait (as [`call_notify`](Self::call_notify);
    /// an attempt that timed out has no error).
    pub async fn call_with_breaker_notify<F, Fut, T, E, C, N>(
        &self,
        breaker: &CircuitBreaker,
        mut f: F,
        is_failure: C,
        mut notify: N,
    ) -> Result<T, RetryError<BreakerError<E>>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        C: Fn(&E) -> bool,
        N: FnMut(&RetryNotice<'_, E>),
    {
        enum Attempt<E> {
            Failed(E),
            TimedOut,
        }
        let is_failure = &is_failure;
        // Taken before `call_notify` takes its own: an attempt still running at the
        // deadline (or past its own timeout) ends inside the breaker, a counted
        // failure, not by being dropped outside it.
        let deadline = self.deadline.map(|d| Instant::now() + d);
        let attempt_timeout = self.attempt_timeout;
        let result = self
            .run_attempts(
                || {
                    let fut = f();
                    let own = attempt_timeout.map(|t| Instant::now() + t);
                    let limit = match (own, deadline) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                    breaker.call_classified(
                        move || async move {
                            match limit {
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
                |e| match e {
                    BreakerError::Inner(Attempt::Failed(e)) => is_failure(e),
                    BreakerError::Inner(Attempt::TimedOut) => true,
                    _ => false,
                },
                |n| {
                    notify(&RetryNotice {
                        attempt: n.attempt,
                        error: match n.error {
                            Some(BreakerError::Inner(Attempt::Failed(e))) => Some(e),
                            _ => None,
                        },
                        delay: n.delay,
                    })
                },
                None,
            )
            .await;
        result.map_err(|e| {
            e.map(|e| match e {
                BreakerError::Open(o) => BreakerError::Open(o),
                BreakerError::Inner(Attempt::Failed(e)) => BreakerError::Inner(e),
                BreakerError::Inner(Attempt::TimedOut) | BreakerError::TimedOut => {
                    BreakerError::TimedOut
                }
            })
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
