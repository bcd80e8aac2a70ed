//! A breaker's states, why it changes state, and the change handed to callbacks.

use std::fmt;
use std::sync::Arc;

/// The three states of a [`CircuitBreaker`](super::CircuitBreaker). Deliberately exhaustive (not
/// `#[non_exhaustive]`): the state set of a circuit breaker is fixed, and matching on it
/// without a wildcard arm (to export it as a metric, say) is what users want.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Normal operation: calls pass, consecutive failures are counted.
    Closed,
    /// Calls are rejected without reaching the downstream until the open timeout ends.
    Open,
    /// One trial call is in flight; its outcome closes or re-opens the breaker.
    HalfOpen,
}

impl BreakerState {
    /// The upper-case name used in logs and metrics (`CLOSED`, `OPEN`, `HALF_OPEN`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "CLOSED",
            Self::Open => "OPEN",
            Self::HalfOpen => "HALF_OPEN",
        }
    }

    /// The value of the `resilience_breaker_state` gauge: 0 closed, 1 open, 2 half-open.
    ///
    /// ```
    /// assert_eq!(resilience::BreakerState::Open.metric_value(), 1.0);
    /// ```
    pub fn metric_value(self) -> f64 {
        match self {
            Self::Closed => 0.0,
            Self::Open => 1.0,
            Self::HalfOpen => 2.0,
        }
    }

    pub(super) fn from_u8(v: u8) -> Self {
        match v {
            CLOSED => Self::Closed,
            OPEN => Self::Open,
            _ => Self::HalfOpen,
        }
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

pub(super) const CLOSED: u8 = 0;
pub(super) const OPEN: u8 = 1;
pub(super) const HALF_OPEN: u8 = 2;

/// Why a breaker changed state: the `reason` label of
/// `resilience_breaker_transitions_total` and the [`Transition::reason`] of the callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TransitionReason {
    /// CLOSED → OPEN: `failure_threshold` consecutive failures.
    Failures,
    /// CLOSED → OPEN: the share of failed calls of the
    /// [`FailureRate`](super::FailureRate) window.
    FailureRate,
    /// OPEN → HALF-OPEN: the open timeout ran out.
    OpenTimeout,
    /// OPEN → HALF-OPEN before the timeout: the downstream reported healthy
    /// ([`CircuitBreaker::recovered`](super::CircuitBreaker::recovered), [`CircuitBreaker::watch_health`](super::CircuitBreaker::watch_health)).
    Healthy,
    /// HALF-OPEN → CLOSED: the trial call succeeded.
    TrialSucceeded,
    /// HALF-OPEN → OPEN: the trial call failed (a full open timeout starts again).
    TrialFailed,
    /// HALF-OPEN → OPEN: the trial call was dropped without an outcome (the next caller
    /// may try at once).
    TrialAbandoned,
}

impl TransitionReason {
    /// The snake-case name used in logs and the metric's `reason` label.
    ///
    /// ```
    /// assert_eq!(resilience::TransitionReason::Healthy.as_str(), "healthy");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Failures => "failures",
            Self::FailureRate => "failure_rate",
            Self::OpenTimeout => "open_timeout",
            Self::Healthy => "healthy",
            Self::TrialSucceeded => "trial_succeeded",
            Self::TrialFailed => "trial_failed",
            Self::TrialAbandoned => "trial_abandoned",
        }
    }
}

impl fmt::Display for TransitionReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A state change of a breaker, passed to the [`on_transition`](super::CircuitBreakerBuilder::on_transition)
/// callback (attach metrics or logs there).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Transition {
    /// The breaker's name.
    pub name: Arc<str>,
    /// State before the change.
    pub from: BreakerState,
    /// State after the change.
    pub to: BreakerState,
    /// Why it changed.
    pub reason: TransitionReason,
}
