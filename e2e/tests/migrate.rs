//! `ordersys-{user,order,payment} migrate` (what `make migrate` runs): on a database that
//! does not exist yet, each creates it, applies every migration — its own tables, the
//! outbox, inbox and saga tables it shares with the SDK — and exits 0 without serving;
//! run again, it changes nothing and still exits 0. `ordersys-order topics` (the
//! Kubernetes topics Job) creates the saga topics with their partitions and exits.

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_creates_the_saga_topics_then_exits_and_is_idempotent() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let brokers = std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let prefix = format!("e2e.topics.{}.", uuid::Uuid::new_v4().simple());
    let env: HashMap<String, String> = [
        ("KAFKA_BROKERS", brokers.clone()),
        ("KAFKA_TOPIC_PREFIX", prefix.clone()),
        ("KAFKA_REPLICATION_FACTOR", "1".into()),
        ("KAFKA_MIN_INSYNC_REPLICAS", "1".into()),
        ("GRPC_INSECURE", "true".into()),
        ("RUST_LOG", "info".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    for run in 1..=2 {
        let (status, out) =
            ordersys_e2e::run_to_end("ordersys-order", &["topics"], &env, Duration::from_secs(60))
                .await;
        assert!(
            status.success(),
            "ordersys-order topics (run {run}): {status}\n{out}"
        );
    }
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let meta = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .unwrap();
    for (topic, partitions) in [("saga.commands", 3), ("saga.replies", 3), ("dlq.saga", 1)] {
        let name = format!("{prefix}{topic}");
        let t = meta
            .topics()
            .iter()
            .find(|t| t.name() == name)
            .unwrap_or_else(|| panic!("no topic {name}"));
        assert_eq!(t.partitions().len(), partitions, "{name}");
    }
}

/// Replicas starting together on a fresh database: each migrates, one after the other
/// (the migration lock), and none finds a migration "partially applied" — which is what
/// two order replicas did under compose before the lock (MariaDB answers sqlx's own
/// `GET_LOCK(…, -1)` with NULL: no lock at all).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_migrating_a_fresh_database_at_once_all_succeed() {
    let db = format!("e2e_migrate_race_{}", uuid::Uuid::new_v4().simple());
    let env: HashMap<String, String> = [
        ("DATABASE_URL", format!("{}/{db}", server())),
        ("GRPC_INSECURE", "true".into()),
        ("RUST_LOG", "info".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    // The database exists, empty, before they start (as compose's MySQL has it).
    let mut c = sqlx::MySqlConnection::connect(&server()).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE `{db}`"))
        .execute(&mut c)
        .await
        .unwrap();
    let runs = (0..4).map(|_| {
        ordersys_e2e::run_to_end(
            "ordersys-order",
            &["migrate"],
            &env,
            Duration::from_secs(120),
        )
    });
    let results = futures::future::join_all(runs).await;
    let got = tables(&db).await;
    drop_db(&db).await;
    for (i, (status, out)) in results.iter().enumerate() {
        assert!(status.success(), "replica {i}: {status}\n{out}");
    }
    assert!(got.iter().any(|t| t == "saga_instances"), "{got:?}");
}

/// `--help` (and `-h`) prints the binary's commands and the environment it reads, and
/// exits 0 without starting anything — even with a configuration that could not start.
#[test]
fn every_binary_prints_its_usage_and_environment_on_help() {
    for (name, commands, variable) in [
        (
            "ordersys-user",
            "[serve | migrate | --help]",
            "DATABASE_URL",
        ),
        (
            "ordersys-order",
            "[serve | migrate | topics | --help]",
            "PAYMENT_DEADLINE_SECS",
        ),
        (
            "ordersys-payment",
            "[serve | migrate | topics | --help]",
            "INITIAL_BALANCE",
        ),
        (
            "ordersys-gateway",
            "[serve | openapi | --help]",
            "RATE_LIMIT_PER_MINUTE",
        ),
        ("ordersys", "[serve | --help]", "DATA_DIR"),
    ] {
        for flag in ["--help", "-h"] {
            let out = std::process::Command::new(ordersys_e2e::bin(name))
                .arg(flag)
                .env("CONFIG_FILE", "/nonexistent/config.toml")
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{name} {flag}: {out:?}");
            assert!(
                text.contains(&format!("Usage: {name} {commands}")),
                "{name}: {text}"
            );
            assert!(text.contains(&format!("\n  {variable}")), "{name}: {text}");
            assert!(text.contains("RUST_LOG"), "{name}: {text}");
        }
    }
}
