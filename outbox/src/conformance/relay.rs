//! Relay-level guarantees over a store.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::memory::{MemoryBroker, MemoryDeadLetters};
use crate::store::OutboxStore;
use crate::{
    Delivery, DeliveryOutcome, HandlerError, IdempotentConsumer, MessageHandler, MessageId,
    OutboxMessage, Relay, RelayConfig,
};

use super::{enqueue_committed, msg};

/// Relay-level guarantees over a store: everything enqueued is published, per-key order
/// holds under broker failures with two relays, and a relay that dies between publish
/// and mark-sent causes a republish.
pub async fn relay_all<S, F, Fut>(fresh: F)
where
    S: OutboxStore + Clone,
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
{
    everything_is_published_in_key_order(fresh().await).await;
    crash_after_publish_republishes(fresh().await).await;
}

fn fast_config(id: &str) -> RelayConfig {
    RelayConfig {
        relay_id: id.to_owned(),
        batch_size: 16,
        lease: Duration::from_secs(30),
        poll_interval: Duration::from_millis(20),
        backoff: resilience::Retry::default()
            .base_delay(Duration::from_millis(5))
            .max_attempts(u32::MAX)
            .max_delay(Duration::from_millis(50)),
        retention: None,
        backlog_interval: None,
    }
}

/// 4 keys × 25 messages, two relays, a broker failing now and then: every message is
/// published, and per key in enqueue order.
pub async fn everything_is_published_in_key_order<S: OutboxStore + Clone>(store: S) {
    let keys = ["a", "b", "c", "d"];
    let mut all = Vec::new();
    for n in 0..25 {
        let batch: Vec<_> = keys.iter().map(|k| msg("orders", k, n)).collect();
        all.extend(batch.iter().map(|m| m.id));
        enqueue_committed(&store, batch).await;
    }
    let broker = MemoryBroker::new();
    broker.fail_next(3);
    let (stop, rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    let mut counts = Vec::new();
    // Both relays must take part: each holds its first publish until the other has
    // claimed something too (else one fast relay may drain the outbox alone and the
    // test would not exercise two).
    let both = Arc::new(tokio::sync::watch::channel(0u8).0);
    for (i, id) in ["relay-1", "relay-2"].into_iter().enumerate() {
        let tagged = Tagged {
            inner: broker.clone(),
            published: Arc::default(),
            me: 1 << i,
            both: both.clone(),
        };
        counts.push(tagged.published.clone());
        // Batches of 2 over 4 keys: each relay finds keys the other has not leased.
        let config = RelayConfig {
            batch_size: 2,
            ..fast_config(id)
        };
        let relay = Relay::new(store.clone(), tagged, config);
        let mut rx = rx.clone();
        tasks.push(tokio::spawn(relay.run(async move {
            let _ = rx.wait_for(|s| *s).await;
        })));
    }
    tokio::time::timeout(Duration::from_secs(30), broker.wait_for(all.len()))
        .await
        .expect("relays did not publish everything");
    // Failures injected in the middle must not have produced gaps or reordering.
    let published = broker.published();
    let ids: HashSet<MessageId> = published.iter().map(|m| m.id).collect();
    for id in &all {
        assert!(ids.contains(id), "message {id} never published");
    }
    for k in keys {
        let seq: Vec<String> = published
            .iter()
            .filter(|m| m.key == k)
            .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
            .collect();
        let mut dedup = seq.clone();
        dedup.dedup();
        let expected: Vec<String> = (0..25).map(|n| format!("{k}#{n}")).collect();
        assert_eq!(dedup, expected, "key {k} out of order");
    }
    stop.send_replace(true);
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    for (relay, n) in ["relay-1", "relay-2"].iter().zip(&counts) {
        assert!(
            n.load(std::sync::atomic::Ordering::SeqCst) > 0,
            "{relay} published nothing: the test did not exercise two relays"
        );
    }
    assert!(store
        .claim("check", 1000, Duration::from_secs(1))
        .await
        .unwrap()
        .is_empty());
}

/// A relay's publisher: counts what this relay published and yields before each
/// publish, so two relays on a single-threaded runtime really interleave.
struct Tagged {
    inner: MemoryBroker,
    published: Arc<std::sync::atomic::AtomicUsize>,
    /// This relay's bit in `both`.
    me: u8,
    /// The bits of the relays that reached their first publish.
    both: Arc<tokio::sync::watch::Sender<u8>>,
}

impl crate::Publisher for Tagged {
    async fn publish(&self, msg: &OutboxMessage) -> crate::Result<()> {
        self.both.send_modify(|b| *b |= self.me);
        let mut rx = self.both.subscribe();
        tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|b| *b == 0b11))
            .await
            .expect("the other relay claimed nothing within 10 s while this one held messages")
            .expect("the sender lives as long as the relays");
        tokio::task::yield_now().await;
        self.inner.publish(msg).await?;
        self.published
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}

/// Counts messages, transactionally: the increment happens only if the unit of work
/// commits (as a real handler's database writes would).
struct Count(Arc<std::sync::atomic::AtomicUsize>);

impl MessageHandler<crate::memory::MemoryTx> for Count {
    type Output = ();
    async fn handle(
        &self,
        tx: &mut crate::memory::MemoryTx,
        _msg: &Delivery,
    ) -> Result<(), HandlerError> {
        let n = self.0.clone();
        tx.on_commit(move || {
            n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        });
        Ok(())
    }
}

/// A relay killed after the broker acknowledged but before mark-sent: once the lease
/// expires another relay publishes the message again, and an idempotent consumer
/// applies it once.
pub async fn crash_after_publish_republishes<S: OutboxStore + Clone>(store: S) {
    let m = msg("saga.commands", "order-1", 1);
    enqueue_committed(&store, vec![m.clone()]).await;

    // The first relay publishes, then "dies" (its task is dropped) before marking.
    let broker = MemoryBroker::new();
    let claimed = store
        .claim("doomed", 10, Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    crate::Publisher::publish(&broker, &claimed[0])
        .await
        .unwrap();
    // (no mark_sent: crash)

    tokio::time::sleep(Duration::from_millis(1200)).await;
    let relay = Relay::new(store.clone(), broker.clone(), fast_config("survivor"));
    let report = relay.run_once().await.unwrap();
    assert_eq!(
        report.published, 1,
        "the unmarked message must be republished"
    );
    let published = broker.published();
    assert_eq!(published.len(), 2);
    assert!(published.iter().all(|p| p.id == m.id));

    let inbox = crate::memory::MemoryInbox::new();
    let handled = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let consumer = IdempotentConsumer::new("payment", inbox, MemoryDeadLetters::new());
    let handler = Count(handled.clone());
    let outcomes: Vec<DeliveryOutcome> = futures::future::join_all(published.iter().map(|p| {
        let d = p.to_delivery();
        let consumer = &consumer;
        let handler = &handler;
        async move { consumer.process(&d, handler).await.unwrap() }
    }))
    .await;
    assert_eq!(handled.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert!(outcomes.contains(&DeliveryOutcome::Processed));
    assert!(outcomes.contains(&DeliveryOutcome::Duplicate));
}
