//! The Redis backends (feature `redis`): [`RedisRateLimiter`] and
//! [`BatchedRedisRateLimiter`].

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
