//! The MySQL saga store against the conformance suite, and composed with the MySQL
//! outbox in one transaction, on the real server.
#![cfg(feature = "mysql")]

use std::sync::Arc;

use bytes::Bytes;
use outbox::conformance::mysql::TestDb;
use outbox::mysql::{MySqlOutbox, MySqlTx};
use outbox::{OutboxMessage, OutboxStore, Transactional};
use saga_core::mysql::{migrate, MySqlSagaStore};
use saga_core::{
    CommandSink, Dispatched, Orchestrator, SagaCommand, SagaEvent, SagaId, SagaInstance,
    SagaStatus, SagaStore,
};

async fn db() -> TestDb {
    let db = TestDb::new().await;
    migrate(&db.pool).await.unwrap();
    db
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_saga_store_conformance() {
    let dbs = Arc::new(std::sync::Mutex::new(Vec::new()));
    let d = dbs.clone();
    saga_core::conformance::saga_store_all(move || {
        let d = d.clone();
        async move {
            let db = db().await;
            let store = MySqlSagaStore::new(db.pool.clone());
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

/// Local steps update an `orders` table; payment commands go to the MySQL outbox.
struct Sink(MySqlOutbox);

impl CommandSink<MySqlTx> for Sink {
    async fn dispatch(
        &self,
        tx: &mut MySqlTx,
        saga: &SagaInstance,
        cmd: &SagaCommand,
    ) -> saga_core::Result<Dispatched> {
        let status = match cmd.name.as_str() {
            "create_order" => "PENDING",
            "cancel_order" => "CANCELLED",
            "confirm_order" => "CONFIRMED",
            remote => {
                let msg =
                    OutboxMessage::new("saga.commands", saga.id.to_string(), remote.to_owned());
                self.0
                    .enqueue(tx, msg)
                    .await
                    .map_err(saga_core::Error::dispatch)?;
                return Ok(Dispatched::Sent);
            }
        };
        sqlx::query("REPLACE INTO orders (id, status) VALUES (?, ?)")
            .bind(saga.id.to_string())
            .bind(status)
            .execute(&mut **tx)
            .await
            .map_err(saga_core::Error::dispatch)?;
        Ok(Dispatched::Succeeded)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saga_order_and_command_commit_together() {
    let db = db().await;
    sqlx::query("CREATE TABLE orders (id VARCHAR(64) PRIMARY KEY, status VARCHAR(16) NOT NULL)")
        .execute(&db.pool)
        .await
        .unwrap();
    let outbox = MySqlOutbox::new(db.pool.clone());
    let store = MySqlSagaStore::new(db.pool.clone());
    let def = saga_core::conformance::create_order_saga(true);
    let orch = Arc::new(Orchestrator::new(store.clone(), Sink(outbox.clone())).register(def));
    let status = |id: SagaId| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, String>("SELECT status FROM orders WHERE id = ?")
                .bind(id.to_string())
                .fetch_optional(&pool)
                .await
                .unwrap()
        }
    };

    // Rolled back: no saga, no order, no command.
    let id = SagaId::new();
    let mut tx = store.begin().await.unwrap();
    orch.start(&mut tx, "create_order", id, Bytes::new())
        .await
        .unwrap();
    drop(tx);
    assert!(store.get(id).await.unwrap().is_none());
    assert_eq!(status(id).await, None);
    assert_eq!(outbox.pending().await.unwrap(), 0);

    // Committed: all three.
    let mut tx = store.begin().await.unwrap();
    orch.start(&mut tx, "create_order", id, Bytes::from_static(b"data"))
        .await
        .unwrap();
    store.commit(tx).await.unwrap();
    assert_eq!(status(id).await.as_deref(), Some("PENDING"));
    assert_eq!(outbox.pending().await.unwrap(), 1);
    assert_eq!(
        store.get(id).await.unwrap().unwrap().data,
        Bytes::from_static(b"data")
    );

    // Concurrent duplicate replies: FOR UPDATE + versions apply exactly one.
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let o = orch.clone();
        tasks.push(tokio::spawn(async move {
            o.handle_and_commit(id, SagaEvent::StepSucceeded { step: 1 })
                .await
                .unwrap()
                .changed
        }));
    }
    let mut changed = 0;
    for t in tasks {
        changed += t.await.unwrap() as usize;
    }
    assert_eq!(changed, 1);
    let saga = store.get(id).await.unwrap().unwrap();
    assert_eq!(saga.state.status, SagaStatus::Completed);
    assert_eq!(saga.version, 2);
    assert_eq!(status(id).await.as_deref(), Some("CONFIRMED"));
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_parallel_saga() {
    let db = db().await;
    saga_core::conformance::parallel_saga(
        MySqlSagaStore::new(db.pool.clone()),
        MySqlOutbox::new(db.pool.clone()),
    )
    .await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_versioned_sagas() {
    let db = db().await;
    saga_core::conformance::versioned_sagas(
        MySqlSagaStore::new(db.pool.clone()),
        MySqlOutbox::new(db.pool.clone()),
    )
    .await;
    db.drop_db().await;
}
