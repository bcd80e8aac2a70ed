//! Kafka publisher, consumer runner and dead-letter topic against a real
//! Kafka-protocol broker (`KAFKA_BROKERS`, default 127.0.0.1:9092; scripts/kafka-up).
//! Every test uses topics and consumer groups of its own.
#![cfg(feature = "kafka")]

use std::sync::Arc;
use std::time::Duration;

use outbox::kafka::{
    ensure_topics, run_consumer, ConsumerConfig, KafkaDeadLetter, KafkaPublisher,
    DLQ_REASON_HEADER, DLQ_TOPIC_HEADER,
};
use outbox::memory::{MemoryDeadLetters, MemoryInbox, MemoryOutbox, MemoryTx};
use outbox::{
    Delivery, HandlerError, IdempotentConsumer, MessageHandler, OutboxMessage, OutboxStore, Relay,
    RelayConfig, Transactional,
};
use tokio::sync::watch;

mod support;
use support::kafka::{
    brokers, consumer_config, publish_numbered, spawn_collecting, stopper, unique, Collect,
};
use support::DownInbox;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_to_kafka_to_idempotent_consumer_keeps_keys_headers_and_order() {
    let topic = unique("commands");
    ensure_topics(&brokers(), &[(&topic, 3)]).await.unwrap();
    ensure_topics(&brokers(), &[(&topic, 3)]).await.unwrap(); // idempotent

    let outbox = MemoryOutbox::new();
    let mut tx = outbox.begin().await.unwrap();
    for i in 0..30 {
        let key = format!("order-{}", i % 3);
        let msg = OutboxMessage::new(topic.clone(), key, format!("{i}")).with_header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        );
        outbox.enqueue(&mut tx, msg).await.unwrap();
    }
    outbox.commit(tx).await.unwrap();

    let (stop, stopped) = stopper();
    let relay = Relay::new(
        outbox.clone(),
        KafkaPublisher::new(&brokers()).unwrap(),
        RelayConfig::default(),
    );
    let relay_task = tokio::spawn(relay.run(stopped()));

    let collect = Collect::default();
    let consumer = Arc::new(IdempotentConsumer::new(
        "test",
        MemoryInbox::new(),
        MemoryDeadLetters::new(),
    ));
    let config = consumer_config(&topic);
    let (c, h, s) = (consumer.clone(), collect.clone(), stopped());
    let consumer_task = tokio::spawn(async move { run_consumer(&config, &c, &h, s).await });

    collect.wait_for(30).await;
    stop.send_replace(true);
    relay_task.await.unwrap().unwrap();
    let stats = consumer_task.await.unwrap().unwrap();
    assert_eq!(stats.processed, 30);
    assert_eq!(outbox.pending(), 0);

    let seen = collect.seen.lock().unwrap().clone();
    for key in ["order-0", "order-1", "order-2"] {
        let payloads: Vec<u32> = seen
            .iter()
            .filter(|d| d.key == key)
            .map(|d| std::str::from_utf8(&d.payload).unwrap().parse().unwrap())
            .collect();
        let mut sorted = payloads.clone();
        sorted.sort();
        assert_eq!(payloads, sorted, "per-key order for {key}");
        assert_eq!(payloads.len(), 10);
    }
    for d in &seen {
        assert_eq!(d.headers.get("traceparent").unwrap().len(), 55);
        assert_eq!(d.headers.get("message-id").unwrap(), d.id.to_string());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_consumer_resumes_from_committed_offsets_without_double_processing() {
    let topic = unique("resume");
    ensure_topics(&brokers(), &[(&topic, 1)]).await.unwrap();
    let publisher = KafkaPublisher::new(&brokers()).unwrap();
    let msgs: Vec<_> = (0..20)
        .map(|i| OutboxMessage::new(topic.clone(), "k", format!("{i}")))
        .collect();
    for m in &msgs[..10] {
        outbox::Publisher::publish(&publisher, m).await.unwrap();
    }
    // One message published twice (a relay that crashed before mark-sent).
    outbox::Publisher::publish(&publisher, &msgs[3])
        .await
        .unwrap();

    let inbox = MemoryInbox::new();
    let consumer = Arc::new(IdempotentConsumer::new(
        "test",
        inbox.clone(),
        MemoryDeadLetters::new(),
    ));
    let config = consumer_config(&topic);
    let collect = Collect::default();

    let (stop, stopped) = stopper();
    let (c, h, cfg, s) = (consumer.clone(), collect.clone(), config.clone(), stopped());
    let first = tokio::spawn(async move { run_consumer(&cfg, &c, &h, s).await });
    collect.wait_for(10).await;
    stop.send_replace(true);
    let s1 = first.await.unwrap().unwrap();

    for m in &msgs[10..] {
        outbox::Publisher::publish(&publisher, m).await.unwrap();
    }
    let (stop, stopped) = stopper();
    let (c, h, cfg, s) = (consumer.clone(), collect.clone(), config.clone(), stopped());
    let second = tokio::spawn(async move { run_consumer(&cfg, &c, &h, s).await });
    collect.wait_for(20).await;
    stop.send_replace(true);
    let s2 = second.await.unwrap().unwrap();

    assert_eq!(
        s1.processed + s2.processed,
        20,
        "every message processed exactly once"
    );
    // Only the republished message was a duplicate: the second run started from the
    // committed offset, not from the beginning of the topic.
    assert_eq!(s1.duplicates + s2.duplicates, 1);
    let seen = collect.seen.lock().unwrap();
    let payloads: Vec<String> = seen
        .iter()
        .map(|d| String::from_utf8(d.payload.to_vec()).unwrap())
        .collect();
    let expected: Vec<String> = (0..20).map(|i| i.to_string()).collect();
    assert_eq!(payloads, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_message_goes_to_the_dead_letter_topic_and_the_consumer_carries_on() {
    let topic = unique("poison");
    let dlq = unique("dlq");
    ensure_topics(&brokers(), &[(&topic, 1), (&dlq, 1)])
        .await
        .unwrap();
    let publisher = KafkaPublisher::new(&brokers()).unwrap();
    for p in ["good-1", "poison", "good-2"] {
        let m = OutboxMessage::new(topic.clone(), "k", p).with_header("traceparent", "tp");
        outbox::Publisher::publish(&publisher, &m).await.unwrap();
    }

    let dead = KafkaDeadLetter::new(publisher.clone()).with_topic(dlq.clone());
    let consumer = Arc::new(IdempotentConsumer::new("test", MemoryInbox::new(), dead));
    let collect = Collect {
        poison: Some("poison"),
        ..Collect::default()
    };
    let (stop, stopped) = stopper();
    let (c, h, cfg, s) = (
        consumer.clone(),
        collect.clone(),
        consumer_config(&topic),
        stopped(),
    );
    let task = tokio::spawn(async move { run_consumer(&cfg, &c, &h, s).await });

    // Read the dead-letter topic with a plain collecting consumer.
    let parked = Collect::default();
    let dlq_consumer = Arc::new(IdempotentConsumer::new(
        "dlq-reader",
        MemoryInbox::new(),
        MemoryDeadLetters::new(),
    ));
    let (p, cfg, s) = (parked.clone(), consumer_config(&dlq), stopped());
    let dlq_task = tokio::spawn(async move { run_consumer(&cfg, &dlq_consumer, &p, s).await });

    collect.wait_for(2).await;
    parked.wait_for(1).await;
    stop.send_replace(true);
    let stats = task.await.unwrap().unwrap();
    dlq_task.await.unwrap().unwrap();
    assert_eq!(stats.processed, 2);
    assert_eq!(stats.dead_lettered, 1);
    let good: Vec<_> = collect
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|d| d.payload.clone())
        .collect();
    assert_eq!(good, ["good-1", "good-2"]);
    let parked = parked.seen.lock().unwrap()[0].clone();
    assert_eq!(&parked.payload[..], b"poison");
    assert_eq!(parked.key, "k");
    assert_eq!(parked.headers.get("traceparent"), Some("tp"));
    assert_eq!(parked.headers.get(DLQ_TOPIC_HEADER), Some(topic.as_str()));
    assert!(parked
        .headers
        .get(DLQ_REASON_HEADER)
        .unwrap()
        .contains("cannot decode"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_group_member_joining_midway_loses_and_doubles_nothing() {
    let topic = unique("rebalance");
    ensure_topics(&brokers(), &[(&topic, 3)]).await.unwrap();
    let publisher = KafkaPublisher::new(&brokers()).unwrap();
    let publish = |i: u32| publish_spread(&publisher, &topic, i);
    for i in 0..30 {
        publish(i).await;
    }

    let inbox = MemoryInbox::new(); // the database both members share
    let all = Collect::default(); // everything, across members
    let config = consumer_config(&topic);
    let (stop, stopped) = stopper();
    let spawn_member = |mine: Collect| member(&config, &inbox, &all, mine, stopped());
    let a = spawn_member(Collect::default());
    all.wait_for(10).await;
    let b_seen = Collect::default();
    let b = spawn_member(b_seen.clone()); // joins the group: a rebalance follows

    // Keep producing until the new member owns partitions and has processed something.
    let mut next = 30;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    while b_seen.seen.lock().unwrap().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the second member never got a partition"
        );
        publish(next).await;
        next += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for i in next..next + 30 {
        publish(i).await;
    }
    let total = next + 30;
    all.wait_for(total as usize).await;
    stop.send_replace(true);
    let (sa, sb) = (a.await.unwrap().unwrap(), b.await.unwrap().unwrap());
    assert!(sb.processed > 0);
    assert_eq!(
        sa.processed + sb.processed,
        u64::from(total),
        "{sa:?} {sb:?}"
    );
    let payloads = all.sorted_numbers();
    assert_eq!(payloads, (0..total).collect::<Vec<_>>());
}

/// A member that goes away mid-stream — its task aborted while it consumes — hands its
/// partitions to the one that stays: every message is still processed, exactly once
/// (a message it had in flight comes again and the shared inbox decides).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_member_leaving_midway_hands_its_partitions_over_and_doubles_nothing() {
    let topic = unique("leaving");
    ensure_topics(&brokers(), &[(&topic, 3)]).await.unwrap();
    let publisher = KafkaPublisher::new(&brokers()).unwrap();
    let publish = |i: u32| publish_spread(&publisher, &topic, i);
    let inbox = MemoryInbox::new();
    let all = Collect::default();
    let config = consumer_config(&topic);
    let (stop, stopped) = stopper();
    let spawn_member = |mine: Collect| member(&config, &inbox, &all, mine, stopped());
    let (a_seen, b_seen) = (Collect::default(), Collect::default());
    let a = spawn_member(a_seen.clone());
    let b = spawn_member(b_seen.clone());
    // Produce until both members own partitions and have processed something.
    let mut next = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while a_seen.seen.lock().unwrap().is_empty() || b_seen.seen.lock().unwrap().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the two members never shared the partitions"
        );
        publish(next).await;
        next += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    b.abort(); // gone, mid-stream
    let _ = b.await;
    for i in next..next + 30 {
        publish(i).await;
    }
    let total = next + 30;
    all.wait_for(total as usize).await;
    stop.send_replace(true);
    a.await.unwrap().unwrap();
    let payloads = all.sorted_numbers();
    assert_eq!(payloads, (0..total).collect::<Vec<_>>(), "lost or doubled");
}

/// Publish message `i` of a numbered stream, keys spread over seven.
async fn publish_spread(publisher: &KafkaPublisher, topic: &str, i: u32) {
    let m = OutboxMessage::new(topic, format!("key-{}", i % 7), i.to_string());
    outbox::Publisher::publish(publisher, &m).await.unwrap();
}

/// One member of a consumer group whose members share `inbox` (their database),
/// recording into `all` and `mine`.
fn member(
    config: &ConsumerConfig,
    inbox: &MemoryInbox,
    all: &Collect,
    mine: Collect,
    stop: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
) -> tokio::task::JoinHandle<outbox::Result<outbox::kafka::ConsumerStats>> {
    let consumer = IdempotentConsumer::new("test", inbox.clone(), MemoryDeadLetters::new());
    let (h, cfg) = (Both(all.clone(), mine), config.clone());
    tokio::spawn(async move { run_consumer(&cfg, &consumer, &h, stop).await })
}

/// Records into two collectors (all members, and this member).
struct Both(Collect, Collect);

impl MessageHandler<MemoryTx> for Both {
    type Output = ();
    async fn handle(&self, tx: &mut MemoryTx, msg: &Delivery) -> Result<(), HandlerError> {
        self.0.handle(tx, msg).await?;
        self.1.handle(tx, msg).await
    }
}

/// `make dev-up` right after `make test` once never consumed a saga reply: the group's
/// committed offset lay beyond the end of a log that was created again, and the broker
/// (Tansu) answers such a fetch with nothing instead of `OFFSET_OUT_OF_RANGE`, so the
/// consumer waited silently forever. The watchdog moves it back to the log's start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_offset_beyond_the_end_of_the_log_is_noticed_and_consumption_resumes() {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    use rdkafka::{Offset, TopicPartitionList};

    let topic = unique("beyond");
    ensure_topics(&brokers(), &[(&topic, 1)]).await.unwrap();
    let mut config = consumer_config(&topic);
    config.watchdog_interval = Some(Duration::from_secs(1));
    // The group's offset from an earlier life of the topic.
    let base: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", &config.group_id)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Offset(1000))
        .unwrap();
    base.commit(&tpl, CommitMode::Sync).unwrap();
    drop(base);

    publish_numbered(&topic, 3, 1).await;
    let (collect, stop, task) = spawn_collecting(config);
    collect.wait_for(3).await;
    stop.send_replace(true);
    let stats = task.await.unwrap().unwrap();
    assert_eq!(stats.processed, 3);
}

/// Publish `n` messages numbered 0.. to `topic`, keys spread over `keys`.
/// Publish `n` messages numbered 0.. to `topic` at once through a producer that lingers,
/// so they land in record batches of several messages (as the relay's concurrent
/// publishes do under load).
async fn publish_batched(topic: &str, n: usize, keys: usize) {
    let mut config = outbox::kafka::producer_config(&brokers());
    config.set("linger.ms", "50");
    let publisher = KafkaPublisher::from_config(&config).unwrap();
    let messages: Vec<_> = (0..n)
        .map(|i| OutboxMessage::new(topic, format!("k{}", i % keys), format!("{i}")))
        .collect();
    futures::future::try_join_all(
        messages
            .iter()
            .map(|m| outbox::Publisher::publish(&publisher, m)),
    )
    .await
    .unwrap();
}

/// The watchdog must never rewind a consumer that is merely idle at the end of its log:
/// idle checks after the last message cause no redelivery — also when the log ends in a
/// batch of several records, where Tansu's `ListOffsets` answers the batch's first
/// offset + 1 as the log end, which the consumer's position lies beyond.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watchdog_leaves_an_idle_consumer_at_the_end_of_its_log_alone() {
    let topic = unique("idle");
    ensure_topics(&brokers(), &[(&topic, 1)]).await.unwrap();
    let mut config = consumer_config(&topic);
    config.watchdog_interval = Some(Duration::from_millis(300));
    publish_numbered(&topic, 20, 4).await;
    publish_batched(&topic, 20, 4).await;
    let (collect, stop, task) = spawn_collecting(config);
    collect.wait_for(40).await;
    // Idle for many watchdog intervals: a rewind would redeliver (duplicates > 0).
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.send_replace(true);
    let stats = task.await.unwrap().unwrap();
    assert_eq!((stats.processed, stats.duplicates), (40, 0), "{stats:?}");
}

/// A message from a producer that sets no `message-id` header gets an id derived from
/// where it sits in the log: the same on every delivery, so the inbox still drops a
/// redelivery (here: a second consumer group reading the same log sees the same ids).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_without_a_message_id_header_gets_a_stable_id() {
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let topic = unique("no-id");
    ensure_topics(&brokers(), &[(&topic, 1)]).await.unwrap();
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    for i in 0..3 {
        producer
            .send(
                FutureRecord::to(&topic).key("k").payload(&format!("{i}")),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    let mut runs = Vec::new();
    for _ in 0..2 {
        let (collect, stop, task) = spawn_collecting(consumer_config(&topic));
        collect.wait_for(3).await;
        stop.send_replace(true);
        task.await.unwrap().unwrap();
        let ids: Vec<outbox::MessageId> =
            collect.seen.lock().unwrap().iter().map(|d| d.id).collect();
        runs.push(ids);
    }
    assert_eq!(runs[0], runs[1], "ids differ between deliveries");
    let distinct: std::collections::HashSet<_> = runs[0].iter().collect();
    assert_eq!(distinct.len(), 3, "each message its own id");
}

/// Each member reports the lag of the partitions it consumes
/// (`outbox_consumer_lag_messages{group,topic,partition}`, from librdkafka's statistics)
/// and of no other: a member's statistics also list the partitions another member holds,
/// with an unknown lag (-1), which must not overwrite that member's figure. The only
/// test in this binary that installs a global recorder (the statistics callback runs on
/// librdkafka's thread).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_member_reports_the_lag_of_its_own_partitions_only() {
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let recorder = ordersys_testkit::MetricsRecorder::default();
    metrics::set_global_recorder(recorder.clone()).expect("no other global recorder");
    let topic = unique("lag");
    ensure_topics(&brokers(), &[(&topic, 2)]).await.unwrap();
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let produce = |partition: i32, i: u32| {
        let (producer, topic) = (producer.clone(), topic.clone());
        async move {
            let payload = i.to_string();
            let record = FutureRecord::to(&topic)
                .key("k")
                .payload(&payload)
                .partition(partition);
            producer
                .send(record, Duration::from_secs(10))
                .await
                .unwrap();
        }
    };
    for i in 0..10 {
        produce(0, i).await;
        produce(1, 100 + i).await;
    }

    let inbox = MemoryInbox::new();
    let all = Collect::default();
    // Member a reports at the default interval (statistics are on without being asked
    // for), member b every 100 ms.
    let mut config = consumer_config(&topic);
    config.watchdog_interval = None;
    let often = config
        .clone()
        .with_property("statistics.interval.ms", "100");
    let (stop, stopped) = stopper();
    let (a_seen, b_seen) = (Collect::default(), Collect::default());
    let a = member(&config, &inbox, &all, a_seen.clone(), stopped());
    let b = member(&often, &inbox, &all, b_seen.clone(), stopped());
    // Until each member holds one partition (and has consumed from it).
    let mut next = 10;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while a_seen.seen.lock().unwrap().is_empty() || b_seen.seen.lock().unwrap().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the two members never shared the partitions"
        );
        produce(0, next).await;
        produce(1, 100 + next).await;
        next += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lag = |partition: &str| {
        recorder.gauge(
            "outbox_consumer_lag_messages",
            &[
                ("group", &config.group_id),
                ("topic", &topic),
                ("partition", partition),
            ],
        )
    };
    // Both partitions caught up: each lag reported, and read as 0 …
    ordersys_testkit::eventually(
        "both lags reported as 0",
        Duration::from_secs(30),
        || async { (lag("0") == Some(0.0) && lag("1") == Some(0.0)).then_some(()) },
    )
    .await;
    // … and never as the unknown lag of the member that does not hold the partition
    // (member b's statistics, listing a's partition too, arrive every 100 ms).
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(33)).await;
        for p in ["0", "1"] {
            let v = lag(p).expect("reported");
            assert!(v >= 0.0, "partition {p}'s lag read {v}");
        }
    }
    assert_eq!(lag("-1"), None, "librdkafka's internal partition reported");
    stop.send_replace(true);
    a.await.unwrap().unwrap();
    b.await.unwrap().unwrap();
}

/// While the consumer's store is down, a message is retried (not skipped, not
/// dead-lettered); once the store is back every message is processed, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consumer_retries_while_its_store_is_down_and_loses_nothing() {
    let topic = unique("store-down");
    ensure_topics(&brokers(), &[(&topic, 1)]).await.unwrap();
    publish_numbered(&topic, 5, 1).await;
    let inbox = DownInbox::default();
    inbox.down.store(true, std::sync::atomic::Ordering::SeqCst);
    let dead = MemoryDeadLetters::new();
    let consumer = IdempotentConsumer::new("test", inbox.clone(), dead.clone());
    let collect = Collect::default();
    let (stop, stopped) = stopper();
    let (h, s, config) = (collect.clone(), stopped(), consumer_config(&topic));
    let task = tokio::spawn(async move { run_consumer(&config, &consumer, &h, s).await });
    // Wait until the consumer has really tried (and failed) a few times.
    ordersys_testkit::eventually(
        "the consumer trying against the down store",
        Duration::from_secs(60),
        || async { (inbox.attempts.load(std::sync::atomic::Ordering::SeqCst) >= 3).then_some(()) },
    )
    .await;
    assert!(collect.seen.lock().unwrap().is_empty());
    inbox.down.store(false, std::sync::atomic::Ordering::SeqCst);
    collect.wait_for(5).await;
    stop.send_replace(true);
    let stats = task.await.unwrap().unwrap();
    assert_eq!((stats.processed, stats.dead_lettered), (5, 0));
    assert!(dead.parked().is_empty());
    let payloads: Vec<String> = collect
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|d| String::from_utf8(d.payload.to_vec()).unwrap())
        .collect();
    assert_eq!(payloads, ["0", "1", "2", "3", "4"]);
}

/// The group's committed offset on partition 0 of `topic`, if any.
fn committed_offset(group: &str, topic: &str) -> Option<i64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", group)
        .create()
        .ok()?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition(topic, 0);
    let got = c.committed_offsets(tpl, Duration::from_secs(5)).ok()?;
    match got.elements().first()?.offset() {
        rdkafka::Offset::Offset(o) => Some(o),
        _ => None,
    }
}

/// Wait until the group's committed offset on partition 0 of `topic` is `at_least`;
/// the offset then.
async fn committed_at_least(group: &str, topic: &str, at_least: i64) -> i64 {
    ordersys_testkit::eventually(
        &format!("the group committing offset {at_least}"),
        Duration::from_secs(30),
        || {
            let (g, t) = (group.to_owned(), topic.to_owned());
            async move {
                tokio::task::spawn_blocking(move || committed_offset(&g, &t))
                    .await
                    .unwrap()
                    .filter(|o| *o >= at_least)
            }
        },
    )
    .await
}

/// Holds the message whose payload is `slow` until the gate opens.
#[derive(Clone)]
struct Gated {
    inner: Collect,
    open: watch::Receiver<bool>,
}

impl MessageHandler<MemoryTx> for Gated {
    type Output = ();
    async fn handle(&self, tx: &mut MemoryTx, msg: &Delivery) -> Result<(), HandlerError> {
        if &msg.payload[..] == b"slow" {
            let _ = self.open.clone().wait_for(|o| *o).await;
        }
        self.inner.handle(tx, msg).await
    }
}

/// Messages of other keys go past one that is still being handled; its own key waits
/// behind it; and the partition's offset never moves past it, so a consumer that dies
/// meanwhile leaves it (and everything after it) to be delivered again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_keys_overtake_an_unfinished_message_whose_offset_is_never_committed() {
    let topic = unique("overtake");
    ensure_topics(&brokers(), &[(&topic, 1)]).await.unwrap();
    let publisher = KafkaPublisher::new(&brokers()).unwrap();
    let mut msgs = vec![
        OutboxMessage::new(topic.clone(), "b", "b0"),
        OutboxMessage::new(topic.clone(), "a", "slow"),
        OutboxMessage::new(topic.clone(), "a", "a1"),
    ];
    msgs.extend(
        (1..=8).map(|i| OutboxMessage::new(topic.clone(), format!("k{i}"), format!("k{i}"))),
    );
    for m in &msgs {
        outbox::Publisher::publish(&publisher, m).await.unwrap();
    }
    let inbox = MemoryInbox::new();
    let config = consumer_config(&topic);

    // First consumer: the gate stays shut; it dies (the task is aborted) meanwhile.
    let (_gate, shut) = watch::channel(false);
    let first = Gated {
        inner: Collect::default(),
        open: shut,
    };
    let (h, cfg, c) = (
        first.clone(),
        config.clone(),
        IdempotentConsumer::new("test", inbox.clone(), MemoryDeadLetters::new()),
    );
    let task =
        tokio::spawn(async move { run_consumer(&cfg, &c, &h, std::future::pending()).await });
    first.inner.wait_for(9).await; // b0 and k1..k8, past the unfinished `slow`
    let seen = first.inner.payloads();
    assert!(
        !seen.contains(&"a1".to_owned()),
        "a1 waits behind slow: {seen:?}"
    );
    // b0 done: the group's offset reaches 1 (auto-commit, every second) — and must not
    // pass it, although k1..k8 after `slow` are done too.
    let committed = committed_at_least(&config.group_id, &topic, 1).await;
    assert_eq!(committed, 1, "the offset moved past the unfinished message");
    task.abort();
    let _ = task.await;

    // Second consumer, same group and inbox: everything from `slow` on comes again.
    let (open, gate) = watch::channel(true);
    let second = Gated {
        inner: Collect::default(),
        open: gate,
    };
    let (stop, stopped) = stopper();
    let (h, cfg, c, s) = (
        second.clone(),
        config.clone(),
        IdempotentConsumer::new("test", inbox.clone(), MemoryDeadLetters::new()),
        stopped(),
    );
    let task = tokio::spawn(async move { run_consumer(&cfg, &c, &h, s).await });
    second.inner.wait_for(2).await; // slow, then a1
                                    // …and k1..k8 again, as duplicates: done when the group's offset reaches the end.
    committed_at_least(&config.group_id, &topic, 11).await;
    stop.send_replace(true);
    let stats = task.await.unwrap().unwrap();
    drop(open);
    let seen = second.inner.payloads();
    assert_eq!(seen, ["slow", "a1"]);
    // k1..k8 were redelivered (the offset stayed before `slow`) and dropped by the inbox;
    // b0, before `slow`, was not.
    assert_eq!((stats.processed, stats.duplicates), (2, 8));
}

/// `read_dead_letters` lists what a dead-letter topic holds in every partition — reason,
/// original topic, the parked message as it was — oldest first, the last `limit` of
/// them; an empty topic lists nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_read_back_from_every_partition_oldest_first() {
    use outbox::kafka::read_dead_letters;
    use outbox::DeadLetter as _;
    let dlq = unique("dlq-read");
    let empty = unique("dlq-empty");
    ensure_topics(&brokers(), &[(&dlq, 2), (&empty, 1)])
        .await
        .unwrap();
    let publisher = KafkaPublisher::new(&brokers()).unwrap();
    let dead = KafkaDeadLetter::new(publisher).with_topic(dlq.clone());
    let parked: Vec<Delivery> = (0..6)
        .map(|i| {
            OutboxMessage::new("orders", format!("key-{i}"), format!("p{i}"))
                .with_header("h", "v")
                .to_delivery()
        })
        .collect();
    for (i, m) in parked.iter().enumerate() {
        dead.dead_letter(m, &format!("reason {i}")).await.unwrap();
    }
    let mut client = outbox::rdkafka::ClientConfig::new();
    client.set("bootstrap.servers", brokers());
    let all = read_dead_letters(&client, &dlq, 100, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(all.len(), 6, "{all:?}");
    let partitions: std::collections::BTreeSet<i32> = all.iter().map(|r| r.partition).collect();
    assert_eq!(partitions.len(), 2, "both partitions read: {partitions:?}");
    for (i, m) in parked.iter().enumerate() {
        let r = all.iter().find(|r| r.delivery.id == m.id).expect("parked");
        assert_eq!(r.reason, format!("reason {i}"));
        assert_eq!(r.original_topic, "orders");
        assert_eq!(
            (r.delivery.key.as_str(), &r.delivery.payload[..]),
            (m.key.as_str(), &m.payload[..])
        );
        assert_eq!(r.delivery.headers.get("h"), Some("v"));
        assert_eq!(r.delivery.topic, dlq);
    }
    let times: Vec<_> = all.iter().map(|r| r.timestamp_ms).collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "oldest first: {times:?}"
    );
    // The last two of them.
    let last = read_dead_letters(&client, &dlq, 2, Duration::from_secs(20))
        .await
        .unwrap();
    let ids = |rs: &[outbox::kafka::DeadLetterRecord]| {
        rs.iter().map(|r| r.delivery.id).collect::<Vec<_>>()
    };
    assert_eq!(ids(&last), ids(&all[4..]));
    assert!(
        read_dead_letters(&client, &empty, 100, Duration::from_secs(20))
            .await
            .unwrap()
            .is_empty()
    );
}

/// `flush` waits for what is in flight: with a message queued for a broker that never
/// answers, it reports the timeout; with nothing queued, it returns at once.
#[tokio::test]
async fn flush_reports_what_it_could_not_deliver() {
    let publisher = KafkaPublisher::new("127.0.0.1:1").unwrap();
    publisher.flush(Duration::from_millis(200)).unwrap();
    let msg = OutboxMessage::new(unique("nowhere"), "k", "v");
    let publish = outbox::Publisher::publish(&publisher, &msg);
    tokio::pin!(publish);
    // One poll hands the message to the producer's queue.
    assert!(futures::poll!(publish.as_mut()).is_pending());
    assert!(publisher.flush(Duration::from_millis(200)).is_err());
}

/// A delivery that times out replaces the producer at once (a broker that lost the
/// producer's state can leave it timing out forever); each timeout replaces it again.
#[tokio::test]
async fn a_timed_out_delivery_replaces_the_producer() {
    let mut config = outbox::kafka::producer_config("127.0.0.1:1");
    config.set("message.timeout.ms", "300");
    let publisher = KafkaPublisher::from_config(&config).unwrap();
    let msg = OutboxMessage::new(unique("nowhere"), "k", "v");
    assert_eq!(publisher.recreations(), 0);
    assert!(outbox::Publisher::publish(&publisher, &msg).await.is_err());
    assert_eq!(
        publisher.recreations(),
        1,
        "replaced after the first timeout"
    );
    assert!(outbox::Publisher::publish(&publisher, &msg).await.is_err());
    assert_eq!(publisher.recreations(), 2);
}
