//! The memory backends against the shared conformance suite, plus relay and consumer
//! behaviour that needs fault injection.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

mod support;

use outbox::conformance;
use outbox::memory::{MemoryBroker, MemoryDeadLetters, MemoryInbox, MemoryOutbox, MemoryTx};
use outbox::{
    Delivery, DeliveryOutcome, HandlerError, IdempotentConsumer, MessageHandler, OutboxMessage,
    OutboxStore, Publisher, Relay, RelayConfig, Transactional,
};

#[tokio::test(start_paused = true)]
async fn memory_outbox_conformance() {
    conformance::outbox_store_all(|| async { MemoryOutbox::new() }).await;
}

#[tokio::test(start_paused = true)]
async fn memory_relay_conformance() {
    conformance::relay_all(|| async { MemoryOutbox::new() }).await;
}

#[tokio::test]
async fn memory_inbox_conformance() {
    conformance::inbox_all(&MemoryInbox::new()).await;
    conformance::inbox_batches(&MemoryInbox::new()).await;
}

fn config() -> RelayConfig {
    RelayConfig::with_id("r").with_poll_interval(Duration::from_secs(3600))
}

#[tokio::test]
async fn relay_wakes_on_commit_without_waiting_for_the_poll() {
    let store = MemoryOutbox::new();
    let broker = MemoryBroker::new();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(
        Relay::new(store.clone(), broker.clone(), config()).run(async {
            let _ = rx.await;
        }),
    );
    for i in 0..3 {
        let mut tx = store.begin().await.unwrap();
        store
            .enqueue(&mut tx, OutboxMessage::new("t", "k", format!("{i}")))
            .await
            .unwrap();
        store.commit(tx).await.unwrap();
        // The poll interval is an hour: only the commit signal can make this finish.
        tokio::time::timeout(Duration::from_secs(10), broker.wait_for(i + 1))
            .await
            .expect("relay was not woken by the commit");
    }
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
    assert_eq!((store.pending(), store.sent()), (0, 3));
}

#[tokio::test(start_paused = true)]
async fn a_failed_message_is_retried_after_its_backoff_and_counts_attempts() {
    let store = MemoryOutbox::new();
    let m = OutboxMessage::new("t", "k", "x");
    let mut tx = store.begin().await.unwrap();
    store.enqueue(&mut tx, m.clone()).await.unwrap();
    store.commit(tx).await.unwrap();

    let broker = MemoryBroker::new();
    broker.fail_next(3);
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let started = tokio::time::Instant::now();
    let task = tokio::spawn(
        Relay::new(store.clone(), broker.clone(), config()).run(async {
            let _ = rx.await;
        }),
    );
    broker.wait_for(1).await;
    // Three failures hold the message back 100 + 200 + 400 ms before the fourth try
    // succeeds (the poll interval is an hour: the relay comes back when it is due).
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(630), "{waited:?}");
    assert!(waited < Duration::from_millis(800), "{waited:?}");
    let (stored, last_error) = store.get(m.id).unwrap();
    assert_eq!(stored.attempts, 3);
    assert!(last_error.unwrap().contains("injected"));
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
    assert_eq!(store.pending(), 0);
}

/// One key the broker keeps refusing backs off on its own: messages of other keys,
/// committed after it failed, go out at once (before: the whole relay paused after every
/// failed round, up to `max_delay`, and new commits did not cut the pause short).
#[tokio::test(start_paused = true)]
async fn a_poison_key_backs_off_alone_and_never_slows_the_others() {
    let store = MemoryOutbox::new();
    let broker = MemoryBroker::new();
    broker.fail_key("poison");
    let cfg = config().with_backoff(
        resilience::Retry::default()
            .max_attempts(u32::MAX)
            .base_delay(Duration::from_secs(10))
            .max_delay(Duration::from_secs(60)),
    );
    let poison = OutboxMessage::new("t", "poison", "too large");
    let mut tx = store.begin().await.unwrap();
    store.enqueue(&mut tx, poison.clone()).await.unwrap();
    store.commit(tx).await.unwrap();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(Relay::new(store.clone(), broker.clone(), cfg).run(async {
        let _ = rx.await;
    }));
    // Wait (virtual time) for the poison's first failure.
    while store.get(poison.id).unwrap().0.attempts == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    for i in 0..5 {
        let started = tokio::time::Instant::now();
        let mut tx = store.begin().await.unwrap();
        store
            .enqueue(&mut tx, OutboxMessage::new("t", format!("k{i}"), "ok"))
            .await
            .unwrap();
        store.commit(tx).await.unwrap();
        broker.wait_for(i + 1).await;
        let waited = started.elapsed();
        assert!(
            waited < Duration::from_secs(1),
            "message {i} waited {waited:?} behind the poison key"
        );
    }
    // The poison itself is still retried, with growing delays, and never given up.
    tokio::time::sleep(Duration::from_secs(200)).await;
    let (stored, last_error) = store.get(poison.id).unwrap();
    assert!(stored.attempts >= 3, "attempts {}", stored.attempts);
    assert!(
        stored.attempts <= 6,
        "attempts {} (no backoff?)",
        stored.attempts
    );
    assert!(last_error.unwrap().contains("refused"));
    broker.heal_key("poison");
    broker.wait_for(6).await;
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
    assert_eq!(store.pending(), 0);
}

/// A publisher that takes its time, to stop a relay in the middle of a round.
#[derive(Clone)]
struct Slow {
    inner: MemoryBroker,
    started: Arc<tokio::sync::Notify>,
}

impl Publisher for Slow {
    async fn publish(&self, msg: &OutboxMessage) -> outbox::Result<()> {
        self.started.notify_one();
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.inner.publish(msg).await
    }
}

/// Ten messages of one key in an outbox, a broker, the slow publisher in front of it
/// and the signal it gives when a publish starts.
async fn ten_messages_and_a_slow_broker(
) -> (MemoryOutbox, MemoryBroker, Slow, Arc<tokio::sync::Notify>) {
    let store = MemoryOutbox::new();
    let mut tx = store.begin().await.unwrap();
    for i in 0..10 {
        store
            .enqueue(&mut tx, OutboxMessage::new("t", "same-key", format!("{i}")))
            .await
            .unwrap();
    }
    store.commit(tx).await.unwrap();
    let broker = MemoryBroker::new();
    let started = Arc::new(tokio::sync::Notify::new());
    let slow = Slow {
        inner: broker.clone(),
        started: started.clone(),
    };
    (store, broker, slow, started)
}

#[tokio::test(start_paused = true)]
async fn graceful_stop_finishes_the_claimed_batch() {
    let (store, broker, slow, started) = ten_messages_and_a_slow_broker().await;
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(Relay::new(store.clone(), slow, config()).run(async {
        let _ = rx.await;
    }));
    started.notified().await; // the round is under way
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
    // The whole claimed batch went out and was marked; nothing is left leased.
    assert_eq!(broker.published().len(), 10);
    assert_eq!(store.pending(), 0);
}

/// A relay task killed in the middle of a round (aborted while a publish is in flight,
/// its batch leased and unmarked): the relay restarted under the same id takes its own
/// leases back at once — no waiting out the 30 s lease — and publishes everything, in
/// key order; nothing stays pending.
#[tokio::test(start_paused = true)]
async fn a_relay_killed_mid_round_loses_nothing_and_its_successor_does_not_wait() {
    let (store, broker, slow, started) = ten_messages_and_a_slow_broker().await;
    let doomed =
        tokio::spawn(Relay::new(store.clone(), slow, config()).run(std::future::pending()));
    started.notified().await; // a publish is in flight
    doomed.abort();
    assert!(doomed.await.unwrap_err().is_cancelled());
    assert_eq!(store.pending(), 10, "the killed round marked nothing");

    let killed_at = tokio::time::Instant::now();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let successor = tokio::spawn(
        Relay::new(store.clone(), broker.clone(), config()).run(async {
            let _ = rx.await;
        }),
    );
    broker.wait_for(10).await;
    assert!(
        killed_at.elapsed() < Duration::from_secs(1),
        "the successor waited {:?} (the lease is 30 s)",
        killed_at.elapsed()
    );
    stop.send(()).unwrap();
    successor.await.unwrap().unwrap();
    let payloads: Vec<String> = broker
        .published()
        .iter()
        .map(|m| String::from_utf8(m.payload.to_vec()).unwrap())
        .collect();
    let expected: Vec<String> = (0..10).map(|i| i.to_string()).collect();
    assert_eq!(payloads, expected, "in key order, each once");
    assert_eq!(store.pending(), 0);
}

/// Fails transiently every time, like a message the payment service cannot apply.
struct AlwaysFails(Arc<AtomicU32>);

impl MessageHandler<MemoryTx> for AlwaysFails {
    type Output = ();
    async fn handle(&self, _tx: &mut MemoryTx, _msg: &Delivery) -> Result<(), HandlerError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Err(HandlerError::transient("database deadlock"))
    }
}

#[tokio::test(start_paused = true)]
async fn poison_message_is_dead_lettered_after_three_attempts() {
    let dlq = MemoryDeadLetters::new();
    let inbox = MemoryInbox::new();
    let consumer = IdempotentConsumer::new("payment", inbox.clone(), dlq.clone());
    let calls = Arc::new(AtomicU32::new(0));
    let handler = AlwaysFails(calls.clone());
    let d = OutboxMessage::new("saga.commands", "order-9", "poison").to_delivery();

    let outcome = consumer.process(&d, &handler).await.unwrap();
    assert!(
        matches!(outcome, DeliveryOutcome::DeadLettered { ref reason } if reason.contains("deadlock"))
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let parked = dlq.parked();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].0, d);
    assert!(parked[0].1.contains("3 attempt"));

    // Redelivered after dead-lettering: recognised as settled, not parked twice.
    assert_eq!(
        consumer.process(&d, &handler).await.unwrap(),
        DeliveryOutcome::Duplicate
    );
    assert_eq!(dlq.parked().len(), 1);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

struct Undecodable;

impl MessageHandler<MemoryTx> for Undecodable {
    type Output = ();
    async fn handle(&self, _tx: &mut MemoryTx, _msg: &Delivery) -> Result<(), HandlerError> {
        Err(HandlerError::permanent("cannot decode payload"))
    }
}

#[tokio::test(start_paused = true)]
async fn permanent_failure_skips_retries() {
    let dlq = MemoryDeadLetters::new();
    let consumer = IdempotentConsumer::new("payment", MemoryInbox::new(), dlq.clone());
    let d = OutboxMessage::new("saga.commands", "k", "garbage").to_delivery();
    let outcome = consumer.process(&d, &Undecodable).await.unwrap();
    assert!(
        matches!(outcome, DeliveryOutcome::DeadLettered { ref reason } if reason.contains("1 attempt"))
    );
    assert_eq!(dlq.parked().len(), 1);
}

/// MessageHandler whose writes (an outbox reply) go through the same unit of work as the inbox.
struct Reply(MemoryOutbox);

impl MessageHandler<MemoryTx> for Reply {
    type Output = ();
    async fn handle(&self, tx: &mut MemoryTx, msg: &Delivery) -> Result<(), HandlerError> {
        self.0
            .enqueue(
                tx,
                OutboxMessage::new("saga.replies", msg.key.clone(), "ok"),
            )
            .await
            .map_err(HandlerError::transient)
    }
}

#[tokio::test]
async fn handler_writes_commit_with_the_inbox_record_exactly_once() {
    let replies = MemoryOutbox::new();
    let consumer = IdempotentConsumer::new("payment", MemoryInbox::new(), MemoryDeadLetters::new());
    let d = OutboxMessage::new("saga.commands", "order-1", "debit").to_delivery();
    let handler = Reply(replies.clone());
    let outcomes = futures_join(&consumer, &handler, &d).await;
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| **o == DeliveryOutcome::Processed)
            .count(),
        1
    );
    assert_eq!(replies.pending(), 1, "exactly one reply for one command");
}

async fn futures_join(
    consumer: &IdempotentConsumer<MemoryInbox, MemoryDeadLetters>,
    handler: &Reply,
    d: &Delivery,
) -> Vec<DeliveryOutcome> {
    let (a, b, c) = tokio::join!(
        consumer.process(d, handler),
        consumer.process(d, handler),
        consumer.process(d, handler)
    );
    vec![a.unwrap(), b.unwrap(), c.unwrap()]
}

mod local_bus {
    use super::*;
    use outbox::local::LocalBus;

    /// Records payloads on commit; refuses `poison` permanently unless `accept_all`.
    #[derive(Clone, Default)]
    struct Sink {
        seen: Arc<std::sync::Mutex<Vec<String>>>,
        accept_all: bool,
    }

    impl MessageHandler<MemoryTx> for Sink {
        type Output = ();
        async fn handle(&self, tx: &mut MemoryTx, msg: &Delivery) -> Result<(), HandlerError> {
            if !self.accept_all && &msg.payload[..] == b"poison" {
                return Err(HandlerError::permanent("cannot decode"));
            }
            let seen = self.seen.clone();
            let p = String::from_utf8(msg.payload.to_vec()).unwrap();
            tx.on_commit(move || seen.lock().unwrap().push(p));
            Ok(())
        }
    }

    async fn enqueue(store: &MemoryOutbox, key: &str, payloads: &[&str]) {
        let mut tx = store.begin().await.unwrap();
        for p in payloads {
            store
                .enqueue(&mut tx, OutboxMessage::new("t", key, p.to_string()))
                .await
                .unwrap();
        }
        store.commit(tx).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn delivers_in_order_acks_after_commit_and_retries_while_the_consumer_is_down() {
        let bus = LocalBus::new().with_dead_letter_topic("dlq");
        let sink = Sink::default();
        let inbox = crate::support::DownInbox::default();
        bus.subscribe(
            "t",
            IdempotentConsumer::new("c", inbox.clone(), bus.clone()),
            sink.clone(),
        );
        let parked = Sink {
            accept_all: true,
            ..Sink::default()
        };
        bus.subscribe(
            "dlq",
            IdempotentConsumer::new("dlq-reader", MemoryInbox::new(), MemoryDeadLetters::new()),
            parked.clone(),
        );

        let store = MemoryOutbox::new();
        enqueue(&store, "k", &["1", "2", "poison", "3"]).await;
        inbox.down.store(true, Ordering::SeqCst);
        let relay = Relay::new(store.clone(), bus.clone(), config());
        let r = relay.run_once().await.unwrap();
        assert_eq!(
            (r.published, r.failed),
            (0, 1),
            "nothing acked while the consumer is down"
        );
        assert_eq!(store.pending(), 4);

        inbox.down.store(false, Ordering::SeqCst);
        // The failed message (and its key) is held back for its first retry delay.
        assert_eq!(relay.run_once().await.unwrap().claimed, 0);
        tokio::time::sleep(relay.config().backoff.nominal_delay(1)).await;
        let r = relay.run_once().await.unwrap();
        assert_eq!(r.published, 4);
        assert_eq!(store.pending(), 0);
        assert_eq!(*sink.seen.lock().unwrap(), ["1", "2", "3"]);
        assert_eq!(*parked.seen.lock().unwrap(), ["poison"]);

        // A crash after delivery but before mark-sent: the repeat is dropped by the inbox.
        let m = OutboxMessage::new("t", "k", "4");
        bus.publish(&m).await.unwrap();
        bus.publish(&m).await.unwrap();
        assert_eq!(*sink.seen.lock().unwrap(), ["1", "2", "3", "4"]);
    }

    #[tokio::test]
    async fn no_subscriber_means_not_delivered() {
        let bus = LocalBus::new();
        assert!(bus
            .publish(&OutboxMessage::new("nobody", "k", "x"))
            .await
            .is_err());
        outbox::DeadLetter::dead_letter(
            &bus,
            &OutboxMessage::new("t", "k", "x").to_delivery(),
            "why",
        )
        .await
        .unwrap();
        assert_eq!(bus.parked().len(), 1);
    }
}

/// An inbox whose first `fail_commits` commits fail with a conflict (nothing applied).
struct ConflictingCommits {
    inner: MemoryInbox,
    fail_commits: AtomicU32,
}

impl Transactional for ConflictingCommits {
    type Tx = MemoryTx;
    async fn begin(&self) -> outbox::Result<MemoryTx> {
        self.inner.begin().await
    }
    async fn commit(&self, tx: MemoryTx) -> outbox::Result<()> {
        if self
            .fail_commits
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            drop(tx); // rolled back
            return Err(outbox::Error::Conflict("serialization failure".into()));
        }
        self.inner.commit(tx).await
    }
}

impl outbox::Inbox for ConflictingCommits {
    async fn try_record(
        &self,
        tx: &mut MemoryTx,
        consumer: &str,
        id: outbox::MessageId,
    ) -> outbox::Result<bool> {
        self.inner.try_record(tx, consumer, id).await
    }
    async fn purge(&self, retention: Duration) -> outbox::Result<u64> {
        self.inner.purge(retention).await
    }
}

/// Adds up, after each commit, what `handle` returned for the committed attempt: the
/// payload's length.
struct Committed(Arc<AtomicU32>);

impl MessageHandler<MemoryTx> for Committed {
    type Output = u32;
    async fn handle(&self, _tx: &mut MemoryTx, msg: &Delivery) -> Result<u32, HandlerError> {
        Ok(msg.payload.len() as u32)
    }
    async fn after_commit(&self, _msg: &Delivery, len: u32) {
        self.0.fetch_add(len, Ordering::SeqCst);
    }
}

#[tokio::test(start_paused = true)]
async fn a_conflict_at_commit_is_retried_not_taken_for_a_duplicate() {
    let inbox = ConflictingCommits {
        inner: MemoryInbox::new(),
        fail_commits: AtomicU32::new(1),
    };
    let consumer = IdempotentConsumer::new("payment", inbox, MemoryDeadLetters::new());
    let committed = Arc::new(AtomicU32::new(0));
    let msg = OutboxMessage::new("saga.commands", "order-1", "debit").to_delivery();
    let outcome = consumer
        .process(&msg, &Committed(committed.clone()))
        .await
        .unwrap();
    assert_eq!(
        outcome,
        DeliveryOutcome::Processed,
        "the effect must not be dropped"
    );
    // Handled twice (the first commit failed), reported once: the committed attempt's
    // output ("debit": 5 bytes) reaches `after_commit`, the rolled-back one's does not.
    assert_eq!(committed.load(Ordering::SeqCst), 5);
    // And it is recorded: a redelivery is the duplicate.
    let again = consumer
        .process(&msg, &Committed(committed.clone()))
        .await
        .unwrap();
    assert_eq!(again, DeliveryOutcome::Duplicate);
    assert_eq!(
        committed.load(Ordering::SeqCst),
        5,
        "no after_commit for a duplicate"
    );
}

/// A handler behind an `Arc` is a handler: its output reaches its `after_commit`.
#[tokio::test]
async fn a_shared_handler_handles_and_hears_of_its_commits() {
    let consumer = IdempotentConsumer::new("payment", MemoryInbox::new(), MemoryDeadLetters::new());
    let committed = Arc::new(AtomicU32::new(0));
    let shared = Arc::new(Committed(committed.clone()));
    let msg = OutboxMessage::new("saga.commands", "order-1", "refund").to_delivery();
    let outcome = consumer.process(&msg, &shared.clone()).await.unwrap();
    assert_eq!(outcome, DeliveryOutcome::Processed);
    assert_eq!(committed.load(Ordering::SeqCst), 6);
}

/// Fails with an infrastructure error (database down, deadlock) a number of times.
struct DatabaseDown(Arc<AtomicU32>);

impl MessageHandler<MemoryTx> for DatabaseDown {
    type Output = ();
    async fn handle(&self, _tx: &mut MemoryTx, _msg: &Delivery) -> Result<(), HandlerError> {
        if self
            .0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(HandlerError::infrastructure(
                "Deadlock found when trying to get lock",
            ));
        }
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn infrastructure_failures_are_never_dead_lettered() {
    let dead = MemoryDeadLetters::new();
    let consumer = IdempotentConsumer::new("payment", MemoryInbox::new(), dead.clone());
    // More failures than the retry policy's attempts: process() gives the message back
    // (Err, not settled) instead of parking it, and a later delivery applies it.
    let failures = Arc::new(AtomicU32::new(4));
    let msg = OutboxMessage::new("saga.commands", "order-1", "debit").to_delivery();
    let handler = DatabaseDown(failures.clone());
    assert!(consumer.process(&msg, &handler).await.is_err()); // 3 attempts, 3 failures
    assert_eq!(
        consumer.process(&msg, &handler).await.unwrap(),
        DeliveryOutcome::Processed
    );
    assert!(
        dead.parked().is_empty(),
        "dead-lettered: {:?}",
        dead.parked()
    );
}

/// The backlog: how many messages are unsent and since when the oldest waits.
#[tokio::test]
async fn the_backlog_counts_the_unsent_and_dates_the_oldest() {
    let store = MemoryOutbox::new();
    let empty = store
        .backlog()
        .await
        .unwrap()
        .expect("the memory outbox reports");
    assert_eq!((empty.messages, empty.oldest), (0, None));
    let mut created = Vec::new();
    let mut tx = store.begin().await.unwrap();
    for i in 0..3 {
        let mut msg = OutboxMessage::new("t", format!("k{i}"), "p");
        msg.created_at = std::time::UNIX_EPOCH + Duration::from_secs(1_000 + i);
        created.push(msg.created_at);
        store.enqueue(&mut tx, msg).await.unwrap();
    }
    store.commit(tx).await.unwrap();
    let all = store.backlog().await.unwrap().unwrap();
    assert_eq!((all.messages, all.oldest), (3, Some(created[0])));
    // The oldest is sent: the next one is the oldest now.
    let claimed = store.claim("r", 1, Duration::from_secs(60)).await.unwrap();
    store.mark_sent(&[claimed[0].id]).await.unwrap();
    let rest = store.backlog().await.unwrap().unwrap();
    assert_eq!((rest.messages, rest.oldest), (2, Some(created[1])));
}

/// `contains` tells what a consumer recorded, per consumer, once committed.
#[tokio::test]
async fn the_memory_inbox_knows_what_each_consumer_recorded() {
    use outbox::Inbox;
    let inbox = MemoryInbox::new();
    let msg = OutboxMessage::new("t", "k", "p");
    assert!(!inbox.contains("payments", msg.id));
    let mut tx = inbox.begin().await.unwrap();
    assert!(inbox.try_record(&mut tx, "payments", msg.id).await.unwrap());
    assert!(!inbox.contains("payments", msg.id), "not before the commit");
    inbox.commit(tx).await.unwrap();
    assert!(inbox.contains("payments", msg.id));
    assert!(
        !inbox.contains("orders", msg.id),
        "another consumer's record"
    );
}

/// A record is kept for exactly its retention: purged at the instant it is that old.
#[tokio::test(start_paused = true)]
async fn the_memory_inbox_keeps_a_record_for_exactly_its_retention() {
    use outbox::Inbox;
    let inbox = MemoryInbox::new();
    let (old, young) = (
        OutboxMessage::new("t", "k", "1"),
        OutboxMessage::new("t", "k", "2"),
    );
    let mut tx = inbox.begin().await.unwrap();
    inbox.try_record(&mut tx, "c", old.id).await.unwrap();
    inbox.commit(tx).await.unwrap();
    tokio::time::advance(Duration::from_secs(1)).await;
    let mut tx = inbox.begin().await.unwrap();
    inbox.try_record(&mut tx, "c", young.id).await.unwrap();
    inbox.commit(tx).await.unwrap();
    let retention = Duration::from_secs(60);
    tokio::time::advance(retention - Duration::from_secs(1) - Duration::from_millis(1)).await;
    assert_eq!(inbox.purge(retention).await.unwrap(), 0);
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(inbox.purge(retention).await.unwrap(), 1, "60 s old now");
    assert!(!inbox.contains("c", old.id));
    assert!(inbox.contains("c", young.id));
}

/// One round reports what it did; the backlog is reported as gauges per relay.
#[test]
fn a_round_reports_what_it_did_and_the_backlog_its_gauges() {
    let recorder = ordersys_testkit::MetricsRecorder::default();
    metrics::with_local_recorder(&recorder, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
            .block_on(async {
                let store = MemoryOutbox::new();
                let relay = Relay::new(store.clone(), MemoryBroker::new(), config());
                assert_eq!(relay.config().relay_id, "r");
                let mut tx = store.begin().await.unwrap();
                for i in 0..3 {
                    let mut msg = OutboxMessage::new("t", format!("k{i}"), "p");
                    msg.created_at = std::time::SystemTime::now() - Duration::from_secs(60);
                    store.enqueue(&mut tx, msg).await.unwrap();
                }
                store.commit(tx).await.unwrap();
                let backlog = relay.report_backlog().await.unwrap().expect("reported");
                assert_eq!(backlog.messages, 3);
                let relay_label = [("relay", "r")];
                assert_eq!(
                    recorder.gauge("outbox_backlog_messages", &relay_label),
                    Some(3.0)
                );
                let age = recorder
                    .gauge("outbox_oldest_unsent_age_seconds", &relay_label)
                    .unwrap();
                assert!((60.0..120.0).contains(&age), "{age}");
                let round = relay.run_once().await.unwrap();
                assert_eq!((round.claimed, round.published, round.failed), (3, 3, 0));
                relay.report_backlog().await.unwrap();
                assert_eq!(
                    recorder.gauge("outbox_backlog_messages", &relay_label),
                    Some(0.0)
                );
                let idle = relay.run_once().await.unwrap();
                assert_eq!((idle.claimed, idle.published), (0, 0));
            });
    });
}
