//! MySQL backends (feature `mysql`): [`MySqlOutbox`], [`MySqlStreamingOutbox`] and
//! [`MySqlInbox`], whose unit of work is the application's own
//! `sqlx::Transaction<'static, MySql>`.
//!
//! Tables come with the crate: run [`migrate`] (or copy `outbox/migrations/*.sql` into
//! your own migrations). The SQL is portable between MySQL 8.0 and MariaDB ≥ 10.6.
//!
//! **Claiming.** Relays take turns on one lock row (`outbox_claim_lock`) for the few
//! milliseconds a claim takes; inside, a read-committed scan sees only committed rows
//! (an enqueue still in flight is simply not there yet — there is no high-water mark,
//! so a row whose auto-increment id committed late is never skipped) and leases the
//! chosen rows with `lease_until = NOW(6) + lease`. A key whose earlier row is leased
//! elsewhere is skipped, which keeps per-key order with any number of relays. A failed
//! row is held back the same way: no owner, `lease_until` = its retry time.
//!
//! **Streaming.** [`MySqlStreamingOutbox`] drains the same table differently: one relay
//! at a time reads it in `seq` order from a persisted position and writes nothing per
//! message — several times the throughput (docs/BENCHMARKS.md), with a failed publish
//! holding back the whole stream instead of its key. Its docs compare the two.
//!
//! ```no_run
//! # async fn demo() -> outbox::Result<()> {
//! use outbox::mysql::{migrate, MySqlOutbox};
//! use outbox::{OutboxMessage, OutboxStore, Transactional};
//!
//! let pool = sqlx::MySqlPool::connect("mysql://root@127.0.0.1:3306/test").await.unwrap();
//! migrate(&pool).await?;
//! let outbox = MySqlOutbox::new(pool);
//! let mut tx = outbox.begin().await?;
//! // sqlx::query("INSERT INTO orders ...").execute(&mut *tx).await?;
//! outbox.enqueue(&mut tx, OutboxMessage::new("saga.commands", "order-1", "debit")).await?;
//! outbox.commit(tx).await?;
//! # Ok(()) }
//! ```

use std::time::{Duration, UNIX_EPOCH};

use sqlx::mysql::MySqlRow;
use sqlx::{MySql, MySqlPool, QueryBuilder, Row, Transaction};
use uuid::Uuid;

use crate::store::{claimable, Inbox, OutboxStore, Transactional};
use crate::{Error, Headers, MessageId, OutboxMessage, Result};

mod streaming;
pub use streaming::MySqlStreamingOutbox;

/// The transaction type of the MySQL backends.
pub type MySqlTx = Transaction<'static, MySql>;

/// Apply this crate's migrations (idempotent; coexists with other crates' migrations in
/// the same database; safe when replicas start together — see [`migrate_all`]).
pub async fn migrate(pool: &MySqlPool) -> Result<()> {
    migrate_all(pool, &[migrator()]).await
}

/// This crate's migrations (to run with others through [`migrate_all`]).
pub fn migrator() -> sqlx::migrate::Migrator {
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.set_ignore_missing(true);
    migrator
}

/// How long [`migrate_all`] waits for another process's migrations.
const MIGRATION_LOCK_WAIT_SECS: i64 = 300;

/// Run `migrators` one after the other on one connection that holds the database's
/// named lock (`GET_LOCK('ordersys_migrate:<database>', 300)`), so that replicas
/// starting at the same time apply migrations one after the other. All the migrators
/// that share a database's `_sqlx_migrations` table belong in one call: a second
/// process checking that table while the first is half-way through a migration would
/// find it "partially applied" (MySQL's DDL is not transactional). sqlx's own lock is
/// no help on MariaDB: it asks `GET_LOCK(name, -1)`, which MariaDB answers with NULL at
/// once, without the lock.
///
/// ```no_run
/// # async fn f(pool: sqlx::MySqlPool) -> outbox::Result<()> {
/// let mine = sqlx::migrate!("./migrations");
/// outbox::mysql::migrate_all(&pool, &[mine, outbox::mysql::migrator()]).await
/// # }
/// ```
pub async fn migrate_all(pool: &MySqlPool, migrators: &[sqlx::migrate::Migrator]) -> Result<()> {
    let mut conn = pool.acquire().await.map_err(storage)?;
    let lock = "CONCAT('ordersys_migrate:', COALESCE(DATABASE(), ''))";
    let got: Option<i64> = sqlx::query_scalar(&format!(
        "SELECT GET_LOCK({lock}, {MIGRATION_LOCK_WAIT_SECS})"
    ))
    .fetch_one(&mut *conn)
    .await
    .map_err(storage)?;
    if got != Some(1) {
        return Err(Error::storage(format!(
            "the migration lock was not granted within {MIGRATION_LOCK_WAIT_SECS} s \
             (another process is migrating this database)"
        )));
    }
    let mut result = Ok(());
    for migrator in migrators {
        result = migrator
            .run_direct(&mut *conn)
            .await
            .map_err(Error::storage);
        if result.is_err() {
            break;
        }
    }
    let released = sqlx::query(&format!("SELECT RELEASE_LOCK({lock})"))
        .execute(&mut *conn)
        .await;
    if released.is_err() {
        // The lock dies with the connection: do not hand it back to the pool.
        conn.detach();
    }
    result
}

fn storage(e: sqlx::Error) -> Error {
    Error::storage(e)
}

/// Begin a unit of work on `pool` (what every MySQL store's `begin` does).
pub async fn begin(pool: &MySqlPool) -> Result<MySqlTx> {
    pool.begin().await.map_err(storage)
}

/// Commit a unit of work; a serialization failure becomes [`Error::Conflict`].
pub async fn commit(tx: MySqlTx) -> Result<()> {
    tx.commit().await.map_err(|e| match &e {
        // Serialization failure / deadlock: the unit of work did not apply.
        sqlx::Error::Database(d) if d.code().as_deref() == Some("40001") => {
            Error::Conflict(e.to_string())
        }
        _ => storage(e),
    })
}

fn id_bytes(id: &MessageId) -> Vec<u8> {
    id.0.as_bytes().to_vec()
}

fn id_from(bytes: &[u8]) -> Result<MessageId> {
    Uuid::from_slice(bytes)
        .map(MessageId)
        .map_err(Error::storage)
}

fn row_to_message(row: &MySqlRow) -> Result<OutboxMessage> {
    let created_us: i64 = row.try_get("created_at_us").map_err(storage)?;
    let payload: Vec<u8> = row.try_get("payload").map_err(storage)?;
    let headers: String = row.try_get("headers").map_err(storage)?;
    let id: Vec<u8> = row.try_get("id").map_err(storage)?;
    let attempts: u32 = row.try_get("attempts").map_err(storage)?;
    Ok(OutboxMessage {
        id: id_from(&id)?,
        topic: row.try_get("topic").map_err(storage)?,
        key: row.try_get("msg_key").map_err(storage)?,
        payload: payload.into(),
        headers: Headers::from_json(&headers)?,
        created_at: UNIX_EPOCH + Duration::from_micros(created_us.max(0) as u64),
        attempts,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Run a `DELETE … < NOW(6) - INTERVAL ? MICROSECOND LIMIT 5000` until it deletes fewer
/// than 5000 rows: a large backlog is purged in slices that never hold locks for long.
async fn delete_older(pool: &MySqlPool, sql: &'static str, retention: Duration) -> Result<u64> {
    let mut total = 0;
    loop {
        let n = sqlx::query(sql)
            .bind(retention.as_micros() as u64)
            .execute(pool)
            .await
            .map_err(storage)?
            .rows_affected();
        total += n;
        if n < 5000 {
            return Ok(total);
        }
    }
}

/// MySQL [`OutboxStore`] over the `outbox_messages` table.
#[derive(Debug, Clone)]
pub struct MySqlOutbox {
    pool: MySqlPool,
}

impl MySqlOutbox {
    /// An outbox over `pool` (run [`migrate`] first).
    pub fn new(pool: MySqlPool) -> Self {
        Self { pool }
    }

    /// The pool.
    pub fn pool(&self) -> &MySqlPool {
        &self.pool
    }

    /// Rows not yet sent (for health checks and metrics).
    pub async fn pending(&self) -> Result<u64> {
        let n: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM outbox_messages WHERE sent_at IS NULL")
                .fetch_one(&self.pool)
                .await
                .map_err(storage)?;
        Ok(n as u64)
    }

    /// The last publish error recorded for a message.
    pub async fn last_error(&self, id: MessageId) -> Result<Option<String>> {
        sqlx::query_scalar("SELECT last_error FROM outbox_messages WHERE id = ?")
            .bind(id_bytes(&id))
            .fetch_optional(&self.pool)
            .await
            .map(Option::flatten)
            .map_err(storage)
    }
}

impl Transactional for MySqlOutbox {
    type Tx = MySqlTx;

    async fn begin(&self) -> Result<MySqlTx> {
        begin(&self.pool).await
    }

    async fn commit(&self, tx: MySqlTx) -> Result<()> {
        commit(tx).await
    }
}

/// How far past `limit` a claim looks for rows of keys that are not blocked.
const SCAN_FACTOR: usize = 4;

impl OutboxStore for MySqlOutbox {
    async fn enqueue(&self, tx: &mut MySqlTx, msg: OutboxMessage) -> Result<()> {
        let created_us = msg
            .created_at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        sqlx::query(
            "INSERT INTO outbox_messages (id, topic, msg_key, payload, headers, created_at_us, attempts) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(id_bytes(&msg.id))
        .bind(&msg.topic)
        .bind(&msg.key)
        .bind(msg.payload.as_ref())
        .bind(msg.headers.to_json())
        .bind(created_us)
        .bind(msg.attempts)
        .execute(&mut **tx)
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(d) if d.is_unique_violation() => {
                Error::Conflict(format!("outbox message {} already exists", msg.id))
            }
            _ => storage(e),
        })?;
        Ok(())
    }

    async fn claim(
        &self,
        relay_id: &str,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<OutboxMessage>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        // Two round trips: (1) open a read-committed transaction, take the claim lock
        // and scan the keys of the oldest unsent rows; (2) read the chosen rows, lease
        // them and commit. Text statements with nothing but numbers and hex literals in
        // them (no escaping), so they can go together.
        let mut conn = self.pool.acquire().await.map_err(storage)?;
        let scan = format!(
            "SET TRANSACTION ISOLATION LEVEL READ COMMITTED; START TRANSACTION; \
             SELECT name FROM outbox_claim_lock WHERE name = 'relay' FOR UPDATE; \
             SELECT seq, msg_key, leased_by, \
                    (lease_until IS NOT NULL AND lease_until > NOW(6)) AS lease_live \
             FROM outbox_messages WHERE sent_at IS NULL ORDER BY seq LIMIT {}",
            limit.saturating_mul(SCAN_FACTOR)
        );
        let rows = match sqlx::Executor::fetch_all(&mut *conn, scan.as_str()).await {
            // The lock row comes back too: keep the outbox rows.
            Ok(rows) => rows.into_iter().filter(|r| r.len() > 1).collect::<Vec<_>>(),
            Err(e) => {
                // Whatever part ran, the connection may be inside a transaction: never
                // hand it back to the pool like that.
                conn.close_on_drop();
                return Err(storage(e));
            }
        };

        let mut keys = Vec::with_capacity(rows.len());
        for row in &rows {
            let key: String = row.try_get("msg_key").map_err(storage)?;
            let live: i64 = row.try_get("lease_live").map_err(storage)?;
            let by: Option<String> = row.try_get("leased_by").map_err(storage)?;
            // Leased by someone else (or held back after a failure, by nobody).
            let leased = live != 0 && by.as_deref() != Some(relay_id);
            keys.push((key, leased));
        }
        let mut seqs = Vec::new();
        for i in claimable(keys.iter().map(|(k, l)| (k.as_str(), *l)), limit) {
            seqs.push(rows[i].try_get::<u64, _>("seq").map_err(storage)?);
        }
        let finish = if seqs.is_empty() {
            "COMMIT".to_owned()
        } else {
            let list: Vec<String> = seqs.iter().map(u64::to_string).collect();
            let list = list.join(",");
            format!(
                "SELECT seq, id, topic, msg_key, payload, headers, created_at_us, attempts \
                 FROM outbox_messages WHERE seq IN ({list}) ORDER BY seq; \
                 UPDATE outbox_messages SET leased_by = _utf8mb4 X'{}', \
                 lease_until = NOW(6) + INTERVAL {} MICROSECOND WHERE seq IN ({list}); COMMIT",
                hex(relay_id.as_bytes()),
                lease.as_micros() as u64,
            )
        };
        let chosen = match sqlx::Executor::fetch_all(&mut *conn, finish.as_str()).await {
            Ok(rows) => rows,
            Err(e) => {
                conn.close_on_drop();
                return Err(storage(e));
            }
        };
        chosen.iter().map(row_to_message).collect()
    }

    async fn mark_sent(&self, ids: &[MessageId]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut q = QueryBuilder::<MySql>::new(
            "UPDATE outbox_messages SET sent_at = NOW(6), leased_by = NULL, lease_until = NULL \
             WHERE sent_at IS NULL AND id IN (",
        );
        let mut sep = q.separated(", ");
        for id in ids {
            sep.push_bind(id_bytes(id));
        }
        q.push(")");
        q.build().execute(&self.pool).await.map_err(storage)?;
        Ok(())
    }

    async fn record_failure(
        &self,
        id: MessageId,
        error: &str,
        retry_after: Duration,
    ) -> Result<()> {
        let error: String = error.chars().take(4000).collect();
        // No owner and a future `lease_until`: held back, by nobody, until then.
        sqlx::query(
            "UPDATE outbox_messages SET attempts = attempts + 1, last_error = ?, \
             leased_by = NULL, lease_until = NOW(6) + INTERVAL ? MICROSECOND \
             WHERE id = ? AND sent_at IS NULL",
        )
        .bind(error)
        .bind(retry_after.as_micros() as u64)
        .bind(id_bytes(&id))
        .execute(&self.pool)
        .await
        .map_err(storage)?;
        Ok(())
    }

    async fn release(&self, ids: &[MessageId]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut q = QueryBuilder::<MySql>::new(
            "UPDATE outbox_messages SET leased_by = NULL, lease_until = NULL \
             WHERE sent_at IS NULL AND id IN (",
        );
        let mut sep = q.separated(", ");
        for id in ids {
            sep.push_bind(id_bytes(id));
        }
        q.push(")");
        q.build().execute(&self.pool).await.map_err(storage)?;
        Ok(())
    }

    async fn purge_sent(&self, retention: Duration) -> Result<u64> {
        delete_older(
            &self.pool,
            "DELETE FROM outbox_messages WHERE sent_at IS NOT NULL \
             AND sent_at < NOW(6) - INTERVAL ? MICROSECOND LIMIT 5000",
            retention,
        )
        .await
    }

    async fn backlog(&self) -> Result<Option<crate::Backlog>> {
        let (n, oldest_us): (i64, Option<i64>) = sqlx::query_as(concat!(
            "SELECT COUNT(*), (SELECT created_at_us FROM outbox_messages ",
            "WHERE sent_at IS NULL ORDER BY seq LIMIT 1) ",
            "FROM outbox_messages WHERE sent_at IS NULL"
        ))
        .fetch_one(&self.pool)
        .await
        .map_err(storage)?;
        Ok(Some(crate::store::backlog_from(n, oldest_us)))
    }
}

/// MySQL [`Inbox`] over the `inbox_messages` table.
#[derive(Debug, Clone)]
pub struct MySqlInbox {
    pool: MySqlPool,
}

impl MySqlInbox {
    /// An inbox over `pool` (run [`migrate`] first).
    pub fn new(pool: MySqlPool) -> Self {
        Self { pool }
    }
}

impl Transactional for MySqlInbox {
    type Tx = MySqlTx;

    async fn begin(&self) -> Result<MySqlTx> {
        begin(&self.pool).await
    }

    async fn commit(&self, tx: MySqlTx) -> Result<()> {
        commit(tx).await
    }
}

impl Inbox for MySqlInbox {
    async fn try_record(&self, tx: &mut MySqlTx, consumer: &str, id: MessageId) -> Result<bool> {
        if consumer.is_empty() || consumer.len() > 128 {
            return Err(Error::storage(format!(
                "consumer name must be 1..=128 bytes: {consumer:?}"
            )));
        }
        // A concurrent delivery holding the same key makes this wait for its outcome:
        // duplicate if it committed, inserted if it rolled back.
        let r = sqlx::query(
            "INSERT INTO inbox_messages (consumer, message_id, processed_at) VALUES (?, ?, NOW(6))",
        )
        .bind(consumer)
        .bind(id_bytes(&id))
        .execute(&mut **tx)
        .await;
        match r {
            Ok(_) => Ok(true),
            Err(sqlx::Error::Database(d)) if d.is_unique_violation() => Ok(false),
            Err(e) => Err(storage(e)),
        }
    }

    async fn purge(&self, retention: Duration) -> Result<u64> {
        delete_older(
            &self.pool,
            "DELETE FROM inbox_messages \
             WHERE processed_at < NOW(6) - INTERVAL ? MICROSECOND LIMIT 5000",
            retention,
        )
        .await
    }
}
