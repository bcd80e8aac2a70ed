//! `run_consumer` handles the messages it receives together in shared units of work
//! (`ConsumerConfig::max_batch`), against a real Kafka-protocol broker
//! (`KAFKA_BROKERS`, default 127.0.0.1:9092; scripts/kafka-up).
#![cfg(feature = "kafka")]

use std::sync::atomic::Ordering;
use std::sync::Arc;

use outbox::kafka::{ensure_topics, run_consumer};
use outbox::memory::MemoryDeadLetters;
use outbox::IdempotentConsumer;

mod support;
use support::kafka::{brokers, consumer_config, publish_numbered, stopper, unique, Collect};
use support::DownInbox;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_is_handled_in_batches_in_key_order_and_a_poison_message_holds_back_nobody() {
    let topic = unique("batches");
    ensure_topics(&brokers(), &[(&topic, 2)]).await.unwrap();
    // 300 messages over 30 keys wait before the consumer starts; one of them is poison.
    publish_numbered(&topic, 300, 30).await;
    let poison = "150";

    let inbox = DownInbox::default();
    let dead = MemoryDeadLetters::new();
    let consumer = Arc::new(IdempotentConsumer::new("test", inbox.clone(), dead.clone()));
    let collect = Collect {
        poison: Some(poison),
        ..Collect::default()
    };
    let mut config = consumer_config(&topic);
    config.max_batch = 16;
    let (stop, stopped) = stopper();
    let (c, h, s) = (consumer.clone(), collect.clone(), stopped());
    let task = tokio::spawn(async move { run_consumer(&config, &c, &h, s).await });

    collect.wait_for(299).await;
    stop.send_replace(true);
    let stats = task.await.unwrap().unwrap();
    assert_eq!((stats.processed, stats.dead_lettered), (299, 1));
    assert_eq!(dead.parked().len(), 1);
    assert_eq!(&dead.parked()[0].0.payload[..], poison.as_bytes());

    // Each number once, each key in log order.
    let expected: Vec<u32> = (0..300).filter(|i| i.to_string() != poison).collect();
    assert_eq!(collect.sorted_numbers(), expected);
    let seen = collect.seen.lock().unwrap().clone();
    for key in 0..30 {
        let of_key: Vec<u32> = seen
            .iter()
            .filter(|d| d.key == format!("k{key}"))
            .map(|d| std::str::from_utf8(&d.payload).unwrap().parse().unwrap())
            .collect();
        let mut sorted = of_key.clone();
        sorted.sort();
        assert_eq!(of_key, sorted, "the order of key k{key}");
    }

    // Far fewer units of work than messages (one per message without batches; the
    // poison's batch is redone message by message).
    let units = inbox.attempts.load(Ordering::SeqCst);
    assert!(
        units <= 150,
        "{units} units of work for 300 messages waiting together"
    );
}
