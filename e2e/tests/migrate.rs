//! `ordersys-{user,order,payment} migrate` (what `make migrate` runs): on a database that
//! does not exist yet, each creates it, applies every migration — its own tables, the
//! outbox, inbox and saga tables it shares with the SDK — and exits 0 without serving;
//! run again, it changes nothing and still exits 0.

use std::collections::HashMap;
use std::time::Duration;

use sqlx::{Connection, Row};

fn server() -> String {
    std::env::var("DATABASE_SERVER_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into())
}

async fn tables(db: &str) -> Vec<String> {
    let mut c = sqlx::MySqlConnection::connect(&server()).await.unwrap();
    let rows = sqlx::query(
        "SELECT CAST(table_name AS CHAR) FROM information_schema.tables WHERE table_schema = ? ORDER BY 1",
    )
    .bind(db)
    .fetch_all(&mut c)
    .await
    .unwrap();
    rows.iter().map(|r| r.get::<String, _>(0)).collect()
}

async fn drop_db(db: &str) {
    let mut c = sqlx::MySqlConnection::connect(&server()).await.unwrap();
    sqlx::query(&format!("DROP DATABASE IF EXISTS `{db}`"))
        .execute(&mut c)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_creates_each_services_schema_then_exits_and_is_idempotent() {
    for (bin, expected) in [
        ("ordersys-user", &["users"][..]),
        (
            "ordersys-order",
            &[
                "orders",
                "outbox_messages",
                "inbox_messages",
                "saga_instances",
            ][..],
        ),
        (
            "ordersys-payment",
            &["accounts", "payments", "outbox_messages", "inbox_messages"][..],
        ),
    ] {
        let db = format!("e2e_migrate_{}", uuid::Uuid::new_v4().simple());
        let env: HashMap<String, String> = [
            ("DATABASE_URL", format!("{}/{db}", server())),
            ("JWT_SECRET", "a-migration-test-secret-of-32-bytes!!".into()),
            ("GRPC_INSECURE", "true".into()),
            ("RUST_LOG", "info".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        assert!(tables(&db).await.is_empty());
        for run in 1..=2 {
            let (status, out) =
                ordersys_e2e::run_to_end(bin, &["migrate"], &env, Duration::from_secs(60)).await;
            assert!(
                status.success(),
                "{bin} migrate (run {run}): {status}\n{out}"
            );
        }
        let got = tables(&db).await;
        drop_db(&db).await;
        for t in expected {
            assert!(got.iter().any(|g| g == t), "{bin}: no table {t} in {got:?}");
        }
    }
}
