//! [`SqliteIdempotencyStore`].

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use sqlx::{Row, SqlitePool};

use super::{now_us, storage};
use crate::idempotency::{IdempotencyStore, Reservation};
use crate::Result;

/// SQLite [`IdempotencyStore`]: keys survive a restart of the embedded system.
#[derive(Debug, Clone)]
pub struct SqliteIdempotencyStore {
    pool: SqlitePool,
    /// Where [`completed`](IdempotencyStore::completed) reads: `pool` unless
    /// [`with_readers`](Self::with_readers) gave connections of their own.
    readers: SqlitePool,
}

impl SqliteIdempotencyStore {
    /// A store over `pool` (run [`migrate`](super::migrate) first).
    pub fn new(pool: SqlitePool) -> Self {
        Self {
            readers: pool.clone(),
            pool,
        }
    }

    /// Answer [`completed`](IdempotencyStore::completed) from `readers` — connections
    /// to the same file (read-only ones will do) — so that the read waits neither for
    /// the writes queued on `pool` nor, in WAL mode, for the file's writer.
    pub fn with_readers(mut self, readers: SqlitePool) -> Self {
        self.readers = readers;
        self
    }
}

#[async_trait]
impl IdempotencyStore for SqliteIdempotencyStore {
    /// One statement on the common path (a new or expired key): insert the
    /// reservation, or take over an expired one, atomically; only a live key costs a
    /// second statement to read its state.
    async fn reserve(&self, key: &str, ttl: Duration) -> Result<Reservation> {
        loop {
            let now = now_us();
            let taken = sqlx::query(
                "INSERT INTO idempotency_keys (key, done, result, expires_at_us) \
                 VALUES (?1, 0, NULL, ?2) \
                 ON CONFLICT (key) DO UPDATE SET done = 0, result = NULL, \
                 expires_at_us = excluded.expires_at_us \
                 WHERE idempotency_keys.expires_at_us <= ?3",
            )
            .bind(key)
            .bind(now.saturating_add(ttl.as_micros() as i64))
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(storage)?
            .rows_affected()
                == 1;
            if taken {
                return Ok(Reservation::Reserved);
            }
            let row = sqlx::query(
                "SELECT done, result FROM idempotency_keys WHERE key = ? AND expires_at_us > ?",
            )
            .bind(key)
            .bind(now)
            .fetch_optional(&self.pool)
            .await
            .map_err(storage)?;
            // `None`: released (or expired) since the insert found it — try again.
            if let Some(r) = row {
                let done: i64 = r.try_get("done").map_err(storage)?;
                return Ok(if done != 0 {
                    let result: Option<Vec<u8>> = r.try_get("result").map_err(storage)?;
                    Reservation::Completed(Bytes::from(result.unwrap_or_default()))
                } else {
                    Reservation::InProgress
                });
            }
        }
    }

    async fn completed(&self, key: &str) -> Result<Option<Bytes>> {
        let row = sqlx::query(
            "SELECT result FROM idempotency_keys WHERE key = ? AND done = 1 AND expires_at_us > ?",
        )
        .bind(key)
        .bind(now_us())
        .fetch_optional(&self.readers)
        .await
        .map_err(storage)?;
        row.map(|r| {
            let result: Option<Vec<u8>> = r.try_get("result").map_err(storage)?;
            Ok(Bytes::from(result.unwrap_or_default()))
        })
        .transpose()
    }

    async fn complete(&self, key: &str, result: &[u8], ttl: Duration) -> Result<()> {
        sqlx::query("INSERT OR REPLACE INTO idempotency_keys (key, done, result, expires_at_us) VALUES (?, 1, ?, ?)")
            .bind(key)
            .bind(result)
            .bind(now_us() + ttl.as_micros() as i64)
            .execute(&self.pool)
            .await
            .map_err(storage)?;
        Ok(())
    }

    async fn purge_expired(&self) -> Result<u64> {
        sqlx::query("DELETE FROM idempotency_keys WHERE expires_at_us <= ?")
            .bind(now_us())
            .execute(&self.pool)
            .await
            .map(|r| r.rows_affected())
            .map_err(storage)
    }

    async fn release(&self, key: &str) -> Result<()> {
        sqlx::query("DELETE FROM idempotency_keys WHERE key = ? AND done = 0")
            .bind(key)
            .execute(&self.pool)
            .await
            .map_err(storage)?;
        Ok(())
    }
}
