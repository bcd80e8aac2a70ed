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
    db.drop_db().await;
}

/// A business effect written in the consumer's transaction.
struct Debit;

impl MessageHandler<MySqlTx> for Debit {
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
