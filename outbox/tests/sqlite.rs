//! The SQLite backends (embedded mode) against the shared conformance suites, each on a
//! database file of its own.
#![cfg(feature = "sqlite")]

use outbox::conformance;
use outbox::conformance::sqlite::TempDbFile;
use outbox::sqlite::{connect, migrate, SqliteIdempotencyStore, SqliteInbox, SqliteOutbox};

/// A migrated database on a file of its own, deleted when the returned guard drops
/// (also when the test panics).
async fn fresh() -> (sqlx::SqlitePool, TempDbFile) {
    let file = TempDbFile::new("ordersys-test");
    let pool = connect(file.path().to_str().unwrap()).await.unwrap();
    migrate(&pool).await.unwrap();
    (pool, file)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_outbox_conformance() {
    let paths = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let p = paths.clone();
    conformance::outbox_store_all(move || {
        let p = p.clone();
        async move {
            let (pool, file) = fresh().await;
            p.lock().unwrap().push(file);
            SqliteOutbox::new(pool)
        }
    })
    .await;
    drop(paths);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_relay_conformance() {
    let (pool, _file) = fresh().await;
    let p = pool.clone();
    conformance::relay_all(move || {
        let p = p.clone();
        async move {
            sqlx::query("DELETE FROM outbox_messages")
                .execute(&p)
                .await
                .unwrap();
            SqliteOutbox::new(p)
        }
    })
    .await;
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_inbox_and_idempotency_conformance() {
    let (pool, _file) = fresh().await;
    conformance::inbox_all(&SqliteInbox::new(pool.clone())).await;
    conformance::inbox_batches(&SqliteInbox::new(pool.clone())).await;
    conformance::idempotency_all(&SqliteIdempotencyStore::new(pool.clone())).await;
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_idempotency_conformance_with_readers_of_their_own() {
    let (pool, file) = fresh().await;
    let readers = connect(file.path().to_str().unwrap()).await.unwrap();
    conformance::idempotency_all(
        &SqliteIdempotencyStore::new(pool.clone()).with_readers(readers.clone()),
    )
    .await;
    readers.close().await;
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_outbox_survives_a_reopen() {
    use outbox::{OutboxMessage, OutboxStore, Transactional};
    let (pool, file) = fresh().await;
    let outbox = SqliteOutbox::new(pool.clone());
    let mut tx = outbox.begin().await.unwrap();
    let m = OutboxMessage::new("saga.commands", "k", "durable").with_header("traceparent", "tp");
    outbox.enqueue(&mut tx, m.clone()).await.unwrap();
    outbox.commit(tx).await.unwrap();
    pool.close().await; // the process stops

    let pool = connect(file.path().to_str().unwrap()).await.unwrap();
    migrate(&pool).await.unwrap();
    let outbox = SqliteOutbox::new(pool.clone());
    let claimed = outbox
        .claim("after-restart", 10, std::time::Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].id, m.id);
    assert_eq!(claimed[0].headers.get("traceparent"), Some("tp"));
    pool.close().await;
}

/// Expired idempotency keys leave the table when purged (Redis expires its own; a table
/// grows forever unless someone deletes them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_idempotency_purge_deletes_expired_keys_only() {
    use outbox::idempotency::IdempotencyStore;
    use std::time::Duration;

    let (pool, _file) = fresh().await;
    let store = SqliteIdempotencyStore::new(pool.clone());
    store
        .reserve("short", Duration::from_millis(1))
        .await
        .unwrap();
    store
        .complete("done-short", b"x", Duration::from_millis(1))
        .await
        .unwrap();
    store
        .reserve("long", Duration::from_secs(3600))
        .await
        .unwrap();
    let count = || async {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM idempotency_keys")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    assert_eq!(count().await, 3);
    // Expired once the clock moved past their 1 ms; poll rather than sleep a guess.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut purged = 0;
    while purged < 2 && std::time::Instant::now() < deadline {
        purged += store.purge_expired().await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(purged, 2);
    assert_eq!(count().await, 1, "the live key must stay");
    pool.close().await;
}

/// A migrated WAL database at `sync` behind a pool of one connection: the one the relay's
/// bookkeeping relaxed is the one checked afterwards.
async fn one_connection(sync: sqlx::sqlite::SqliteSynchronous) -> (sqlx::SqlitePool, TempDbFile) {
    use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
    let file = TempDbFile::new("ordersys-sync");
    let opts = SqliteConnectOptions::new()
        .filename(file.path())
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .synchronous(sync);
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(opts)
        .await
        .unwrap();
    migrate(&pool).await.unwrap();
    (pool, file)
}

/// The relay's bookkeeping commits without waiting for the disk, and every connection
/// goes back to the pool as durable as it came — also when the bookkeeping fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_bookkeeping_leaves_a_full_sync_connection_full() {
    use outbox::{OutboxMessage, OutboxStore, Transactional};
    use std::time::Duration;

    let (pool, _file) = one_connection(sqlx::sqlite::SqliteSynchronous::Full).await;
    let level = |pool: sqlx::SqlitePool| async move {
        sqlx::query_scalar::<_, i64>("PRAGMA synchronous")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    assert_eq!(level(pool.clone()).await, 2, "FULL to begin with");

    let outbox = SqliteOutbox::new(pool.clone());
    let mut tx = outbox.begin().await.unwrap();
    let msg = OutboxMessage::new("t", "k", "v");
    let id = msg.id;
    outbox.enqueue(&mut tx, msg).await.unwrap();
    outbox.commit(tx).await.unwrap();

    assert_eq!(outbox.pending().await.unwrap(), 1);
    let claimed = outbox
        .claim("relay-1", 10, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(level(pool.clone()).await, 2, "FULL again after the claim");
    outbox.mark_sent(&[id]).await.unwrap();
    assert_eq!(level(pool.clone()).await, 2, "FULL again after the mark");
    assert_eq!(outbox.pending().await.unwrap(), 0, "the mark was written");

    // Bookkeeping that fails (the table is gone) still puts the connection back FULL.
    sqlx::query("DROP TABLE outbox_messages")
        .execute(&pool)
        .await
        .unwrap();
    assert!(outbox
        .claim("relay-1", 10, Duration::from_secs(30))
        .await
        .is_err());
    assert_eq!(
        level(pool.clone()).await,
        2,
        "FULL again after a failed claim"
    );
    assert!(outbox.mark_sent(&[id]).await.is_err());
    assert_eq!(
        level(pool.clone()).await,
        2,
        "FULL again after a failed mark"
    );
    pool.close().await;
}

/// A relay polling once an hour publishes at once when a unit of work that enqueued
/// commits — whichever way it commits (the outbox's `commit` or the unit's own
/// `SqliteTx::commit`) — and when its handle is woken. A rolled-back unit of work
/// publishes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_wakes_on_commit_without_waiting_for_its_poll() {
    use outbox::memory::MemoryBroker;
    use outbox::{OutboxMessage, OutboxStore, Relay, RelayConfig, Transactional};
    use std::time::Duration;
    let (pool, _file) = fresh().await;
    let store = SqliteOutbox::new(pool.clone());
    let broker = MemoryBroker::new();
    let relay = Relay::new(
        store.clone(),
        broker.clone(),
        RelayConfig::with_id("woken")
            .with_poll_interval(Duration::from_secs(3600))
            .with_backlog_interval(None),
    );
    let relay_handle = relay.handle();
    let enqueue = |payload: &'static str| {
        let store = store.clone();
        async move {
            let mut tx = store.begin().await.unwrap();
            store
                .enqueue(&mut tx, OutboxMessage::new("t", "k", payload))
                .await
                .unwrap();
            tx
        }
    };
    // The first message goes out in the relay's first round; then it waits an hour.
    store.commit(enqueue("first").await).await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(relay.run(async {
        let _ = stopped.await;
    }));
    let published = |n: usize, why: &'static str| {
        let broker = broker.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(10), broker.wait_for(n))
                .await
                .expect(why);
        }
    };
    published(1, "the first round did not publish").await;
    // Woken by the commit through the outbox.
    store.commit(enqueue("second").await).await.unwrap();
    published(2, "the commit through the outbox did not wake the relay").await;
    // A rollback: nothing to publish. Then the unit's own commit wakes the relay.
    enqueue("rolled back").await.rollback().await.unwrap();
    let tx = enqueue("third").await;
    tx.commit().await.unwrap();
    published(3, "the unit's own commit did not wake the relay").await;
    // A row written without the outbox (as another process would): no commit signal,
    // the relay's handle wakes it.
    let handle = relay_handle;
    sqlx::query(
        "INSERT INTO outbox_messages (id, topic, msg_key, payload, headers, created_at_us, attempts) \
         VALUES (randomblob(16), 't', 'k', 'by hand', '[]', 0, 0)",
    )
    .execute(&pool)
    .await
    .unwrap();
    handle.wake();
    published(4, "the woken relay did not publish").await;
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
    let payloads: Vec<_> = broker
        .published()
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect();
    assert_eq!(payloads, ["first", "second", "third", "by hand"]);
    pool.close().await;
}

/// A connection at `NORMAL` already is left as it is by the relay's bookkeeping (nothing
/// to relax, nothing to restore), and a message comes back as it was written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_bookkeeping_leaves_a_normal_sync_connection_normal() {
    use outbox::{OutboxMessage, OutboxStore, Transactional};
    use std::time::{Duration, UNIX_EPOCH};

    let (pool, _file) = one_connection(sqlx::sqlite::SqliteSynchronous::Normal).await;
    let outbox = SqliteOutbox::new(pool.clone());
    let mut tx = outbox.begin().await.unwrap();
    let mut msg = OutboxMessage::new("t", "k", "v").with_header("h", "1");
    msg.created_at = UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
    outbox.enqueue(&mut tx, msg.clone()).await.unwrap();
    outbox.commit(tx).await.unwrap();
    let claimed = outbox
        .claim("relay-1", 10, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(
        (
            claimed[0].id,
            claimed[0].created_at,
            claimed[0].headers.get("h")
        ),
        (msg.id, msg.created_at, Some("1"))
    );
    let level: i64 = sqlx::query_scalar("PRAGMA synchronous")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(level, 1, "NORMAL as it was");
    pool.close().await;
}

/// `connect` creates the directories the database file is to live in.
#[tokio::test]
async fn connect_takes_a_path_and_creates_the_missing_directories() {
    let root = std::env::temp_dir().join(format!(
        "ordersys-nested-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    // A path, not a URL: characters a URL would read as a query or fragment stay in the name.
    let path = root.join("a b/c?mode=ro#x/outbox.db");
    let pool = connect(&path).await.unwrap();
    migrate(&pool).await.unwrap();
    pool.close().await;
    assert!(path.exists());
    std::fs::remove_dir_all(&root).unwrap();
}

/// The same message enqueued twice is a conflict (its id is taken), not a storage error;
/// an invalid write is a storage error, not a conflict.
#[tokio::test]
async fn enqueueing_a_message_twice_is_a_conflict() {
    let (pool, _file) = fresh().await;
    let outbox = SqliteOutbox::new(pool.clone());
    outbox::conformance::enqueueing_twice_is_a_conflict(&outbox).await;
    outbox::conformance::a_failed_enqueue_is_not_a_conflict(&outbox, async {
        sqlx::query("DROP TABLE outbox_messages")
            .execute(&pool)
            .await
            .unwrap();
    })
    .await;
    pool.close().await;
}

/// A consumer's dead letters survive in the file: listed with their reason, parked once
/// however often they fail, replayed through the outbox (a derived id the consumer
/// processes once, the row gone in the same unit of work) or removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_kept_listed_replayed_once_and_removed() {
    use outbox::memory::MemoryBroker;
    use outbox::sqlite::SqliteDeadLetters;
    use outbox::{
        Delivery, DeliveryOutcome, HandlerError, IdempotentConsumer, MessageHandler, OutboxMessage,
        Relay, RelayConfig,
    };

    /// Refuses everything but a replay.
    struct Picky;
    impl MessageHandler<outbox::sqlite::SqliteTx> for Picky {
        type Output = ();
        async fn handle(
            &self,
            _tx: &mut outbox::sqlite::SqliteTx,
            msg: &Delivery,
        ) -> Result<(), HandlerError> {
            if msg.headers.get("dlq-replay-of").is_some() {
                return Ok(());
            }
            Err(HandlerError::permanent("cannot read it"))
        }
    }

    let (pool, _file) = fresh().await;
    let before = std::time::SystemTime::now() - std::time::Duration::from_millis(1);
    let dead = SqliteDeadLetters::new(pool.clone());
    let consumer = IdempotentConsumer::new("shop", SqliteInbox::new(pool.clone()), dead.clone());
    let msgs: Vec<_> = (0..2)
        .map(|i| {
            OutboxMessage::new("orders", format!("k{i}"), format!("p{i}"))
                .with_header("h", "v")
                .to_delivery()
        })
        .collect();
    for m in &msgs {
        let outcome = consumer.process(m, &Picky).await.unwrap();
        assert!(
            matches!(outcome, DeliveryOutcome::DeadLettered { .. }),
            "{outcome:?}"
        );
    }
    // Parked again (a redelivery that fails the same way): still one row.
    use outbox::DeadLetter as _;
    dead.dead_letter(&msgs[0], "again").await.unwrap();
    assert_eq!(dead.count().await.unwrap(), 2);

    let parked = dead.list(10).await.unwrap();
    assert_eq!(parked.len(), 2);
    assert_eq!(
        parked[0].delivery, msgs[0],
        "the message as it was received"
    );
    assert!(
        parked[0].reason.contains("cannot read it"),
        "{}",
        parked[0].reason
    );
    assert!(parked[0].seq < parked[1].seq);
    // When it was parked, read back from the file (microseconds since the epoch).
    let after = std::time::SystemTime::now();
    assert!(
        (before..=after).contains(&parked[0].parked_at),
        "{:?} not in {before:?}..={after:?}",
        parked[0].parked_at
    );
    assert_eq!(dead.list(1).await.unwrap().len(), 1);

    // Replay the first: enqueued under a derived id, removed in the same unit of work.
    let outbox = SqliteOutbox::new(pool.clone());
    let id = dead
        .replay(&outbox, parked[0].seq)
        .await
        .unwrap()
        .expect("parked");
    assert_eq!(id, parked[0].replay_message().id);
    assert_ne!(id, msgs[0].id);
    assert_eq!(
        dead.replay(&outbox, parked[0].seq).await.unwrap(),
        None,
        "gone"
    );
    let broker = MemoryBroker::new();
    let report = Relay::new(outbox.clone(), broker.clone(), RelayConfig::with_id("r"))
        .run_once()
        .await
        .unwrap();
    assert_eq!(report.published, 1);
    let replayed = broker.published_on("orders")[0].to_delivery();
    assert_eq!(
        (replayed.key.as_str(), &replayed.payload[..]),
        ("k0", &b"p0"[..])
    );
    assert_eq!(replayed.headers.get("h"), Some("v"));
    assert_eq!(
        replayed.headers.get("dlq-replay-of"),
        Some(msgs[0].id.to_string().as_str())
    );
    // The consumer takes the replay; once.
    assert_eq!(
        consumer.process(&replayed, &Picky).await.unwrap(),
        DeliveryOutcome::Processed
    );
    assert_eq!(
        consumer.process(&replayed, &Picky).await.unwrap(),
        DeliveryOutcome::Duplicate
    );

    // Remove the other without replaying it.
    assert!(dead.remove(parked[1].seq).await.unwrap());
    assert!(!dead.remove(parked[1].seq).await.unwrap());
    assert_eq!(dead.count().await.unwrap(), 0);
    pool.close().await;
}

/// The backlog counts the unsent messages and dates the oldest (its `created_at`, read
/// back from the file); a failed write of the inbox is an error, never taken for a
/// message already processed.
#[tokio::test]
async fn the_backlog_is_read_back_and_a_broken_inbox_is_an_error() {
    use outbox::{Inbox, OutboxMessage, OutboxStore, Transactional};
    use std::time::{Duration, UNIX_EPOCH};
    let (pool, _file) = fresh().await;
    let outbox = SqliteOutbox::new(pool.clone());
    let empty = outbox.backlog().await.unwrap().expect("SQLite reports");
    assert_eq!((empty.messages, empty.oldest), (0, None));
    let mut created = Vec::new();
    let mut tx = outbox.begin().await.unwrap();
    for i in 0..3 {
        let mut msg = OutboxMessage::new("t", format!("k{i}"), "p");
        msg.created_at = UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456 + i);
        created.push(msg.created_at);
        outbox.enqueue(&mut tx, msg).await.unwrap();
    }
    outbox.commit(tx).await.unwrap();
    let all = outbox.backlog().await.unwrap().unwrap();
    assert_eq!((all.messages, all.oldest), (3, Some(created[0])));
    let first = outbox.claim("r", 1, Duration::from_secs(60)).await.unwrap();
    outbox.mark_sent(&[first[0].id]).await.unwrap();
    let rest = outbox.backlog().await.unwrap().unwrap();
    assert_eq!((rest.messages, rest.oldest), (2, Some(created[1])));

    let inbox = SqliteInbox::new(pool.clone());
    sqlx::query("DROP TABLE inbox_messages")
        .execute(&pool)
        .await
        .unwrap();
    let mut tx = inbox.begin().await.unwrap();
    let broken = inbox
        .try_record(&mut tx, "c", OutboxMessage::new("t", "k", "p").id)
        .await;
    assert!(broken.is_err(), "{broken:?}");
    drop(tx);
    pool.close().await;
}
