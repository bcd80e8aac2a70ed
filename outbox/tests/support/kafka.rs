//! Helpers of the tests against a real Kafka-protocol broker.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use outbox::kafka::{run_consumer, ConsumerConfig, KafkaPublisher};
use outbox::memory::{MemoryDeadLetters, MemoryInbox, MemoryTx};
use outbox::{Delivery, HandlerError, IdempotentConsumer, MessageHandler, OutboxMessage};
use tokio::sync::watch;

pub fn brokers() -> String {
    let b = std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let first = b.split(',').next().unwrap().to_owned();
    std::net::TcpStream::connect_timeout(
        &first.parse().expect("KAFKA_BROKERS host:port"),
        Duration::from_secs(3),
    )
    .unwrap_or_else(|e| panic!("Kafka at {b} is not reachable ({e}); run scripts/kafka-up"));
    b
}

pub fn unique(name: &str) -> String {
    format!("test.{name}.{}", uuid::Uuid::new_v4().simple())
}

pub fn consumer_config(topic: &str) -> ConsumerConfig {
    let mut c = ConsumerConfig::new(brokers(), unique("group"), &[topic]);
    c.session_timeout = Duration::from_secs(6);
    c
}

/// Collects what it handles, transactionally (on commit of the inbox unit of work).
#[derive(Clone, Default)]
pub struct Collect {
    pub seen: Arc<Mutex<Vec<Delivery>>>,
    pub count: Arc<watch::Sender<usize>>,
    pub poison: Option<&'static str>,
}

impl Collect {
    /// The numeric payloads handled so far, sorted.
    pub fn sorted_numbers(&self) -> Vec<u32> {
        let mut n: Vec<u32> = self.payloads().iter().map(|p| p.parse().unwrap()).collect();
        n.sort();
        n
    }

    /// The payloads handled so far, as text.
    pub fn payloads(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|d| String::from_utf8(d.payload.to_vec()).unwrap())
            .collect()
    }

    pub async fn wait_for(&self, n: usize) {
        let mut rx = self.count.subscribe();
        tokio::time::timeout(Duration::from_secs(60), rx.wait_for(|c| *c >= n))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "only {} of {n} messages arrived",
                    self.seen.lock().unwrap().len()
                )
            })
            .unwrap();
    }
}

impl MessageHandler<MemoryTx> for Collect {
    type Output = ();
    async fn handle(&self, tx: &mut MemoryTx, msg: &Delivery) -> Result<(), HandlerError> {
        if Some(&msg.payload[..]) == self.poison.map(str::as_bytes) {
            return Err(HandlerError::permanent("cannot decode payload"));
        }
        let (seen, count, msg) = (self.seen.clone(), self.count.clone(), msg.clone());
        tx.on_commit(move || {
            let mut s = seen.lock().unwrap();
            s.push(msg);
            count.send_replace(s.len());
        });
        Ok(())
    }
}

pub fn stopper() -> (
    watch::Sender<bool>,
    impl Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
) {
    let (tx, rx) = watch::channel(false);
    let make = move || {
        let mut rx = rx.clone();
        Box::pin(async move {
            let _ = rx.wait_for(|s| *s).await;
        }) as std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
    };
    (tx, make)
}

pub async fn publish_numbered(topic: &str, n: usize, keys: usize) {
    let publisher = KafkaPublisher::new(&brokers()).unwrap();
    for i in 0..n {
        let m = OutboxMessage::new(topic, format!("k{}", i % keys), format!("{i}"));
        outbox::Publisher::publish(&publisher, &m).await.unwrap();
    }
}

/// A consumer with a fresh memory inbox feeding a [`Collect`], running until stopped.
pub fn spawn_collecting(
    config: ConsumerConfig,
) -> (
    Collect,
    watch::Sender<bool>,
    tokio::task::JoinHandle<outbox::Result<outbox::kafka::ConsumerStats>>,
) {
    let consumer = IdempotentConsumer::new("test", MemoryInbox::new(), MemoryDeadLetters::new());
    let collect = Collect::default();
    let (stop, stopped) = stopper();
    let (h, s) = (collect.clone(), stopped());
    let task = tokio::spawn(async move { run_consumer(&config, &consumer, &h, s).await });
    (collect, stop, task)
}

/// Publish `n` messages to each of `partitions` partitions of `topic`, chosen
/// explicitly, each payload naming its partition (`p{partition}-{i}`).
pub async fn publish_to_partitions(topic: &str, partitions: i32, n: usize) {
    for p in 0..partitions {
        publish_to(topic, p, 0..n).await;
    }
}

/// Publish the messages `p{partition}-{i}` for each `i` of `numbers` to `partition` of
/// `topic`, one after the other (each its own key).
pub async fn publish_to(topic: &str, partition: i32, numbers: std::ops::Range<usize>) {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    for i in numbers {
        let payload = format!("p{partition}-{i}");
        producer
            .send(
                FutureRecord::to(topic)
                    .key(&payload)
                    .payload(&payload)
                    .partition(partition),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
}
