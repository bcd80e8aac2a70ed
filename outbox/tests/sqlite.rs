//! The SQLite backends (embedded mode) against the shared conformance suites, each on a
//! database file of its own.
#![cfg(feature = "sqlite")]

use outbox::conformance;
use outbox::sqlite::{connect, migrate, SqliteIdempotencyStore, SqliteInbox, SqliteOutbox};

async fn fresh() -> (sqlx::SqlitePool, std::path::PathBuf) {
    let path = std::env::temp_dir().join(format!(
        "ordersys-test-{}.db",
        uuid::Uuid::new_v4().simple()
    ));
    let pool = connect(path.to_str().unwrap()).await.unwrap();
    migrate(&pool).await.unwrap();
    (pool, path)
}

fn cleanup(path: &std::path::Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_outbox_conformance() {
    let paths = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let p = paths.clone();
    conformance::outbox_store_all(move || {
        let p = p.clone();
        async move {
            let (pool, path) = fresh().await;
            p.lock().unwrap().push(path);
            SqliteOutbox::new(pool)
        }
    })
    .await;
    for path in paths.lock().unwrap().iter() {
        cleanup(path);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_relay_conformance() {
    let (pool, path) = fresh().await;
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
    cleanup(&path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_inbox_and_idempotency_conformance() {
    let (pool, path) = fresh().await;
    conformance::inbox_all(&SqliteInbox::new(pool.clone())).await;
    conformance::idempotency_all(&SqliteIdempotencyStore::new(pool.clone())).await;
    pool.close().await;
    cleanup(&path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_outbox_survives_a_reopen() {
    use outbox::{OutboxMessage, OutboxStore, Transactional};
    let (pool, path) = fresh().await;
    let outbox = SqliteOutbox::new(pool.clone());
    let mut tx = outbox.begin().await.unwrap();
    let m = OutboxMessage::new("saga.commands", "k", "durable").with_header("traceparent", "tp");
    outbox.enqueue(&mut tx, m.clone()).await.unwrap();
    outbox.commit(tx).await.unwrap();
    pool.close().await; // the process stops

    let pool = connect(path.to_str().unwrap()).await.unwrap();
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
    cleanup(&path);
}
