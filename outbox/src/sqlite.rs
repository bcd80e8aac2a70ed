//! SQLite backends (feature `sqlite`) for single-process, embedded use:
//! [`SqliteOutbox`], [`SqliteInbox`], [`SqliteIdempotencyStore`] and
//! [`SqliteDeadLetters`]. Their unit of work is a [`SqliteTx`]: statements run on it as
//! on a connection (`&mut **tx`), and the units of one pool take turns on one writer
//! transaction opened with `BEGIN IMMEDIATE` (SQLite has one writer; taking the write
//! lock up front avoids lock-upgrade failures).
//!
//! **Group commit.** A unit that commits while others wait for their turn does not
//! commit alone: it hands the open transaction to the next unit (which runs in a
//! savepoint of it, so its rollback undoes only its own work) and waits; the last unit
//! of the group — nobody waiting, or [`MAX_GROUP`] units committed ([`set_max_group`])
//! — commits them all
//! at once, one disk flush for the group. Each unit's commit returns only once that
//! `COMMIT` returned, so what a commit acknowledges is as durable as before (at the
//! file's `synchronous` level); if the group's `COMMIT` fails, every member's commit
//! fails and none of their writes took effect. A lone unit commits at once, as a plain
//! transaction. Beginning and committing run to their end on a task of their own even
//! when the caller's future is dropped half way; a unit dropped unfinished is rolled
//! back.
//!
//! Times are the application's clock (SQLite has no microsecond `NOW()`), which is
//! right for one process. Run [`migrate`] first; [`connect`] opens a file database in
//! WAL mode with a busy timeout.
//!
//! ```no_run
//! # async fn demo() -> outbox::Result<()> {
//! use outbox::sqlite::{connect, migrate, SqliteOutbox};
//! use outbox::{OutboxMessage, OutboxStore, Transactional};
//!
//! let pool = connect("data/orders.db").await?;
//! migrate(&pool).await?;
//! let outbox = SqliteOutbox::new(pool);
//! let mut tx = outbox.begin().await?;
//! outbox.enqueue(&mut tx, OutboxMessage::new("saga.commands", "order-1", "debit")).await?;
//! outbox.commit(tx).await?;
//! # Ok(()) }
//! ```

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::store::{Inbox, OutboxStore, Transactional};
use crate::{Error, Headers, MessageId, OutboxMessage, Result};

mod dead_letters;
mod group;
mod idempotency;

pub use dead_letters::{ParkedMessage, SqliteDeadLetters};
pub use group::{set_max_group, waiting as writers_waiting, SqliteTx, MAX_GROUP};
pub use idempotency::SqliteIdempotencyStore;

fn storage(e: sqlx::Error) -> Error {
    Error::storage(e)
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// Open (creating if missing, with its missing directories) the SQLite database at
/// `path` — WAL journal, `NORMAL` sync, 5 s busy timeout, foreign keys on — with a small
/// pool. `path` is a file name (a `&str`, `String`, `Path` or `PathBuf`), not a URL.
pub async fn connect(path: impl AsRef<std::path::Path>) -> Result<SqlitePool> {
    let path = path.as_ref();
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir).map_err(Error::storage)?;
        }
    }
    let opts = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(5))
        .foreign_keys(true);
    SqlitePoolOptions::new()
        .max_connections(8)
        // A connection to a local file does not go stale: no ping before each use.
        .test_before_acquire(false)
        .connect_with(opts)
        .await
        .map_err(storage)
}

/// Apply this crate's SQLite migrations (idempotent; coexists with other crates').
pub async fn migrate(pool: &SqlitePool) -> Result<()> {
    let mut m = sqlx::migrate!("./migrations-sqlite");
    m.set_ignore_missing(true);
    m.run(pool).await.map_err(Error::storage)
}

/// Begin a write unit of work on `pool`: its turn on the pool's writer transaction
/// (`BEGIN IMMEDIATE`, or a savepoint in the group transaction of the units before it).
pub async fn begin(pool: &SqlitePool) -> Result<SqliteTx> {
    group::begin(pool).await
}

/// Commit a unit of work: returns once it is committed, with the units of its group
/// ([`SqliteTx`]).
pub async fn commit(tx: SqliteTx) -> Result<()> {
    tx.commit().await
}

/// The statement's first five parameters: a message's id, topic, key, payload and
/// headers (JSON), as the outbox and the dead letters store them.
fn bind_message<'q>(
    q: sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
    id: MessageId,
    topic: &'q str,
    key: &'q str,
    payload: &'q [u8],
    headers: &Headers,
) -> sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments<'q>> {
    q.bind(id.0.as_bytes().to_vec())
        .bind(topic)
        .bind(key)
        .bind(payload)
        .bind(headers.to_json())
}

fn row_to_message(row: &SqliteRow) -> Result<OutboxMessage> {
    let id: Vec<u8> = row.try_get("id").map_err(storage)?;
    let headers: String = row.try_get("headers").map_err(storage)?;
    let payload: Vec<u8> = row.try_get("payload").map_err(storage)?;
    let created: i64 = row.try_get("created_at_us").map_err(storage)?;
    let attempts: i64 = row.try_get("attempts").map_err(storage)?;
    Ok(OutboxMessage {
        id: MessageId(Uuid::from_slice(&id).map_err(Error::storage)?),
        topic: row.try_get("topic").map_err(storage)?,
        key: row.try_get("msg_key").map_err(storage)?,
        payload: Bytes::from(payload),
        headers: Headers::from_json(&headers)?,
        created_at: UNIX_EPOCH + Duration::from_micros(created.max(0) as u64),
        attempts: attempts.max(0) as u32,
    })
}

/// The claim as one statement (see `SqliteOutbox::claim_relaxed`): `?1` relay id,
/// `?2` lease end, `?3` now, `?4` limit, `?5` window (µs times).
macro_rules! claim_sql {
    () => {
        "WITH w AS (\
            SELECT seq, msg_key, \
                   (lease_until_us IS NOT NULL AND lease_until_us > ?3 \
                    AND (leased_by IS NULL OR leased_by <> ?1)) AS leased \
            FROM outbox_messages WHERE sent_at_us IS NULL ORDER BY seq LIMIT ?5), \
         b AS (\
            SELECT seq, MAX(leased) OVER (PARTITION BY msg_key ORDER BY seq \
                                          ROWS UNBOUNDED PRECEDING) AS blocked \
            FROM w) \
         UPDATE outbox_messages SET leased_by = ?1, lease_until_us = ?2 \
         WHERE seq IN (SELECT seq FROM b WHERE blocked = 0 ORDER BY seq LIMIT ?4) \
         RETURNING seq, id, topic, msg_key, payload, headers, created_at_us, attempts"
    };
}

/// The claim on a connection that waits for no disk anyway, and wrapped in relaxing and
/// restoring a `FULL` or `EXTRA` level: fixed strings, nothing built per claim.
const CLAIM_SQL: &str = claim_sql!();
const CLAIM_SQL_FULL: &str = concat!(
    "PRAGMA synchronous = NORMAL; ",
    claim_sql!(),
    "; PRAGMA synchronous = FULL"
);
const CLAIM_SQL_EXTRA: &str = concat!(
    "PRAGMA synchronous = NORMAL; ",
    claim_sql!(),
    "; PRAGMA synchronous = EXTRA"
);

/// SQLite [`OutboxStore`].
///
/// **Durability.** [`enqueue`](OutboxStore::enqueue) is part of the caller's transaction
/// and as durable as the connection's `synchronous` setting makes it. The relay's own
/// bookkeeping — the lease of [`claim`](OutboxStore::claim) and the mark of
/// [`mark_sent`](OutboxStore::mark_sent) — commits without waiting for the disk
/// (`synchronous = NORMAL` for that transaction when the connection runs `FULL` or
/// `EXTRA`): a killed process loses none of it (the WAL is written before the commit
/// returns), and a power cut can only take back the last leases and marks, so messages
/// are sent again — at-least-once, which consumers handle anyway — never lost. The next
/// durable commit on the file makes them durable too. That takes two of the three
/// fsyncs a message costs off the path of every writer of the file.
#[derive(Debug, Clone)]
pub struct SqliteOutbox {
    pool: SqlitePool,
    /// The connections' `synchronous` level (`PRAGMA synchronous`: 0 off, 1 normal,
    /// 2 full, 3 extra), read once.
    level: std::sync::Arc<std::sync::OnceLock<i64>>,
    /// Signalled by the commit of a unit of work that enqueued (see [`OutboxStore::commit_signal`]).
    committed: std::sync::Arc<Notify>,
}

impl SqliteOutbox {
    /// An outbox over `pool` (run [`migrate`] first).
    pub fn new(pool: SqlitePool) -> Self {
        Self {
            pool,
            level: Default::default(),
            committed: Default::default(),
        }
    }

    /// A connection, and whether the relay's bookkeeping on it must relax and restore its
    /// `synchronous` level: the SQL that restores it (`None`: it already waits for no
    /// disk).
    async fn bookkeeping_conn(&self) -> Result<(PoolConnection<Sqlite>, Option<&'static str>)> {
        let mut conn = self.pool.acquire().await.map_err(storage)?;
        let level = match self.level.get() {
            Some(l) => *l,
            None => {
                let l: i64 = sqlx::query_scalar("PRAGMA synchronous")
                    .fetch_one(&mut *conn)
                    .await
                    .map_err(storage)?;
                *self.level.get_or_init(|| l)
            }
        };
        let restore = match level {
            ..=1 => None,
            2 => Some("PRAGMA synchronous = FULL"),
            _ => Some("PRAGMA synchronous = EXTRA"),
        };
        Ok((conn, restore))
    }

    /// After a failure: put the connection's level back, or close it — it never goes
    /// back to the pool relaxed.
    async fn put_back(conn: &mut PoolConnection<Sqlite>, restore: Option<&'static str>) {
        if let Some(sql) = restore {
            if sqlx::query(sql).execute(&mut **conn).await.is_err() {
                conn.close_on_drop();
            }
        }
    }

    /// Claim with one statement — one round trip to the connection's thread, where a
    /// `BEGIN IMMEDIATE … COMMIT` transaction took four — that commits without waiting
    /// for the disk (relaxing the level and restoring it ride in the same query).
    ///
    /// The statement applies the claim rule every backend shares: over the oldest
    /// `4 × limit` unsent rows, a row is taken unless it, or an earlier row of its key,
    /// is leased to another relay or held back after a failure (a running `MAX` over
    /// the key's rows, in `seq` order); the first `limit` such rows are leased and
    /// returned.
    async fn claim_relaxed(
        &self,
        relay_id: &str,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<OutboxMessage>> {
        let (mut conn, restore) = self.bookkeeping_conn().await?;
        let sql = match restore {
            None => CLAIM_SQL,
            Some("PRAGMA synchronous = EXTRA") => CLAIM_SQL_EXTRA,
            Some(_) => CLAIM_SQL_FULL,
        };
        let now = now_us();
        let rows = sqlx::query(sql)
            .bind(relay_id)
            .bind(now.saturating_add(lease.as_micros() as i64))
            .bind(now)
            .bind(limit as i64)
            .bind(limit.saturating_mul(4) as i64)
            .fetch_all(&mut *conn)
            .await;
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) => {
                // One statement: it leased everything or nothing.
                Self::put_back(&mut conn, restore).await;
                return Err(storage(e));
            }
        };
        let mut chosen = Vec::with_capacity(rows.len());
        for row in &rows {
            let seq: i64 = row.try_get("seq").map_err(storage)?;
            chosen.push((seq, row_to_message(row)?));
        }
        // `RETURNING` gives the rows in no particular order.
        chosen.sort_unstable_by_key(|(seq, _)| *seq);
        Ok(chosen.into_iter().map(|(_, m)| m).collect())
    }

    /// Rows not yet sent.
    pub async fn pending(&self) -> Result<u64> {
        let n: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM outbox_messages WHERE sent_at_us IS NULL")
                .fetch_one(&self.pool)
                .await
                .map_err(storage)?;
        Ok(n as u64)
    }
}

impl Transactional for SqliteOutbox {
    type Tx = SqliteTx;

    async fn begin(&self) -> Result<SqliteTx> {
        begin(&self.pool).await
    }

    async fn commit(&self, tx: SqliteTx) -> Result<()> {
        commit(tx).await
    }
}

fn in_list<'a>(q: &mut QueryBuilder<'a, Sqlite>, ids: &'a [MessageId]) {
    let mut sep = q.separated(", ");
    for id in ids {
        sep.push_bind(id.0.as_bytes().as_slice());
    }
    q.push(")");
}

impl OutboxStore for SqliteOutbox {
    async fn enqueue(&self, tx: &mut SqliteTx, msg: OutboxMessage) -> Result<()> {
        let created = msg
            .created_at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        let insert = sqlx::query(
            "INSERT INTO outbox_messages (id, topic, msg_key, payload, headers, created_at_us, attempts) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        );
        bind_message(
            insert,
            msg.id,
            &msg.topic,
            &msg.key,
            &msg.payload,
            &msg.headers,
        )
        .bind(created)
        .bind(i64::from(msg.attempts))
        .execute(&mut **tx)
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(d) if d.is_unique_violation() => {
                Error::Conflict(format!("outbox message {} already exists", msg.id))
            }
            _ => storage(e),
        })?;
        // The relay looks once the unit's commit succeeded (not on a rollback).
        tx.notify_on_commit(&self.committed);
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
        self.claim_relaxed(relay_id, limit, lease).await
    }

    async fn mark_sent(&self, ids: &[MessageId]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let (mut conn, restore) = self.bookkeeping_conn().await?;
        // One query of three statements, one round trip: relax, mark, restore. The values are an integer and
        // hex literals of our own UUIDs — nothing from outside is spliced in.
        let mut sql = String::with_capacity(160 + ids.len() * 40);
        if restore.is_some() {
            sql.push_str("PRAGMA synchronous = NORMAL; ");
        }
        sql.push_str(&format!(
            "UPDATE outbox_messages SET sent_at_us = {}, leased_by = NULL, lease_until_us = NULL \
             WHERE sent_at_us IS NULL AND id IN (",
            now_us()
        ));
        for (i, id) in ids.iter().enumerate() {
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("X'{}'", id.0.simple()));
        }
        sql.push(')');
        if let Some(r) = restore {
            sql.push_str("; ");
            sql.push_str(r);
        }
        if let Err(e) = sqlx::query(&sql).execute(&mut *conn).await {
            Self::put_back(&mut conn, restore).await;
            return Err(storage(e));
        }
        Ok(())
    }

    async fn record_failure(
        &self,
        id: MessageId,
        error: &str,
        retry_after: Duration,
    ) -> Result<()> {
        let error: String = error.chars().take(4000).collect();
        // No owner and a future `lease_until_us`: held back, by nobody, until then.
        sqlx::query(
            "UPDATE outbox_messages SET attempts = attempts + 1, last_error = ?, leased_by = NULL, \
             lease_until_us = ? WHERE id = ? AND sent_at_us IS NULL",
        )
        .bind(error)
        .bind(now_us().saturating_add(retry_after.as_micros() as i64))
        .bind(id.0.as_bytes().as_slice())
        .execute(&self.pool)
        .await
        .map_err(storage)?;
        Ok(())
    }

    async fn release(&self, ids: &[MessageId]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut q = QueryBuilder::<Sqlite>::new(
            "UPDATE outbox_messages SET leased_by = NULL, lease_until_us = NULL WHERE sent_at_us IS NULL AND id IN (",
        );
        in_list(&mut q, ids);
        q.build().execute(&self.pool).await.map_err(storage)?;
        Ok(())
    }

    async fn purge_sent(&self, retention: Duration) -> Result<u64> {
        sqlx::query("DELETE FROM outbox_messages WHERE sent_at_us IS NOT NULL AND sent_at_us < ?")
            .bind(now_us() - retention.as_micros() as i64)
            .execute(&self.pool)
            .await
            .map(|r| r.rows_affected())
            .map_err(storage)
    }

    async fn backlog(&self) -> Result<Option<crate::Backlog>> {
        let (n, oldest_us): (i64, Option<i64>) = sqlx::query_as(concat!(
            "SELECT COUNT(*), (SELECT created_at_us FROM outbox_messages ",
            "WHERE sent_at_us IS NULL ORDER BY seq LIMIT 1) ",
            "FROM outbox_messages WHERE sent_at_us IS NULL"
        ))
        .fetch_one(&self.pool)
        .await
        .map_err(storage)?;
        Ok(Some(crate::store::backlog_from(n, oldest_us)))
    }

    /// Signalled when a unit of work that enqueued commits: the relay delivers at once
    /// instead of at its next poll. One process owns a SQLite file, so every commit that
    /// enqueues passes through this outbox.
    fn commit_signal(&self) -> Option<std::sync::Arc<Notify>> {
        Some(self.committed.clone())
    }
}

/// SQLite [`Inbox`].
#[derive(Debug, Clone)]
pub struct SqliteInbox {
    pool: SqlitePool,
}

impl SqliteInbox {
    /// An inbox over `pool` (run [`migrate`] first).
    pub fn new(pool: SqlitePool) -> Self {
        Self { pool }
    }
}

impl Transactional for SqliteInbox {
    type Tx = SqliteTx;

    async fn begin(&self) -> Result<SqliteTx> {
        begin(&self.pool).await
    }

    async fn commit(&self, tx: SqliteTx) -> Result<()> {
        commit(tx).await
    }
}

impl Inbox for SqliteInbox {
    async fn try_record(&self, tx: &mut SqliteTx, consumer: &str, id: MessageId) -> Result<bool> {
        let r = sqlx::query(
            "INSERT INTO inbox_messages (consumer, message_id, processed_at_us) VALUES (?, ?, ?)",
        )
        .bind(consumer)
        .bind(id.0.as_bytes().as_slice())
        .bind(now_us())
        .execute(&mut **tx)
        .await;
        match r {
            Ok(_) => Ok(true),
            Err(sqlx::Error::Database(d)) if d.is_unique_violation() => Ok(false),
            Err(e) => Err(storage(e)),
        }
    }

    async fn purge(&self, retention: Duration) -> Result<u64> {
        sqlx::query("DELETE FROM inbox_messages WHERE processed_at_us < ?")
            .bind(now_us().saturating_sub(retention.as_micros() as i64))
            .execute(&self.pool)
            .await
            .map(|r| r.rows_affected())
            .map_err(storage)
    }
}
