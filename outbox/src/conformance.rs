//! A conformance suite every [`OutboxStore`] / [`Inbox`] backend must pass (feature
//! `conformance`). Each function takes a **fresh, empty** store and panics on a
//! violation; backend crates call them from their integration tests, so the memory,
//! MySQL and any user-written backend are held to exactly the same contract.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! use outbox::{conformance, memory::MemoryOutbox};
//! conformance::outbox_store_all(|| async { MemoryOutbox::new() }).await;
//! # }
//! ```

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::memory::{MemoryBroker, MemoryDeadLetters};
use crate::store::{Inbox, OutboxStore};
use crate::{
    Delivery, DeliveryOutcome, HandlerError, IdempotentConsumer, MessageHandler, MessageId,
    OutboxMessage, Relay, RelayConfig,
};

fn msg(topic: &str, key: &str, n: usize) -> OutboxMessage {
    OutboxMessage::new(topic, key, format!("{key}#{n}"))
        .with_header("traceparent", format!("tp-{n}"))
}

async fn enqueue_committed<S: OutboxStore>(store: &S, msgs: Vec<OutboxMessage>) {
    let mut tx = store.begin().await.expect("begin");
    for m in msgs {
        store.enqueue(&mut tx, m).await.expect("enqueue");
    }
    store.commit(tx).await.expect("commit");
}

/// Run every outbox-store check, each on a fresh store from `fresh`.
pub async fn outbox_store_all<S, F, Fut>(fresh: F)
where
    S: OutboxStore,
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
{
    rollback_enqueues_nothing(&fresh().await).await;
    claim_leases_in_order_and_round_trips_fields(&fresh().await).await;
    per_key_order_across_relays(&fresh().await).await;
    failure_counts_attempts_and_releases(&fresh().await).await;
    failed_message_holds_back_its_key_only(&fresh().await).await;
    expired_lease_is_reclaimed(&fresh().await).await;
    own_lease_is_reclaimed_after_restart(&fresh().await).await;
    purge_removes_only_old_sent(&fresh().await).await;
}

/// The same message enqueued twice is [`Error::Conflict`](crate::Error::Conflict) (its
/// id is taken), not a storage error. Not part of [`outbox_store_all`]: the memory
/// outbox applies enqueues at commit and may take a repeated id as the same message.
pub async fn enqueueing_twice_is_a_conflict<S: OutboxStore>(store: &S) {
    let msg = msg("t", "k", 1);
    enqueue_committed(store, vec![msg.clone()]).await;
    let mut tx = store.begin().await.unwrap();
    let again = store.enqueue(&mut tx, msg).await;
    assert!(
        matches!(again, Err(crate::Error::Conflict(_))),
        "a repeated id must be a conflict: {again:?}"
    );
}

/// A unit of work that is dropped leaves nothing in the outbox.
pub async fn rollback_enqueues_nothing<S: OutboxStore>(store: &S) {
    let mut tx = store.begin().await.unwrap();
    store.enqueue(&mut tx, msg("t", "k", 1)).await.unwrap();
    drop(tx);
    let claimed = store
        .claim("r1", 10, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(claimed.is_empty(), "rolled-back message was claimed");
}

/// Claims return messages oldest first, with every field intact, and a leased message
/// is not claimed again.
pub async fn claim_leases_in_order_and_round_trips_fields<S: OutboxStore>(store: &S) {
    let msgs: Vec<_> = (0..5)
        .map(|i| msg("saga.commands", &format!("k{i}"), i))
        .collect();
    let ids: Vec<MessageId> = msgs.iter().map(|m| m.id).collect();
    enqueue_committed(store, msgs.clone()).await;

    let first = store.claim("r1", 3, Duration::from_secs(30)).await.unwrap();
    assert_eq!(first.iter().map(|m| m.id).collect::<Vec<_>>(), ids[..3]);
    for (got, want) in first.iter().zip(&msgs) {
        assert_eq!(got.topic, want.topic);
        assert_eq!(got.key, want.key);
        assert_eq!(got.payload, want.payload);
        assert_eq!(got.headers, want.headers);
        assert_eq!(got.attempts, 0);
    }
    let second = store
        .claim("r2", 10, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(second.iter().map(|m| m.id).collect::<Vec<_>>(), ids[3..]);
    assert!(store
        .claim("r3", 10, Duration::from_secs(30))
        .await
        .unwrap()
        .is_empty());

    store.mark_sent(&ids).await.unwrap();
    store.release(&ids).await.unwrap(); // releasing sent messages must not resurrect them
    assert!(store
        .claim("r1", 10, Duration::from_secs(30))
        .await
        .unwrap()
        .is_empty());
}

/// While one relay holds a key's earlier message, another relay gets none of that key's
/// later messages; other keys are unaffected.
pub async fn per_key_order_across_relays<S: OutboxStore>(store: &S) {
    let a1 = msg("t", "a", 1);
    let a2 = msg("t", "a", 2);
    let b1 = msg("t", "b", 1);
    enqueue_committed(store, vec![a1.clone(), a2.clone(), b1.clone()]).await;

    let r1 = store.claim("r1", 1, Duration::from_secs(30)).await.unwrap();
    assert_eq!(r1.iter().map(|m| m.id).collect::<Vec<_>>(), vec![a1.id]);
    let r2 = store
        .claim("r2", 10, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        r2.iter().map(|m| m.id).collect::<Vec<_>>(),
        vec![b1.id],
        "a#2 must wait for a#1"
    );
    store.mark_sent(&[a1.id]).await.unwrap();
    // (A third relay: r2 itself would also take back its own lease on b#1.)
    let r3 = store
        .claim("r3", 10, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(r3.iter().map(|m| m.id).collect::<Vec<_>>(), vec![a2.id]);
}

/// A failed publish counts an attempt, keeps the error and makes the message claimable.
pub async fn failure_counts_attempts_and_releases<S: OutboxStore>(store: &S) {
    let m = msg("t", "k", 1);
    enqueue_committed(store, vec![m.clone()]).await;
    for expected in 1..=2 {
        let c = store
            .claim("r1", 10, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(c.len(), 1);
        store
            .record_failure(m.id, "broker down", Duration::ZERO)
            .await
            .unwrap();
        let again = store
            .claim("r1", 10, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].attempts, expected);
        store.release(&[m.id]).await.unwrap();
    }
}

/// A failed message is held back for its retry delay — from every relay, its own
/// included — with the later messages of its key; other keys are claimed as usual.
pub async fn failed_message_holds_back_its_key_only<S: OutboxStore>(store: &S) {
    let (p1, p2, a1) = (msg("t", "p", 1), msg("t", "p", 2), msg("t", "a", 1));
    enqueue_committed(store, vec![p1.clone(), p2.clone(), a1.clone()]).await;
    let c = store
        .claim("r1", 10, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(c.len(), 3);
    store
        .record_failure(p1.id, "message too large", Duration::from_secs(3600))
        .await
        .unwrap();
    store.release(&[p2.id]).await.unwrap();
    store.mark_sent(&[a1.id]).await.unwrap();
    let a2 = msg("t", "a", 2);
    enqueue_committed(store, vec![a2.clone()]).await;
    for relay in ["r1", "r2"] {
        let c = store
            .claim(relay, 10, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(
            c.iter().map(|m| m.id).collect::<Vec<_>>(),
            vec![a2.id],
            "{relay}: a held-back message (and its key) was claimed, or another key was not"
        );
        store.release(&[a2.id]).await.unwrap();
    }
}

/// A relay that died keeps its lease only until it expires. (The live lease is an hour
/// long and the expiring one is waited out generously, so a slow machine can neither
/// fake a respected lease nor an expired one.)
pub async fn expired_lease_is_reclaimed<S: OutboxStore>(store: &S) {
    let (live, expiring) = (msg("t", "j", 1), msg("t", "k", 1));
    enqueue_committed(store, vec![live.clone(), expiring.clone()]).await;
    let c = store
        .claim("live-relay", 1, Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(c.iter().map(|m| m.id).collect::<Vec<_>>(), vec![live.id]);
    let c = store
        .claim("dead-relay", 1, Duration::from_millis(200))
        .await
        .unwrap();
    assert_eq!(
        c.iter().map(|m| m.id).collect::<Vec<_>>(),
        vec![expiring.id]
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let c = store
        .claim("r2", 10, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        c.iter().map(|m| m.id).collect::<Vec<_>>(),
        vec![expiring.id],
        "the expired lease must be taken over, the live one respected"
    );
}

/// A relay restarted under the same id takes its own leases back at once; another relay
/// still waits for them to expire.
pub async fn own_lease_is_reclaimed_after_restart<S: OutboxStore>(store: &S) {
    let m = msg("t", "k", 1);
    enqueue_committed(store, vec![m.clone()]).await;
    let first = store
        .claim("order-relay", 10, Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(first.len(), 1);
    // The process dies; a new run of the same relay comes up.
    let again = store
        .claim("order-relay", 10, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        again.iter().map(|m| m.id).collect::<Vec<_>>(),
        vec![m.id],
        "own lease not taken back"
    );
    assert!(
        store
            .claim("other-relay", 10, Duration::from_secs(30))
            .await
            .unwrap()
            .is_empty(),
        "another relay ignored a live lease"
    );
}

/// Purging deletes sent messages past retention and nothing else.
pub async fn purge_removes_only_old_sent<S: OutboxStore>(store: &S) {
    let sent = msg("t", "k", 1);
    let unsent = msg("t", "j", 1);
    enqueue_committed(store, vec![sent.clone(), unsent.clone()]).await;
    store.claim("r1", 1, Duration::from_secs(30)).await.unwrap();
    store.mark_sent(&[sent.id]).await.unwrap();
    assert_eq!(
        store.purge_sent(Duration::from_secs(3600)).await.unwrap(),
        0
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(store.purge_sent(Duration::from_secs(1)).await.unwrap(), 1);
    store.release(&[unsent.id]).await.unwrap();
    let left = store
        .claim("r1", 10, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        left.iter().map(|m| m.id).collect::<Vec<_>>(),
        vec![unsent.id]
    );
}

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

/// Inbox contract: a record is visible only after commit, a second record of the same
/// message by the same consumer is refused, other consumers are independent.
pub async fn inbox_all<I: Inbox>(inbox: &I) {
    let id = MessageId::new();
    let mut tx = inbox.begin().await.unwrap();
    assert!(inbox.try_record(&mut tx, "c1", id).await.unwrap());
    drop(tx); // rollback
    let mut tx = inbox.begin().await.unwrap();
    assert!(
        inbox.try_record(&mut tx, "c1", id).await.unwrap(),
        "rolled back record must not count"
    );
    inbox.commit(tx).await.unwrap();
    let mut tx = inbox.begin().await.unwrap();
    assert!(!inbox.try_record(&mut tx, "c1", id).await.unwrap());
    assert!(inbox.try_record(&mut tx, "c2", id).await.unwrap());
    inbox.commit(tx).await.unwrap();

    // Purging keeps records younger than the retention and forgets older ones.
    assert_eq!(inbox.purge(Duration::from_secs(3600)).await.unwrap(), 0);
    let mut tx = inbox.begin().await.unwrap();
    assert!(
        !inbox.try_record(&mut tx, "c1", id).await.unwrap(),
        "a record inside its retention was purged"
    );
    drop(tx);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(inbox.purge(Duration::from_secs(1)).await.unwrap(), 2);
    let mut tx = inbox.begin().await.unwrap();
    assert!(
        inbox.try_record(&mut tx, "c1", id).await.unwrap(),
        "a record past its retention was kept"
    );
}

/// A SQLite database file per test (features `conformance` + `sqlite`).
#[cfg(feature = "sqlite")]
pub mod sqlite {
    use std::path::{Path, PathBuf};

    /// A database file of its own for one test, in the temp directory; the file and its
    /// `-wal`/`-shm` companions are deleted when this is dropped — also when the test
    /// panics.
    #[derive(Debug)]
    pub struct TempDbFile {
        path: PathBuf,
    }

    impl TempDbFile {
        /// A new, not yet created, file named `{prefix}-{uuid}.db`.
        pub fn new(prefix: &str) -> Self {
            Self {
                path: std::env::temp_dir()
                    .join(format!("{prefix}-{}.db", uuid::Uuid::new_v4().simple())),
            }
        }

        /// Its path.
        pub fn path(&self) -> &Path {
            &self.path
        }

        /// `sqlite://{path}`.
        pub fn url(&self) -> String {
            format!("sqlite://{}", self.path.display())
        }
    }

    impl Drop for TempDbFile {
        fn drop(&mut self) {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", self.path.display()));
            }
        }
    }
}

/// A fresh MySQL database per call, for backend tests (features `conformance` + `mysql`).
#[cfg(feature = "mysql")]
pub mod mysql {
    use std::str::FromStr;

    use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
    use sqlx::{ConnectOptions, Connection, MySqlPool};

    /// The server tests run against: `DATABASE_URL`, else the local test server.
    pub fn base_url() -> String {
        std::env::var("DATABASE_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into())
    }

    /// A database of its own for one test, migrated with the `outbox` tables.
    /// Panics (never skips) when the server cannot be reached.
    #[derive(Debug, Clone)]
    pub struct TestDb {
        /// Pool on the new database.
        pub pool: MySqlPool,
        /// Its name.
        pub name: String,
    }

    impl TestDb {
        /// Create the database and run `outbox`'s migrations.
        pub async fn new() -> Self {
            let base =
                MySqlConnectOptions::from_str(&base_url()).expect("DATABASE_URL is a MySQL URL");
            let mut admin = base.connect().await.unwrap_or_else(|e| {
                panic!(
                    "MySQL at {} is not reachable ({e}); run scripts/services-up",
                    base_url()
                )
            });
            let name = format!("ordersys_t_{}", uuid::Uuid::new_v4().simple());
            sqlx::query(&format!("CREATE DATABASE `{name}`"))
                .execute(&mut admin)
                .await
                .expect("create test database");
            let _ = admin.close().await;
            let pool = MySqlPoolOptions::new()
                .max_connections(8)
                .connect_with(base.database(&name))
                .await
                .expect("connect to test database");
            crate::mysql::migrate(&pool)
                .await
                .expect("outbox migrations");
            Self { pool, name }
        }

        /// Drop the database (call at the end of a passing test).
        pub async fn drop_db(self) {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS `{}`", self.name))
                .execute(&self.pool)
                .await;
            self.pool.close().await;
        }
    }

    /// A test that panics never reaches [`TestDb::drop_db`]: drop the database then
    /// (on a thread of its own, as this may run inside a runtime).
    impl Drop for TestDb {
        fn drop(&mut self) {
            if !std::thread::panicking() {
                return;
            }
            let name = self.name.clone();
            let _ = std::thread::spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                rt.block_on(async {
                    let Ok(opts) = MySqlConnectOptions::from_str(&base_url()) else {
                        return;
                    };
                    if let Ok(mut admin) = opts.connect().await {
                        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS `{name}`"))
                            .execute(&mut admin)
                            .await;
                        let _ = admin.close().await;
                    }
                });
            })
            .join();
        }
    }
}

/// [`IdempotencyStore`](crate::idempotency::IdempotencyStore) contract: reserve once,
/// in-progress while pending, the stored result after completion, release re-opens a
/// pending key but never a completed one, expiry frees the key. Concurrent reserves:
/// exactly one wins.
pub async fn idempotency_all<S: crate::idempotency::IdempotencyStore>(store: &S) {
    use crate::idempotency::Reservation;
    let day = Duration::from_secs(86_400);
    let key = format!("k-{}", uuid::Uuid::new_v4());
    assert_eq!(
        store.reserve(&key, day).await.unwrap(),
        Reservation::Reserved
    );
    assert_eq!(
        store.reserve(&key, day).await.unwrap(),
        Reservation::InProgress
    );
    store.release(&key).await.unwrap();
    assert_eq!(
        store.reserve(&key, day).await.unwrap(),
        Reservation::Reserved
    );
    store.complete(&key, b"\x00result\xff", day).await.unwrap();
    store.release(&key).await.unwrap(); // must not drop a completed result
    assert_eq!(
        store.reserve(&key, day).await.unwrap(),
        Reservation::Completed(bytes::Bytes::from_static(b"\x00result\xff"))
    );

    let race = format!("k-{}", uuid::Uuid::new_v4());
    let outcomes = futures::future::join_all((0..16).map(|_| store.reserve(&race, day))).await;
    let winners = outcomes
        .iter()
        .filter(|o| *o.as_ref().unwrap() == Reservation::Reserved)
        .count();
    assert_eq!(winners, 1);

    let short = format!("k-{}", uuid::Uuid::new_v4());
    store
        .reserve(&short, Duration::from_millis(300))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        store.reserve(&short, day).await.unwrap(),
        Reservation::Reserved
    );

    // Purging expired keys leaves live ones alone (what it deletes is backend-specific:
    // Redis expires keys itself).
    store.purge_expired().await.unwrap();
    assert_eq!(
        store.reserve(&key, day).await.unwrap(),
        Reservation::Completed(bytes::Bytes::from_static(b"\x00result\xff")),
        "purge removed a live completed key"
    );
    assert_eq!(
        store.reserve(&short, day).await.unwrap(),
        Reservation::InProgress,
        "purge removed a live reservation"
    );
}

/// [`Cache`](crate::idempotency::Cache) contract: set/get round trip (binary safe),
/// delete invalidates, entries expire.
pub async fn cache_all<C: crate::idempotency::Cache>(cache: &C) {
    let key = format!("c-{}", uuid::Uuid::new_v4());
    assert!(cache.get(&key).await.unwrap().is_none());
    cache
        .set(&key, b"\x01v1", Duration::from_secs(600))
        .await
        .unwrap();
    assert_eq!(
        cache.get(&key).await.unwrap().as_deref(),
        Some(&b"\x01v1"[..])
    );
    cache
        .set(&key, b"v2", Duration::from_secs(600))
        .await
        .unwrap();
    assert_eq!(cache.get(&key).await.unwrap().as_deref(), Some(&b"v2"[..]));
    cache.delete(&key).await.unwrap();
    assert!(cache.get(&key).await.unwrap().is_none());
    assert!(cache
        .set_if_absent(&key, b"first", Duration::from_secs(600))
        .await
        .unwrap());
    assert!(!cache
        .set_if_absent(&key, b"second", Duration::from_secs(600))
        .await
        .unwrap());
    assert_eq!(
        cache.get(&key).await.unwrap().as_deref(),
        Some(&b"first"[..])
    );
    cache.delete(&key).await.unwrap();
    cache
        .set(&key, b"short", Duration::from_millis(300))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(cache.get(&key).await.unwrap().is_none());
}
