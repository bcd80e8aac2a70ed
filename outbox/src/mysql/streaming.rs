//! [`MySqlStreamingOutbox`]: the outbox read as a stream by one relay at a time, with a
//! position instead of per-row leases.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::mysql::MySqlRow;
use sqlx::{MySqlPool, Row};
use tokio::task::JoinHandle;

mod stream;

use self::stream::{Prefetch, Stream};
use super::{row_to_message, storage, MySqlOutbox, MySqlTx};
use crate::store::{OutboxStore, Transactional};
use crate::{Error, MessageId, OutboxMessage, Result};

const COLUMNS: &str = "seq, id, topic, msg_key, payload, headers, created_at_us, attempts, \
                       sent_at IS NOT NULL AS sent";

/// The most hole ranges asked about in one claim (the oldest first).
const MAX_HOLES_PER_CLAIM: usize = 256;

/// A MySQL outbox drained as a **stream**: one relay at a time reads the rows in `seq`
/// order from a persisted position and publishes them; nothing is written per row.
///
/// The same `outbox_messages` table and the same [`enqueue`](OutboxStore::enqueue) as
/// [`MySqlOutbox`] — the business code does not change — but the relay side differs:
///
/// | | [`MySqlOutbox`] (claims) | `MySqlStreamingOutbox` |
/// |---|---|---|
/// | writes per published message | two row updates (lease, sent) | none: one position update per batch |
/// | relays publishing at once | any number, sharing the work | one (the lease holder); others stand by and take over when its lease expires, or at once after a graceful stop ([`Relay::run`](crate::Relay::run) hands the stream back) |
/// | a publish that fails | holds back its key only | holds back the stream from that message on, for its retry delay |
/// | after a crash | the dead relay's leases expire, its rows are claimed again | the next holder resumes from the persisted position |
///
/// **How it stays complete.** Rows are read with `seq > cursor` in `seq` order. A
/// transaction that got its auto-increment `seq` earlier may commit later, so every
/// `seq` skipped below the highest one read is kept as a *hole*: asked about again on
/// every claim, published when it appears. A hole older than
/// [`with_hole_grace`](Self::with_hole_grace) (default 5 s) is probed with a locking read
/// (`FOR UPDATE NOWAIT`): a transaction still holding that row makes the probe fail and
/// the hole is kept; an empty answer means the row was rolled back (or the value never
/// used) and the hole is dropped. The persisted position never passes a hole or an
/// unacknowledged message, so a restart or a takeover republishes from the first
/// message not known to be delivered — at-least-once, with consumers deduplicating by
/// message id as usual.
///
/// **The position** lives in `outbox_relay_position` (one row per stream, [`migrate`]
/// creates it). On first use it starts just before the oldest row not marked sent by a
/// claims relay, so switching from [`MySqlOutbox`]'s relay loses nothing. Switching
/// back: mark rows up to the position sent first (`UPDATE outbox_messages SET sent_at =
/// NOW(6) WHERE seq <= position`), or they are published again.
///
/// Every claim of a stream must go through one `MySqlStreamingOutbox` value (or its
/// clones) per process: the stream's state — position, holes, messages in flight —
/// lives in it.
///
/// ```no_run
/// # async fn demo() -> outbox::Result<()> {
/// use outbox::kafka::KafkaPublisher;
/// use outbox::mysql::{migrate, MySqlStreamingOutbox};
/// use outbox::{Relay, RelayConfig};
///
/// let pool = sqlx::MySqlPool::connect("mysql://root@127.0.0.1:3306/test").await.unwrap();
/// migrate(&pool).await?;
/// let outbox = MySqlStreamingOutbox::new(pool);
/// let relay = Relay::new(
///     outbox.clone(),
///     KafkaPublisher::new("127.0.0.1:9092")?,
///     RelayConfig::with_id("order-relay-1").with_batch_size(1000),
/// );
/// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
/// # drop(stop);
/// relay.run(async { stopped.await.ok(); }).await?;
/// # Ok(()) }
/// ```
///
/// [`migrate`]: super::migrate
#[derive(Debug, Clone)]
pub struct MySqlStreamingOutbox {
    inner: MySqlOutbox,
    name: Arc<str>,
    hole_grace: Duration,
    streams: Arc<Mutex<HashMap<String, Stream>>>,
}

fn ranges_sql(holes: &[(u64, u64)]) -> String {
    let parts: Vec<String> = holes
        .iter()
        .map(|(a, b)| format!("seq BETWEEN {a} AND {b}"))
        .collect();
    parts.join(" OR ")
}

fn read_after(
    pool: MySqlPool,
    after: u64,
    limit: usize,
) -> JoinHandle<std::result::Result<Vec<MySqlRow>, sqlx::Error>> {
    tokio::spawn(async move {
        sqlx::query(&format!(
            "SELECT {COLUMNS} FROM outbox_messages WHERE seq > ? ORDER BY seq LIMIT ?"
        ))
        .bind(after)
        .bind(limit as u64)
        .fetch_all(&pool)
        .await
    })
}

impl MySqlStreamingOutbox {
    /// A streaming outbox over `pool`, stream name `relay` (run [`migrate`](super::migrate)
    /// first).
    pub fn new(pool: MySqlPool) -> Self {
        Self {
            inner: MySqlOutbox::new(pool),
            name: Arc::from("relay"),
            hole_grace: Duration::from_secs(5),
            streams: Arc::default(),
        }
    }

    /// Another stream name: its own position row (one outbox table drained by two
    /// independent relay groups, e.g. while migrating from one broker to another).
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = Arc::from(name.into());
        self
    }

    /// How long a skipped `seq` is only asked about before it is probed with a locking
    /// read (default 5 s). Shorter frees the persisted position sooner after a rollback;
    /// it must stay well above the time between a transaction taking its
    /// auto-increment value and writing the row (microseconds).
    pub fn with_hole_grace(mut self, grace: Duration) -> Self {
        self.hole_grace = grace;
        self
    }

    /// The pool.
    pub fn pool(&self) -> &MySqlPool {
        self.inner.pool()
    }

    /// The persisted position: every row with `seq` up to it has been published
    /// (`None` before the first claim).
    pub async fn position(&self) -> Result<Option<u64>> {
        sqlx::query_scalar("SELECT position FROM outbox_relay_position WHERE name = ?")
            .bind(&*self.name)
            .fetch_optional(self.pool())
            .await
            .map_err(storage)
    }

    /// Rows past the persisted position (for health checks and metrics).
    pub async fn pending(&self) -> Result<u64> {
        Ok(self.backlog().await?.map_or(0, |b| b.messages))
    }

    /// Take or renew the lease; on taking it, load the position. `false`: another relay
    /// holds it.
    async fn hold(&self, relay_id: &str, lease: Duration) -> Result<bool> {
        let renewing = self.streams.lock().unwrap().contains_key(relay_id);
        if !renewing {
            // The stream's row, from the very start of the table: rows a claims relay
            // marked sent are skipped as they are read, and a transaction still open
            // below the oldest visible row is a hole like any other.
            sqlx::query("INSERT IGNORE INTO outbox_relay_position (name, position) VALUES (?, 0)")
                .bind(&*self.name)
                .execute(self.pool())
                .await
                .map_err(storage)?;
        }
        let asked = Instant::now();
        let took = sqlx::query(
            "UPDATE outbox_relay_position SET owner = ?, \
             lease_until = NOW(6) + INTERVAL ? MICROSECOND \
             WHERE name = ? AND (owner = ? OR owner IS NULL OR lease_until IS NULL \
                                 OR lease_until < NOW(6))",
        )
        .bind(relay_id)
        .bind(lease.as_micros() as u64)
        .bind(&*self.name)
        .bind(relay_id)
        .execute(self.pool())
        .await
        .map_err(storage)?
        .rows_affected()
            == 1;
        if !took {
            self.streams.lock().unwrap().remove(relay_id);
            return Ok(false);
        }
        if renewing {
            if let Some(s) = self.streams.lock().unwrap().get_mut(relay_id) {
                s.lease_until = asked + lease;
                s.renewed_at = asked;
                return Ok(true);
            }
        }
        let position: u64 =
            sqlx::query_scalar("SELECT position FROM outbox_relay_position WHERE name = ?")
                .bind(&*self.name)
                .fetch_one(self.pool())
                .await
                .map_err(storage)?;
        tracing::info!(relay = relay_id, stream = %self.name, position, "outbox stream acquired");
        let mut streams = self.streams.lock().unwrap();
        // Whoever held the stream through this value before has lost it.
        streams.clear();
        streams.insert(relay_id.to_owned(), Stream::new(position, asked, lease));
        Ok(true)
    }

    /// Write the position up to the first message not known delivered, if it moved
    /// (one row update, which also renews the lease). [`Error::Conflict`] if another
    /// relay took the stream meanwhile.
    async fn persist(&self, relay: &str) -> Result<()> {
        let (position, lease) = {
            let streams = self.streams.lock().unwrap();
            let Some(s) = streams.get(relay) else {
                return Ok(());
            };
            let position = s.safe_position();
            if position <= s.persisted {
                return Ok(());
            }
            (position, s.lease_until - s.renewed_at)
        };
        let asked = Instant::now();
        let n = sqlx::query(
            "UPDATE outbox_relay_position SET position = GREATEST(position, ?), \
             lease_until = NOW(6) + INTERVAL ? MICROSECOND WHERE name = ? AND owner = ?",
        )
        .bind(position)
        .bind(lease.as_micros() as u64)
        .bind(&*self.name)
        .bind(relay)
        .execute(self.pool())
        .await
        .map_err(storage)?
        .rows_affected();
        let mut streams = self.streams.lock().unwrap();
        if n == 0 {
            streams.remove(relay);
            return Err(Error::Conflict(format!(
                "outbox stream {} was taken over from relay {relay}",
                self.name
            )));
        }
        if let Some(s) = streams.get_mut(relay) {
            s.persisted = s.persisted.max(position);
            s.lease_until = asked + lease;
            s.renewed_at = asked;
        }
        Ok(())
    }

    /// The rows that appeared in these holes.
    async fn read_holes(&self, holes: &[(u64, u64)]) -> Result<Vec<MySqlRow>> {
        if holes.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT {COLUMNS} FROM outbox_messages WHERE {} ORDER BY seq",
            ranges_sql(holes)
        );
        sqlx::query(&sql)
            .fetch_all(self.pool())
            .await
            .map_err(storage)
    }

    /// Probe holes older than the grace period; drop the ones no transaction holds.
    async fn probe_holes(&self, relay_id: &str, old: Vec<(u64, u64)>) -> Result<()> {
        let sql = format!(
            "SELECT seq FROM outbox_messages WHERE {} FOR UPDATE NOWAIT",
            ranges_sql(&old)
        );
        let found: Vec<u64> = match sqlx::query_scalar(&sql).fetch_all(self.pool()).await {
            Ok(found) => found,
            Err(sqlx::Error::Database(e)) => {
                // A transaction still holds one of them (lock wait / NOWAIT): keep all.
                tracing::debug!(relay = relay_id, error = %e, "outbox gap still held by an open transaction");
                return Ok(());
            }
            Err(e) => return Err(storage(e)),
        };
        let mut streams = self.streams.lock().unwrap();
        let Some(s) = streams.get_mut(relay_id) else {
            return Ok(());
        };
        for (start, end) in old {
            // A row that appeared is read by the claim; the rest of the range is empty.
            if !found.iter().any(|f| (start..=end).contains(f))
                && s.holes.get(&start).is_some_and(|(e, _)| *e == end)
            {
                s.holes.remove(&start);
            }
        }
        Ok(())
    }
}

impl Transactional for MySqlStreamingOutbox {
    type Tx = MySqlTx;

    async fn begin(&self) -> Result<MySqlTx> {
        self.inner.begin().await
    }

    async fn commit(&self, tx: MySqlTx) -> Result<()> {
        self.inner.commit(tx).await
    }
}

impl OutboxStore for MySqlStreamingOutbox {
    async fn enqueue(&self, tx: &mut MySqlTx, msg: OutboxMessage) -> Result<()> {
        self.inner.enqueue(tx, msg).await
    }

    /// Read up to `limit` messages past the cursor (and any that filled a hole), if this
    /// relay holds the stream's lease (taking it when it is free or expired); nothing
    /// otherwise. `lease` is the stream lease, renewed on every claim and mark.
    async fn claim(
        &self,
        relay_id: &str,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<OutboxMessage>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let renew = {
            let streams = self.streams.lock().unwrap();
            streams.get(relay_id).is_none_or(|s| {
                s.renewed_at.elapsed() >= lease / 3 || Instant::now() >= s.lease_until
            })
        };
        if renew && !self.hold(relay_id, lease).await? {
            return Ok(Vec::new());
        }

        let now = Instant::now();
        let (prefetch, after, holes, old) = {
            let mut streams = self.streams.lock().unwrap();
            let Some(s) = streams.get_mut(relay_id) else {
                return Ok(Vec::new());
            };
            if s.not_before.is_some_and(|t| now < t) {
                return Ok(Vec::new());
            }
            s.not_before = None;
            let prefetch = s
                .prefetch
                .take()
                .filter(|p| p.after == s.cursor && p.limit == limit);
            let holes: Vec<(u64, u64)> = s
                .holes
                .iter()
                .take(MAX_HOLES_PER_CLAIM)
                .map(|(&a, &(b, _))| (a, b))
                .collect();
            let old: Vec<(u64, u64)> = s
                .holes
                .iter()
                .take(MAX_HOLES_PER_CLAIM)
                .filter(|(_, (_, seen))| now.duration_since(*seen) >= self.hole_grace)
                .map(|(&a, &(b, _))| (a, b))
                .collect();
            (prefetch, s.cursor, holes, old)
        };
        if !old.is_empty() {
            self.probe_holes(relay_id, old).await?;
            // Holes found empty may free the position while nothing else moves it.
            self.persist(relay_id).await?;
        }

        // The rows ahead first, the holes after: a row that committed before a later
        // one became visible is then never missed by the hole query of the same claim
        // (which is what keeps a key's messages in order across holes).
        let mut ahead = match prefetch {
            Some(mut p) => match (&mut p.rows).await {
                Ok(r) => r.map_err(storage)?,
                Err(e) => return Err(Error::storage(e)),
            },
            None => read_after(self.pool().clone(), after, limit)
                .await
                .map_err(Error::storage)?
                .map_err(storage)?,
        };
        let mut rows = self.read_holes(&holes).await?;
        let mut after = after;
        loop {
            let full = ahead.len() >= limit;
            rows.append(&mut ahead);
            let next = {
                let mut batch = Vec::with_capacity(rows.len());
                let mut streams = self.streams.lock().unwrap();
                let Some(s) = streams.get_mut(relay_id) else {
                    return Ok(Vec::new());
                };
                if s.cursor != after {
                    // Rewound meanwhile (cannot happen with one relay per id): read again.
                    return Ok(Vec::new());
                }
                for row in &rows {
                    let seq: u64 = row.try_get("seq").map_err(storage)?;
                    if s.inflight.contains_key(&seq) {
                        continue;
                    }
                    let sent: i64 = row.try_get("sent").map_err(storage)?;
                    s.saw(seq, now);
                    if sent != 0 {
                        // Published by a claims relay before the switch.
                        continue;
                    }
                    let m = row_to_message(row)?;
                    s.inflight.insert(seq, m.id);
                    s.seqs.insert(m.id, seq);
                    batch.push(m);
                }
                if !batch.is_empty() || !full {
                    if full {
                        // More is waiting: read it while this batch is published.
                        s.prefetch = Some(Prefetch {
                            after: s.cursor,
                            limit,
                            rows: read_after(self.pool().clone(), s.cursor, limit),
                        });
                    }
                    return Ok(batch);
                }
                s.cursor
            };
            // A full read of rows sent before the switch: read on (holes again after it).
            after = next;
            ahead = read_after(self.pool().clone(), after, limit)
                .await
                .map_err(Error::storage)?
                .map_err(storage)?;
            rows = self.read_holes(&holes).await?;
        }
    }

    /// Forget the acknowledged messages and persist the position up to the first message
    /// not yet acknowledged (one row update, which also renews the lease). Fails with
    /// [`Error::Conflict`] if another relay took the stream meanwhile.
    async fn mark_sent(&self, ids: &[MessageId]) -> Result<()> {
        let relays: Vec<String> = {
            let mut streams = self.streams.lock().unwrap();
            let mut relays = Vec::new();
            for (relay, s) in streams.iter_mut() {
                let mut touched = false;
                for id in ids {
                    if let Some(seq) = s.seqs.remove(id) {
                        s.inflight.remove(&seq);
                        touched = true;
                    }
                }
                if touched {
                    relays.push(relay.clone());
                }
            }
            relays
        };
        for relay in relays {
            self.persist(&relay).await?;
        }
        Ok(())
    }

    /// Count the attempt and keep the error on the row; the stream goes back to this
    /// message and reads nothing for `retry_after` (messages after it that were
    /// published meanwhile are published again: at-least-once).
    async fn record_failure(
        &self,
        id: MessageId,
        error: &str,
        retry_after: Duration,
    ) -> Result<()> {
        let error: String = error.chars().take(4000).collect();
        sqlx::query(
            "UPDATE outbox_messages SET attempts = attempts + 1, last_error = ? WHERE id = ?",
        )
        .bind(error)
        .bind(super::id_bytes(&id))
        .execute(self.pool())
        .await
        .map_err(storage)?;
        let mut streams = self.streams.lock().unwrap();
        for s in streams.values_mut() {
            if let Some(&seq) = s.seqs.get(&id) {
                s.rewind(seq);
                let due = Instant::now() + retry_after;
                s.not_before = Some(s.not_before.map_or(due, |t| t.max(due)));
            }
        }
        Ok(())
    }

    /// The stream goes back to the first of these messages; they are read again.
    async fn release(&self, ids: &[MessageId]) -> Result<()> {
        let mut streams = self.streams.lock().unwrap();
        for s in streams.values_mut() {
            if let Some(first) = ids.iter().filter_map(|id| s.seqs.get(id).copied()).min() {
                s.rewind(first);
            }
        }
        Ok(())
    }

    /// Persist the position and hand the stream back (owner and lease cleared): another
    /// relay takes it over on its next poll instead of after the lease. Nothing happens
    /// if `relay_id` does not hold the stream.
    async fn relay_stopped(&self, relay_id: &str) -> Result<()> {
        if !self.streams.lock().unwrap().contains_key(relay_id) {
            return Ok(());
        }
        let persisted = self.persist(relay_id).await;
        // Forget the stream (and abort a read ahead) whatever happens next: a relay that
        // comes back takes the lease anew and reloads the position.
        self.streams.lock().unwrap().remove(relay_id);
        match persisted {
            Err(Error::Conflict(_)) => return Ok(()), // no longer ours
            other => other?,
        }
        sqlx::query(
            "UPDATE outbox_relay_position SET owner = NULL, lease_until = NULL \
             WHERE name = ? AND owner = ?",
        )
        .bind(&*self.name)
        .bind(relay_id)
        .execute(self.pool())
        .await
        .map_err(storage)?;
        tracing::info!(relay = relay_id, stream = %self.name, "outbox stream released");
        Ok(())
    }

    /// Delete rows up to the persisted position enqueued more than `retention` ago.
    async fn purge_sent(&self, retention: Duration) -> Result<u64> {
        let before_us = std::time::SystemTime::now()
            .checked_sub(retention)
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_micros() as i64);
        let mut total = 0;
        loop {
            let n = sqlx::query(
                "DELETE FROM outbox_messages WHERE seq <= \
                 (SELECT position FROM outbox_relay_position WHERE name = ?) \
                 AND created_at_us < ? ORDER BY seq LIMIT 5000",
            )
            .bind(&*self.name)
            .bind(before_us)
            .execute(self.pool())
            .await
            .map_err(storage)?
            .rows_affected();
            total += n;
            if n < 5000 {
                return Ok(total);
            }
        }
    }

    async fn backlog(&self) -> Result<Option<crate::Backlog>> {
        let (n, oldest_us): (i64, Option<i64>) = sqlx::query_as(
            "SELECT COUNT(*), MIN(created_at_us) FROM outbox_messages WHERE seq > \
             COALESCE((SELECT position FROM outbox_relay_position WHERE name = ?), 0)",
        )
        .bind(&*self.name)
        .fetch_one(self.pool())
        .await
        .map_err(storage)?;
        Ok(Some(crate::store::backlog_from(n, oldest_us)))
    }
}
