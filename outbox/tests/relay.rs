//! The relay's own bookkeeping, seen through the store it drives: what a failed round
//! gives back, and how often the backlog and retention sweeps run.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outbox::memory::{MemoryBroker, MemoryOutbox, MemoryTx};
use outbox::{Backlog, MessageId, OutboxMessage, OutboxStore, Relay, RelayConfig, Transactional};
use tokio::sync::Notify;

/// A failure holds back its own message; the later messages of its key that the round
/// did not try are released at once — any relay may take them when the key is due
/// again, not only after the failed relay's lease (an hour here) runs out.
#[tokio::test(start_paused = true)]
async fn what_a_failed_round_did_not_try_is_released_for_any_relay() {
    let store = MemoryOutbox::new();
    let mut tx = store.begin().await.unwrap();
    for i in 0..3 {
        store
            .enqueue(&mut tx, OutboxMessage::new("t", "k", format!("{i}")))
            .await
            .unwrap();
    }
    store.commit(tx).await.unwrap();
    let broker = MemoryBroker::new();
    broker.fail_next(1);
    let lease = Duration::from_secs(3600);
    let first = Relay::new(
        store.clone(),
        broker.clone(),
        RelayConfig::with_id("a").with_lease(lease),
    );
    let round = first.run_once().await.unwrap();
    assert_eq!(
        (round.claimed, round.published, round.failed, round.released),
        (3, 0, 1, 2)
    );
    // The failed message's retry delay (100 ms nominal for a first failure) passes.
    tokio::time::advance(Duration::from_secs(1)).await;
    let second = Relay::new(
        store.clone(),
        broker.clone(),
        RelayConfig::with_id("b").with_lease(lease),
    );
    let round = second.run_once().await.unwrap();
    assert_eq!((round.claimed, round.published), (3, 3), "{round:?}");
    let order: Vec<_> = broker
        .published()
        .iter()
        .map(|m| m.payload.clone())
        .collect();
    assert_eq!(order, ["0", "1", "2"]);
}

/// Counts what the relay asks of a memory outbox.
#[derive(Clone, Default)]
struct Counting {
    inner: MemoryOutbox,
    claims: Arc<AtomicU32>,
    backlogs: Arc<AtomicU32>,
    purges: Arc<Mutex<Vec<Duration>>>,
}

impl Transactional for Counting {
    type Tx = MemoryTx;
    async fn begin(&self) -> outbox::Result<MemoryTx> {
        self.inner.begin().await
    }
    async fn commit(&self, tx: MemoryTx) -> outbox::Result<()> {
        self.inner.commit(tx).await
    }
}

impl OutboxStore for Counting {
    async fn enqueue(&self, tx: &mut MemoryTx, msg: OutboxMessage) -> outbox::Result<()> {
        self.inner.enqueue(tx, msg).await
    }
    async fn claim(
        &self,
        relay_id: &str,
        limit: usize,
        lease: Duration,
    ) -> outbox::Result<Vec<OutboxMessage>> {
        self.claims.fetch_add(1, Ordering::SeqCst);
        self.inner.claim(relay_id, limit, lease).await
    }
    async fn mark_sent(&self, ids: &[MessageId]) -> outbox::Result<()> {
        self.inner.mark_sent(ids).await
    }
    async fn record_failure(
        &self,
        id: MessageId,
        error: &str,
        retry_after: Duration,
    ) -> outbox::Result<()> {
        self.inner.record_failure(id, error, retry_after).await
    }
    async fn release(&self, ids: &[MessageId]) -> outbox::Result<()> {
        self.inner.release(ids).await
    }
    async fn purge_sent(&self, retention: Duration) -> outbox::Result<u64> {
        self.purges.lock().unwrap().push(retention);
        self.inner.purge_sent(retention).await
    }
    async fn backlog(&self) -> outbox::Result<Option<Backlog>> {
        self.backlogs.fetch_add(1, Ordering::SeqCst);
        self.inner.backlog().await
    }
    fn commit_signal(&self) -> Option<Arc<Notify>> {
        self.inner.commit_signal()
    }
}

/// Runs a relay polling every 10 ms until it has made `rounds` rounds.
async fn run_rounds(store: &Counting, config: RelayConfig, rounds: u32) {
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let relay = Relay::new(store.clone(), MemoryBroker::new(), config);
    let task = tokio::spawn(relay.run(async {
        let _ = rx.await;
    }));
    while store.claims.load(Ordering::SeqCst) < rounds {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

/// The backlog is measured at the first round and then once per `backlog_interval`;
/// sent messages are purged once per `retention` (at most hourly), never every round.
#[tokio::test(start_paused = true)]
async fn the_backlog_and_retention_sweeps_run_once_per_interval() {
    let config = |id: &str, every: Duration| {
        RelayConfig::with_id(id)
            .with_poll_interval(Duration::from_millis(10))
            .with_backlog_interval(Some(every))
            .with_retention(Some(every))
    };

    // Intervals longer than the run: the backlog once (at the start), no purge.
    let hourly = Counting::default();
    run_rounds(&hourly, config("hourly", Duration::from_secs(3600)), 50).await;
    assert_eq!(hourly.backlogs.load(Ordering::SeqCst), 1);
    assert!(hourly.purges.lock().unwrap().is_empty());

    // 100 ms over ≈ 50 rounds of 10 ms: each sweep a handful of times, not every round.
    let often = Counting::default();
    let every = Duration::from_millis(100);
    run_rounds(&often, config("often", every), 50).await;
    let rounds = often.claims.load(Ordering::SeqCst);
    let backlogs = often.backlogs.load(Ordering::SeqCst);
    assert!(
        (2..rounds / 4).contains(&backlogs),
        "{backlogs} of {rounds}"
    );
    let purges = often.purges.lock().unwrap().clone();
    assert!(
        (2..rounds as usize / 4).contains(&purges.len()),
        "{} of {rounds}",
        purges.len()
    );
    assert!(purges.iter().all(|r| *r == every), "{purges:?}");
}

/// A shared store (`Arc<S>`) passes its commit signal on: the relay is woken by a commit,
/// not by its poll (an hour here).
#[tokio::test]
async fn a_relay_over_a_shared_store_wakes_on_commit() {
    let counting = Counting::default();
    let store = Arc::new(counting.clone());
    let broker = MemoryBroker::new();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let config = RelayConfig::with_id("r").with_poll_interval(Duration::from_secs(3600));
    let task = tokio::spawn(
        Relay::new(store.clone(), broker.clone(), config).run(async {
            let _ = rx.await;
        }),
    );
    // The first round (which would publish anything committed before it) is over.
    while counting.claims.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut tx = store.begin().await.unwrap();
    store
        .enqueue(&mut tx, OutboxMessage::new("t", "k", "p"))
        .await
        .unwrap();
    store.commit(tx).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), broker.wait_for(1))
        .await
        .expect("the relay was not woken by the commit");
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}
