//! MySQL [`SagaStore`] (feature `mysql`). Its unit of work is the same
//! `sqlx::Transaction<'static, MySql>` as `outbox::mysql`, so a saga update and the
//! commands it sends commit together.
//!
//! ```no_run
//! # async fn demo() -> saga_core::Result<()> {
//! let pool = sqlx::MySqlPool::connect("mysql://root@127.0.0.1:3306/test").await.unwrap();
//! saga_core::mysql::migrate(&pool).await?;
//! outbox::mysql::migrate(&pool).await?;
//! let store = saga_core::mysql::MySqlSagaStore::new(pool);
//! # Ok(()) }
//! ```

use sqlx::mysql::MySqlRow;
use sqlx::{MySqlPool, Row};
use uuid::Uuid;

use outbox::mysql::MySqlTx;
use outbox::Transactional;

use crate::{Error, Result, SagaId, SagaInstance, SagaStore};

/// Apply this crate's migrations (idempotent; coexists with `outbox`'s).
pub async fn migrate(pool: &MySqlPool) -> Result<()> {
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.set_ignore_missing(true);
    migrator.run(pool).await.map_err(Error::storage)
}

/// MySQL saga store over the `saga_instances` table.
#[derive(Debug, Clone)]
pub struct MySqlSagaStore {
    pool: MySqlPool,
}

impl MySqlSagaStore {
    /// A store over `pool` (run [`migrate`] first).
    pub fn new(pool: MySqlPool) -> Self {
        Self { pool }
    }

    /// The pool.
    pub fn pool(&self) -> &MySqlPool {
        &self.pool
    }

    /// Read a saga outside any unit of work (queries, tests).
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

fn decode(row: &MySqlRow) -> Result<SagaInstance> {
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
        row.try_get("version").map_err(Error::storage)?,
        row.try_get("created_at_ms").map_err(get)?,
        row.try_get("updated_at_ms").map_err(get)?,
    )
}

impl Transactional for MySqlSagaStore {
    type Tx = MySqlTx;

    async fn begin(&self) -> outbox::Result<MySqlTx> {
        outbox::mysql::begin(&self.pool).await
    }

    async fn commit(&self, tx: MySqlTx) -> outbox::Result<()> {
        outbox::mysql::commit(tx).await
    }
}

impl SagaStore for MySqlSagaStore {
    async fn insert(&self, tx: &mut MySqlTx, saga: &SagaInstance) -> Result<()> {
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
        .bind(saga.version)
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

    async fn load(&self, tx: &mut MySqlTx, id: SagaId) -> Result<Option<SagaInstance>> {
        let row = sqlx::query(&format!("{SELECT} FOR UPDATE"))
            .bind(id.0.as_bytes().as_slice())
            .fetch_optional(&mut **tx)
            .await
            .map_err(Error::storage)?;
        row.as_ref().map(decode).transpose()
    }

    async fn update(&self, tx: &mut MySqlTx, saga: &SagaInstance) -> Result<()> {
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
        .bind(saga.version)
        .bind(saga.updated_at)
        .bind(saga.id.0.as_bytes().as_slice())
        .bind(expected)
        .execute(&mut **tx)
        .await
        .map_err(Error::storage)?
        .rows_affected();
        if done == 1 {
            return Ok(());
        }
        let exists: Option<u64> =
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
        .bind(limit as u64)
        .fetch_all(&self.pool)
        .await
        .map_err(Error::storage)?;
        rows.iter()
            .map(|b| Uuid::from_slice(b).map(SagaId).map_err(Error::storage))
            .collect()
    }
}
