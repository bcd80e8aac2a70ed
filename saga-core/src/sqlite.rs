//! SQLite [`SagaStore`] (feature `sqlite`) for the embedded mode. Its unit of work is the
//! same `sqlx::Transaction<'static, Sqlite>` (`BEGIN IMMEDIATE`) as `outbox::sqlite`, so
//! a saga update and the commands it sends commit together.
//!
//! ```no_run
//! # async fn demo() -> saga_core::Result<()> {
//! let pool = outbox::sqlite::connect("data/orders.db").await?;
//! outbox::sqlite::migrate(&pool).await?;
//! saga_core::sqlite::migrate(&pool).await?;
//! let store = saga_core::sqlite::SqliteSagaStore::new(pool);
//! # Ok(()) }
//! ```

use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqlitePool};
use uuid::Uuid;

use outbox::sqlite::SqliteTx;
use outbox::Transactional;

use crate::{Error, Result, SagaId, SagaInstance, SagaStore};

/// Apply this crate's SQLite migrations.
pub async fn migrate(pool: &SqlitePool) -> Result<()> {
    let mut m = sqlx::migrate!("./migrations-sqlite");
    m.set_ignore_missing(true);
    m.run(pool).await.map_err(Error::storage)
}

/// SQLite saga store.
#[derive(Debug, Clone)]
pub struct SqliteSagaStore {
    pool: SqlitePool,
}

impl SqliteSagaStore {
    /// A store over `pool` (run [`migrate`] first).
    pub fn new(pool: SqlitePool) -> Self {
        Self { pool }
    }

    /// Read a saga outside any unit of work.
    pub async fn get(&self, id: SagaId) -> Result<Option<SagaInstance>> {
        let row = sqlx::query(SELECT)
            .bind(id.0.as_bytes().as_slice())
            .fetch_optional(&self.pool)
            .await
            .map_err(Error::storage)?;
        row.as_ref().map(decode).transpose()
    }
}

const SELECT: &str =
    "SELECT id, saga_type, state, data, deadlines, version, created_at_ms, updated_at_ms \
                      FROM saga_instances WHERE id = ?";

fn decode(row: &SqliteRow) -> Result<SagaInstance> {
    let get = |e: sqlx::Error| Error::storage(e);
    let id: Vec<u8> = row.try_get("id").map_err(get)?;
    let state: String = row.try_get("state").map_err(get)?;
    let deadlines: String = row.try_get("deadlines").map_err(get)?;
    SagaInstance::from_columns(
        &id,
        row.try_get("saga_type").map_err(get)?,
        &state,
        row.try_get("data").map_err(get)?,
        &deadlines,
        row.try_get::<i64, _>("version").map_err(Error::storage)? as u64,
        row.try_get("created_at_ms").map_err(get)?,
        row.try_get("updated_at_ms").map_err(get)?,
    )
}

impl Transactional for SqliteSagaStore {
    type Tx = SqliteTx;

    async fn begin(&self) -> outbox::Result<SqliteTx> {
        outbox::sqlite::begin(&self.pool).await
    }

    async fn commit(&self, tx: SqliteTx) -> outbox::Result<()> {
        outbox::sqlite::commit(tx).await
    }
}

impl SagaStore for SqliteSagaStore {
    async fn insert(&self, tx: &mut SqliteTx, saga: &SagaInstance) -> Result<()> {
        let (state, deadlines) = saga.json_columns()?;
        sqlx::query(
            "INSERT INTO saga_instances (id, saga_type, status, state, data, deadlines, next_deadline, \
             version, created_at_ms, updated_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(saga.id.0.as_bytes().as_slice())
        .bind(&saga.saga_type)
        .bind(saga.state.status.as_str())
        .bind(state)
        .bind(saga.data.as_ref())
        .bind(deadlines)
        .bind(saga.next_deadline())
        .bind(saga.version as i64)
        .bind(saga.created_at)
        .bind(saga.updated_at)
        .execute(&mut **tx)
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(d) if d.is_unique_violation() => Error::AlreadyExists(saga.id),
            _ => Error::storage(e),
        })?;
        Ok(())
    }

    async fn load(&self, tx: &mut SqliteTx, id: SagaId) -> Result<Option<SagaInstance>> {
        // The IMMEDIATE transaction already holds SQLite's write lock.
        let row = sqlx::query(SELECT)
            .bind(id.0.as_bytes().as_slice())
            .fetch_optional(&mut **tx)
            .await
            .map_err(Error::storage)?;
        row.as_ref().map(decode).transpose()
    }

    async fn update(&self, tx: &mut SqliteTx, saga: &SagaInstance) -> Result<()> {
        let expected = saga
            .version
            .checked_sub(1)
            .ok_or(Error::Conflict(saga.id))?;
        let (state, deadlines) = saga.json_columns()?;
        let done = sqlx::query(
            "UPDATE saga_instances SET status = ?, state = ?, data = ?, deadlines = ?, next_deadline = ?, \
             version = ?, updated_at_ms = ? WHERE id = ? AND version = ?",
        )
        .bind(saga.state.status.as_str())
        .bind(state)
        .bind(saga.data.as_ref())
        .bind(deadlines)
        .bind(saga.next_deadline())
        .bind(saga.version as i64)
        .bind(saga.updated_at)
        .bind(saga.id.0.as_bytes().as_slice())
        .bind(expected as i64)
        .execute(&mut **tx)
        .await
        .map_err(Error::storage)?
        .rows_affected();
        if done == 1 {
            return Ok(());
        }
        let exists: Option<i64> =
            sqlx::query_scalar("SELECT version FROM saga_instances WHERE id = ?")
                .bind(saga.id.0.as_bytes().as_slice())
                .fetch_optional(&mut **tx)
                .await
                .map_err(Error::storage)?;
        Err(match exists {
            None => Error::NotFound(saga.id),
            Some(_) => Error::Conflict(saga.id),
        })
    }

    async fn due(&self, now_ms: i64, limit: usize) -> Result<Vec<SagaId>> {
        let rows: Vec<Vec<u8>> = sqlx::query_scalar(
            "SELECT id FROM saga_instances WHERE next_deadline IS NOT NULL AND next_deadline <= ? \
             ORDER BY next_deadline LIMIT ?",
        )
        .bind(now_ms)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(Error::storage)?;
        rows.iter()
            .map(|b| Uuid::from_slice(b).map(SagaId).map_err(Error::storage))
            .collect()
    }
}
