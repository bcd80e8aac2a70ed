//! The SQLite saga store (embedded mode) against the conformance suite, and a saga that
//! survives a restart of the process.
#![cfg(feature = "sqlite")]

use bytes::Bytes;
use outbox::conformance::sqlite::TempDbFile;
use outbox::sqlite::{connect, SqliteOutbox};
use outbox::Transactional;
use saga_core::sqlite::{migrate, SqliteSagaStore};
use saga_core::{Orchestrator, SagaDefinition, SagaEvent, SagaId, SagaStatus, SagaStore};

async fn fresh(path: &std::path::Path) -> sqlx::SqlitePool {
    let pool = connect(path).await.unwrap();
    outbox::sqlite::migrate(&pool).await.unwrap();
    migrate(&pool).await.unwrap();
    pool
}

/// A database file of its own, deleted when dropped (also when the test panics).
fn temp() -> TempDbFile {
    TempDbFile::new("ordersys-saga")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_saga_store_conformance() {
    let paths = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let p = paths.clone();
    saga_core::conformance::saga_store_all(move || {
        let p = p.clone();
        async move {
            let file = temp();
            let pool = fresh(file.path()).await;
            p.lock().unwrap().push(file);
            SqliteSagaStore::new(pool)
        }
    })
    .await;
    drop(paths);
}

use saga_core::conformance::OutboxSink as Sink;

fn def() -> SagaDefinition {
    saga_core::conformance::create_order_saga(true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_in_flight_survives_a_restart() {
    let file = temp();
    let path = file.path();
    let id = SagaId::new();
    {
        let pool = fresh(path).await;
        let orch = Orchestrator::new(
            SqliteSagaStore::new(pool.clone()),
            Sink(SqliteOutbox::new(pool.clone())),
        )
        .register(def());
        let mut tx = orch.store().begin().await.unwrap();
        orch.start(&mut tx, "create_order", id, Bytes::from_static(b"data"))
            .await
            .unwrap();
        orch.store().commit(tx).await.unwrap();
        pool.close().await; // stop in the middle of the saga
    }
    let pool = fresh(path).await;
    let outbox = SqliteOutbox::new(pool.clone());
    assert_eq!(
        outbox.pending().await.unwrap(),
        1,
        "the debit command is still there to send"
    );
    let orch = Orchestrator::new(SqliteSagaStore::new(pool.clone()), Sink(outbox)).register(def());
    let done = orch
        .handle_and_commit(id, SagaEvent::StepSucceeded { step: 1 })
        .await
        .unwrap();
    assert_eq!(done.saga.state.status, SagaStatus::Completed);
    assert_eq!(
        orch.store().get(id).await.unwrap().unwrap().data,
        Bytes::from_static(b"data")
    );
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_parallel_saga() {
    let file = temp();
    let pool = fresh(file.path()).await;
    saga_core::conformance::parallel_saga(
        SqliteSagaStore::new(pool.clone()),
        SqliteOutbox::new(pool),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_versioned_sagas() {
    let file = temp();
    let pool = fresh(file.path()).await;
    saga_core::conformance::versioned_sagas(
        SqliteSagaStore::new(pool.clone()),
        SqliteOutbox::new(pool),
    )
    .await;
}
