//! Idempotency of requests (e.g. an `Idempotency-Key` header) and a small TTL cache:
//! the [`IdempotencyStore`] and [`Cache`] traits with in-memory backends here and Redis
//! backends behind the `redis` feature (`idempotency:{key}` for 24 h, `order:{id}` for
//! 10 min in ordersys).
//!
//! The idempotency store is the *fast path*; the guarantee against doing a thing twice
//! belongs in the database (a unique constraint written in the same transaction).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::time::Instant;

use crate::Result;

/// State of an idempotency key after [`IdempotencyStore::reserve`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reservation {
    /// The key was free and is now reserved by this caller: do the work, then
    /// [`complete`](IdempotencyStore::complete) (or [`release`](IdempotencyStore::release)
    /// on failure).
    Reserved,
    /// Someone reserved it and has not finished: answer "in progress" / retry later.
    InProgress,
    /// Done before; here is the stored result to return again.
    Completed(Bytes),
}

/// `SET key pending NX` semantics with a retrievable result.
///
/// ```
/// use std::time::Duration;
/// use outbox::idempotency::{IdempotencyStore, MemoryIdempotencyStore, Reservation};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> outbox::Result<()> {
/// let store = MemoryIdempotencyStore::new();
/// let day = Duration::from_secs(86_400);
/// assert_eq!(store.reserve("create-order:abc", day).await?, Reservation::Reserved);
/// assert_eq!(store.reserve("create-order:abc", day).await?, Reservation::InProgress);
/// store.complete("create-order:abc", b"order-17", day).await?;
/// assert_eq!(store.reserve("create-order:abc", day).await?, Reservation::Completed("order-17".into()));
/// # Ok(())
/// # }
/// ```
#[async_trait]
pub trait IdempotencyStore: Send + Sync {
    /// Reserve `key` for `ttl` unless it is reserved or completed already.
    async fn reserve(&self, key: &str, ttl: Duration) -> Result<Reservation>;
    /// Store the result for `key` (kept for `ttl`).
    async fn complete(&self, key: &str, result: &[u8], ttl: Duration) -> Result<()>;
    /// Drop a reservation whose work failed, so a retry may run.
    async fn release(&self, key: &str) -> Result<()>;
    /// The result stored for `key` if it was [completed](Self::complete) and has not
    /// expired — a read that reserves nothing, and `None` for a free or a reserved key.
    ///
    /// For callers whose database already guards against doing the work twice (a
    /// unique key written in the same transaction as the work): they need no
    /// reservation to hold a second caller off, only the earlier answer to give again —
    /// one read where a reservation costs a write, and a release on failure.
    ///
    /// The default asks [`reserve`](Self::reserve) and releases what it reserved; the
    /// stores of this crate answer with a plain read.
    ///
    /// ```
    /// use std::time::Duration;
    /// use outbox::idempotency::{IdempotencyStore, MemoryIdempotencyStore};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> outbox::Result<()> {
    /// let store = MemoryIdempotencyStore::new();
    /// assert_eq!(store.completed("debit:o-17").await?, None);
    /// store.complete("debit:o-17", b"paid", Duration::from_secs(60)).await?;
    /// assert_eq!(store.completed("debit:o-17").await?, Some("paid".into()));
    /// # Ok(())
    /// # }
    /// ```
    async fn completed(&self, key: &str) -> Result<Option<Bytes>> {
        Ok(match self.reserve(key, Duration::from_secs(60)).await? {
            Reservation::Completed(result) => Some(result),
            Reservation::Reserved => {
                self.release(key).await?;
                None
            }
            Reservation::InProgress => None,
        })
    }
    /// Delete expired keys; returns how many. Stores whose keys expire by themselves
    /// (Redis) have nothing to do and return 0; table-backed stores must be purged
    /// periodically or they grow forever.
    async fn purge_expired(&self) -> Result<u64>;
}

/// A key/value cache with per-entry TTL.
#[async_trait]
pub trait Cache: Send + Sync {
    /// The cached value, if present and not expired.
    async fn get(&self, key: &str) -> Result<Option<Bytes>>;
    /// Cache `value` for `ttl`.
    async fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<()>;
    /// Cache `value` for `ttl` only if the key holds nothing; returns whether it was set.
    /// Readers filling the cache use this, so a writer's invalidation marker (written
    /// with [`set`](Self::set)) cannot be overwritten by a value read before the write.
    async fn set_if_absent(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool>;
    /// Invalidate.
    async fn delete(&self, key: &str) -> Result<()>;
}

#[derive(Debug, Clone)]
enum Slot {
    Pending,
    Done(Bytes),
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// In-memory [`IdempotencyStore`] (tests, embedded mode). Uses tokio's clock.
#[derive(Debug, Default)]
pub struct MemoryIdempotencyStore {
    slots: Mutex<HashMap<String, (Slot, Instant)>>,
}

impl MemoryIdempotencyStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl IdempotencyStore for MemoryIdempotencyStore {
    async fn reserve(&self, key: &str, ttl: Duration) -> Result<Reservation> {
        let now = Instant::now();
        let mut slots = lock(&self.slots);
        match slots.get(key) {
            Some((slot, until)) if *until > now => Ok(match slot {
                Slot::Pending => Reservation::InProgress,
                Slot::Done(b) => Reservation::Completed(b.clone()),
            }),
            _ => {
                slots.insert(key.to_owned(), (Slot::Pending, now + ttl));
                Ok(Reservation::Reserved)
            }
        }
    }

    async fn completed(&self, key: &str) -> Result<Option<Bytes>> {
        Ok(match lock(&self.slots).get(key) {
            Some((Slot::Done(result), until)) if *until > Instant::now() => Some(result.clone()),
            _ => None,
        })
    }

    async fn complete(&self, key: &str, result: &[u8], ttl: Duration) -> Result<()> {
        lock(&self.slots).insert(
            key.to_owned(),
            (
                Slot::Done(Bytes::copy_from_slice(result)),
                Instant::now() + ttl,
            ),
        );
        Ok(())
    }

    async fn release(&self, key: &str) -> Result<()> {
        let mut slots = lock(&self.slots);
        if matches!(slots.get(key), Some((Slot::Pending, _))) {
            slots.remove(key);
        }
        Ok(())
    }

    async fn purge_expired(&self) -> Result<u64> {
        let now = Instant::now();
        let mut slots = lock(&self.slots);
        let before = slots.len();
        slots.retain(|_, (_, until)| *until > now);
        Ok((before - slots.len()) as u64)
    }
}

/// In-memory [`Cache`] (tests, embedded mode). Uses tokio's clock.
#[derive(Debug, Default)]
pub struct MemoryCache {
    entries: Mutex<HashMap<String, (Bytes, Instant)>>,
}

impl MemoryCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl Cache for MemoryCache {
    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        let now = Instant::now();
        let mut entries = lock(&self.entries);
        match entries.get(key) {
            Some((v, until)) if *until > now => Ok(Some(v.clone())),
            Some(_) => {
                entries.remove(key);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    async fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<()> {
        let now = Instant::now();
        let mut entries = lock(&self.entries);
        if entries.len() > 100_000 {
            entries.retain(|_, (_, until)| *until > now);
        }
        entries.insert(key.to_owned(), (Bytes::copy_from_slice(value), now + ttl));
        Ok(())
    }

    async fn set_if_absent(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool> {
        let now = Instant::now();
        let mut entries = lock(&self.entries);
        if entries.get(key).is_some_and(|(_, until)| *until > now) {
            return Ok(false);
        }
        entries.insert(key.to_owned(), (Bytes::copy_from_slice(value), now + ttl));
        Ok(true)
    }

    async fn delete(&self, key: &str) -> Result<()> {
        lock(&self.entries).remove(key);
        Ok(())
    }
}

#[cfg(feature = "redis")]
pub use self::redis_backend::{RedisCache, RedisIdempotencyStore};

#[cfg(feature = "redis")]
mod redis_backend {
    use super::*;
    use crate::Error;
    use redis::aio::ConnectionManager;

    const PENDING: &[u8] = b"p";
    const DONE: u8 = b'd';

    /// `SET key pending NX PX ttl`; if taken, return what is there — one round trip.
    const RESERVE: &str = r#"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {1, ''}
end
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {1, ''}
end
return {0, v}
"#;

    /// Delete only a pending reservation, never a completed result.
    const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

    fn ms(d: Duration) -> u64 {
        (d.as_millis() as u64).max(1)
    }

    /// Redis [`IdempotencyStore`]: keys `idempotency:{key}`.
    #[derive(Clone)]
    pub struct RedisIdempotencyStore {
        conn: ConnectionManager,
        prefix: String,
        reserve: redis::Script,
        release: redis::Script,
    }

    impl std::fmt::Debug for RedisIdempotencyStore {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("RedisIdempotencyStore")
                .field("prefix", &self.prefix)
                .finish_non_exhaustive()
        }
    }

    impl RedisIdempotencyStore {
        /// Keys `idempotency:{key}`.
        pub fn new(conn: ConnectionManager) -> Self {
            Self {
                conn,
                prefix: "idempotency:".into(),
                reserve: redis::Script::new(RESERVE),
                release: redis::Script::new(RELEASE),
            }
        }

        /// Use another key prefix.
        pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
            self.prefix = prefix.into();
            self
        }
    }

    #[async_trait]
    impl IdempotencyStore for RedisIdempotencyStore {
        async fn reserve(&self, key: &str, ttl: Duration) -> Result<Reservation> {
            let mut conn = self.conn.clone();
            let (fresh, value): (i64, Vec<u8>) = self
                .reserve
                .key(format!("{}{key}", self.prefix))
                .arg(PENDING)
                .arg(ms(ttl))
                .invoke_async(&mut conn)
                .await
                .map_err(Error::storage)?;
            Ok(match (fresh, value.first()) {
                (1, _) => Reservation::Reserved,
                (_, Some(&DONE)) => Reservation::Completed(Bytes::copy_from_slice(&value[1..])),
                _ => Reservation::InProgress,
            })
        }

        async fn completed(&self, key: &str) -> Result<Option<Bytes>> {
            let mut conn = self.conn.clone();
            let value: Option<Vec<u8>> = redis::cmd("GET")
                .arg(format!("{}{key}", self.prefix))
                .query_async(&mut conn)
                .await
                .map_err(Error::storage)?;
            Ok(match value {
                Some(v) if v.first() == Some(&DONE) => Some(Bytes::copy_from_slice(&v[1..])),
                _ => None,
            })
        }

        async fn complete(&self, key: &str, result: &[u8], ttl: Duration) -> Result<()> {
            let mut value = Vec::with_capacity(result.len() + 1);
            value.push(DONE);
            value.extend_from_slice(result);
            let mut conn = self.conn.clone();
            redis::cmd("SET")
                .arg(format!("{}{key}", self.prefix))
                .arg(value)
                .arg("PX")
                .arg(ms(ttl))
                .query_async::<()>(&mut conn)
                .await
                .map_err(Error::storage)
        }

        async fn release(&self, key: &str) -> Result<()> {
            let mut conn = self.conn.clone();
            self.release
                .key(format!("{}{key}", self.prefix))
                .arg(PENDING)
                .invoke_async::<i64>(&mut conn)
                .await
                .map(drop)
                .map_err(Error::storage)
        }

        /// Nothing to do: every key is written with a TTL and Redis expires it.
        async fn purge_expired(&self) -> Result<u64> {
            Ok(0)
        }
    }

    /// Redis [`Cache`] with a key prefix (e.g. `order:` for `order:{id}`).
    #[derive(Clone)]
    pub struct RedisCache {
        conn: ConnectionManager,
        prefix: String,
    }

    impl std::fmt::Debug for RedisCache {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("RedisCache")
                .field("prefix", &self.prefix)
                .finish_non_exhaustive()
        }
    }

    impl RedisCache {
        /// A cache whose keys are `{prefix}{key}`.
        pub fn new(conn: ConnectionManager, prefix: impl Into<String>) -> Self {
            Self {
                conn,
                prefix: prefix.into(),
            }
        }
    }

    #[async_trait]
    impl Cache for RedisCache {
        async fn get(&self, key: &str) -> Result<Option<Bytes>> {
            let mut conn = self.conn.clone();
            let v: Option<Vec<u8>> = redis::cmd("GET")
                .arg(format!("{}{key}", self.prefix))
                .query_async(&mut conn)
                .await
                .map_err(Error::storage)?;
            Ok(v.map(Bytes::from))
        }

        async fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<()> {
            let mut conn = self.conn.clone();
            redis::cmd("SET")
                .arg(format!("{}{key}", self.prefix))
                .arg(value)
                .arg("PX")
                .arg(ms(ttl))
                .query_async::<()>(&mut conn)
                .await
                .map_err(Error::storage)
        }

        async fn set_if_absent(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool> {
            let mut conn = self.conn.clone();
            let r: Option<String> = redis::cmd("SET")
                .arg(format!("{}{key}", self.prefix))
                .arg(value)
                .arg("NX")
                .arg("PX")
                .arg(ms(ttl))
                .query_async(&mut conn)
                .await
                .map_err(Error::storage)?;
            Ok(r.is_some())
        }

        async fn delete(&self, key: &str) -> Result<()> {
            let mut conn = self.conn.clone();
            redis::cmd("DEL")
                .arg(format!("{}{key}", self.prefix))
                .query_async::<i64>(&mut conn)
                .await
                .map(drop)
                .map_err(Error::storage)
        }
    }
}

#[cfg(test)]
mod memory_tests {
    use super::*;

    /// A reservation lives exactly its TTL: in progress up to the last instant, free
    /// again at the instant it ends; the purge counts and drops exactly the ended ones.
    #[tokio::test(start_paused = true)]
    async fn a_reservation_lives_exactly_its_ttl_and_the_purge_counts() {
        let store = MemoryIdempotencyStore::new();
        let ttl = Duration::from_secs(10);
        assert!(matches!(
            store.reserve("k", ttl).await.unwrap(),
            Reservation::Reserved
        ));
        store.reserve("other", ttl * 2).await.unwrap();
        tokio::time::advance(ttl - Duration::from_millis(1)).await;
        assert!(matches!(
            store.reserve("k", ttl).await.unwrap(),
            Reservation::InProgress
        ));
        assert_eq!(store.purge_expired().await.unwrap(), 0);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(store.purge_expired().await.unwrap(), 1, "\"k\" ended now");
        assert_eq!(store.purge_expired().await.unwrap(), 0);
        assert!(matches!(
            store.reserve("k", ttl).await.unwrap(),
            Reservation::Reserved
        ));
        assert!(matches!(
            store.reserve("other", ttl).await.unwrap(),
            Reservation::InProgress
        ));
    }

    /// A completed result is read back exactly for its TTL: up to the last instant, not
    /// at the instant it ends (when `reserve` finds the key free again too).
    #[tokio::test(start_paused = true)]
    async fn a_completed_result_is_read_exactly_for_its_ttl() {
        let store = MemoryIdempotencyStore::new();
        let ttl = Duration::from_secs(10);
        store.complete("k", b"done", ttl).await.unwrap();
        tokio::time::advance(ttl - Duration::from_millis(1)).await;
        assert_eq!(store.completed("k").await.unwrap(), Some("done".into()));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(store.completed("k").await.unwrap(), None);
        assert_eq!(
            store.reserve("k", ttl).await.unwrap(),
            Reservation::Reserved
        );
    }

    /// A cached value lives exactly its TTL, for `get` and for `set_if_absent`.
    #[tokio::test(start_paused = true)]
    async fn a_cached_value_lives_exactly_its_ttl() {
        let cache = MemoryCache::new();
        let ttl = Duration::from_secs(10);
        cache.set("a", b"1", ttl).await.unwrap();
        cache.set("b", b"2", ttl).await.unwrap();
        tokio::time::advance(ttl - Duration::from_millis(1)).await;
        assert_eq!(cache.get("a").await.unwrap().as_deref(), Some(&b"1"[..]));
        assert!(!cache.set_if_absent("b", b"3", ttl).await.unwrap());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(cache.get("a").await.unwrap(), None);
        assert!(cache.set_if_absent("b", b"3", ttl).await.unwrap());
        assert_eq!(cache.get("b").await.unwrap().as_deref(), Some(&b"3"[..]));
        cache.delete("b").await.unwrap();
        assert_eq!(cache.get("b").await.unwrap(), None);
    }

    /// Past 100,000 entries a `set` sweeps out the ended ones (one ending this instant
    /// included), and only those.
    #[tokio::test(start_paused = true)]
    async fn a_full_cache_sweeps_ended_entries_on_set() {
        let cache = MemoryCache::new();
        let ttl = Duration::from_secs(10);
        for i in 0..100_000 {
            cache.set(&format!("old{i}"), b"", ttl).await.unwrap();
        }
        // Every one of them ends now.
        tokio::time::advance(ttl).await;
        cache.set("live", b"", ttl).await.unwrap();
        let len = |c: &MemoryCache| lock(&c.entries).len();
        assert_eq!(len(&cache), 100_001, "no sweep at 100,000");
        cache.set("new", b"", ttl).await.unwrap();
        let mut left: Vec<_> = lock(&cache.entries).keys().cloned().collect();
        left.sort();
        assert_eq!(left, ["live", "new"]);
    }

    /// The same for a reservation ended by its TTL without a purge.
    #[tokio::test(start_paused = true)]
    async fn an_ended_reservation_can_be_taken_again() {
        let store = MemoryIdempotencyStore::new();
        let ttl = Duration::from_secs(10);
        store.reserve("k", ttl).await.unwrap();
        store.complete("k", b"done", ttl).await.unwrap();
        tokio::time::advance(ttl - Duration::from_millis(1)).await;
        assert!(matches!(
            store.reserve("k", ttl).await.unwrap(),
            Reservation::Completed(b) if &b[..] == b"done"
        ));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(matches!(
            store.reserve("k", ttl).await.unwrap(),
            Reservation::Reserved
        ));
    }
}
