//! SQLite [`Blacklist`] (feature `sqlite`) for the embedded mode: revocations survive a
//! restart and vanish when the token would have expired.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
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
///
/// [`new`](Self::new) asks the table on every lookup. [`cached`](Self::cached) loads it
/// into memory once and answers lookups from there, writing every revocation to the
/// table *and* the memory: for one process that is the only writer of the file — the
/// embedded mode, where the user service and the gateway share one value (clones share
/// the memory). A revocation written by another process is not seen by a cached one.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> authz::Result<()> {
/// use std::time::Duration;
/// use authz::{sqlite::{migrate, SqliteBlacklist}, Blacklist};
/// // One connection: each connection to `sqlite::memory:` is a database of its own.
/// let pool = sqlx::sqlite::SqlitePoolOptions::new()
///     .max_connections(1)
///     .connect("sqlite::memory:")
///     .await
///     .unwrap();
/// migrate(&pool).await?;
/// SqliteBlacklist::new(pool.clone()).revoke("before", Duration::from_secs(60)).await?;
/// let cached = SqliteBlacklist::cached(pool).await?; // loads "before"
/// assert!(cached.is_revoked("before").await?);
/// cached.revoke("after", Duration::from_secs(60)).await?;
/// assert!(cached.clone().is_revoked("after").await?);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct SqliteBlacklist {
    pool: SqlitePool,
    /// `jti` → expiry (unix ms), when lookups are answered from memory.
    memory: Option<Arc<RwLock<HashMap<String, i64>>>>,
}

impl SqliteBlacklist {
    /// A blacklist over `pool` (run [`migrate`] first), asking the table per lookup.
    pub fn new(pool: SqlitePool) -> Self {
        Self { pool, memory: None }
    }

    /// A blacklist over `pool` whose lookups are answered from memory: the unexpired
    /// revocations are loaded now, and later ones are written through (see the type's
    /// docs for when that is right).
    pub async fn cached(pool: SqlitePool) -> Result<Self> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT jti, expires_at_ms FROM revoked_tokens WHERE expires_at_ms > ?")
                .bind(now_ms())
                .fetch_all(&pool)
                .await
                .map_err(Error::blacklist)?;
        Ok(Self {
            pool,
            memory: Some(Arc::new(RwLock::new(rows.into_iter().collect()))),
        })
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
        if let Some(memory) = &self.memory {
            let mut map = memory.write().unwrap_or_else(|p| p.into_inner());
            map.retain(|_, expires| *expires > now);
            let expires = map.entry(jti.to_owned()).or_insert(0);
            *expires = (*expires).max(now + ttl.as_millis() as i64);
        }
        Ok(())
    }

    async fn is_revoked(&self, jti: &str) -> Result<bool> {
        if let Some(memory) = &self.memory {
            let map = memory.read().unwrap_or_else(|p| p.into_inner());
            return Ok(map.get(jti).is_some_and(|expires| *expires > now_ms()));
        }
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
