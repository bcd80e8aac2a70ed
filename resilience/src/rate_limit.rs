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
mod redis_backend {
    use super::*;
    use redis::aio::ConnectionManager;
    use std::sync::Arc;

    /// INCRBY the window counter (`ARGV[2]`: 1 per request for [`RedisRateLimiter`],
    /// what an instance admitted since its last settlement for
    /// [`BatchedRedisRateLimiter`]), start its expiry on the first hit (or if it somehow
    /// has none), and return the count and the time left — one round trip.
    const SCRIPT: &str = r#"
local c = redis.call('INCRBY', KEYS[1], ARGV[2])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
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

    /// A Redis fixed-window limiter that decides in process and settles with Redis in
    /// batches: each instance counts what it admits and, every `settle` interval, adds
    /// it to the shared counter (`INCRBY`, the keys of [`RedisRateLimiter`]) and learns
    /// what every instance admitted. A decision is `shared count at the last settlement +
    /// admitted here since` against the limit — no round trip per request.
    ///
    /// **Precision.** One instance counts exactly. With several, a client spreading its
    /// requests over them can exceed the limit by what the other instances admitted
    /// since their last settlement: at most `instances × rate × settle` (settling every
    /// 10 ms, 10 ms of their traffic). While Redis is unreachable each instance
    /// limits on its own count, and what it admitted is added when Redis is back.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use resilience::rate_limit::BatchedRedisRateLimiter;
    /// use resilience::RateLimiter;
    /// let conn = redis::Client::open("redis://127.0.0.1:6379/")?
    ///     .get_connection_manager()
    ///     .await?;
    /// let limiter = BatchedRedisRateLimiter::new(conn, 100, Duration::from_secs(60))
    ///     .start(Duration::from_millis(10));
    /// assert!(limiter.check("10.0.0.1").await?.allowed);
    /// # Ok(()) }
    /// ```
    #[derive(Clone)]
    pub struct BatchedRedisRateLimiter {
        shared: Arc<Batched>,
        _task: Option<Arc<AbortOnDrop>>,
    }

    struct Batched {
        conn: ConnectionManager,
        limit: u32,
        window: Duration,
        prefix: String,
        slots: Mutex<HashMap<String, Slot>>,
    }

    /// One client's window as this instance sees it.
    struct Slot {
        /// The shared count at the last settlement (every instance's admissions).
        shared: u32,
        /// Admitted here since, not yet sent.
        pending: u32,
        /// Sent in the settlement under way.
        sending: u32,
        /// When the window ends (Redis's TTL at the last settlement).
        resets_at: Instant,
    }

    struct AbortOnDrop(tokio::task::AbortHandle);

    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }

    impl std::fmt::Debug for BatchedRedisRateLimiter {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("BatchedRedisRateLimiter")
                .field("limit", &self.shared.limit)
                .field("window", &self.shared.window)
                .field("prefix", &self.shared.prefix)
                .finish_non_exhaustive()
        }
    }

    impl BatchedRedisRateLimiter {
        /// `limit` requests per `window` per client, keys `rate:{client}`. Call
        /// [`start`](Self::start) to settle in the background (inside a Tokio runtime),
        /// or [`settle`](Self::settle) yourself.
        pub fn new(conn: ConnectionManager, limit: u32, window: Duration) -> Self {
            metrics::counter!("resilience_rate_limit_rejections_total", "limiter" => "redis")
                .increment(0);
            Self {
                shared: Arc::new(Batched {
                    conn,
                    limit,
                    window,
                    prefix: "rate:".into(),
                    slots: Mutex::new(HashMap::new()),
                }),
                _task: None,
            }
        }

        /// Use another key prefix (tests, several limiters on one Redis). Before
        /// [`start`](Self::start).
        pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
            if let Some(shared) = Arc::get_mut(&mut self.shared) {
                shared.prefix = prefix.into();
            }
            self
        }

        /// Settle every `every` in a background task, until the last clone is dropped.
        pub fn start(mut self, every: Duration) -> Self {
            // The task ends when the last clone drops its `AbortOnDrop` (and with it
            // the task's own reference to the counts).
            let shared = self.shared.clone();
            let every = every.max(Duration::from_millis(1));
            let task = tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    // A failed settlement keeps its counts for the next one.
                    let _ = shared.settle().await;
                }
            });
            self._task = Some(Arc::new(AbortOnDrop(task.abort_handle())));
            self
        }

        /// Send what was admitted here since the last settlement and learn the shared
        /// counts (one pipelined round trip for every client with news).
        pub async fn settle(&self) -> Result<(), RateLimitError> {
            self.shared.settle().await
        }
    }

    fn lock(m: &Mutex<HashMap<String, Slot>>) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    impl Batched {
        async fn settle(&self) -> Result<(), RateLimitError> {
            let now = Instant::now();
            let batch: Vec<(String, u32)> = {
                let mut slots = lock(&self.slots);
                slots.retain(|_, s| s.resets_at > now || s.pending > 0 || s.sending > 0);
                slots
                    .iter_mut()
                    .filter(|(_, s)| s.pending > 0 && s.sending == 0)
                    .map(|(k, s)| {
                        s.sending = s.pending;
                        s.pending = 0;
                        (k.clone(), s.sending)
                    })
                    .collect()
            };
            if batch.is_empty() {
                return Ok(());
            }
            // `EVAL` (Redis keeps the compiled script by its hash): a pipeline cannot
            // fall back from `EVALSHA` on `NOSCRIPT`.
            let mut pipe = redis::pipe();
            for (client, n) in &batch {
                pipe.cmd("EVAL")
                    .arg(SCRIPT)
                    .arg(1)
                    .arg(format!("{}{client}", self.prefix))
                    .arg(self.window.as_millis() as u64)
                    .arg(*n);
            }
            let mut conn = self.conn.clone();
            let result: redis::RedisResult<Vec<(i64, i64)>> = pipe.query_async(&mut conn).await;
            let now = Instant::now();
            let mut slots = lock(&self.slots);
            match result {
                Ok(replies) => {
                    for ((client, _), (count, ttl_ms)) in batch.iter().zip(replies) {
                        if let Some(s) = slots.get_mut(client) {
                            s.shared = u32::try_from(count).unwrap_or(u32::MAX);
                            s.sending = 0;
                            s.resets_at = now + Duration::from_millis(ttl_ms.max(0) as u64);
                        }
                    }
                    Ok(())
                }
                Err(e) => {
                    // Kept for the next settlement: nothing admitted is forgotten.
                    for (client, n) in &batch {
                        if let Some(s) = slots.get_mut(client) {
                            s.pending = s.pending.saturating_add(*n);
                            s.sending = 0;
                        }
                    }
                    Err(RateLimitError(Box::new(e)))
                }
            }
        }
    }

    #[async_trait]
    impl RateLimiter for BatchedRedisRateLimiter {
        async fn check(&self, client: &str) -> Result<RateDecision, RateLimitError> {
            let b = &self.shared;
            let now = Instant::now();
            let mut slots = lock(&b.slots);
            // The key is allocated only for a client not seen in this window; its slot
            // starts as an ended window, which starts a new one below.
            if !slots.contains_key(client) {
                slots.insert(
                    client.to_owned(),
                    Slot {
                        shared: 0,
                        pending: 0,
                        sending: 0,
                        resets_at: now,
                    },
                );
            }
            let Some(slot) = slots.get_mut(client) else {
                unreachable!("inserted above")
            };
            if slot.resets_at <= now {
                // The window ended: a new one (Redis's TTL corrects it at settlement).
                *slot = Slot {
                    shared: 0,
                    pending: 0,
                    sending: 0,
                    resets_at: now + b.window,
                };
            }
            let count = slot
                .shared
                .saturating_add(slot.pending)
                .saturating_add(slot.sending)
                .saturating_add(1);
            if count <= b.limit {
                slot.pending += 1;
            }
            Ok(decide(b.limit, count, slot.resets_at - now, "redis"))
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
                .arg(1)
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

    #[cfg(test)]
    /// Unit tests against the test Redis (`make test-unit` skips `with_redis`).
    mod with_redis {
        use super::*;

        fn clients(l: &BatchedRedisRateLimiter) -> Vec<String> {
            let mut keys: Vec<_> = lock(&l.shared.slots).keys().cloned().collect();
            keys.sort();
            keys
        }

        fn limiter(conn: ConnectionManager, window: Duration) -> BatchedRedisRateLimiter {
            let prefix = format!("test:{}:rate:", rand::random::<u64>());
            BatchedRedisRateLimiter::new(conn, 10, window).with_prefix(prefix)
        }

        /// A settlement forgets a client whose window has ended with nothing left to
        /// send (memory stays bounded by the clients of one window), and keeps one
        /// whose window is live or whose admissions are not sent yet.
        #[tokio::test]
        async fn settling_forgets_ended_idle_windows_only() {
            let window = Duration::from_millis(300);
            let l = limiter(ordersys_testkit::redis().await, window);
            l.check("idle").await.unwrap();
            l.settle().await.unwrap();
            l.check("unsent").await.unwrap();
            tokio::time::sleep(window + Duration::from_millis(100)).await;
            // Both windows have ended; "unsent" still has an admission to send.
            l.check("quiet").await.unwrap();
            l.settle().await.unwrap();
            assert_eq!(clients(&l), ["quiet", "unsent"]);
            // Nothing new: a live window stays even with nothing to send.
            l.settle().await.unwrap();
            assert_eq!(clients(&l), ["quiet", "unsent"]);
            assert_eq!(
                lock(&l.shared.slots)["unsent"].shared,
                1,
                "sent and counted"
            );
        }

        /// A window ending this very instant has ended: its idle slot goes.
        #[tokio::test]
        async fn a_window_ending_now_has_ended() {
            let l = limiter(ordersys_testkit::redis().await, Duration::from_secs(60));
            l.check("x").await.unwrap();
            l.settle().await.unwrap();
            tokio::time::pause();
            let ends = lock(&l.shared.slots)["x"].resets_at;
            tokio::time::advance(ends - Instant::now() - Duration::from_millis(1)).await;
            l.settle().await.unwrap();
            assert_eq!(clients(&l), ["x"], "a millisecond before its end");
            tokio::time::advance(Duration::from_millis(1)).await;
            assert_eq!(Instant::now(), ends);
            l.settle().await.unwrap();
            assert!(clients(&l).is_empty());
        }

        /// Only clients with news are sent: an instance with nothing new makes no round
        /// trip, so what other instances admitted reaches it with its next news (the
        /// precision the type's docs state).
        #[tokio::test]
        async fn a_settlement_sends_only_news() {
            let conn = ordersys_testkit::redis().await;
            let prefix = format!("test:{}:rate:", rand::random::<u64>());
            let window = Duration::from_secs(60);
            let a = BatchedRedisRateLimiter::new(conn.clone(), 5, window).with_prefix(&prefix);
            let b = BatchedRedisRateLimiter::new(conn, 5, window).with_prefix(&prefix);
            b.check("ip").await.unwrap();
            b.settle().await.unwrap();
            for _ in 0..4 {
                a.check("ip").await.unwrap();
            }
            a.settle().await.unwrap();
            b.settle().await.unwrap();
            assert_eq!(
                lock(&b.shared.slots)["ip"].shared,
                1,
                "nothing sent, nothing learnt"
            );
            let d = b.check("ip").await.unwrap();
            assert!(d.allowed);
            b.settle().await.unwrap();
            assert_eq!(
                lock(&b.shared.slots)["ip"].shared,
                6,
                "news sent, the total learnt"
            );
            assert!(!b.check("ip").await.unwrap().allowed);
        }

        /// A settlement running beside another does not drop the slot the other is
        /// sending, and the other's result lands in it.
        #[tokio::test]
        async fn concurrent_settlements_keep_what_is_being_sent() {
            let window = Duration::from_millis(300);
            let l = limiter(ordersys_testkit::redis().await, window);
            l.check("x").await.unwrap();
            l.check("x").await.unwrap();
            tokio::time::sleep(window + Duration::from_millis(100)).await;
            let (a, b) = tokio::join!(l.settle(), l.settle());
            a.unwrap();
            b.unwrap();
            let slots = lock(&l.shared.slots);
            let x = slots.get("x").expect("the slot being sent was kept");
            assert_eq!((x.shared, x.pending, x.sending), (2, 0, 0));
            assert!(x.resets_at > Instant::now(), "the window Redis started");
        }

        /// The settlement task ends with the last clone of the limiter, even when its
        /// next tick is an hour away, and lets go of the counts.
        #[tokio::test]
        async fn the_settlement_task_stops_with_the_last_clone() {
            let l = limiter(ordersys_testkit::redis().await, Duration::from_secs(60))
                .start(Duration::from_secs(3600));
            let counts = Arc::downgrade(&l.shared);
            let clone = l.clone();
            drop(l);
            tokio::task::yield_now().await;
            assert!(counts.upgrade().is_some(), "a clone is left");
            drop(clone);
            ordersys_testkit::eventually("the task to end", Duration::from_secs(5), || async {
                counts.upgrade().is_none().then_some(())
            })
            .await;
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
        // The new window is limited like the first one.
        for i in 2..=limit {
            let d = limiter.check(&a).await.unwrap();
            assert!(d.allowed, "request {i} of the second window refused");
            assert_eq!(d.remaining, limit - i);
        }
        let refused = limiter.check(&a).await.unwrap();
        assert!(
            !refused.allowed,
            "the second window must refuse past the limit too"
        );
        assert_eq!(refused.remaining, 0);
        assert!(refused.reset_after <= window && refused.reset_after > Duration::ZERO);
    }

    fn uuid_like() -> String {
        use rand::Rng;
        format!("{:016x}", rand::rng().random::<u64>())
    }
}

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
