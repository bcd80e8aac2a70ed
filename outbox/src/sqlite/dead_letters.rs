//! [`SqliteDeadLetters`]: a durable dead-letter sink on the SQLite file.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqlitePool};
use uuid::Uuid;

use super::{bind_message, now_us, storage, SqliteOutbox};
use crate::store::{DeadLetter, OutboxStore, Transactional};
use crate::{Delivery, Error, Headers, MessageId, OutboxMessage, Result};

/// A dead letter parked by [`SqliteDeadLetters`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParkedMessage {
    /// Its position in the store (what [`SqliteDeadLetters::replay`] and
    /// [`remove`](SqliteDeadLetters::remove) take).
    pub seq: i64,
    /// When it was parked.
    pub parked_at: SystemTime,
    /// The message as the consumer received it (its `topic` is the one it came from).
    pub delivery: Delivery,
    /// Why it was parked.
    pub reason: String,
}

impl ParkedMessage {
    /// The message that replays it to its topic, under a new id derived from the parked
    /// one (the consumer's inbox recorded the parked id) with a `dlq-replay-of` header —
    /// the same id however often it is asked for, so a replay is processed once.
    pub fn replay_message(&self) -> OutboxMessage {
        crate::message::replay_of(&self.delivery, &self.delivery.topic)
    }
}

/// A durable SQLite [`DeadLetter`] sink, for single-process deployments without a
/// broker: what a consumer gives up on is kept in the `dead_letters` table (run
/// [`migrate`](super::migrate) first) to be listed, replayed through the outbox, or removed.
///
/// ```no_run
/// # async fn demo() -> outbox::Result<()> {
/// use outbox::sqlite::{connect, migrate, SqliteDeadLetters, SqliteOutbox};
///
/// let pool = connect("data/app.db").await?;
/// migrate(&pool).await?;
/// let dead = SqliteDeadLetters::new(pool.clone());
/// for parked in dead.list(100).await? {
///     println!("{} on {}: {}", parked.delivery.id, parked.delivery.topic, parked.reason);
///     // Fixed the cause? Send it again, in one unit of work with its removal:
///     dead.replay(&SqliteOutbox::new(pool.clone()), parked.seq).await?;
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct SqliteDeadLetters {
    pool: SqlitePool,
}

const PARKED_COLUMNS: &str =
    "SELECT seq, message_id, topic, msg_key, payload, headers, reason, parked_at_us FROM dead_letters";

fn row_to_parked(row: &SqliteRow) -> Result<ParkedMessage> {
    let id: Vec<u8> = row.try_get("message_id").map_err(storage)?;
    let headers: String = row.try_get("headers").map_err(storage)?;
    let payload: Vec<u8> = row.try_get("payload").map_err(storage)?;
    let parked: i64 = row.try_get("parked_at_us").map_err(storage)?;
    Ok(ParkedMessage {
        seq: row.try_get("seq").map_err(storage)?,
        parked_at: UNIX_EPOCH + Duration::from_micros(parked.max(0) as u64),
        delivery: Delivery {
            id: MessageId(Uuid::from_slice(&id).map_err(Error::storage)?),
            topic: row.try_get("topic").map_err(storage)?,
            key: row.try_get("msg_key").map_err(storage)?,
            payload: Bytes::from(payload),
            headers: Headers::from_json(&headers)?,
        },
        reason: row.try_get("reason").map_err(storage)?,
    })
}

impl SqliteDeadLetters {
    /// A sink over `pool` (run [`migrate`](super::migrate) first).
    pub fn new(pool: SqlitePool) -> Self {
        Self { pool }
    }

    /// The parked messages, oldest first, at most `limit`.
    pub async fn list(&self, limit: usize) -> Result<Vec<ParkedMessage>> {
        let rows = sqlx::query(&format!("{PARKED_COLUMNS} ORDER BY seq LIMIT ?"))
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await
            .map_err(storage)?;
        rows.iter().map(row_to_parked).collect()
    }

    /// How many messages are parked.
    pub async fn count(&self) -> Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM dead_letters")
            .fetch_one(&self.pool)
            .await
            .map_err(storage)?;
        Ok(n as u64)
    }

    /// Send the parked message `seq` again ([`ParkedMessage::replay_message`]) through
    /// `outbox`, removing it in the same unit of work: it is replayed once or stays
    /// parked. `None` if no such message is parked (replayed or removed already).
    pub async fn replay(&self, outbox: &SqliteOutbox, seq: i64) -> Result<Option<MessageId>> {
        let mut tx = outbox.begin().await?;
        let row = sqlx::query(&format!("{PARKED_COLUMNS} WHERE seq = ?"))
            .bind(seq)
            .fetch_optional(&mut *tx)
            .await
            .map_err(storage)?;
        let Some(parked) = row.as_ref().map(row_to_parked).transpose()? else {
            return Ok(None);
        };
        let replay = parked.replay_message();
        let id = replay.id;
        outbox.enqueue(&mut tx, replay).await?;
        sqlx::query("DELETE FROM dead_letters WHERE seq = ?")
            .bind(seq)
            .execute(&mut *tx)
            .await
            .map_err(storage)?;
        outbox.commit(tx).await?;
        Ok(Some(id))
    }

    /// Remove the parked message `seq` without replaying it; whether it was there.
    pub async fn remove(&self, seq: i64) -> Result<bool> {
        let done = sqlx::query("DELETE FROM dead_letters WHERE seq = ?")
            .bind(seq)
            .execute(&self.pool)
            .await
            .map_err(storage)?;
        Ok(done.rows_affected() == 1)
    }
}

impl DeadLetter for SqliteDeadLetters {
    /// Park `msg` (a message parked again — same topic and id — is kept once, with its
    /// first reason).
    async fn dead_letter(&self, msg: &Delivery, reason: &str) -> Result<()> {
        let insert = sqlx::query(
            "INSERT OR IGNORE INTO dead_letters \
             (message_id, topic, msg_key, payload, headers, reason, parked_at_us) \
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
        .bind(reason)
        .bind(now_us())
        .execute(&self.pool)
        .await
        .map_err(|e| Error::DeadLetter(Box::new(e)))?;
        Ok(())
    }
}
