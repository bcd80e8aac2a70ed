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

/// Apply this crate's migrations (idempotent; coexists with `outbox`'s; replicas
/// starting together apply them one after the other — see
/// [`outbox::mysql::migrate_all`]).
pub async fn migrate(pool: &MySqlPool) -> Result<()> {
    outbox::mysql::migrate_all(pool, &[migrator()])
        .await
        .map_err(|e| Error::storage(e.to_string()))
}

/// This crate's migrations (to run with others through [`outbox::mysql::migrate_all`]).
pub fn migrator() -> sqlx::migrate::Migrator {
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.set_ignore_missing(true);
    migrator
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
}

fn decode(row: &MySqlRow) -> Result<SagaInstance> {
    let get = |e: sqlx::Error| Error::storage(e);
    let id: Vec<u8> = row.try_get("id").map_err(get)?;
    let state: String = row.try_get("state").map_err(get)?;
    let deadlines: String = row.try_get("deadlines").map_err(get)?;
    SagaInstance::from_columns(
        &id,
        row.try_get("saga_type").map_err(get)?,
        row.try_get::<u32, _>("definition_version").map_err(get)?,
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

crate::sql::sql_saga_store!(MySqlSagaStore, MySqlTx, u64, " FOR UPDATE");
