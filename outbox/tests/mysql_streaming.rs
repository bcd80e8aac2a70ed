//! `MySqlStreamingOutbox` against the real server (`DATABASE_URL`, default the local
//! MariaDB): completeness with transactions committing out of `seq` order, rollbacks,
//! failures, takeover, restart, purge.
#![cfg(feature = "mysql")]

use std::collections::HashSet;
use std::time::Duration;

use outbox::conformance::{self, mysql::TestDb};
use outbox::memory::MemoryBroker;
use outbox::mysql::{MySqlOutbox, MySqlStreamingOutbox};
use outbox::{Error, MessageId, OutboxMessage, OutboxStore, Relay, RelayConfig, Transactional};

const LEASE: Duration = Duration::from_secs(30);

fn msg(key: &str, n: usize) -> OutboxMessage {
    OutboxMessage::new("orders", key, format!("{key}#{n}"))
}

async fn committed(store: &impl OutboxStore<Tx = outbox::mysql::MySqlTx>, msgs: &[OutboxMessage]) {
    let mut tx = store.begin().await.unwrap();
    for m in msgs {
        store.enqueue(&mut tx, m.clone()).await.unwrap();
    }
    store.commit(tx).await.unwrap();
}

fn ids(batch: &[OutboxMessage]) -> Vec<MessageId> {
    batch.iter().map(|m| m.id).collect()
}

fn payloads(batch: &[OutboxMessage]) -> Vec<String> {
    batch
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect()
}

/// Wait (30 s at most) until `broker` has published every one of `all`.
async fn published_all(broker: &MemoryBroker, all: &[MessageId], what: &str) {
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let seen: HashSet<MessageId> = broker.published().iter().map(|m| m.id).collect();
            if all.iter().all(|id| seen.contains(id)) {
                break;
            }
            broker.wait_for(seen.len() + 1).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}"));
}

/// Key `key`'s payloads (`key#n`) in the order each first appeared in `published`: a
/// failure or restart sends the stream back, so what followed may be published again,
/// but a key's first appearances keep its order.
fn first_appearances(published: &[OutboxMessage], key: &str) -> Vec<String> {
    let mut first = Vec::new();
    for p in payloads(published) {
        if p.starts_with(&format!("{key}#")) && !first.contains(&p) {
            first.push(p);
        }
    }
    first
}

/// A relay running in a task of its own until [`Running::stop`].
struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<outbox::Result<()>>,
}

fn start<P: outbox::Publisher>(relay: Relay<MySqlStreamingOutbox, P>) -> Running {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(relay.run(async move {
        let _ = stopped.await;
    }));
    Running { stop, task }
}

impl Running {
    /// Stop it gracefully and wait until `Relay::run` returned.
    async fn stop(self) {
        self.stop.send(()).unwrap();
        self.task.await.unwrap().unwrap();
    }
}

fn fast(id: &str) -> RelayConfig {
    RelayConfig::with_id(id)
        .with_batch_size(16)
        .with_poll_interval(Duration::from_millis(20))
        .with_backoff(
            resilience::Retry::default()
                .base_delay(Duration::from_millis(5))
                .max_attempts(u32::MAX)
                .max_delay(Duration::from_millis(50)),
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_is_published_in_key_order_through_broker_failures() {
    let db = TestDb::new().await;
    let store = MySqlStreamingOutbox::new(db.pool.clone());
    let keys = ["a", "b", "c", "d"];
    let mut all = Vec::new();
    for n in 0..25 {
        let batch: Vec<_> = keys.iter().map(|k| msg(k, n)).collect();
        all.extend(ids(&batch));
        committed(&store, &batch).await;
    }
    let broker = MemoryBroker::new();
    broker.fail_next(3);
    let relay = start(Relay::new(store.clone(), broker.clone(), fast("relay-1")));
    published_all(&broker, &all, "the relay did not publish everything").await;
    let published = broker.published();
    for k in keys {
        let expected: Vec<String> = (0..25).map(|n| format!("{k}#{n}")).collect();
        assert_eq!(
            first_appearances(&published, k),
            expected,
            "key {k} out of order"
        );
    }
    // The position reaches the last row once the relay marked it.
    let max: u64 = sqlx::query_scalar("SELECT MAX(seq) FROM outbox_messages")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let wait = tokio::time::Instant::now() + Duration::from_secs(10);
    while store.position().await.unwrap() != Some(max) {
        assert!(
            tokio::time::Instant::now() < wait,
            "position stuck below {max}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(store.pending().await.unwrap(), 0);
    relay.stop().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_that_commits_after_a_later_one_is_published_and_holds_the_position() {
    let db = TestDb::new().await;
    let store = MySqlStreamingOutbox::new(db.pool.clone());
    // `early` takes seq 1 and stays open; `late` takes seq 2 and commits first.
    let mut early = store.begin().await.unwrap();
    store.enqueue(&mut early, msg("a", 1)).await.unwrap();
    committed(&store, &[msg("b", 2)]).await;

    let batch = store.claim("r", 100, LEASE).await.unwrap();
    assert_eq!(payloads(&batch), ["b#2"]);
    store.mark_sent(&ids(&batch)).await.unwrap();
    assert_eq!(
        store.position().await.unwrap(),
        Some(0),
        "the position must not pass seq 1 while its transaction may still commit"
    );
    assert!(store.claim("r", 100, LEASE).await.unwrap().is_empty());

    store.commit(early).await.unwrap();
    let batch = store.claim("r", 100, LEASE).await.unwrap();
    assert_eq!(payloads(&batch), ["a#1"], "the late commit fills its hole");
    store.mark_sent(&ids(&batch)).await.unwrap();
    assert_eq!(store.position().await.unwrap(), Some(2));
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_row_frees_the_position_after_the_grace_an_open_one_never_does() {
    let db = TestDb::new().await;
    let store = MySqlStreamingOutbox::new(db.pool.clone()).with_hole_grace(Duration::ZERO);
    // seq 1: a transaction that stays open; seq 2: rolled back; seq 3: committed.
    let mut open = store.begin().await.unwrap();
    store.enqueue(&mut open, msg("a", 1)).await.unwrap();
    let mut doomed = store.begin().await.unwrap();
    store.enqueue(&mut doomed, msg("b", 2)).await.unwrap();
    drop(doomed);
    committed(&store, &[msg("c", 3)]).await;

    let batch = store.claim("r", 100, LEASE).await.unwrap();
    assert_eq!(payloads(&batch), ["c#3"]);
    store.mark_sent(&ids(&batch)).await.unwrap();
    // Probed at once (grace 0): seq 1 is locked by its open transaction, so the holes stay.
    for _ in 0..3 {
        assert!(store.claim("r", 100, LEASE).await.unwrap().is_empty());
        assert_eq!(store.position().await.unwrap(), Some(0));
    }

    store.commit(open).await.unwrap();
    let batch = store.claim("r", 100, LEASE).await.unwrap();
    assert_eq!(payloads(&batch), ["a#1"]);
    store.mark_sent(&ids(&batch)).await.unwrap();
    assert_eq!(
        store.position().await.unwrap(),
        Some(1),
        "seq 2 was not probed yet"
    );
    // The next claim probes seq 2, finds no row and nobody holding it: the position
    // moves past it.
    assert!(store.claim("r", 100, LEASE).await.unwrap().is_empty());
    assert_eq!(store.position().await.unwrap(), Some(3));
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_relay_holds_the_stream_and_another_takes_over_from_the_position() {
    let db = TestDb::new().await;
    let store = MySqlStreamingOutbox::new(db.pool.clone());
    let all: Vec<_> = (0..10).map(|n| msg("k", n)).collect();
    committed(&store, &all).await;

    let lease = Duration::from_millis(400);
    let first = store.claim("one", 100, lease).await.unwrap();
    assert_eq!(first.len(), 10);
    store.mark_sent(&ids(&first[..4])).await.unwrap();
    assert_eq!(store.position().await.unwrap(), Some(4));
    // While "one" holds the lease, "two" gets nothing — not even the unmarked rows.
    let other = MySqlStreamingOutbox::new(db.pool.clone());
    assert!(other.claim("two", 100, lease).await.unwrap().is_empty());

    // "one" stops renewing; once its lease expired, "two" resumes after position 4.
    tokio::time::sleep(lease + Duration::from_millis(300)).await;
    let taken = other.claim("two", 100, lease).await.unwrap();
    assert_eq!(payloads(&taken), payloads(&all[4..]));
    other.mark_sent(&ids(&taken)).await.unwrap();
    assert_eq!(store.position().await.unwrap(), Some(10));
    // The old holder learns it lost the stream when it marks, and claims nothing.
    let err = store.mark_sent(&ids(&first[4..])).await.unwrap_err();
    assert!(matches!(err, Error::Conflict(_)), "{err}");
    assert!(store.claim("one", 100, lease).await.unwrap().is_empty());
    db.drop_db().await;
}

/// A relay stopped gracefully hands the stream back: another relay takes it over at
/// once (not after the lease, here the default 30 s) and goes on after the position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_stopped_gracefully_hands_the_stream_over_at_once() {
    let db = TestDb::new().await;
    let store = MySqlStreamingOutbox::new(db.pool.clone());
    let before: Vec<_> = (0..5).map(|n| msg("k", n)).collect();
    committed(&store, &before).await;
    let broker = MemoryBroker::new();
    let config = fast("one");
    assert!(config.lease >= LEASE, "the lease must outlast the test");
    let relay = start(Relay::new(store.clone(), broker.clone(), config));
    published_all(&broker, &ids(&before), "the relay did not publish").await;
    relay.stop().await;
    assert_eq!(store.position().await.unwrap(), Some(5));

    let after: Vec<_> = (5..8).map(|n| msg("k", n)).collect();
    committed(&store, &after).await;
    let other = MySqlStreamingOutbox::new(db.pool.clone());
    let taken = other.claim("two", 100, LEASE).await.unwrap();
    assert_eq!(
        payloads(&taken),
        payloads(&after),
        "not handed over at once"
    );
    // The stopped relay's store forgot the stream: it does not claim beside "two".
    assert!(store.claim("one", 100, LEASE).await.unwrap().is_empty());
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_relay_resumes_after_what_it_marked() {
    let db = TestDb::new().await;
    let store = MySqlStreamingOutbox::new(db.pool.clone());
    let all: Vec<_> = (0..6).map(|n| msg("k", n)).collect();
    committed(&store, &all).await;
    let batch = store.claim("r", 3, LEASE).await.unwrap();
    assert_eq!(payloads(&batch), payloads(&all[..3]));
    store.mark_sent(&ids(&batch)).await.unwrap();
    // Claimed but never marked: published again after the restart.
    let lost = store.claim("r", 2, LEASE).await.unwrap();
    assert_eq!(payloads(&lost), payloads(&all[3..5]));
    drop(store);

    // The same relay id, a new process: its own lease is taken back at once.
    let restarted = MySqlStreamingOutbox::new(db.pool.clone());
    let batch = restarted.claim("r", 100, LEASE).await.unwrap();
    assert_eq!(payloads(&batch), payloads(&all[3..]));
    restarted.mark_sent(&ids(&batch)).await.unwrap();
    assert!(restarted.claim("r", 100, LEASE).await.unwrap().is_empty());
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_starts_where_a_claims_relay_stopped() {
    let db = TestDb::new().await;
    let claims = MySqlOutbox::new(db.pool.clone());
    let all: Vec<_> = (0..5).map(|n| msg("k", n)).collect();
    committed(&claims, &all).await;
    let batch = claims.claim("old", 2, LEASE).await.unwrap();
    claims.mark_sent(&ids(&batch)).await.unwrap();

    let stream = MySqlStreamingOutbox::new(db.pool.clone());
    let batch = stream.claim("new", 100, LEASE).await.unwrap();
    assert_eq!(payloads(&batch), payloads(&all[2..]));
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_deletes_only_old_rows_up_to_the_position() {
    let db = TestDb::new().await;
    let store = MySqlStreamingOutbox::new(db.pool.clone());
    let all: Vec<_> = (0..4).map(|n| msg("k", n)).collect();
    committed(&store, &all).await;
    let batch = store.claim("r", 2, LEASE).await.unwrap();
    store.mark_sent(&ids(&batch)).await.unwrap();
    // Young rows stay whatever their position.
    assert_eq!(
        store.purge_sent(Duration::from_secs(3600)).await.unwrap(),
        0
    );
    // Old enough: only the two published ones go.
    assert_eq!(store.purge_sent(Duration::ZERO).await.unwrap(), 2);
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox_messages")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(left, 2);
    let batch = store.claim("r", 100, LEASE).await.unwrap();
    assert_eq!(payloads(&batch), payloads(&all[2..]));
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_dies_after_publishing_causes_a_republish_applied_once() {
    let db = TestDb::new().await;
    conformance::crash_after_publish_republishes(MySqlStreamingOutbox::new(db.pool.clone())).await;
    db.drop_db().await;
}

/// Writers whose transactions overlap — committing out of `seq` order, some rolling
/// back — while the relay streams: every committed message is published, no rolled
/// back one is, and the position ends at the last row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_committing_out_of_order_lose_nothing() {
    let db = TestDb::new().await;
    let store =
        MySqlStreamingOutbox::new(db.pool.clone()).with_hole_grace(Duration::from_millis(200));
    let broker = MemoryBroker::new();
    let relay = start(Relay::new(store.clone(), broker.clone(), fast("relay-1")));

    let writers: Vec<_> = (0..8)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut committed_ids = Vec::new();
                for n in 0..40 {
                    let m = msg(&format!("w{w}"), n);
                    let mut tx = store.begin().await.unwrap();
                    store.enqueue(&mut tx, m.clone()).await.unwrap();
                    // Hold some transactions open across a few relay polls (20 ms): later
                    // seqs commit and are read first.
                    if (w + n) % 3 == 0 {
                        tokio::time::sleep(Duration::from_millis(20 + ((w * 7 + n) % 40) as u64))
                            .await;
                    }
                    if (w + n) % 7 == 0 {
                        drop(tx); // rolled back: its seq stays a hole
                    } else {
                        store.commit(tx).await.unwrap();
                        committed_ids.push(m.id);
                    }
                }
                committed_ids
            })
        })
        .collect();
    let mut expected = HashSet::new();
    for w in writers {
        expected.extend(w.await.unwrap());
    }
    let max: u64 = sqlx::query_scalar("SELECT MAX(seq) FROM outbox_messages")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let wait = tokio::time::Instant::now() + Duration::from_secs(30);
    while store.position().await.unwrap() != Some(max) {
        assert!(
            tokio::time::Instant::now() < wait,
            "position {:?} never reached {max}",
            store.position().await.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let published: HashSet<MessageId> = broker.published().iter().map(|m| m.id).collect();
    assert_eq!(
        published, expected,
        "exactly the committed messages, each at least once"
    );
    for w in 0..8 {
        let key = format!("w{w}");
        let order: Vec<String> = payloads(&broker.published())
            .into_iter()
            .filter(|p| p.starts_with(&format!("{key}#")))
            .collect();
        let mut sorted = order.clone();
        sorted.sort_by_key(|p| p[key.len() + 1..].parse::<u32>().unwrap());
        assert_eq!(order, sorted, "key {key} out of order");
    }
    relay.stop().await;
    db.drop_db().await;
}

/// A broker that takes a millisecond per publish, so a stop lands mid-stream.
#[derive(Clone)]
struct Slow(MemoryBroker);

impl outbox::Publisher for Slow {
    async fn publish(&self, msg: &OutboxMessage) -> outbox::Result<()> {
        tokio::time::sleep(Duration::from_millis(1)).await;
        self.0.publish(msg).await
    }
}

/// `Relay::run` over the stream, stopped mid-stream: it finishes its round and persists
/// the position, and the next run publishes the rest — every message, per key in order,
/// republishing at most what the stopped relay held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_relay_persists_what_it_published_and_the_next_run_goes_on() {
    let db = TestDb::new().await;
    let store = MySqlStreamingOutbox::new(db.pool.clone());
    let keys = ["a", "b", "c", "d", "e"];
    let mut all = Vec::new();
    for n in 0..60 {
        let batch: Vec<_> = keys.iter().map(|k| msg(k, n)).collect();
        all.extend(ids(&batch));
        committed(&store, &batch).await;
    }
    let broker = MemoryBroker::new();
    let relay = start(Relay::new(
        store.clone(),
        Slow(broker.clone()),
        fast("relay-1"),
    ));
    broker.wait_for(50).await;
    relay.stop().await;
    let first = broker.published().len();
    assert!(
        first < all.len(),
        "the stop came too late to land mid-stream"
    );
    let position = store.position().await.unwrap().unwrap();
    assert!(
        position > 0,
        "what was published before the stop was not persisted"
    );

    // The next run (a new process) starts after the position.
    let store = MySqlStreamingOutbox::new(db.pool.clone());
    let relay = start(Relay::new(store.clone(), broker.clone(), fast("relay-1")));
    published_all(&broker, &all, "the second run did not publish the rest").await;
    relay.stop().await;
    let published = broker.published();
    // Republished after the restart: at most what was in flight or queued at the stop
    // (two batches of 16), never what the position covers.
    assert!(
        published.len() - all.len() <= 32,
        "{} republished",
        published.len() - all.len()
    );
    for k in keys {
        let expected: Vec<String> = (0..60).map(|n| format!("{k}#{n}")).collect();
        assert_eq!(
            first_appearances(&published, k),
            expected,
            "key {k} out of order"
        );
    }
    db.drop_db().await;
}

/// A released message, and everything after it, is read again by the next claim; the
/// pending count is what lies past the persisted position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_message_is_read_again_with_what_follows() {
    let db = TestDb::new().await;
    let store = MySqlStreamingOutbox::new(db.pool.clone());
    let all: Vec<_> = (0..3).map(|n| msg("k", n)).collect();
    committed(&store, &all).await;
    assert_eq!(store.pending().await.unwrap(), 3);
    let first = store.claim("r", 10, LEASE).await.unwrap();
    assert_eq!(payloads(&first), payloads(&all));
    assert!(store.claim("r", 10, LEASE).await.unwrap().is_empty());
    store.mark_sent(&ids(&first[..1])).await.unwrap();
    store.release(&ids(&first[1..])).await.unwrap();
    let again = store.claim("r", 10, LEASE).await.unwrap();
    assert_eq!(payloads(&again), payloads(&all[1..]));
    store.mark_sent(&ids(&again)).await.unwrap();
    assert_eq!(store.pending().await.unwrap(), 0);
    db.drop_db().await;
}

/// A failed publish holds the stream back for the retry delay it was given, then the
/// failed message is read again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_message_comes_back_after_its_retry_delay_and_not_before() {
    let db = TestDb::new().await;
    let store = MySqlStreamingOutbox::new(db.pool.clone());
    let all: Vec<_> = (0..2).map(|n| msg("k", n)).collect();
    committed(&store, &all).await;
    let first = store.claim("r", 10, LEASE).await.unwrap();
    assert_eq!(first.len(), 2);
    let delay = Duration::from_millis(600);
    let failed_at = std::time::Instant::now();
    store
        .record_failure(first[0].id, "broker down", delay)
        .await
        .unwrap();
    assert!(
        store.claim("r", 10, LEASE).await.unwrap().is_empty(),
        "nothing is read before the retry delay"
    );
    let again = loop {
        let batch = store.claim("r", 10, LEASE).await.unwrap();
        if !batch.is_empty() {
            break batch;
        }
        assert!(
            failed_at.elapsed() < Duration::from_secs(10),
            "never read again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(failed_at.elapsed() >= delay, "read again too early");
    assert_eq!(payloads(&again), payloads(&all));
    assert_eq!(again[0].attempts, 1);
    db.drop_db().await;
}

/// A relay that keeps claiming keeps its stream, marking or not: a claim renews the
/// lease well before it runs out, so a second relay polling all along never gets a
/// message (not even the one the holder has not marked yet).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claiming_relay_renews_its_lease_before_it_runs_out() {
    let db = TestDb::new().await;
    let store = MySqlStreamingOutbox::new(db.pool.clone());
    let other = MySqlStreamingOutbox::new(db.pool.clone());
    // Generous for a loaded machine: the holder renews after a third of it.
    let lease = Duration::from_millis(1500);
    committed(&store, &[msg("k", 0)]).await;
    let held = store.claim("one", 10, lease).await.unwrap();
    assert_eq!(held.len(), 1);
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        assert!(
            other.claim("two", 10, lease).await.unwrap().is_empty(),
            "the stream moved to another relay while its holder was claiming"
        );
        assert!(store.claim("one", 10, lease).await.unwrap().is_empty());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    store.mark_sent(&ids(&held)).await.unwrap();
    db.drop_db().await;
}

/// A failure rewinds the stream to the failed message only: a message before it that
/// was read but not yet marked still holds the position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_never_lets_the_position_pass_an_unmarked_earlier_message() {
    let db = TestDb::new().await;
    let store = MySqlStreamingOutbox::new(db.pool.clone());
    let all: Vec<_> = (0..3).map(|n| msg("k", n)).collect();
    committed(&store, &all).await;
    let batch = store.claim("r", 10, LEASE).await.unwrap();
    assert_eq!(batch.len(), 3);
    store
        .record_failure(batch[2].id, "broker down", Duration::ZERO)
        .await
        .unwrap();
    store.mark_sent(&ids(&batch[..1])).await.unwrap();
    assert_eq!(
        store.position().await.unwrap(),
        Some(1),
        "the second message is published but not marked: the position stays before it"
    );
    db.drop_db().await;
}

/// A failure rewinds the stream without forgetting an earlier hole: the row of a
/// transaction still open below the failed message is read once it commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_keeps_the_holes_before_it() {
    let db = TestDb::new().await;
    let store = MySqlStreamingOutbox::new(db.pool.clone());
    committed(&store, &[msg("a", 1)]).await;
    // `open` takes seq 2 and stays open; seq 3 and 4 commit.
    let mut open = store.begin().await.unwrap();
    store.enqueue(&mut open, msg("b", 2)).await.unwrap();
    committed(&store, &[msg("c", 3), msg("d", 4)]).await;
    let batch = store.claim("r", 10, LEASE).await.unwrap();
    assert_eq!(payloads(&batch), ["a#1", "c#3", "d#4"]);
    store
        .record_failure(batch[2].id, "broker down", Duration::ZERO)
        .await
        .unwrap();
    store.mark_sent(&ids(&batch[..2])).await.unwrap();
    store.commit(open).await.unwrap();
    let mut read = Vec::new();
    for _ in 0..20 {
        let next = store.claim("r", 10, LEASE).await.unwrap();
        store.mark_sent(&ids(&next)).await.unwrap();
        read.extend(payloads(&next));
        if read.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    read.sort();
    assert_eq!(
        read,
        ["b#2", "d#4"],
        "the hole's row and the failed one are read"
    );
    assert_eq!(store.position().await.unwrap(), Some(4));
    db.drop_db().await;
}
