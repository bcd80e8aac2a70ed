//! Fixed-window rate limiting per client: the [`RateLimiter`] trait, an in-memory
//! backend, and (feature `redis`) a Redis backend keyed `rate:{client}` that decides in
//! one round trip.

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
        let entry = c
            .map
            .entry(client.to_owned())
            .or_insert((0, now + self.window));
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
pub use self::redis_backend::RedisRateLimiter;

#[cfg(feature = "redis")]
mod redis_backend {
    use super::*;
    use redis::aio::ConnectionManager;

    /// INCR the window counter, start its expiry on the first hit (or if it somehow has
    /// none), and return the count and the time left — one round trip.
    const SCRIPT: &str = r#"
local c = redis.call('INCR', KEYS[1])
local ttl = redis.call('PTTL', KEYS[1])
if c == 1 or ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {c, ttl}
"#;

    /// Redis fixed-window limiter: key `{prefix}{client}` (default prefix `rate:`), TTL =
    /// the window. Every gateway instance shares the count.
    #[derive(Clone)]
    pub struct RedisRateLimiter {
        conn: ConnectionManager,
        limit: u32,
        window: Duration,
        prefix: String,
        script: redis::Script,
    }

    impl std::fmt::Debug for RedisRateLimiter {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("RedisRateLimiter")
                .field("limit", &self.limit)
                .field("window", &self.window)
                .field("prefix", &self.prefix)
                .finish_non_exhaustive()
        }
    }

    impl RedisRateLimiter {
        /// `limit` requests per `window` per client, keys `rate:{client}`.
        pub fn new(conn: ConnectionManager, limit: u32, window: Duration) -> Self {
            metrics::counter!("resilience_rate_limit_rejections_total", "limiter" => "redis")
                .increment(0);
            Self {
                conn,
                limit,
                window,
                prefix: "rate:".into(),
                script: redis::Script::new(SCRIPT),
            }
        }

        /// Use another key prefix (tests, several limiters on one Redis).
        pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
            self.prefix = prefix.into();
            self
        }
    }

    #[async_trait]
    impl RateLimiter for RedisRateLimiter {
        async fn check(&self, client: &str) -> Result<RateDecision, RateLimitError> {
            let mut conn = self.conn.clone();
            let (count, ttl_ms): (i64, i64) = self
                .script
                .key(format!("{}{client}", self.prefix))
                .arg(self.window.as_millis() as u64)
                .invoke_async(&mut conn)
                .await
                .map_err(|e| RateLimitError(Box::new(e)))?;
            let count = u32::try_from(count).unwrap_or(u32::MAX);
            Ok(decide(
                self.limit,
                count,
                Duration::from_millis(ttl_ms.max(0) as u64),
                "redis",
            ))
        }
    }
}

/// Conformance suite for [`RateLimiter`] backends (feature `conformance`).
#[cfg(feature = "conformance")]
pub mod conformance {
    use super::*;

    /// `limiter` must allow `limit` requests per `window` per client (the suite uses
    /// `limit = 3` and a short window, e.g. 500 ms), then refuse with a reset time within
    /// the window, keep clients apart, and open a new window after it ends.
    pub async fn rate_limiter_all<L: RateLimiter>(limiter: &L, limit: u32, window: Duration) {
        let a = format!("client-a-{}", uuid_like());
        let b = format!("client-b-{}", uuid_like());
        for i in 1..=limit {
            let d = limiter.check(&a).await.unwrap();
            assert!(d.allowed, "request {i} refused");
            assert_eq!(d.remaining, limit - i);
            assert_eq!(d.limit, limit);
        }
        let refused = limiter.check(&a).await.unwrap();
        assert!(!refused.allowed);
        assert_eq!(refused.remaining, 0);
        assert!(refused.reset_after <= window && refused.reset_after > Duration::ZERO);
        assert!(
            limiter.check(&b).await.unwrap().allowed,
            "clients must not share a window"
        );
        tokio::time::sleep(window + Duration::from_millis(100)).await;
        let fresh = limiter.check(&a).await.unwrap();
        assert!(
            fresh.allowed,
            "a new window must start after the old one ends"
        );
        assert_eq!(fresh.remaining, limit - 1);
    }

    fn uuid_like() -> String {
        use rand::Rng;
        format!("{:016x}", rand::rng().random::<u64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn many_live_clients_are_swept_rarely_not_on_every_call() {
        let limiter = MemoryRateLimiter::new(10, Duration::from_secs(60));
        for i in 0..=SWEEP_FROM {
            limiter.check(&format!("c{i}")).await.unwrap();
        }
        // Past the threshold with every window live: one sweep, which keeps them all…
        limiter.check("one-more").await.unwrap();
        let sweeps = |l: &MemoryRateLimiter| l.counters.lock().unwrap().sweeps;
        assert_eq!(sweeps(&limiter), 1);
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
}
