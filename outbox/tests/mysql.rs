//! The MySQL backends against the shared conformance suite and the real server
//! (`DATABASE_URL`, default the local MariaDB; see scripts/services-up).
#![cfg(feature = "mysql")]

use std::sync::Arc;

use outbox::conformance::{self, mysql::TestDb};
use outbox::memory::MemoryDeadLetters;
use outbox::mysql::{MySqlInbox, MySqlOutbox, MySqlTx};
use outbox::{
    Delivery, DeliveryOutcome, HandlerError, IdempotentConsumer, MessageHandler, OutboxMessage,
    OutboxStore, Transactional,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_outbox_conformance() {
    let dbs = Arc::new(std::sync::Mutex::new(Vec::new()));
    let d = dbs.clone();
    conformance::outbox_store_all(move || {
        let d = d.clone();
        async move {
            let db = TestDb::new().await;
            let store = MySqlOutbox::new(db.pool.clone());
            d.lock().unwrap().push(db);
            store
        }
    })
    .await;
    let all: Vec<TestDb> = std::mem::take(&mut *dbs.lock().unwrap());
    for db in all {
        db.drop_db().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_relay_conformance() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    // Each relay check needs an empty outbox: empty the table between them.
    conformance::relay_all(move || {
        let pool = pool.clone();
        async move {
            sqlx::query("DELETE FROM outbox_messages")
                .execute(&pool)
                .await
                .unwrap();
            MySqlOutbox::new(pool)
        }
    })
    .await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_inbox_conformance() {
    let db = TestDb::new().await;
    conformance::inbox_all(&MySqlInbox::new(db.pool.clone())).await;
    conformance::inbox_batches(&MySqlInbox::new(db.pool.clone())).await;
    db.drop_db().await;
}

/// A business effect written in the consumer's transaction.
struct Debit;

impl MessageHandler<MySqlTx> for Debit {
    type Output = ();
    async fn handle(&self, tx: &mut MySqlTx, msg: &Delivery) -> Result<(), HandlerError> {
        sqlx::query("INSERT INTO debits (msg) VALUES (?)")
            .bind(msg.id.to_string())
            .execute(&mut **tx)
            .await
            .map_err(HandlerError::transient)?;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_duplicate_deliveries_apply_once() {
    let db = TestDb::new().await;
    sqlx::query(
        "CREATE TABLE debits (id BIGINT AUTO_INCREMENT PRIMARY KEY, msg VARCHAR(64) NOT NULL)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let consumer = Arc::new(IdempotentConsumer::new(
        "payment",
        MySqlInbox::new(db.pool.clone()),
        MemoryDeadLetters::new(),
    ));
    let d = OutboxMessage::new("saga.commands", "order-1", "debit").to_delivery();
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let (c, d) = (consumer.clone(), d.clone());
        tasks.push(tokio::spawn(
            async move { c.process(&d, &Debit).await.unwrap() },
        ));
    }
    let mut processed = 0;
    for t in tasks {
        if t.await.unwrap() == DeliveryOutcome::Processed {
            processed += 1;
        }
    }
    assert_eq!(processed, 1);
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM debits")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(n, 1, "the debit must be applied exactly once");
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_rides_on_the_business_transaction() {
    let db = TestDb::new().await;
    sqlx::query("CREATE TABLE orders (id VARCHAR(64) PRIMARY KEY)")
        .execute(&db.pool)
        .await
        .unwrap();
    let outbox = MySqlOutbox::new(db.pool.clone());

    // The business insert fails after the enqueue: neither survives.
    let mut tx = outbox.begin().await.unwrap();
    sqlx::query("INSERT INTO orders (id) VALUES ('o1')")
        .execute(&mut *tx)
        .await
        .unwrap();
    outbox
        .enqueue(&mut tx, OutboxMessage::new("t", "o1", "x"))
        .await
        .unwrap();
    let dup = sqlx::query("INSERT INTO orders (id) VALUES ('o1')")
        .execute(&mut *tx)
        .await;
    assert!(dup.is_err());
    drop(tx);
    assert_eq!(outbox.pending().await.unwrap(), 0);

    let mut tx = outbox.begin().await.unwrap();
    sqlx::query("INSERT INTO orders (id) VALUES ('o2')")
        .execute(&mut *tx)
        .await
        .unwrap();
    outbox
        .enqueue(&mut tx, OutboxMessage::new("t", "o2", "x"))
        .await
        .unwrap();
    outbox.commit(tx).await.unwrap();
    assert_eq!(outbox.pending().await.unwrap(), 1);
    db.drop_db().await;
}

/// A claimed message carries the creation time it was written with (to the
/// microsecond), a failed publish leaves its error readable, and the backlog counts
/// what is unsent and names the oldest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_reads_back_as_written_with_its_failure_and_the_backlog() {
    use std::time::{Duration, UNIX_EPOCH};
    let db = TestDb::new().await;
    let outbox = MySqlOutbox::new(db.pool.clone());
    let mut first = OutboxMessage::new("t", "a", "1");
    first.created_at = UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
    let second = OutboxMessage::new("t", "b", "2");
    let mut tx = outbox.begin().await.unwrap();
    outbox.enqueue(&mut tx, first.clone()).await.unwrap();
    outbox.enqueue(&mut tx, second.clone()).await.unwrap();
    outbox.commit(tx).await.unwrap();

    let backlog = outbox
        .backlog()
        .await
        .unwrap()
        .expect("MySQL knows its backlog");
    assert_eq!(backlog.messages, 2);
    assert_eq!(backlog.oldest, Some(first.created_at));

    let claimed = outbox
        .claim("r1", 10, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(claimed[0].id, first.id);
    assert_eq!(claimed[0].created_at, first.created_at);
    assert_eq!(outbox.last_error(first.id).await.unwrap(), None);
    outbox
        .record_failure(first.id, "broker said no", Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(
        outbox.last_error(first.id).await.unwrap().as_deref(),
        Some("broker said no")
    );
    outbox.mark_sent(&[second.id]).await.unwrap();
    let backlog = outbox.backlog().await.unwrap().unwrap();
    assert_eq!(
        (backlog.messages, backlog.oldest),
        (1, Some(first.created_at))
    );
    db.drop_db().await;
}

/// The same message enqueued twice is a conflict (its id is taken), not a storage
/// error; a write that fails otherwise is a storage error, not a conflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueueing_a_message_twice_is_a_conflict() {
    let db = TestDb::new().await;
    let outbox = MySqlOutbox::new(db.pool.clone());
    conformance::enqueueing_twice_is_a_conflict(&outbox).await;
    conformance::a_failed_enqueue_is_not_a_conflict(&outbox, async {
        sqlx::query("DROP TABLE outbox_messages")
            .execute(&db.pool)
            .await
            .unwrap();
    })
    .await;
    db.drop_db().await;
}

/// Purges delete in slices of 5,000 rows until a slice comes back short: a backlog of
/// exactly one slice more than that is purged whole — in the outbox (leased claims and
/// streaming) and the inbox alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purges_go_on_past_a_full_slice() {
    use outbox::mysql::MySqlStreamingOutbox;
    use outbox::Inbox;
    use std::time::Duration;
    let db = TestDb::new().await;
    let rows: u64 = 5_001;
    // `rows` rows sent two days ago, through `insert` (one connection: the session
    // allows a recursion as deep as the rows generated).
    let old_rows = |insert: &'static str| {
        let pool = db.pool.clone();
        async move {
            let mut conn = pool.acquire().await.unwrap();
            sqlx::query("SET SESSION max_recursive_iterations = 100000")
                .execute(&mut *conn)
                .await
                .unwrap();
            let sql = format!(
                "{insert} WITH RECURSIVE n (i) AS \
                 (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows}) SELECT {} FROM n",
                if insert.contains("inbox") {
                    "'c', UNHEX(MD5(i)), NOW(6) - INTERVAL 2 DAY"
                } else {
                    "UNHEX(MD5(i)), 't', 'k', '', '{}', 0, NOW(6) - INTERVAL 2 DAY"
                }
            );
            sqlx::query(&sql).execute(&mut *conn).await.unwrap();
        }
    };
    let outbox_rows = "INSERT INTO outbox_messages \
        (id, topic, msg_key, payload, headers, created_at_us, sent_at)";
    let day = Duration::from_secs(86_400);

    old_rows(outbox_rows).await;
    let outbox = MySqlOutbox::new(db.pool.clone());
    assert_eq!(outbox.purge_sent(day).await.unwrap(), rows);

    old_rows("INSERT INTO inbox_messages (consumer, message_id, processed_at)").await;
    let inbox = MySqlInbox::new(db.pool.clone());
    assert_eq!(inbox.purge(day).await.unwrap(), rows);

    old_rows(outbox_rows).await;
    sqlx::query("INSERT INTO outbox_relay_position (name, position) VALUES ('relay', 1000000)")
        .execute(&db.pool)
        .await
        .unwrap();
    let streaming = MySqlStreamingOutbox::new(db.pool.clone());
    assert_eq!(streaming.purge_sent(day).await.unwrap(), rows);
    db.drop_db().await;
}

/// A consumer name must fit the inbox's column (1..=128 bytes); a failed insert that is
/// not a duplicate is an error, never "already processed".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inbox_checks_consumer_names_and_reports_failed_writes() {
    use outbox::{Inbox, MessageId};
    let db = TestDb::new().await;
    let inbox = MySqlInbox::new(db.pool.clone());
    let id = || MessageId(uuid::Uuid::new_v4());
    let mut tx = inbox.begin().await.unwrap();
    assert!(inbox.try_record(&mut tx, "", id()).await.is_err());
    assert!(inbox
        .try_record(&mut tx, &"c".repeat(129), id())
        .await
        .is_err());
    assert!(inbox
        .try_record(&mut tx, &"c".repeat(128), id())
        .await
        .unwrap());
    drop(tx);
    sqlx::query("DROP TABLE inbox_messages")
        .execute(&db.pool)
        .await
        .unwrap();
    let mut tx = inbox.begin().await.unwrap();
    let broken = inbox.try_record(&mut tx, "c", id()).await;
    assert!(broken.is_err(), "{broken:?}");
    drop(tx);
    db.drop_db().await;
}

/// `migrate_all` runs its migrators one after the other, stops at the first that fails
/// (its error returned, the later ones not run) and releases the database's migration
/// lock afterwards, so the next process gets it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_all_runs_each_migrator_in_turn_stops_at_a_failure_and_releases_its_lock() {
    use sqlx::migrate::{Migration, MigrationType, Migrator};
    use std::borrow::Cow;
    let one = |version: i64, sql: &'static str| Migrator {
        migrations: Cow::Owned(vec![Migration::new(
            version,
            Cow::Borrowed("test"),
            MigrationType::Simple,
            Cow::Borrowed(sql),
            false,
        )]),
        ignore_missing: true,
        locking: false,
        no_tx: false,
    };
    let db = TestDb::new().await;
    let exists = |table: &'static str| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT COUNT(*) FROM information_schema.tables \
                 WHERE table_schema = DATABASE() AND table_name = ?",
            )
            .bind(table)
            .fetch_one(&pool)
            .await
            .unwrap()
                == 1
        }
    };

    outbox::mysql::migrate_all(
        &db.pool,
        &[
            one(900_001, "CREATE TABLE mig_a (x INT)"),
            one(900_002, "CREATE TABLE mig_b (x INT)"),
        ],
    )
    .await
    .expect("two good migrators");
    assert!(
        exists("mig_a").await && exists("mig_b").await,
        "both applied"
    );

    let failed = outbox::mysql::migrate_all(
        &db.pool,
        &[
            one(900_003, "THIS IS NOT SQL"),
            one(900_004, "CREATE TABLE mig_c (x INT)"),
        ],
    )
    .await;
    assert!(failed.is_err(), "the failing migrator's error is returned");
    assert!(
        !exists("mig_c").await,
        "nothing after the failed migrator ran"
    );

    // Another session (not a pooled one: that may be migrate_all's own, for which the
    // lock is re-entrant) takes the lock without waiting: it was released.
    use sqlx::Connection;
    let mut other = sqlx::MySqlConnection::connect_with(&db.pool.connect_options())
        .await
        .unwrap();
    let got: Option<i64> = sqlx::query_scalar(
        "SELECT GET_LOCK(CONCAT('ordersys_migrate:', COALESCE(DATABASE(), '')), 0)",
    )
    .fetch_one(&mut other)
    .await
    .unwrap();
    assert_eq!(got, Some(1), "the migration lock is free after migrate_all");
    sqlx::query("SELECT RELEASE_LOCK(CONCAT('ordersys_migrate:', COALESCE(DATABASE(), '')))")
        .execute(&mut other)
        .await
        .unwrap();
    other.close().await.unwrap();
    db.drop_db().await;
}
