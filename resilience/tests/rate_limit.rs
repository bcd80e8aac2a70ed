//! Rate limiter backends against the conformance suite: memory, and Redis for real
//! (`REDIS_URL`, default the local server; see scripts/services-up).

use std::time::Duration;

use resilience::rate_limit::conformance::rate_limiter_all;
use resilience::MemoryRateLimiter;

#[tokio::test(start_paused = true)]
async fn memory_rate_limiter_conformance() {
    let window = Duration::from_millis(500);
    rate_limiter_all(&MemoryRateLimiter::new(3, window), 3, window).await;
}

#[cfg(feature = "redis")]
mod redis_backend {
    use super::*;
    use resilience::rate_limit::{BatchedRedisRateLimiter, RedisRateLimiter};
    use resilience::RateLimiter;

    use ordersys_testkit::redis;

    /// 80 concurrent requests of one client: how many were allowed.
    async fn allowed_of_80_at_once(limiter: &impl RateLimiter) -> usize {
        let results = futures::future::join_all((0..80).map(|_| limiter.check("same-ip"))).await;
        results
            .iter()
            .filter(|r| r.as_ref().unwrap().allowed)
            .count()
    }

    #[tokio::test]
    async fn redis_rate_limiter_conformance() {
        let prefix = format!("test:{}:rate:", uuid::Uuid::new_v4().simple());
        // Real time: a window long enough that a loaded machine cannot stretch the four
        // checks across it and turn the refusal into a spurious pass of a new window.
        let window = Duration::from_secs(3);
        let limiter = RedisRateLimiter::new(redis().await, 3, window).with_prefix(prefix);
        rate_limiter_all(&limiter, 3, window).await;
    }

    #[tokio::test]
    async fn redis_keys_follow_the_spec() {
        let mut conn = redis().await;
        let client = format!("client-{}", uuid::Uuid::new_v4().simple());
        let limiter = RedisRateLimiter::new(conn.clone(), 100, Duration::from_secs(60));
        let d = limiter.check(&client).await.unwrap();
        assert!(d.allowed);
        let key = format!("rate:{client}");
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(
            ttl > 55_000 && ttl <= 60_000,
            "rate:{{ip}} must live one minute, PTTL {ttl}"
        );
        let count: i64 = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(count, 1);
        let _: () = redis::cmd("DEL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn concurrent_requests_are_counted_exactly() {
        let prefix = format!("test:{}:rate:", uuid::Uuid::new_v4().simple());
        let limiter =
            RedisRateLimiter::new(redis().await, 50, Duration::from_secs(60)).with_prefix(prefix);
        assert_eq!(allowed_of_80_at_once(&limiter).await, 50);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batched_rate_limiter_conformance() {
        let prefix = format!("test:{}:rate:", uuid::Uuid::new_v4().simple());
        let window = Duration::from_secs(3);
        let limiter = BatchedRedisRateLimiter::new(redis().await, 3, window)
            .with_prefix(prefix)
            .start(Duration::from_millis(10));
        rate_limiter_all(&limiter, 3, window).await;
    }

    /// Two instances share the count through Redis: what one admitted, the other learns
    /// at its next settlement, and the keys are those of the per-request limiter.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batched_instances_share_the_count_through_redis() {
        let prefix = format!("test:{}:rate:", uuid::Uuid::new_v4().simple());
        let mut conn = redis().await;
        let window = Duration::from_secs(60);
        let a = BatchedRedisRateLimiter::new(conn.clone(), 5, window).with_prefix(&prefix);
        let b = BatchedRedisRateLimiter::new(conn.clone(), 5, window).with_prefix(&prefix);
        for _ in 0..3 {
            assert!(a.check("ip").await.unwrap().allowed);
        }
        // Nothing sent yet: Redis has not heard of it.
        let none: Option<i64> = redis::cmd("GET")
            .arg(format!("{prefix}ip"))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(none, None);
        a.settle().await.unwrap();
        let count: i64 = redis::cmd("GET")
            .arg(format!("{prefix}ip"))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(count, 3, "the settlement added what `a` admitted");
        // `b` admits locally until it settles, then knows the shared count.
        assert!(b.check("ip").await.unwrap().allowed);
        b.settle().await.unwrap();
        let d = b.check("ip").await.unwrap();
        assert!(d.allowed, "the fifth request");
        assert_eq!(d.remaining, 0);
        assert!(
            !b.check("ip").await.unwrap().allowed,
            "the sixth is refused"
        );
        // A per-request limiter on the same keys agrees.
        b.settle().await.unwrap();
        let strict = RedisRateLimiter::new(conn.clone(), 5, window).with_prefix(&prefix);
        assert!(!strict.check("ip").await.unwrap().allowed);
        // And the window expires in Redis as the spec says.
        let ttl: i64 = redis::cmd("PTTL")
            .arg(format!("{prefix}ip"))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(ttl > 50_000 && ttl <= 60_000, "PTTL {ttl}");
    }

    /// Between settlements an instance decides on its own count, window and all.
    #[tokio::test]
    async fn an_unsettled_batched_limiter_limits_on_its_own_count() {
        let prefix = format!("test:{}:rate:", uuid::Uuid::new_v4().simple());
        let limiter = BatchedRedisRateLimiter::new(redis().await, 3, Duration::from_secs(60))
            .with_prefix(prefix);
        for remaining in [2, 1, 0] {
            let d = limiter.check("ip").await.unwrap();
            assert!(d.allowed);
            assert_eq!(d.remaining, remaining);
            assert!(
                d.reset_after > Duration::from_secs(59) && d.reset_after <= Duration::from_secs(60)
            );
        }
        let refused = limiter.check("ip").await.unwrap();
        assert!(!refused.allowed);
        assert!(refused.reset_after > Duration::from_secs(59));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batched_limiter_counts_exactly_within_one_instance() {
        let prefix = format!("test:{}:rate:", uuid::Uuid::new_v4().simple());
        let limiter = BatchedRedisRateLimiter::new(redis().await, 50, Duration::from_secs(60))
            .with_prefix(prefix)
            .start(Duration::from_millis(1));
        assert_eq!(allowed_of_80_at_once(&limiter).await, 50);
    }
}
