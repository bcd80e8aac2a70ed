//! Resilience primitives for calls that cross a network: a [`CircuitBreaker`] and a
//! [`Retry`] policy with exponential backoff and jitter.
//!
//! Both work as plain async wrappers around any `FnMut() -> Future<Output = Result<T, E>>`
//! and, with the default `tower` feature, as tower `Layer`s that fit in
//! front of axum handlers, reqwest-like clients or tonic channels.
//!
//! Defaults follow the ordersys specification: the breaker opens after **5** consecutive
//! failures, stays open for **30 s**, then admits exactly one trial call (HALF-OPEN);
//! retry makes at most **3** attempts with delays 100 ms → 200 ms (→ 400 ms for a fourth)
//! and ±10 % jitter.
//!
//! ```
//! use std::time::Duration;
//! use resilience::{BreakerError, CircuitBreaker, Retry, RetryError};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let breaker = CircuitBreaker::builder("user-service").failure_threshold(5).build();
//! let retry = Retry::default();
//!
//! // Retry a flaky call, going through the breaker on every attempt; an open breaker
//! // stops the retries at once.
//! let result: Result<u32, RetryError<BreakerError<&str>>> = retry
//!     .call_with_breaker(&breaker, || async { Ok::<_, &str>(42) })
//!     .await;
//! assert_eq!(result.unwrap(), 42);
//!
//! // A failure says how many attempts were made and what the breaker answered last.
//! let failed = retry
//!     .base_delay(Duration::from_millis(1))
//!     .call_with_breaker(&breaker, || async { Err::<u32, _>("unavailable") })
//!     .await
//!     .unwrap_err();
//! assert_eq!((failed.attempts(), failed.is_open()), (3, false));
//! # }
//! ```
//!
//! # Metrics
//!
//! Through the [`metrics`](https://docs.rs/metrics) facade (a no-op until the
//! application installs a recorder):
//!
//! | name | type | labels | what |
//! |---|---|---|---|
//! | `resilience_breaker_state` | gauge | `breaker` | 0 closed, 1 open, 2 half-open ([`BreakerState::metric_value`]) |
//! | `resilience_breaker_transitions_total` | counter | `breaker`, `from`, `to`, `reason` ([`TransitionReason`]) | state changes |
//! | `resilience_retries_total` | counter | `retry` | retries made (attempts after the first) by a policy ([`Retry::named`]) |
//! | `resilience_rate_limit_rejections_total` | counter | `limiter` (`memory`, `redis`) | requests refused |
//!
//! # Semver
//!
//! `BreakerConfig` and `Transition` are `#[non_exhaustive]` (build the config from
//! `default()` with its `with_*` methods or [`CircuitBreaker::builder`]), and so are the
//! error enums `BreakerError` and `RetryError`. `BreakerState` is exhaustive on purpose
//! (closed, open, half-open is the pattern); `RateDecision` stays open for custom
//! limiters to build.
//!
//! # Cargo features
//!
#![doc = document_features::document_features!()]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]

mod breaker;
pub mod rate_limit;
mod retry;

#[cfg(feature = "tower")]
pub mod layer;

pub use breaker::{
    BreakerConfig, BreakerError, BreakerState, CircuitBreaker, CircuitBreakerBuilder, CircuitOpen,
    FailureRate, Permit, Transition, TransitionReason,
};
pub use rate_limit::{MemoryRateLimiter, RateDecision, RateLimitError, RateLimiter};
pub use retry::{Backoff, Retry, RetryError, RetryNotice};

/// The Redis client (`redis` 1.x) behind the Redis rate limiter: build its connection
/// with this one.
#[cfg(feature = "redis")]
pub use redis;
/// `tower` 0.5, whose `Layer` and `Service` the [`layer`] module implements.
#[cfg(feature = "tower")]
pub use tower;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
