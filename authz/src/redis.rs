//! Redis [`Blacklist`] (feature `redis`): `SET jwt:blacklist:{jti} 1 EX {ttl}` on
//! revoke (unless the entry already lives longer), `EXISTS` on validation — entries
//! vanish when the token would have expired.

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

/// `SET key 1 EX secs`, unless the key already lives longer: revoking twice keeps the
/// longer life (a second, shorter revocation must not bring a token back early).
static REVOKE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r#"
        local left = redis.call('PTTL', KEYS[1])
        if left == -1 or left >= tonumber(ARGV[1]) * 1000 then return 0 end
        redis.call('SET', KEYS[1], 1, 'EX', ARGV[1])
        return 1
        "#,
    )
});

#[async_trait]
impl Blacklist for RedisBlacklist {
    async fn revoke(&self, jti: &str, ttl: Duration) -> Result<()> {
        // Whole seconds, rounded up, at least one: never shorter than asked.
        let secs = ttl.as_millis().div_ceil(1000).max(1) as u64;
        let mut conn = self.conn.clone();
        REVOKE
            .key(format!("{}{jti}", self.prefix))
            .arg(secs)
            .invoke_async::<i64>(&mut conn)
            .await
            .map(drop)
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
