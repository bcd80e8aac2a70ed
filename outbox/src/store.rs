//! The storage and transport traits. Backends: [`memory`](crate::memory) here; MySQL
//! (sqlx) and Kafka (rdkafka) behind cargo features.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::{Delivery, MessageId, OutboxMessage, Result};

/// The claim rule every backend applies to its unsent messages, oldest first: take up to
/// `limit`, skipping every message whose key already has an earlier message that is
/// leased elsewhere (or was skipped) — that is what keeps per-key order with several
/// relays. `candidates` yields `(key, leased_elsewhere)`; returns the chosen indexes.
pub(crate) fn claimable<'a>(
    candidates: impl IntoIterator<Item = (&'a str, bool)>,
    limit: usize,
) -> Vec<usize> {
    let mut blocked = std::collections::HashSet::new();
    let mut chosen = Vec::new();
    for (i, (key, leased)) in candidates.into_iter().enumerate() {
        if chosen.len() >= limit {
            break;
        }
        if leased || blocked.contains(key) {
            blocked.insert(key);
            continue;
        }
        chosen.push(i);
    }
    chosen
}

/// A store whose writes happen inside a unit of work (a database transaction) that the
/// caller also uses for its business writes. Dropping a `Tx` without committing rolls it
/// back.
pub trait Transactional: Send + Sync + 'static {
    /// The unit of work: `sqlx::Transaction<'static, MySql>` for MySQL,
    /// [`MemoryTx`](crate::memory::MemoryTx) in memory.
    type Tx: Send + 'static;

    /// Start a unit of work.
    fn begin(&self) -> impl Future<Output = Result<Self::Tx>> + Send;

    /// Make everything written in `tx` durable and visible, atomically.
    fn commit(&self, tx: Self::Tx) -> impl Future<Output = Result<()>> + Send;
}

/// The outbox table: written in the business transaction, drained by a
/// [`Relay`](crate::Relay).
///
/// Claiming is safe with several relays at once: a claimed message is leased to its
/// relay until `mark_sent`, `release`, `record_failure` or lease expiry (a failed
/// message is then held back until its retry time), and a message
/// is never claimed while an earlier unsent message with the same key is leased to
/// another relay (per-key order). A relay may re-claim its *own* leases at once: a relay
/// restarted with the same id picks up what its previous run left leased instead of
/// waiting for the leases to expire (so relay ids must be unique among live relays and
/// stable across restarts of one).
pub trait OutboxStore: Transactional {
    /// Add `msg` to the outbox inside `tx`.
    fn enqueue(
        &self,
        tx: &mut Self::Tx,
        msg: OutboxMessage,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Lease up to `limit` unsent messages to `relay_id` for `lease`, oldest first.
    fn claim(
        &self,
        relay_id: &str,
        limit: usize,
        lease: Duration,
    ) -> impl Future<Output = Result<Vec<OutboxMessage>>> + Send;

    /// The broker acknowledged these messages: never publish them again.
    fn mark_sent(&self, ids: &[MessageId]) -> impl Future<Output = Result<()>> + Send;

    /// Publishing `id` failed: count the attempt, keep the error, release the lease and
    /// hold the message back for `retry_after`: until then no relay claims it, nor any
    /// later message of its key (per-key order), while other keys flow on. This is how
    /// one message the broker keeps refusing backs off on its own instead of slowing the
    /// relay for everybody.
    fn record_failure(
        &self,
        id: MessageId,
        error: &str,
        retry_after: Duration,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Give leased messages back without counting an attempt (e.g. on shutdown, or when
    /// an earlier message of the same key failed).
    fn release(&self, ids: &[MessageId]) -> impl Future<Output = Result<()>> + Send;

    /// Delete sent messages older than `retention`; returns how many were deleted.
    fn purge_sent(&self, retention: Duration) -> impl Future<Output = Result<u64>> + Send;

    /// How much is waiting to be published, for the relay's metrics
    /// (`outbox_backlog_messages`, `outbox_oldest_unsent_age_seconds`). Default: `None`
    /// (not reported).
    fn backlog(&self) -> impl Future<Output = Result<Option<Backlog>>> + Send {
        async { Ok(None) }
    }

    /// Signalled when a unit of work that enqueued something committed, if the backend
    /// can tell (the memory backend can; a SQL backend shared by several processes
    /// cannot, and the relay falls back to polling).
    fn commit_signal(&self) -> Option<Arc<Notify>> {
        None
    }

    /// The relay `relay_id` stops gracefully ([`Relay::run`](crate::Relay::run) calls
    /// this after its last round, when nothing it claimed is still leased): give up
    /// whatever else the store holds for it. Default: nothing. The streaming outbox
    /// (`mysql::MySqlStreamingOutbox`, feature `mysql`) persists its
    /// position and hands the stream back, so another relay takes over at once instead
    /// of after the lease.
    fn relay_stopped(&self, relay_id: &str) -> impl Future<Output = Result<()>> + Send {
        let _ = relay_id;
        async { Ok(()) }
    }
}

/// The consumer-side record of processed messages ("inbox"), written in the same unit of
/// work as the handler's own writes, so a message's effects happen exactly once even
/// though it may be delivered more than once.
pub trait Inbox: Transactional {
    /// Record that `consumer` processed `id` inside `tx`. Returns `false` if it was
    /// already recorded (the delivery is a duplicate and must be skipped).
    fn try_record(
        &self,
        tx: &mut Self::Tx,
        consumer: &str,
        id: MessageId,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// Forget records older than `retention`; returns how many were deleted. Keep
    /// `retention` longer than any redelivery can take (the broker's retention, plus
    /// the longest outage a consumer may sit out): a message redelivered after its
    /// record was purged is processed again.
    fn purge(&self, retention: Duration) -> impl Future<Output = Result<u64>> + Send;
}

/// Sends a message to the broker and resolves once the broker acknowledged it.
pub trait Publisher: Send + Sync + 'static {
    /// Publish `msg` to `msg.topic` with `msg.key` and `msg.headers` (plus the
    /// [`MESSAGE_ID_HEADER`](crate::MESSAGE_ID_HEADER)).
    fn publish(&self, msg: &OutboxMessage) -> impl Future<Output = Result<()>> + Send;
}

/// What an outbox holds unsent ([`OutboxStore::backlog`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backlog {
    /// Unsent messages (leased or not, held back or not).
    pub messages: u64,
    /// When the oldest of them was enqueued (`None` when there are none).
    pub oldest: Option<std::time::SystemTime>,
}

/// A [`Backlog`] from a count and the oldest `created_at_us` (SQL backends).
#[cfg(any(feature = "mysql", feature = "sqlite"))]
pub(crate) fn backlog_from(messages: i64, oldest_us: Option<i64>) -> Backlog {
    Backlog {
        messages: messages.max(0) as u64,
        oldest: oldest_us.map(|us| std::time::UNIX_EPOCH + Duration::from_micros(us.max(0) as u64)),
    }
}

/// Where messages go that could not be processed (the `dlq.saga` topic in ordersys).
pub trait DeadLetter: Send + Sync + 'static {
    /// Park `msg`, with the reason it failed.
    fn dead_letter(&self, msg: &Delivery, reason: &str) -> impl Future<Output = Result<()>> + Send;
}

impl<T: Transactional> Transactional for Arc<T> {
    type Tx = T::Tx;
    fn begin(&self) -> impl Future<Output = Result<Self::Tx>> + Send {
        (**self).begin()
    }
    fn commit(&self, tx: Self::Tx) -> impl Future<Output = Result<()>> + Send {
        (**self).commit(tx)
    }
}

impl<T: OutboxStore> OutboxStore for Arc<T> {
    fn enqueue(
        &self,
        tx: &mut Self::Tx,
        msg: OutboxMessage,
    ) -> impl Future<Output = Result<()>> + Send {
        (**self).enqueue(tx, msg)
    }
    fn claim(
        &self,
        relay_id: &str,
        limit: usize,
        lease: Duration,
    ) -> impl Future<Output = Result<Vec<OutboxMessage>>> + Send {
        (**self).claim(relay_id, limit, lease)
    }
    fn mark_sent(&self, ids: &[MessageId]) -> impl Future<Output = Result<()>> + Send {
        (**self).mark_sent(ids)
    }
    fn record_failure(
        &self,
        id: MessageId,
        error: &str,
        retry_after: Duration,
    ) -> impl Future<Output = Result<()>> + Send {
        (**self).record_failure(id, error, retry_after)
    }
    fn release(&self, ids: &[MessageId]) -> impl Future<Output = Result<()>> + Send {
        (**self).release(ids)
    }
    fn purge_sent(&self, retention: Duration) -> impl Future<Output = Result<u64>> + Send {
        (**self).purge_sent(retention)
    }
    fn backlog(&self) -> impl Future<Output = Result<Option<Backlog>>> + Send {
        (**self).backlog()
    }
    fn commit_signal(&self) -> Option<Arc<Notify>> {
        (**self).commit_signal()
    }
    fn relay_stopped(&self, relay_id: &str) -> impl Future<Output = Result<()>> + Send {
        (**self).relay_stopped(relay_id)
    }
}

impl<T: Inbox> Inbox for Arc<T> {
    fn try_record(
        &self,
        tx: &mut Self::Tx,
        consumer: &str,
        id: MessageId,
    ) -> impl Future<Output = Result<bool>> + Send {
        (**self).try_record(tx, consumer, id)
    }
    fn purge(&self, retention: Duration) -> impl Future<Output = Result<u64>> + Send {
        (**self).purge(retention)
    }
}

impl<T: Publisher> Publisher for Arc<T> {
    fn publish(&self, msg: &OutboxMessage) -> impl Future<Output = Result<()>> + Send {
        (**self).publish(msg)
    }
}

impl<T: DeadLetter> DeadLetter for Arc<T> {
    fn dead_letter(&self, msg: &Delivery, reason: &str) -> impl Future<Output = Result<()>> + Send {
        (**self).dead_letter(msg, reason)
    }
}

#[cfg(test)]
mod tests {
    use super::claimable;

    #[test]
    fn claim_rule_keeps_keys_in_order_and_respects_the_limit() {
        // a1 leased elsewhere → a2, a3 wait; b and c are free.
        let rows = [
            ("a", true),
            ("b", false),
            ("a", false),
            ("c", false),
            ("a", false),
            ("b", false),
        ];
        assert_eq!(claimable(rows, 10), vec![1, 3, 5]);
        assert_eq!(claimable(rows, 2), vec![1, 3]);
        assert!(claimable(rows, 0).is_empty());
        assert_eq!(claimable([("x", false), ("x", false)], 10), vec![0, 1]);
    }

    #[cfg(any(feature = "mysql", feature = "sqlite"))]
    #[test]
    fn a_backlog_from_sql_columns() {
        use super::backlog_from;
        use std::time::{Duration, UNIX_EPOCH};
        let b = backlog_from(3, Some(1_500_000));
        assert_eq!(b.messages, 3);
        assert_eq!(
            b.oldest,
            Some(UNIX_EPOCH + Duration::from_micros(1_500_000))
        );
        let none = backlog_from(0, None);
        assert_eq!((none.messages, none.oldest), (0, None));
        // Nonsense from a broken table is clamped, never wrapped around.
        let clamped = backlog_from(-1, Some(-5));
        assert_eq!((clamped.messages, clamped.oldest), (0, Some(UNIX_EPOCH)));
    }
}
