//! The circuit breaker.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::time::Instant;

mod state;
mod window;

pub use state::{BreakerState, Transition, TransitionReason};
use state::{CLOSED, HALF_OPEN, OPEN};
pub use window::FailureRate;
use window::Window;

/// Tunables of a [`CircuitBreaker`]: `default()` and the `with_*` methods (or
/// [`CircuitBreaker::builder`]). New settings may be added in minor versions (the
/// struct is `#[non_exhaustive]`).
///
/// ```
/// use std::time::Duration;
/// use resilience::BreakerConfig;
/// let config = BreakerConfig::default()
///     .with_failure_threshold(3)
///     .with_open_timeout(Duration::from_secs(10));
/// assert_eq!(config.failure_threshold, 3);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker (default 5).
    pub failure_threshold: u32,
    /// How long the breaker stays open before admitting a trial call (default 30 s).
    pub open_timeout: Duration,
    /// Also open on a share of failed calls over a window of time (default none).
    pub failure_rate: Option<FailureRate>,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            open_timeout: Duration::from_secs(30),
            failure_rate: None,
        }
    }
}

impl BreakerConfig {
    /// [`failure_threshold`](Self::failure_threshold).
    pub fn with_failure_threshold(mut self, failure_threshold: u32) -> Self {
        self.failure_threshold = failure_threshold;
        self
    }

    /// [`open_timeout`](Self::open_timeout).
    pub fn with_open_timeout(mut self, open_timeout: Duration) -> Self {
        self.open_timeout = open_timeout;
        self
    }

    /// [`failure_rate`](Self::failure_rate).
    pub fn with_failure_rate(mut self, policy: FailureRate) -> Self {
        self.failure_rate = Some(policy);
        self
    }
}

/// The error returned when a breaker rejects a call without running it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("circuit breaker `{name}` is open")]
pub struct CircuitOpen {
    /// Name of the breaker that rejected the call.
    pub name: Arc<str>,
    /// Time until the breaker admits a trial call, when known (zero while a trial runs).
    pub retry_after: Duration,
}

/// Error of [`CircuitBreaker::call`]: either the breaker rejected the call, or the call ran
/// and failed with its own error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BreakerError<E> {
    /// Rejected without calling the downstream.
    #[error(transparent)]
    Open(CircuitOpen),
    /// The operation ran and returned this error.
    #[error("{0}")]
    Inner(E),
    /// The operation ran but did not finish before the deadline of a
    /// [`Retry::call_with_breaker`](crate::Retry::call_with_breaker): it was abandoned,
    /// and the breaker counted it as a failure (a downstream that hangs is a downstream
    /// in trouble).
    #[error("the call did not finish before the deadline")]
    TimedOut,
}

impl<E> BreakerError<E> {
    /// The operation's own error, if the call ran and returned one.
    pub fn into_inner(self) -> Option<E> {
        match self {
            Self::Inner(e) => Some(e),
            Self::Open(_) | Self::TimedOut => None,
        }
    }

    /// Whether the breaker rejected the call.
    pub fn is_open(&self) -> bool {
        matches!(self, Self::Open(_))
    }
}

type Callback = Arc<dyn Fn(&Transition) + Send + Sync>;

struct Inner {
    name: Arc<str>,
    config: BreakerConfig,
    state: AtomicU8,
    failures: AtomicU32,
    /// Nanoseconds since `epoch` at which the breaker last opened.
    opened_at: AtomicU64,
    /// The downstream reported healthy while OPEN: the next call is the trial.
    healthy: AtomicBool,
    /// With a failure-rate policy, the calls of its window.
    window: Option<Window>,
    epoch: Instant,
    on_transition: Option<Callback>,
}

/// A circuit breaker: CLOSED → OPEN after `failure_threshold` consecutive failures →
/// after `open_timeout`, or as soon as the downstream reports healthy
/// ([`recovered`](Self::recovered), [`watch_health`](Self::watch_health)), HALF-OPEN, where exactly one trial call is admitted → CLOSED on
/// its success, OPEN again on its failure.
///
/// Cheap to clone (an `Arc`), lock-free: a call in the CLOSED state costs two atomic
/// loads and one store. Time comes from [`tokio::time::Instant`], so tests can use
/// `tokio::time::pause()`.
///
/// ```
/// use resilience::{BreakerState, CircuitBreaker};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let breaker = CircuitBreaker::builder("payments").failure_threshold(2).build();
/// for _ in 0..2 {
///     let _ = breaker.call(|| async { Err::<(), _>("boom") }).await;
/// }
/// assert_eq!(breaker.state(), BreakerState::Open);
/// let rejected = breaker.call(|| async { Ok::<_, &str>(()) }).await;
/// assert!(rejected.unwrap_err().is_open());
/// # }
/// ```
#[derive(Clone)]
pub struct CircuitBreaker {
    inner: Arc<Inner>,
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("name", &self.inner.name)
            .field("state", &self.state())
            .field("failures", &self.inner.failures.load(Ordering::Relaxed))
            .field("config", &self.inner.config)
            .finish()
    }
}

/// Builder for [`CircuitBreaker`].
pub struct CircuitBreakerBuilder {
    name: Arc<str>,
    config: BreakerConfig,
    on_transition: Option<Callback>,
}

impl fmt::Debug for CircuitBreakerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerBuilder")
            .field("name", &self.name)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl CircuitBreakerBuilder {
    /// Consecutive failures that open the breaker (at least 1).
    pub fn failure_threshold(mut self, n: u32) -> Self {
        self.config.failure_threshold = n.max(1);
        self
    }

    /// How long the breaker stays open before a trial call.
    pub fn open_timeout(mut self, d: Duration) -> Self {
        self.config.open_timeout = d;
        self
    }

    /// Also open when `percent` % of the calls of the last `window` failed, once it
    /// holds `minimum_calls` ([`FailureRate`]).
    pub fn failure_rate(mut self, percent: u8, window: Duration, minimum_calls: u32) -> Self {
        self.config.failure_rate = Some(FailureRate::new(percent, window, minimum_calls));
        self
    }

    /// Replace the whole configuration.
    pub fn config(mut self, config: BreakerConfig) -> Self {
        self.config = config;
        self.config.failure_threshold = self.config.failure_threshold.max(1);
        self
    }

    /// Called synchronously on every state change (keep it cheap: count a metric, log).
    pub fn on_transition(mut self, f: impl Fn(&Transition) + Send + Sync + 'static) -> Self {
        self.on_transition = Some(Arc::new(f));
        self
    }

    /// Build the breaker, starting CLOSED.
    pub fn build(self) -> CircuitBreaker {
        metrics::gauge!("resilience_breaker_state", "breaker" => self.name.to_string())
            .set(BreakerState::Closed.metric_value());
        metrics::counter!("resilience_breaker_transitions_total", "breaker" => self.name.to_string(),
            "from" => BreakerState::Closed.as_str(), "to" => BreakerState::Open.as_str(),
            "reason" => TransitionReason::Failures.as_str())
        .increment(0);
        CircuitBreaker {
            inner: Arc::new(Inner {
                name: self.name,
                config: self.config,
                state: AtomicU8::new(CLOSED),
                failures: AtomicU32::new(0),
                opened_at: AtomicU64::new(0),
                healthy: AtomicBool::new(false),
                window: self.config.failure_rate.map(Window::new),
                epoch: Instant::now(),
                on_transition: self.on_transition,
            }),
        }
    }
}

impl CircuitBreaker {
    /// A breaker with the default configuration (5 failures, 30 s).
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        Self::builder(name).build()
    }

    /// Start building a breaker.
    pub fn builder(name: impl Into<Arc<str>>) -> CircuitBreakerBuilder {
        CircuitBreakerBuilder {
            name: name.into(),
            config: BreakerConfig::default(),
            on_transition: None,
        }
    }

    /// The breaker's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The configuration in force.
    pub fn config(&self) -> BreakerConfig {
        self.inner.config
    }

    /// The current state. An OPEN breaker whose timeout has passed still reports OPEN
    /// until the next call turns it HALF-OPEN.
    pub fn state(&self) -> BreakerState {
        BreakerState::from_u8(self.inner.state.load(Ordering::Acquire))
    }

    /// Consecutive failures counted in the CLOSED state.
    pub fn consecutive_failures(&self) -> u32 {
        self.inner.failures.load(Ordering::Relaxed)
    }

    fn now_nanos(&self) -> u64 {
        Instant::now()
            .saturating_duration_since(self.inner.epoch)
            .as_nanos()
            .try_into()
            .unwrap_or(u64::MAX)
    }

    fn emit(&self, from: u8, to: u8, reason: TransitionReason) {
        let (from, to) = (BreakerState::from_u8(from), BreakerState::from_u8(to));
        let name = self.inner.name.to_string();
        metrics::gauge!("resilience_breaker_state", "breaker" => name.clone())
            .set(to.metric_value());
        metrics::counter!("resilience_breaker_transitions_total", "breaker" => name,
            "from" => from.as_str(), "to" => to.as_str(), "reason" => reason.as_str())
        .increment(1);
        if let Some(cb) = &self.inner.on_transition {
            cb(&Transition {
                name: self.inner.name.clone(),
                from,
                to,
                reason,
            });
        }
    }

    fn cas(&self, from: u8, to: u8, reason: TransitionReason) -> bool {
        let ok = self
            .inner
            .state
            .compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if ok {
            self.emit(from, to, reason);
        }
        ok
    }

    /// The downstream reports healthy again (its health check answers): if the breaker
    /// is OPEN, the next call is its HALF-OPEN trial at once instead of after the rest of
    /// the open timeout — OPEN lasts at most `open_timeout`, but no longer than the
    /// downstream is down. The trial still decides: a failing trial opens the breaker for
    /// a full timeout. In any other state this does nothing.
    ///
    /// ```
    /// use std::time::Duration;
    /// use resilience::{BreakerState, CircuitBreaker};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let breaker = CircuitBreaker::builder("orders").failure_threshold(1)
    ///     .open_timeout(Duration::from_secs(30)).build();
    /// let _ = breaker.call(|| async { Err::<(), _>("down") }).await;
    /// assert!(breaker.try_acquire().is_err(), "open for 30 s");
    ///
    /// breaker.recovered(); // its health check says SERVING
    /// let trial = breaker.try_acquire().expect("the trial goes through at once");
    /// assert!(trial.is_trial());
    /// trial.success();
    /// assert_eq!(breaker.state(), BreakerState::Closed);
    /// # }
    /// ```
    pub fn recovered(&self) {
        if self.inner.state.load(Ordering::Acquire) == OPEN {
            self.inner.healthy.store(true, Ordering::Release);
        }
    }

    /// While the breaker is OPEN, ask `probe` every `every` whether the downstream is
    /// healthy (e.g. its gRPC health check or readiness endpoint); when it answers
    /// `true`, [`recovered`](Self::recovered). A probe that takes longer than `every`
    /// counts as `false`. Nothing is probed while the breaker is CLOSED or HALF-OPEN.
    /// The task ends when the last clone of the breaker is dropped (or when the
    /// returned handle is aborted). Needs a tokio runtime.
    ///
    /// ```
    /// use std::time::Duration;
    /// use resilience::CircuitBreaker;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let breaker = CircuitBreaker::new("orders");
    /// let probing = breaker.watch_health(Duration::from_secs(1), || async {
    ///     // e.g. tonic_health's `check` against the endpoint, `is_ok()`
    ///     true
    /// });
    /// # probing.abort();
    /// # }
    /// ```
    pub fn watch_health<P, F>(&self, every: Duration, mut probe: P) -> tokio::task::JoinHandle<()>
    where
        P: FnMut() -> F + Send + 'static,
        F: Future<Output = bool> + Send,
    {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(inner) = weak.upgrade() else { return };
                let breaker = CircuitBreaker { inner };
                if breaker.inner.state.load(Ordering::Acquire) != OPEN
                    || breaker.inner.healthy.load(Ordering::Acquire)
                {
                    continue;
                }
                // Do not keep the breaker alive while the probe runs.
                let weak_again = Arc::downgrade(&breaker.inner);
                drop(breaker);
                let up = tokio::time::timeout(every, probe()).await.unwrap_or(false);
                if up {
                    if let Some(inner) = weak_again.upgrade() {
                        CircuitBreaker { inner }.recovered();
                    }
                }
            }
        })
    }

    fn rejected(&self, retry_after: Duration) -> CircuitOpen {
        CircuitOpen {
            name: self.inner.name.clone(),
            retry_after,
        }
    }

    /// Ask for permission to make one call. The returned [`Permit`] must be resolved with
    /// [`Permit::success`] or [`Permit::failure`]; dropping it unresolved (a cancelled
    /// call) records nothing, and a dropped HALF-OPEN trial lets the next caller try.
    pub fn try_acquire(&self) -> Result<Permit, CircuitOpen> {
        match self.inner.state.load(Ordering::Acquire) {
            CLOSED => Ok(Permit::new(self.clone(), false)),
            OPEN => {
                let opened = self.inner.opened_at.load(Ordering::Acquire);
                let timeout = self.inner.config.open_timeout;
                let elapsed = Duration::from_nanos(self.now_nanos().saturating_sub(opened));
                let healthy = self.inner.healthy.load(Ordering::Acquire);
                if elapsed >= timeout || healthy {
                    let reason = if elapsed >= timeout {
                        TransitionReason::OpenTimeout
                    } else {
                        TransitionReason::Healthy
                    };
                    if self.cas(OPEN, HALF_OPEN, reason) {
                        self.inner.healthy.store(false, Ordering::Release);
                        return Ok(Permit::new(self.clone(), true));
                    }
                    // Someone else won the trial (or closed it meanwhile): re-check once.
                    if self.inner.state.load(Ordering::Acquire) == CLOSED {
                        return Ok(Permit::new(self.clone(), false));
                    }
                    return Err(self.rejected(Duration::ZERO));
                }
                Err(self.rejected(timeout - elapsed))
            }
            _ => Err(self.rejected(Duration::ZERO)),
        }
    }

    fn record_success(&self, trial: bool) {
        if trial {
            self.inner.failures.store(0, Ordering::Relaxed);
            if let Some(w) = &self.inner.window {
                w.clear();
            }
            self.cas(HALF_OPEN, CLOSED, TransitionReason::TrialSucceeded);
            return;
        }
        if self.inner.failures.load(Ordering::Relaxed) != 0 {
            self.inner.failures.store(0, Ordering::Relaxed);
        }
        if let Some(w) = &self.inner.window {
            w.record(self.now_nanos(), false);
        }
    }

    /// CLOSED → OPEN for `reason`.
    fn trip(&self, reason: TransitionReason) {
        // Publish the open time before the state so that nobody sees OPEN with a stale
        // timestamp.
        self.inner
            .opened_at
            .store(self.now_nanos(), Ordering::Release);
        self.inner.healthy.store(false, Ordering::Release);
        if self.cas(CLOSED, OPEN, reason) {
            self.inner.failures.store(0, Ordering::Relaxed);
            if let Some(w) = &self.inner.window {
                w.clear();
            }
        }
    }

    fn record_failure(&self, trial: bool) {
        if trial {
            self.inner
                .opened_at
                .store(self.now_nanos(), Ordering::Release);
            self.inner.healthy.store(false, Ordering::Release);
            self.cas(HALF_OPEN, OPEN, TransitionReason::TrialFailed);
            return;
        }
        let n = self.inner.failures.fetch_add(1, Ordering::AcqRel) + 1;
        let closed = || self.inner.state.load(Ordering::Acquire) == CLOSED;
        if n >= self.inner.config.failure_threshold && closed() {
            self.trip(TransitionReason::Failures);
        } else if let Some(w) = &self.inner.window {
            if w.record(self.now_nanos(), true) && closed() {
                self.trip(TransitionReason::FailureRate);
            }
        }
    }

    fn abandon_trial(&self) {
        // The trial produced no outcome: go back to OPEN with the old timestamp, so the
        // next caller may run a new trial straight away.
        self.cas(HALF_OPEN, OPEN, TransitionReason::TrialAbandoned);
    }

    /// Run `f` through the breaker; every `Err` counts as a failure.
    pub async fn call<F, Fut, T, E>(&self, f: F) -> Result<T, BreakerError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.call_classified(f, |_| true).await
    }

    /// Run `f` through the breaker; `is_failure` decides which errors count against the
    /// downstream (e.g. a timeout does, a validation error does not). Errors that do not
    /// count are treated as a successful round trip.
    pub async fn call_classified<F, Fut, T, E, C>(
        &self,
        f: F,
        is_failure: C,
    ) -> Result<T, BreakerError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        C: FnOnce(&E) -> bool,
    {
        let permit = self.try_acquire().map_err(BreakerError::Open)?;
        match f().await {
            Ok(v) => {
                permit.success();
                Ok(v)
            }
            Err(e) => {
                if is_failure(&e) {
                    permit.failure();
                } else {
                    permit.success();
                }
                Err(BreakerError::Inner(e))
            }
        }
    }
}

/// Permission for one call, from [`CircuitBreaker::try_acquire`].
#[must_use = "resolve the permit with success() or failure()"]
pub struct Permit {
    breaker: CircuitBreaker,
    trial: bool,
    resolved: bool,
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("breaker", &self.breaker.inner.name)
            .field("trial", &self.trial)
            .finish()
    }
}

impl Permit {
    fn new(breaker: CircuitBreaker, trial: bool) -> Self {
        Self {
            breaker,
            trial,
            resolved: false,
        }
    }

    /// Whether this permit is the single HALF-OPEN trial.
    pub fn is_trial(&self) -> bool {
        self.trial
    }

    /// The call reached the downstream and it answered.
    pub fn success(mut self) {
        self.resolved = true;
        self.breaker.record_success(self.trial);
    }

    /// The call failed in a way that counts against the downstream.
    pub fn failure(mut self) {
        self.resolved = true;
        self.breaker.record_failure(self.trial);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.resolved && self.trial {
            self.breaker.abandon_trial();
        }
    }
}

#[cfg(test)]
mod tests;
