//! The transactional outbox with MySQL and Kafka, end to end:
//!
//! 1. a business row (`greetings`) and the event announcing it are written in **one**
//!    MySQL transaction — both commit or neither does;
//! 2. a [`Relay`] publishes the outbox to Kafka (at least once, in order per key);
//! 3. an [`IdempotentConsumer`] handles each event once, recording it in an inbox in the
//!    same transaction as its own writes — a redelivery is dropped.
//!
//! Needs MySQL (or MariaDB) and a Kafka-protocol broker: `DATABASE_URL` (default
//! `mysql://root@127.0.0.1:3306/test`) and `KAFKA_BROKERS` (default `127.0.0.1:9092`).
//! `cargo run -p example-outbox-mysql-kafka`.

use std::time::Duration;

use outbox::kafka::{ensure_topics, run_consumer, ConsumerConfig, KafkaDeadLetter, KafkaPublisher};
use outbox::mysql::{MySqlInbox, MySqlOutbox, MySqlTx};
use outbox::{
    Delivery, HandlerError, IdempotentConsumer, MessageHandler, OutboxMessage, OutboxStore, Relay,
    RelayConfig, Transactional,
};

/// The consumer's business logic: runs inside the unit of work that records the
/// message in the inbox.
struct CountGreetings(tokio::sync::mpsc::UnboundedSender<String>);

impl MessageHandler<MySqlTx> for CountGreetings {
    type Output = ();
    async fn handle(&self, tx: &mut MySqlTx, msg: &Delivery) -> Result<(), HandlerError> {
        let name = String::from_utf8_lossy(&msg.payload).into_owned();
        sqlx::query("UPDATE greetings SET seen = seen + 1 WHERE name = ?")
            .bind(&name)
            .execute(&mut **tx)
            .await
            .map_err(HandlerError::infrastructure)?;
        let _ = self.0.send(name);
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let db = std::env::var("DATABASE_URL").unwrap_or("mysql://root@127.0.0.1:3306/test".into());
    let brokers = std::env::var("KAFKA_BROKERS").unwrap_or("127.0.0.1:9092".into());
    let run = uuid::Uuid::new_v4().simple().to_string();
    let topic = format!("example.greetings.{run}");

    let pool = sqlx::MySqlPool::connect(&db).await?;
    outbox::mysql::migrate(&pool).await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS greetings (name VARCHAR(64) PRIMARY KEY, seen INT NOT NULL)",
    )
    .execute(&pool)
    .await?;
    ensure_topics(&brokers, &[(topic.as_str(), 3)]).await?;

    // 1. The row and its event, in one transaction.
    let store = MySqlOutbox::new(pool.clone());
    let names: Vec<String> = (0..5).map(|i| format!("hello-{i}-{run}")).collect();
    for name in &names {
        let mut tx = store.begin().await?;
        sqlx::query("INSERT INTO greetings (name, seen) VALUES (?, 0)")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        let event = OutboxMessage::new(topic.clone(), name.clone(), name.clone().into_bytes());
        store.enqueue(&mut tx, event).await?;
        store.commit(tx).await?;
    }

    // 2. The relay: give each instance a stable id (its host name in a service).
    let publisher = KafkaPublisher::new(&brokers)?;
    let relay = Relay::new(
        store,
        publisher.clone(),
        RelayConfig::with_id(format!("example-{run}")),
    );
    let (stop_relay, relay_stopped) = tokio::sync::oneshot::channel::<()>();
    let relay = tokio::spawn(relay.run(async {
        let _ = relay_stopped.await;
    }));

    // 3. The consumer: idempotent through the inbox, failures to a dead-letter topic.
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    let consumer = IdempotentConsumer::new(
        "greetings",
        MySqlInbox::new(pool.clone()),
        KafkaDeadLetter::new(publisher).with_topic(format!("{topic}.dlq")),
    );
    let mut config = ConsumerConfig::new(&brokers, format!("example-{run}"), &[&topic]);
    config.session_timeout = Duration::from_secs(6);
    let (stop_consumer, consumer_stopped) = tokio::sync::oneshot::channel::<()>();
    let consumer = tokio::spawn(async move {
        run_consumer(&config, &consumer, &CountGreetings(seen_tx), async {
            let _ = consumer_stopped.await;
        })
        .await
    });

    let mut got = Vec::new();
    while got.len() < names.len() {
        match tokio::time::timeout(Duration::from_secs(60), seen_rx.recv()).await {
            Ok(Some(name)) => {
                println!("consumed {name}");
                got.push(name);
            }
            _ => {
                return Err(format!("only {} of {} events arrived", got.len(), names.len()).into())
            }
        }
    }
    let _ = stop_relay.send(());
    let _ = stop_consumer.send(());
    relay.await??;
    let stats = consumer.await??;

    // Each row was seen exactly once, and the outbox is drained.
    for name in &names {
        let seen: i32 = sqlx::query_scalar("SELECT seen FROM greetings WHERE name = ?")
            .bind(name)
            .fetch_one(&pool)
            .await?;
        assert_eq!(seen, 1, "{name}");
    }
    println!(
        "outbox-mysql-kafka: {} events committed with their rows, published and handled once ({} processed)",
        names.len(),
        stats.processed
    );
    Ok(())
}
