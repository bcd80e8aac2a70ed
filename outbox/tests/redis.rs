//! Idempotency store and cache backends against the conformance suite: memory, and
//! Redis for real (`REDIS_URL`, default the local server; see scripts/services-up).

use outbox::conformance::{cache_all, idempotency_all};
use std::time::Duration;

use outbox::idempotency::{IdempotencyStore, MemoryCache, MemoryIdempotencyStore, Reservation};

#[tokio::test(start_paused = true)]
async fn memory_idempotency_conformance() {
    idempotency_all(&MemoryIdempotencyStore::new()).await;
}

/// A store with only the required methods: `completed` is the trait's default.
struct RequiredOnly(MemoryIdempotencyStore);

#[async_trait::async_trait]
impl IdempotencyStore for RequiredOnly {
    async fn reserve(&self, key: &str, ttl: Duration) -> outbox::Result<Reservation> {
        self.0.reserve(key, ttl).await
    }
    async fn complete(&self, key: &str, result: &[u8], ttl: Duration) -> outbox::Result<()> {
        self.0.complete(key, result, ttl).await
    }
    async fn release(&self, key: &str) -> outbox::Result<()> {
        self.0.release(key).await
    }
    async fn purge_expired(&self) -> outbox::Result<u64> {
        self.0.purge_expired().await
    }
}

#[tokio::test(start_paused = true)]
async fn the_default_completed_meets_the_contract() {
    idempotency_all(&RequiredOnly(MemoryIdempotencyStore::new())).await;
}

#[tokio::test(start_paused = true)]
async fn memory_cache_conformance() {
    cache_all(&MemoryCache::new()).await;
}

#[cfg(feature = "redis")]
mod redis_backend {
    use std::time::Duration;

    use outbox::idempotency::{
        Cache, IdempotencyStore, RedisCache, RedisIdempotencyStore, Reservation,
    };

    use ordersys_testkit::redis;

    fn prefix(what: &str) -> String {
        format!("test:{}:{what}:", uuid::Uuid::new_v4().simple())
    }

    #[tokio::test]
    async fn redis_idempotency_conformance() {
        super::idempotency_all(
            &RedisIdempotencyStore::new(redis().await).with_prefix(prefix("idempotency")),
        )
        .await;
    }

    /// Redis expires every key itself: a purge has nothing to do and says so.
    #[tokio::test]
    async fn redis_idempotency_purge_has_nothing_to_do() {
        let store = RedisIdempotencyStore::new(redis().await).with_prefix(prefix("idempotency"));
        store.reserve("k", Duration::from_secs(60)).await.unwrap();
        assert_eq!(store.purge_expired().await.unwrap(), 0);
    }

    #[tokio::test]
    async fn redis_cache_conformance() {
        super::cache_all(&RedisCache::new(redis().await, prefix("order"))).await;
    }

    #[tokio::test]
    async fn spec_keys_and_ttls() {
        let mut conn = redis().await;
        let key = uuid::Uuid::new_v4().to_string();
        let store = RedisIdempotencyStore::new(conn.clone());
        assert_eq!(
            store
                .reserve(&key, Duration::from_secs(86_400))
                .await
                .unwrap(),
            Reservation::Reserved
        );
        let ttl: i64 = redis::cmd("TTL")
            .arg(format!("idempotency:{key}"))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!((86_390..=86_400).contains(&ttl), "idempotency TTL {ttl}");

        let cache = RedisCache::new(conn.clone(), "order:");
        cache
            .set(&key, b"{}", Duration::from_secs(600))
            .await
            .unwrap();
        let ttl: i64 = redis::cmd("TTL")
            .arg(format!("order:{key}"))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!((590..=600).contains(&ttl), "order cache TTL {ttl}");
        let _: () = redis::cmd("DEL")
            .arg(format!("idempotency:{key}"))
            .arg(format!("order:{key}"))
            .query_async(&mut conn)
            .await
            .unwrap();
    }
}
