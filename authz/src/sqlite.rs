//! SQLite [`Blacklist`] (feature `sqlite`) for the embedded mode: revocations survive a
//! restart and vanish when the token would have expired.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use sqlx::SqlitePool;

use crate::{Blacklist, Error, Result};

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Apply this crate's SQLite migrations.
pub async fn migrate(pool: &SqlitePool) -> Result<()> {
    let mut m = sqlx::migrate!("./migrations-sqlite");
    m.set_ignore_missing(true);
    m.run(pool).await.map_err(Error::blacklist)
}

/// Blacklist in a SQLite table (`revoked_tokens`).
#[derive(Debug, Clone)]
pub struct SqliteBlacklist {
    pool: SqlitePool,
}

impl SqliteBlacklist {
    /// A blacklist over `pool` (run [`migrate`] first).
    pub fn new(pool: SqlitePool) -> Self {
        Self { pool }
    }
}

#[async_trait]
impl Blacklist for SqliteBlacklist {
    async fn revoke(&self, jti: &str, ttl: Duration) -> Result<()> {
        let now = now_ms();
        sqlx::query("DELETE FROM revoked_tokens WHERE expires_at_ms <= ?")
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(Error::blacklist)?;
        sqlx::query(
            "INSERT INTO revoked_tokens (jti, expires_at_ms) VALUES (?, ?) \
             ON CONFLICT(jti) DO UPDATE SET expires_at_ms = MAX(expires_at_ms, excluded.expires_at_ms)",
        )
        .bind(jti)
        .bind(now + ttl.as_millis() as i64)
        .execute(&self.pool)
        .await
        .map_err(Error::blacklist)?;
        Ok(())
    }

    async fn is_revoked(&self, jti: &str) -> Result<bool> {
        let hit: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM revoked_tokens WHERE jti = ? AND expires_at_ms > ?")
                .bind(jti)
                .bind(now_ms())
                .fetch_optional(&self.pool)
                .await
                .map_err(Error::blacklist)?;
        Ok(hit.is_some())
    }
}
