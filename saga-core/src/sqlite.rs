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
}

fn decode(row: &SqliteRow) -> Result<SagaInstance> {
    let get = |e: sqlx::Error| Error::storage(e);
    let id: Vec<u8> = row.try_get("id").map_err(get)?;
    let state: String = row.try_get("state").map_err(get)?;
    let deadlines: String = row.try_get("deadlines").map_err(get)?;
    SagaInstance::from_columns(
        &id,
        row.try_get("saga_type").map_err(get)?,
        u32::try_from(row.try_get::<i64, _>("definition_version").map_err(get)?)
            .map_err(Error::storage)?,
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

crate::sql::sql_saga_store!(SqliteSagaStore, SqliteTx, i64, "");
