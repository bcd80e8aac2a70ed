//! Redis [`Blacklist`] (feature `redis`): `SET jwt:blacklist:{jti} 1 EX {ttl}` on
//! revoke, `EXISTS` on validation — entries vanish when the token would have expired.

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;

use crate::{Blacklist, Error, Result};

/// Blacklist in Redis, shared by every instance that validates tokens.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let client = redis::Client::open("redis://127.0.0.1:6379/")?;
/// let blacklist = authz::redis::RedisBlacklist::new(client.get_connection_manager().await?);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisBlacklist {
    conn: ConnectionManager,
    prefix: String,
}

impl std::fmt::Debug for RedisBlacklist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBlacklist")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisBlacklist {
    /// Keys `jwt:blacklist:{jti}`.
    pub fn new(conn: ConnectionManager) -> Self {
        Self {
            conn,
            prefix: "jwt:blacklist:".into(),
        }
    }

    /// Use another key prefix (tests, several issuers on one Redis).
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }
}

#[async_trait]
impl Blacklist for RedisBlacklist {
    async fn revoke(&self, jti: &str, ttl: Duration) -> Result<()> {
        // Whole seconds, rounded up, at least one: never shorter than asked.
        let secs = ttl.as_millis().div_ceil(1000).max(1) as u64;
        let mut conn = self.conn.clone();
        redis::cmd("SET")
            .arg(format!("{}{jti}", self.prefix))
            .arg(1)
            .arg("EX")
            .arg(secs)
            .query_async::<()>(&mut conn)
            .await
            .map_err(Error::blacklist)
    }

    async fn is_revoked(&self, jti: &str) -> Result<bool> {
        let mut conn = self.conn.clone();
        redis::cmd("EXISTS")
            .arg(format!("{}{jti}", self.prefix))
            .query_async::<bool>(&mut conn)
            .await
            .map_err(Error::blacklist)
    }
}
