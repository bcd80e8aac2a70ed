//! The in-process bus batches a subscription's deliveries: what arrives while a unit of
//! work runs is handled together in the next, by the caller that came first.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

mod support;

use outbox::local::LocalBus;
use outbox::memory::{MemoryOutbox, MemoryTx};
use outbox::{
    Delivery, HandlerError, IdempotentConsumer, MessageHandler, OutboxMessage, OutboxStore,
    Publisher, Relay, RelayConfig, Transactional,
};
use tokio::sync::Notify;

/// Records payloads on commit; a message keyed `slow` first says it arrived, then waits
/// for `go`.
#[derive(Clone, Default)]
struct Sink {
    seen: Arc<Mutex<Vec<String>>>,
    arrived: Arc<Notify>,
    go: Arc<Notify>,
}

impl MessageHandler<MemoryTx> for Sink {
    type Output = ();
    async fn handle(&self, tx: &mut MemoryTx, msg: &Delivery) -> Result<(), HandlerError> {
        if msg.key == "slow" {
            self.arrived.notify_one();
            self.go.notified().await;
        }
        let seen = self.seen.clone();
        let p = String::from_utf8(msg.payload.to_vec()).unwrap();
        tx.on_commit(move || seen.lock().unwrap().push(p));
        Ok(())
    }
}

fn bus_with(sink: &Sink) -> (LocalBus, support::DownInbox) {
    let bus = LocalBus::new();
    let inbox = support::DownInbox::default();
    bus.subscribe(
        "t",
        IdempotentConsumer::new("c", inbox.clone(), outbox::memory::MemoryDeadLetters::new()),
        sink.clone(),
    );
    (bus, inbox)
}

#[tokio::test]
async fn a_relay_round_of_many_keys_is_one_unit_of_work() {
    let sink = Sink::default();
    let (bus, inbox) = bus_with(&sink);
    let store = MemoryOutbox::new();
    let mut tx = store.begin().await.unwrap();
    for i in 0..20 {
        let m = OutboxMessage::new("t", format!("k{i}"), i.to_string());
        store.enqueue(&mut tx, m).await.unwrap();
    }
    store.commit(tx).await.unwrap();

    let relay = Relay::new(store.clone(), bus, RelayConfig::default());
    assert_eq!(relay.run_once().await.unwrap().published, 20);
    assert_eq!(sink.seen.lock().unwrap().len(), 20);
    assert_eq!(
        inbox.attempts.load(Ordering::SeqCst),
        1,
        "20 keys published together were not handled in one unit of work"
    );
}

#[tokio::test]
async fn a_caller_that_gives_up_fails_the_waiting_deliveries_and_frees_the_bus() {
    let sink = Sink::default();
    let (bus, _inbox) = bus_with(&sink);
    let slow = OutboxMessage::new("t", "slow", "slow");
    let mut first = Box::pin(bus.publish(&slow));
    tokio::select! {
        _ = &mut first => panic!("the slow message finished"),
        () = sink.arrived.notified() => {}
    }
    // Queued behind the unit of work in progress, which the first caller runs.
    let queued = tokio::spawn({
        let bus = bus.clone();
        async move { bus.publish(&OutboxMessage::new("t", "k", "queued")).await }
    });
    // A current-thread runtime: the spawned publish runs (and queues) before this
    // test goes on.
    tokio::task::yield_now().await;
    assert!(!queued.is_finished());
    drop(first); // the first caller gives up half way

    let failed = tokio::time::timeout(std::time::Duration::from_secs(30), queued)
        .await
        .expect("a queued delivery waits for a caller that is gone")
        .unwrap();
    assert!(
        failed.is_err(),
        "a delivery nobody handled was acknowledged"
    );
    // The bus is free again: the next delivery is handled.
    bus.publish(&OutboxMessage::new("t", "k", "next"))
        .await
        .unwrap();
    assert_eq!(*sink.seen.lock().unwrap(), ["next"]);
}
