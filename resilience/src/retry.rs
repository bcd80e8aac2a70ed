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
mod tests {

    /// A downstream that hangs: the deadline ends the attempt as a breaker failure —
    /// reported as a timeout, not as "open" — so enough of them open the breaker.
    #[tokio::test(start_paused = true)]
    async fn a_hanging_call_past_the_deadline_is_a_timeout_counted_by_the_breaker() {
        let breaker = CircuitBreaker::builder("hangs")
            .failure_threshold(2)
            .build();
        let retry = Retry::default().deadline(Duration::from_secs(1));
        for _ in 0..2 {
            let r = retry
                .call_with_breaker(&breaker, std::future::pending::<Result<(), ()>>)
                .await;
            assert!(matches!(r, Err(BreakerError::TimedOut)), "{r:?}");
        }
        assert_eq!(breaker.state(), crate::BreakerState::Open);
        let r = retry
            .call_with_breaker(&breaker, || async { Ok::<_, ()>(()) })
            .await;
        assert!(matches!(r, Err(BreakerError::Open(_))), "{r:?}");
    }

    /// Failures that use up the retries are the call's own error, each attempt counted.
    #[tokio::test(start_paused = true)]
    async fn each_failed_attempt_counts_with_the_breaker() {
        let breaker = CircuitBreaker::builder("fails")
            .failure_threshold(5)
            .build();
        let retry = Retry::default().max_attempts(3);
        let r = retry
            .call_with_breaker(&breaker, || async { Err::<(), _>("boom") })
            .await;
        assert!(matches!(r, Err(BreakerError::Inner("boom"))), "{r:?}");
        assert_eq!(breaker.state(), crate::BreakerState::Closed);
        let _ = retry
            .call_with_breaker(&breaker, || async { Err::<(), _>("boom") })
            .await;
        // 3 + 2 attempts reached the threshold of 5 (the sixth was refused).
        assert_eq!(breaker.state(), crate::BreakerState::Open);
    }
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Mutex;

    #[tokio::test(start_paused = true)]
    async fn makes_exactly_max_attempts() {
        let calls = AtomicU32::new(0);
        let r = Retry::default()
            .call(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>("always")
            })
            .await;
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(
            r.unwrap_err(),
            RetryError::Failed {
                error: "always",
                attempts: 3
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn each_delay_is_within_ten_percent_of_nominal() {
        // Observe the waits between attempts on the paused clock, many times over.
        for _ in 0..200 {
            let stamps = Mutex::new(Vec::new());
            let _ = Retry::default()
                .max_attempts(4)
                .call(|| async {
                    stamps.lock().unwrap().push(Instant::now());
                    Err::<(), _>(())
                })
                .await;
            let stamps = stamps.into_inner().unwrap();
            assert_eq!(stamps.len(), 4);
            for (i, nominal_ms) in [100.0, 200.0, 400.0].into_iter().enumerate() {
                let waited = (stamps[i + 1] - stamps[i]).as_secs_f64() * 1000.0;
                assert!(
                    waited >= nominal_ms * 0.9 - 1e-6 && waited <= nominal_ms * 1.1 + 1.0,
                    "retry {} waited {waited} ms, nominal {nominal_ms} ms",
                    i + 1
                );
            }
        }
    }

    #[test]
    fn jitter_spreads_both_ways() {
        let delays: Vec<_> = (0..500)
            .filter_map(|_| Retry::default().backoff().next())
            .collect();
        assert!(delays.iter().any(|d| *d < Duration::from_millis(97)));
        assert!(delays.iter().any(|d| *d > Duration::from_millis(103)));
        assert!(delays
            .iter()
            .all(|d| *d >= Duration::from_millis(90) && *d <= Duration::from_millis(110)));
    }

    #[test]
    fn nominal_delays_double_and_cap() {
        let r = Retry::default().max_delay(Duration::from_millis(300));
        assert_eq!(r.nominal_delay(1), Duration::from_millis(100));
        assert_eq!(r.nominal_delay(2), Duration::from_millis(200));
        assert_eq!(r.nominal_delay(3), Duration::from_millis(300));
        assert_eq!(Retry::default().backoff().count(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn non_retryable_errors_stop_at_once() {
        let calls = AtomicU32::new(0);
        let r = Retry::default()
            .call_if(
                || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Err::<(), _>("invalid")
                },
                |e| *e != "invalid",
            )
            .await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(r.unwrap_err().attempts(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn deadline_cuts_retries_short() {
        let calls = AtomicU32::new(0);
        let start = Instant::now();
        let r = Retry::default()
            .max_attempts(10)
            .deadline(Duration::from_millis(250))
            .call(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>("down")
            })
            .await;
        // 0 ms, ~100 ms, ~300 ms would be past the deadline: two attempts.
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert!(matches!(
            r,
            Err(RetryError::DeadlineExceeded {
                last: Some("down"),
                attempts: 2
            })
        ));
        assert!(Instant::now() - start < Duration::from_millis(250));
    }

    #[tokio::test(start_paused = true)]
    async fn deadline_interrupts_a_hanging_attempt() {
        let r = Retry::default()
            .deadline(Duration::from_secs(1))
            .call(std::future::pending::<Result<(), ()>>)
            .await;
        assert!(matches!(
            r,
            Err(RetryError::DeadlineExceeded {
                last: None,
                attempts: 1
            })
        ));
    }

    /// A call slower than no time but inside the deadline runs to its end.
    #[tokio::test(start_paused = true)]
    async fn a_slow_call_inside_the_deadline_succeeds_through_the_breaker() {
        let breaker = CircuitBreaker::new("slow");
        let r = Retry::default()
            .deadline(Duration::from_secs(1))
            .call_with_breaker(&breaker, || async {
                tokio::time::sleep(Duration::from_millis(500)).await;
                Ok::<_, ()>("late but in time")
            })
            .await;
        assert_eq!(r.unwrap(), "late but in time");
        assert_eq!(breaker.consecutive_failures(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn never_makes_one_attempt() {
        let calls = AtomicU32::new(0);
        let r = Retry::never()
            .call(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>("once")
            })
            .await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(Retry::never().attempts(), 1);
        assert_eq!(Retry::default().attempts(), 3);
        assert_eq!(Retry::default().max_attempts(7).attempts(), 7);
        assert_eq!(Retry::never().backoff().count(), 0);
        assert_eq!(r.unwrap_err().attempts(), 1);
        assert_eq!(
            Retry::default().max_attempts(0).attempts(),
            1,
            "at least one"
        );
    }

    #[test]
    fn the_setters_shape_the_delays() {
        let r = Retry::new()
            .base_delay(Duration::from_millis(50))
            .multiplier(3)
            .max_delay(Duration::from_secs(1))
            .max_attempts(6)
            .jitter(0.0);
        assert_eq!(
            r.backoff().collect::<Vec<_>>(),
            [50, 150, 450, 1000, 1000].map(Duration::from_millis),
            "base 50 ms, × 3 each retry, capped at 1 s, no jitter"
        );
        assert_eq!(
            Retry::new().multiplier(0).nominal_delay(3),
            Duration::from_millis(100),
            "a multiplier below 1 is 1"
        );
        // Jitter is clamped to 0..=1; not a number means none.
        assert_eq!(Retry::new().jitter(f64::NAN), Retry::new().jitter(0.0));
        assert_eq!(Retry::new().jitter(7.0), Retry::new().jitter(1.0));
        assert_eq!(Retry::new().jitter(-1.0), Retry::new().jitter(0.0));
        assert_ne!(Retry::new().jitter(0.5), Retry::new());
        // A wide jitter spreads over the whole ±50 % range.
        let spread: Vec<_> = (0..500)
            .filter_map(|_| Retry::new().jitter(0.5).backoff().next())
            .collect();
        assert!(spread.iter().any(|d| *d < Duration::from_millis(70)));
        assert!(spread.iter().any(|d| *d > Duration::from_millis(130)));
        assert!(spread
            .iter()
            .all(|d| *d >= Duration::from_millis(50) && *d <= Duration::from_millis(150)));
        // A delay past what a Duration holds is the cap, not an overflow.
        assert_eq!(
            Retry::new()
                .base_delay(Duration::MAX)
                .max_delay(Duration::from_secs(5))
                .nominal_delay(2),
            Duration::from_secs(5)
        );
        assert_eq!(
            Retry::new().max_delay(Duration::MAX).nominal_delay(1000),
            Duration::from_millis(100) * 2u32.pow(31),
            "the exponent stops at 31"
        );
    }

    #[test]
    fn errors_report_their_attempts_and_last_error() {
        let failed = RetryError::Failed {
            error: "e",
            attempts: 2,
        };
        assert_eq!(failed.attempts(), 2);
        assert_eq!(failed.into_last(), Some("e"));
        let late: RetryError<&str> = RetryError::DeadlineExceeded {
            last: None,
            attempts: 4,
        };
        assert_eq!(late.attempts(), 4);
        assert_eq!(late.into_last(), None);
        assert_eq!(Retry::default().name(), "unnamed");
        assert_eq!(Retry::default().named("x").name(), "x");
    }

    #[tokio::test(start_paused = true)]
    async fn never_retries_into_an_open_breaker() {
        let breaker = CircuitBreaker::builder("b").failure_threshold(2).build();
        let calls = AtomicU32::new(0);
        let r = Retry::default()
            .max_attempts(5)
            .call_with_breaker(&breaker, || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>("down")
            })
            .await;
        // Two real calls open the breaker; the third attempt is rejected and ends it.
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert!(r.unwrap_err().is_open());
    }
}
