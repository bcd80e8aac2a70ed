//! Test support shared by the workspace's tests: the Redis connection every Redis test
//! needs, and awaiting a condition with a deadline instead of sleeping a guess.
//! Not published; the crates list it as a path-only dev-dependency.

#![warn(missing_docs)]

use std::future::Future;
use std::time::Duration;

/// A connection manager to the test Redis: `REDIS_URL`, default the local server.
/// Panics — never skips — when it cannot be reached.
pub async fn redis() -> redis::aio::ConnectionManager {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into());
    redis::Client::open(url.as_str())
        .expect("REDIS_URL")
        .get_connection_manager()
        .await
        .unwrap_or_else(|e| {
            panic!("Redis at {url} is not reachable ({e}); run scripts/services-up")
        })
}

/// Poll `probe` every 100 ms until it returns `Some`, and return that; panic naming
/// `what` if `within` passes first.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
