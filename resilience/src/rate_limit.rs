//! Fixed-window rate limiting per client: the [`RateLimiter`] trait, an in-memory
//! backend, and (feature `redis`) two Redis backends keyed `rate:{client}`: one that
//! decides in one round trip per request, one that decides in process and settles the
//! shared counts in batches.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

/// A boxed backend error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The limiter's verdict for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateDecision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// Requests allowed per window.
    pub limit: u32,
    /// Requests left in the current window after this one.
    pub remaining: u32,
    /// Time until the window resets (the `Retry-After` of a refused request).
    pub reset_after: Duration,
}

impl RateDecision {
    /// `Retry-After` in whole seconds (at least 1) for a refused request.
    pub fn retry_after_secs(&self) -> u64 {
        let ms = self.reset_after.as_millis() as u64;
        ms.div_ceil(1000).max(1)
    }
}

/// The limiter backend could not decide (e.g. Redis is down).
#[derive(Debug, thiserror::Error)]
#[error("rate limiter unavailable: {0}")]
pub struct RateLimitError(#[source] pub BoxError);

/// Counts requests per client in fixed windows.
#[async_trait]
pub trait RateLimiter: Send + Sync {
    /// Count one request of `client` and decide.
    async fn check(&self, client: &str) -> Result<RateDecision, RateLimitError>;
}

/// In-process fixed-window limiter (tests, embedded mode). Uses tokio's clock.
///
/// ```
/// use std::time::Duration;
/// use resilience::{MemoryRateLimiter, RateLimiter};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let limiter = MemoryRateLimiter::new(2, Duration::from_secs(60));
/// assert!(limiter.check("10.0.0.1").await.unwrap().allowed);
/// assert!(limiter.check("10.0.0.1").await.unwrap().allowed);
/// let third = limiter.check("10.0.0.1").await.unwrap();
/// assert!(!third.allowed);
/// assert!(third.retry_after_secs() <= 60);
/// # }
/// ```
#[derive(Debug)]
pub struct MemoryRateLimiter {
    limit: u32,
    window: Duration,
    counters: Mutex<Counters>,
}

/// Windows per client, and when to sweep the expired ones next.
#[derive(Debug)]
struct Counters {
    map: HashMap<String, (u32, Instant)>,
    /// Sweep when the map grows past this: at least [`SWEEP_FROM`], and twice what the
    /// last sweep left — so a map full of live windows is not scanned on every call
    /// (amortised O(1) per call instead of O(clients)).
    sweep_at: usize,
    #[cfg(test)]
    sweeps: usize,
}

/// Entries kept before expired windows are swept out.
const SWEEP_FROM: usize = 100_000;

impl MemoryRateLimiter {
    /// `limit` requests per `window` per client.
    pub fn new(limit: u32, window: Duration) -> Self {
        metrics::counter!("resilience_rate_limit_rejections_total", "limiter" => "memory")
            .increment(0);
        Self {
            limit,
            window,
            counters: Mutex::new(Counters {
                map: HashMap::new(),
                sweep_at: SWEEP_FROM,
                #[cfg(test)]
                sweeps: 0,
            }),
        }
    }
}

#[async_trait]
impl RateLimiter for MemoryRateLimiter {
    async fn check(&self, client: &str) -> Result<RateDecision, RateLimitError> {
        let now = Instant::now();
        let mut c = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        if c.map.len() > c.sweep_at {
            c.map.retain(|_, (_, end)| *end > now);
            c.sweep_at = SWEEP_FROM.max(2 * c.map.len());
            #[cfg(test)]
            {
                c.sweeps += 1;
            }
        }
        // A client not seen yet gets an ended window, which starts a new one below.
        let entry = c.map.entry(client.to_owned()).or_insert((0, now));
        if entry.1 <= now {
            *entry = (0, now + self.window);
        }
        entry.0 = entry.0.saturating_add(1);
        Ok(decide(self.limit, entry.0, entry.1 - now, "memory"))
    }
}

fn decide(limit: u32, count: u32, reset_after: Duration, limiter: &'static str) -> RateDecision {
    if count > limit {
        metrics::counter!("resilience_rate_limit_rejections_total", "limiter" => limiter)
            .increment(1);
    }
    RateDecision {
        allowed: count <= limit,
        limit,
        remaining: limit.saturating_sub(count),
        reset_after,
    }
}

#[cfg(feature = "redis")]
pub use self::redis_backend::{BatchedRedisRateLimiter, RedisRateLimiter};

#[cfg(feature = "redis")]
mod redis_backend;

/// Conformance suite for [`RateLimiter`] backends (feature `conformance`).
#[cfg(feature = "conformance")]
pub mod conformance;

#[cfg(test)]
mod tests {
    use super::*;

    /// Each refusal is counted in `resilience_rate_limit_rejections_total`.
    #[test]
    fn refusals_are_counted() {
        let recorder = ordersys_testkit::MetricsRecorder::default();
        let rejected = || {
            recorder.counter(
                "resilience_rate_limit_rejections_total",
                &[("limiter", "memory")],
            )
        };
        metrics::with_local_recorder(&recorder, || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap();
            rt.block_on(async {
                let l = MemoryRateLimiter::new(2, Duration::from_secs(60));
                assert_eq!(rejected(), Some(0), "the series exists from the start");
                l.check("a").await.unwrap();
                l.check("a").await.unwrap();
                assert_eq!(rejected(), Some(0), "the limit itself is allowed");
                l.check("a").await.unwrap();
                l.check("a").await.unwrap();
                assert_eq!(rejected(), Some(2));
            });
        });
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds_and_is_at_least_one() {
        let after = |ms| RateDecision {
            allowed: false,
            limit: 1,
            remaining: 0,
            reset_after: Duration::from_millis(ms),
        };
        assert_eq!(after(1500).retry_after_secs(), 2);
        assert_eq!(after(60_000).retry_after_secs(), 60);
        assert_eq!(after(0).retry_after_secs(), 1);
        assert_eq!(after(1).retry_after_secs(), 1);
    }

    #[tokio::test]
    async fn many_live_clients_are_swept_rarely_not_on_every_call() {
        let limiter = MemoryRateLimiter::new(10, Duration::from_secs(60));
        let sweeps = |l: &MemoryRateLimiter| l.counters.lock().unwrap().sweeps;
        for i in 0..=SWEEP_FROM {
            limiter.check(&format!("c{i}")).await.unwrap();
        }
        assert_eq!(
            sweeps(&limiter),
            0,
            "not before the map is past the threshold"
        );
        // Past the threshold with every window live: one sweep, which keeps them all…
        limiter.check("one-more").await.unwrap();
        assert_eq!(sweeps(&limiter), 1);
        assert_eq!(limiter.counters.lock().unwrap().map.len(), SWEEP_FROM + 2);
        // …and the next calls do not scan again until the map has doubled.
        for i in 0..1000 {
            limiter.check(&format!("d{i}")).await.unwrap();
        }
        assert_eq!(sweeps(&limiter), 1);
        // The limits still hold.
        for _ in 0..9 {
            assert!(limiter.check("c0").await.unwrap().allowed);
        }
        assert!(!limiter.check("c0").await.unwrap().allowed);
    }

    /// A sweep drops exactly the windows that have ended (one ending this instant
    /// included) and keeps the rest.
    #[tokio::test(start_paused = true)]
    async fn a_sweep_drops_the_ended_windows_only() {
        let window = Duration::from_secs(60);
        let limiter = MemoryRateLimiter::new(10, window);
        for i in 0..SWEEP_FROM {
            limiter.check(&format!("old{i}")).await.unwrap();
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        limiter.check("live").await.unwrap();
        // Exactly one window after the old ones began: they end now; "live" does not.
        tokio::time::advance(window - Duration::from_secs(1)).await;
        limiter.check("trigger").await.unwrap();
        let c = limiter.counters.lock().unwrap();
        assert_eq!(c.sweeps, 1);
        let mut left: Vec<_> = c.map.keys().cloned().collect();
        left.sort();
        assert_eq!(left, ["live", "trigger"]);
        assert_eq!(c.map["live"].0, 1, "a live window keeps its count");
        assert_eq!(
            c.sweep_at, SWEEP_FROM,
            "the threshold never drops below its floor"
        );
    }
}
