//! Kafka backends (feature `kafka`, rdkafka with its bundled librdkafka):
//! [`KafkaPublisher`] for the relay, [`KafkaDeadLetter`] for the `dlq.saga` topic,
//! [`run_consumer`] for at-least-once consumption through an [`IdempotentConsumer`],
//! and [`ensure_topics`].
//!
//! Works with Apache Kafka 3.x and Kafka-protocol brokers; only standard client features
//! are used.

use std::future::Future;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use uuid::Uuid;

use crate::store::{DeadLetter, Inbox, Publisher};
use crate::{
    Delivery, DeliveryOutcome, Error, Headers, IdempotentConsumer, MessageHandler, MessageId,
    OutboxMessage, Result, MESSAGE_ID_HEADER,
};

/// Header carrying the reason on a dead-lettered message.
pub const DLQ_REASON_HEADER: &str = "dlq-reason";
/// Header carrying the original topic on a dead-lettered message.
pub const DLQ_TOPIC_HEADER: &str = "dlq-original-topic";

fn kafka_err(e: KafkaError) -> Error {
    Error::storage(e)
}

/// Producer settings used by [`KafkaPublisher::new`]: idempotent, `acks=all`,
/// `linger.ms=0` (the relay publishes keys concurrently, so batches form anyway while a
/// request is in flight; a linger only delays each message).
pub fn producer_config(brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        // Well inside the relay's default 30 s lease: a message is either acknowledged
        // or failed before another relay may claim it again.
        .set("message.timeout.ms", "10000")
        .set("linger.ms", "0");
    c
}

/// After this many publishes in a row failed with a timeout, the producer is re-created.
/// One: a publish that could not be delivered within `message.timeout.ms` means the broker
/// was away long enough that an idempotent producer's state there may be gone (a
/// restarted broker answers the old producer id with errors librdkafka keeps retrying
/// until the timeout). A new producer costs a few milliseconds; waiting for three
/// timeouts cost 30 s, long enough for sagas to hit their payment deadline after a
/// broker restart of a few seconds.
const TIMEOUTS_BEFORE_RECREATE: u32 = 1;

/// Publishes outbox messages to Kafka and resolves once the broker acknowledged them
/// (so the relay marks a row sent only after delivery). Key = the message key (the
/// aggregate id, so one aggregate's messages share a partition and keep their order);
/// headers = the message headers plus `message-id`.
///
/// Recovers by itself from a broker that lost the producer's state (a restarted
/// single-node broker, or a cluster that expired the producer id): on a fatal
/// idempotence error, a producer-state error (`UnknownProducerId`,
/// `OutOfOrderSequenceNumber`, `InvalidProducerEpoch`, …) or
/// a timed-out publish, the underlying producer is replaced by a new one
/// with the same settings; the failed publishes return errors as usual and the relay
/// retries them.
#[derive(Clone)]
pub struct KafkaPublisher {
    inner: std::sync::Arc<PublisherInner>,
    queue_timeout: Duration,
}

struct PublisherInner {
    config: ClientConfig,
    producer: std::sync::RwLock<(u64, FutureProducer)>,
    timeouts_in_a_row: std::sync::atomic::AtomicU32,
}

impl std::fmt::Debug for KafkaPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaPublisher").finish_non_exhaustive()
    }
}

impl KafkaPublisher {
    /// An idempotent producer (`enable.idempotence=true`, `acks=all`) for `brokers`.
    pub fn new(brokers: &str) -> Result<Self> {
        Self::from_config(&producer_config(brokers))
    }

    /// A producer from explicit librdkafka settings.
    pub fn from_config(config: &ClientConfig) -> Result<Self> {
        Ok(Self {
            inner: std::sync::Arc::new(PublisherInner {
                config: config.clone(),
                producer: std::sync::RwLock::new((0, config.create().map_err(kafka_err)?)),
                timeouts_in_a_row: std::sync::atomic::AtomicU32::new(0),
            }),
            queue_timeout: Duration::from_secs(5),
        })
    }

    /// Wait for everything in flight (call before shutdown).
    pub fn flush(&self, timeout: Duration) -> Result<()> {
        let producer = self.current().1;
        rdkafka::producer::Producer::flush(&producer, timeout).map_err(kafka_err)
    }

    /// How many times the producer was re-created after a broker lost its state.
    pub fn recreations(&self) -> u64 {
        self.current().0
    }

    fn current(&self) -> (u64, FutureProducer) {
        let guard = self
            .inner
            .producer
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (guard.0, guard.1.clone())
    }

    /// Whether `e` (from the producer of generation `gen`) means the producer must be
    /// replaced; if so, replace it (once, whoever sees it first).
    fn recover_from(&self, gen: u64, producer: &FutureProducer, e: &KafkaError) {
        use std::sync::atomic::Ordering;
        let state_lost = matches!(
            e.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::UnknownProducerId
                    | RDKafkaErrorCode::OutOfOrderSequenceNumber
                    | RDKafkaErrorCode::InvalidProducerEpoch
                    | RDKafkaErrorCode::InvalidProducerIdMapping
                    | RDKafkaErrorCode::ProducerFenced
                    | RDKafkaErrorCode::Fatal
            )
        );
        let fatal = rdkafka::producer::Producer::client(producer)
            .fatal_error()
            .is_some();
        let timed_out = e.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageTimedOut);
        let timeouts = if timed_out {
            self.inner.timeouts_in_a_row.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            0
        };
        if !(state_lost || fatal || timeouts >= TIMEOUTS_BEFORE_RECREATE) {
            return;
        }
        let fresh = match self.inner.config.create::<FutureProducer>() {
            Ok(p) => p,
            Err(err) => {
                tracing::error!(error = %err, "не удалось пересоздать Kafka-продюсер");
                return;
            }
        };
        let old = {
            let mut guard = self
                .inner
                .producer
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if guard.0 != gen {
                return; // someone else replaced it already
            }
            let old = std::mem::replace(&mut *guard, (gen + 1, fresh));
            self.inner.timeouts_in_a_row.store(0, Ordering::Relaxed);
            old
        };
        tracing::warn!(error = %e, fatal, timeouts, "Kafka-продюсер пересоздан: брокер потерял его состояние");
        // Dropping a producer waits for what it still holds: not on an async thread.
        std::thread::spawn(move || drop(old));
    }
}

fn kafka_headers(msg: &OutboxMessage, extra: &[(&str, &str)]) -> OwnedHeaders {
    let id = msg.id.to_string();
    let mut h = OwnedHeaders::new_with_capacity(msg.headers.len() + 1 + extra.len());
    for (k, v) in msg.headers.iter().chain(extra.iter().copied()) {
        if k != MESSAGE_ID_HEADER {
            h = h.insert(Header {
                key: k,
                value: Some(v),
            });
        }
    }
    h.insert(Header {
        key: MESSAGE_ID_HEADER,
        value: Some(&id),
    })
}

impl KafkaPublisher {
    async fn send(&self, msg: &OutboxMessage, extra: &[(&str, &str)]) -> Result<()> {
        let record = FutureRecord::to(&msg.topic)
            .key(msg.key.as_bytes())
            .payload(msg.payload.as_ref())
            .headers(kafka_headers(msg, extra));
        let (gen, producer) = self.current();
        match producer.send(record, self.queue_timeout).await {
            Ok(_) => {
                self.inner
                    .timeouts_in_a_row
                    .store(0, std::sync::atomic::Ordering::Relaxed);
                Ok(())
            }
            Err((e, _)) => {
                self.recover_from(gen, &producer, &e);
                Err(Error::publish(&msg.topic, e))
            }
        }
    }
}

impl Publisher for KafkaPublisher {
    async fn publish(&self, msg: &OutboxMessage) -> Result<()> {
        self.send(msg, &[]).await
    }
}

/// Sends messages that could not be processed to a dead-letter topic (`dlq.saga` by
/// default) with the original key, payload and headers, plus `dlq-reason` and
/// `dlq-original-topic`.
#[derive(Debug, Clone)]
pub struct KafkaDeadLetter {
    publisher: KafkaPublisher,
    topic: String,
}

impl KafkaDeadLetter {
    /// Dead-letter to `dlq.saga` through `publisher`.
    pub fn new(publisher: KafkaPublisher) -> Self {
        Self {
            publisher,
            topic: "dlq.saga".into(),
        }
    }

    /// Use another topic.
    pub fn with_topic(mut self, topic: impl Into<String>) -> Self {
        self.topic = topic.into();
        self
    }
}

impl DeadLetter for KafkaDeadLetter {
    async fn dead_letter(&self, msg: &Delivery, reason: &str) -> Result<()> {
        let parked = OutboxMessage {
            id: msg.id,
            topic: self.topic.clone(),
            key: msg.key.clone(),
            payload: msg.payload.clone(),
            headers: msg.headers.clone(),
            created_at: std::time::SystemTime::now(),
            attempts: 0,
        };
        let reason: String = reason.chars().take(2000).collect();
        self.publisher
            .send(
                &parked,
                &[(DLQ_REASON_HEADER, &reason), (DLQ_TOPIC_HEADER, &msg.topic)],
            )
            .await
            .map_err(|e| Error::DeadLetter(Box::new(e)))
    }
}

/// Header on a replayed dead letter: the id of the parked message it replays.
pub const DLQ_REPLAY_OF_HEADER: &str = "dlq-replay-of";

/// A message parked in a dead-letter topic by [`KafkaDeadLetter`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterRecord {
    /// Partition of the dead-letter topic.
    pub partition: i32,
    /// Offset in it.
    pub offset: i64,
    /// When it was parked (broker timestamp, unix milliseconds), if known.
    pub timestamp_ms: Option<i64>,
    /// The parked message (its topic is the dead-letter topic; its headers include
    /// `dlq-reason` and `dlq-original-topic`).
    pub delivery: Delivery,
    /// Why it was parked.
    pub reason: String,
    /// The topic it came from.
    pub original_topic: String,
}

impl DeadLetterRecord {
    /// The message that replays it: to the original topic, with the original key,
    /// payload and headers (without the `dlq-*` ones), a `dlq-replay-of` header naming
    /// the parked message, and a **new id derived from the parked one** (UUID v5). A
    /// consumer's inbox recorded the parked id when it dead-lettered it, so the same id
    /// would be dropped as a duplicate; the derived id is processed once — and replaying
    /// the same dead letter twice is dropped as a duplicate the second time.
    ///
    /// ```
    /// use outbox::kafka::DeadLetterRecord;
    /// use outbox::OutboxMessage;
    ///
    /// let parked = OutboxMessage::new("dlq.saga", "order-1", "payload")
    ///     .with_header("dlq-reason", "undecodable")
    ///     .with_header("dlq-original-topic", "saga.commands");
    /// let record = DeadLetterRecord {
    ///     partition: 0,
    ///     offset: 7,
    ///     timestamp_ms: None,
    ///     delivery: parked.to_delivery(),
    ///     reason: "undecodable".into(),
    ///     original_topic: "saga.commands".into(),
    /// };
    /// let replay = record.replay_message();
    /// assert_eq!(replay.topic, "saga.commands");
    /// assert_ne!(replay.id, parked.id);
    /// assert_eq!(replay.id, record.replay_message().id, "deterministic");
    /// assert_eq!(replay.headers.get("dlq-replay-of"), Some(parked.id.to_string().as_str()));
    /// assert!(replay.headers.get("dlq-reason").is_none());
    /// ```
    pub fn replay_message(&self) -> OutboxMessage {
        let original = self.delivery.id;
        let id = MessageId(Uuid::new_v5(
            &Uuid::NAMESPACE_OID,
            format!("ordersys-dlq-replay:{original}").as_bytes(),
        ));
        let mut headers: Headers = self
            .delivery
            .headers
            .iter()
            .filter(|(k, _)| !k.starts_with("dlq-") && *k != MESSAGE_ID_HEADER)
            .collect();
        headers.insert(DLQ_REPLAY_OF_HEADER, original.to_string());
        OutboxMessage {
            id,
            topic: self.original_topic.clone(),
            key: self.delivery.key.clone(),
            payload: self.delivery.payload.clone(),
            headers,
            created_at: std::time::SystemTime::now(),
            attempts: 0,
        }
    }
}

/// Read what dead-letter topic `topic` holds (every partition, from the start), the
/// last `limit` records oldest first — without joining a consumer group or committing
/// anything. Reading stops when the partitions have been quiet for a second (or after
/// `timeout`).
pub async fn read_dead_letters(
    config: &ClientConfig,
    topic: &str,
    limit: usize,
    timeout: Duration,
) -> Result<Vec<DeadLetterRecord>> {
    use rdkafka::consumer::BaseConsumer;
    let mut c = config.clone();
    c.set("group.id", format!("dlq-reader-{}", Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest");
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || -> Result<Vec<DeadLetterRecord>> {
        let consumer: BaseConsumer = c.create().map_err(kafka_err)?;
        let md = consumer
            .fetch_metadata(Some(&topic), timeout)
            .map_err(kafka_err)?;
        let mut tpl = TopicPartitionList::new();
        for t in md.topics().iter().filter(|t| t.name() == topic) {
            for p in t.partitions() {
                tpl.add_partition_offset(&topic, p.id(), Offset::Beginning)
                    .map_err(kafka_err)?;
            }
        }
        if tpl.count() == 0 {
            return Ok(Vec::new());
        }
        consumer.assign(&tpl).map_err(kafka_err)?;
        let deadline = std::time::Instant::now() + timeout;
        let mut quiet_since = std::time::Instant::now();
        let mut out = Vec::new();
        while std::time::Instant::now() < deadline && quiet_since.elapsed() < Duration::from_secs(1)
        {
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    quiet_since = std::time::Instant::now();
                    let delivery = to_delivery(&m);
                    let header = |name: &str| delivery.headers.get(name).unwrap_or("").to_owned();
                    out.push(DeadLetterRecord {
                        partition: m.partition(),
                        offset: m.offset(),
                        timestamp_ms: m.timestamp().to_millis(),
                        reason: header(DLQ_REASON_HEADER),
                        original_topic: header(DLQ_TOPIC_HEADER),
                        delivery,
                    });
                }
                Some(Err(e)) => return Err(kafka_err(e)),
                None => {}
            }
        }
        out.sort_by_key(|r| (r.timestamp_ms, r.partition, r.offset));
        let skip = out.len().saturating_sub(limit);
        Ok(out.split_off(skip))
    })
    .await
    .map_err(|e| Error::storage(format!("dead-letter reader: {e}")))?
}

/// Create the topics that do not exist yet (`(name, partitions)`, replication 1 —
/// adjust on a real cluster with `ensure_topics_with`). Existing topics are left alone.
pub async fn ensure_topics(brokers: &str, topics: &[(&str, i32)]) -> Result<()> {
    ensure_topics_with(brokers, topics, 1).await
}

/// [`ensure_topics`] with a replication factor.
pub async fn ensure_topics_with(
    brokers: &str,
    topics: &[(&str, i32)],
    replication: i32,
) -> Result<()> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    ensure_topics_using(&config, topics, replication).await
}

/// [`ensure_topics`] through an admin client made from `config` (with its
/// `bootstrap.servers` and any security settings: `security.protocol`, `ssl.*`,
/// `sasl.*`).
pub async fn ensure_topics_using(
    config: &ClientConfig,
    topics: &[(&str, i32)],
    replication: i32,
) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = config.create().map_err(kafka_err)?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(name, partitions)| {
            NewTopic::new(name, *partitions, TopicReplication::Fixed(replication))
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics(&new, &opts).await.map_err(kafka_err)? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(Error::storage(format!(
                    "creating topic {name} failed: {code}"
                )));
            }
        }
    }
    Ok(())
}

/// Settings of [`run_consumer`]: start from [`ConsumerConfig::new`] and change what you
/// need with the `with_*` methods or by assigning fields. New settings may be added in
/// minor versions (the struct is `#[non_exhaustive]`).
///
/// ```
/// use std::time::Duration;
/// use outbox::kafka::ConsumerConfig;
/// let config = ConsumerConfig::new("127.0.0.1:9092", "payment", &["saga.commands"])
///     .with_instance_id("payment-0")
///     .with_max_in_flight(64)
///     .with_fetch_wait_max(Duration::from_millis(5))
///     .with_property("security.protocol", "ssl");
/// assert_eq!(config.extra, [("security.protocol".to_owned(), "ssl".to_owned())]);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConsumerConfig {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Consumer group.
    pub group_id: String,
    /// Topics to subscribe to.
    pub topics: Vec<String>,
    /// `session.timeout.ms` (default 10 s; short keeps rebalances quick).
    pub session_timeout: Duration,
    /// `group.instance.id`: static group membership. A member restarted under the same
    /// id takes its partitions back at once instead of waiting for the dead member's
    /// session to time out and a rebalance. Must be unique among live members and
    /// stable across restarts of one (e.g. the pod or host name). Default: none.
    pub instance_id: Option<String>,
    /// `fetch.wait.max.ms`: how long the broker may hold a fetch while it has nothing
    /// new (default 20 ms). Brokers that wake a waiting fetch when a message arrives
    /// (Apache Kafka) deliver at once regardless; brokers that poll storage (Tansu)
    /// deliver about a quarter of this late on average, so it is kept short.
    pub fetch_wait_max: Duration,
    /// Pause between tries when the store is down (default 100 ms doubling to 5 s).
    pub store_backoff: resilience::Retry,
    /// How often an idle consumer checks that it is not stuck (default 10 s; `None`
    /// turns the check off). After an interval without a message it looks at its
    /// partitions: one positioned **beyond the end of its log** (the topic was created
    /// again, or the broker lost its data but not the group's offsets — a broker that
    /// answers such a fetch with nothing instead of `OFFSET_OUT_OF_RANGE` would leave it
    /// silent forever) is moved to the start of the log, as `auto.offset.reset=earliest`
    /// would (the inbox drops what was already processed). A consumer that holds **no
    /// partitions** while its topics have messages nobody consumes, for two checks in a
    /// row, leaves and rejoins its group.
    pub watchdog_interval: Option<Duration>,
    /// Upper bound on closing the consumer (leaving the group) at shutdown (default 5 s).
    pub close_timeout: Duration,
    /// How many received messages may be unfinished at once (default 32; 1 handles one
    /// message at a time). Messages of **one key** are always handled one after the
    /// other, in log order; messages of different keys concurrently, each in its own
    /// unit of work — which lets the database commit them together (one log flush for
    /// several transactions) instead of one after the other. A partition's offset only
    /// advances past messages that are all finished, so a crash redelivers whatever was
    /// unfinished, never skips it.
    pub max_in_flight: usize,
    /// More librdkafka settings.
    pub extra: Vec<(String, String)>,
}

impl ConsumerConfig {
    /// Consume `topics` in group `group_id` from `brokers`.
    pub fn new(brokers: impl Into<String>, group_id: impl Into<String>, topics: &[&str]) -> Self {
        Self {
            brokers: brokers.into(),
            group_id: group_id.into(),
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            session_timeout: Duration::from_secs(10),
            instance_id: None,
            fetch_wait_max: Duration::from_millis(20),
            store_backoff: resilience::Retry::default()
                .max_attempts(u32::MAX)
                .max_delay(Duration::from_secs(5)),
            watchdog_interval: Some(Duration::from_secs(10)),
            close_timeout: Duration::from_secs(5),
            max_in_flight: 32,
            extra: Vec::new(),
        }
    }

    /// [`session_timeout`](Self::session_timeout).
    pub fn with_session_timeout(mut self, session_timeout: Duration) -> Self {
        self.session_timeout = session_timeout;
        self
    }

    /// [`instance_id`](Self::instance_id): static group membership under this id.
    pub fn with_instance_id(mut self, instance_id: impl Into<String>) -> Self {
        self.instance_id = Some(instance_id.into());
        self
    }

    /// [`fetch_wait_max`](Self::fetch_wait_max).
    pub fn with_fetch_wait_max(mut self, fetch_wait_max: Duration) -> Self {
        self.fetch_wait_max = fetch_wait_max;
        self
    }

    /// [`store_backoff`](Self::store_backoff).
    pub fn with_store_backoff(mut self, store_backoff: resilience::Retry) -> Self {
        self.store_backoff = store_backoff;
        self
    }

    /// [`watchdog_interval`](Self::watchdog_interval) (`None` turns the check off).
    pub fn with_watchdog_interval(mut self, watchdog_interval: Option<Duration>) -> Self {
        self.watchdog_interval = watchdog_interval;
        self
    }

    /// [`close_timeout`](Self::close_timeout).
    pub fn with_close_timeout(mut self, close_timeout: Duration) -> Self {
        self.close_timeout = close_timeout;
        self
    }

    /// [`max_in_flight`](Self::max_in_flight).
    pub fn with_max_in_flight(mut self, max_in_flight: usize) -> Self {
        self.max_in_flight = max_in_flight;
        self
    }

    /// One more librdkafka setting ([`extra`](Self::extra)), e.g. TLS or SASL.
    pub fn with_property(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.extra.push((name.into(), value.into()));
        self
    }
}

/// What a consumer run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumerStats {
    /// Deliveries handled and committed.
    pub processed: u64,
    /// Redeliveries dropped by the inbox.
    pub duplicates: u64,
    /// Deliveries sent to the dead-letter sink.
    pub dead_lettered: u64,
}

/// The consumer's client context: reports each assigned partition's lag
/// (`outbox_consumer_lag_messages{group,topic,partition}`) from librdkafka's statistics
/// (every `statistics.interval.ms`, default 5 s here).
struct LagContext {
    group: String,
}

impl ClientContext for LagContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                // -1: the internal "unassigned" partition, or no lag known (not ours).
                if *partition < 0 || p.consumer_lag < 0 {
                    continue;
                }
                metrics::gauge!("outbox_consumer_lag_messages",
                    "group" => self.group.clone(), "topic" => topic.clone(),
                    "partition" => partition.to_string())
                .set(p.consumer_lag as f64);
            }
        }
    }
}

impl ConsumerContext for LagContext {}

/// Turn a Kafka message into a [`Delivery`]. A message without a valid `message-id`
/// header gets an id derived from its topic, partition and offset, which is stable
/// across redeliveries.
pub fn to_delivery(m: &BorrowedMessage<'_>) -> Delivery {
    let mut headers = Headers::new();
    let mut id = None;
    if let Some(hs) = m.headers() {
        for h in hs.iter() {
            let value = h
                .value
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default();
            if h.key == MESSAGE_ID_HEADER {
                id = MessageId::parse(&value);
            }
            headers.insert(h.key, value);
        }
    }
    let id = id.unwrap_or_else(|| {
        let name = format!("{}/{}/{}", m.topic(), m.partition(), m.offset());
        MessageId(Uuid::new_v5(&Uuid::NAMESPACE_OID, name.as_bytes()))
    });
    Delivery {
        id,
        topic: m.topic().to_owned(),
        key: m
            .key()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .unwrap_or_default(),
        payload: m
            .payload()
            .map(bytes::Bytes::copy_from_slice)
            .unwrap_or_default(),
        headers,
    }
}

/// Consume `config.topics` until `shutdown` resolves, handing each message to
/// `consumer.process(.., handler)`.
///
/// At-least-once: an offset is stored only after its message and every earlier one of
/// its partition were processed (or dead-lettered) and committed; stored offsets are
/// committed every second and at shutdown. Up to [`ConsumerConfig::max_in_flight`]
/// messages are handled at once, one key at a time in log order. While the store is
/// down a message is retried with backoff, so nothing is skipped. Messages in progress
/// are finished before shutdown (one waiting out a store outage is given up and comes
/// again); closing the consumer is bounded by `close_timeout`.
pub async fn run_consumer<I, D, H>(
    config: &ConsumerConfig,
    consumer: &IdempotentConsumer<I, D>,
    handler: &H,
    shutdown: impl Future<Output = ()>,
) -> Result<ConsumerStats>
where
    I: Inbox,
    D: DeadLetter,
    H: MessageHandler<I::Tx>,
{
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", &config.brokers)
        .set("group.id", &config.group_id)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set(
            "session.timeout.ms",
            config.session_timeout.as_millis().to_string(),
        )
        .set(
            "fetch.wait.max.ms",
            config.fetch_wait_max.as_millis().to_string(),
        );
    if let Some(id) = &config.instance_id {
        cc.set("group.instance.id", id);
    }
    for (k, v) in &config.extra {
        cc.set(k, v);
    }
    if !config
        .extra
        .iter()
        .any(|(k, _)| k == "statistics.interval.ms")
    {
        cc.set("statistics.interval.ms", "5000");
    }
    let context = LagContext {
        group: config.group_id.clone(),
    };
    let kafka: std::sync::Arc<StreamConsumer<LagContext>> =
        std::sync::Arc::new(cc.create_with_context(context).map_err(kafka_err)?);
    let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
    kafka.subscribe(&topics).map_err(kafka_err)?;

    tokio::pin!(shutdown);
    let mut stats = ConsumerStats::default();
    let watchdog_every = config.watchdog_interval.unwrap_or(Duration::MAX);
    let mut watchdog = Watchdog::new(config.session_timeout);
    let mut last_message = tokio::time::Instant::now();
    let max_in_flight = config.max_in_flight.max(1);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut stopping = false;
    let mut window = Window::default();
    let mut running = futures::stream::FuturesUnordered::new();
    loop {
        if stopping && running.is_empty() {
            break;
        }
        let idle_for = last_message.elapsed();
        if !stopping && window.is_empty() && idle_for >= watchdog_every {
            last_message = tokio::time::Instant::now();
            let (k, t) = (kafka.clone(), config.topics.clone());
            let mut w = std::mem::replace(&mut watchdog, Watchdog::new(config.session_timeout));
            let checked = tokio::task::spawn_blocking(move || {
                if let Err(e) = w.check(&k, &t) {
                    tracing::debug!(error = %e, "проверка Kafka-консьюмера не удалась");
                }
                w
            })
            .await;
            if let Ok(w) = checked {
                watchdog = w;
            }
            continue;
        }
        let idle_wait = if window.is_empty() {
            watchdog_every - idle_for
        } else {
            Duration::MAX
        };
        tokio::select! {
            biased;
            () = &mut shutdown, if !stopping => {
                // Stop taking messages; finish the ones in progress.
                stopping = true;
                let _ = stop_tx.send(true);
                window.drop_queued();
            }
            Some((delivery, at, outcome)) = futures::StreamExt::next(&mut running) => {
                let (delivery, at, outcome): (Delivery, Position, Option<DeliveryOutcome>) =
                    (delivery, at, outcome);
                last_message = tokio::time::Instant::now();
                let Some(outcome) = outcome else {
                    continue; // given up at shutdown: not settled, its offset not stored
                };
                match outcome {
                    DeliveryOutcome::Processed => stats.processed += 1,
                    DeliveryOutcome::Duplicate => stats.duplicates += 1,
                    DeliveryOutcome::DeadLettered { .. } => stats.dead_lettered += 1,
                }
                if let Some(through) = window.finish(&at) {
                    if let Err(e) = kafka.store_offset(&at.topic, at.partition, through) {
                        // E.g. the partition was revoked in a rebalance: the new owner
                        // redelivers, and the inbox drops the duplicate.
                        tracing::warn!(error = %e, "не удалось сохранить смещение");
                    }
                }
                if !stopping {
                    if let Some((next, next_at)) = window.next_of_key(&at, delivery.key) {
                        running.push(process_one(config, consumer, handler, next, next_at, stop_rx.clone()));
                    }
                }
            }
            msg = kafka.recv(), if !stopping && window.len() < max_in_flight => {
                last_message = tokio::time::Instant::now();
                let msg = match msg {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(error = %e, "ошибка получения сообщения из Kafka");
                        // Do not spin while the broker is unreachable.
                        tokio::select! {
                            biased;
                            () = &mut shutdown => {
                                stopping = true;
                                let _ = stop_tx.send(true);
                                window.drop_queued();
                            }
                            () = tokio::time::sleep(Duration::from_millis(200)) => {}
                        }
                        continue;
                    }
                };
                let delivery = to_delivery(&msg);
                let at = Position {
                    topic: msg.topic().to_owned(),
                    partition: msg.partition(),
                    offset: msg.offset(),
                };
                drop(msg);
                if let Some((delivery, at)) = window.receive(delivery, at) {
                    running.push(process_one(config, consumer, handler, delivery, at, stop_rx.clone()));
                }
            }
            // Cancel-safe: a message is taken from the queue only when `recv` is ready.
            () = tokio::time::sleep(idle_wait) => {}
        }
    }

    if let Err(e) = kafka.commit_consumer_state(CommitMode::Sync) {
        if !matches!(e, KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) {
            tracing::warn!(error = %e, "не удалось зафиксировать смещения при остановке");
        }
    }
    // Leaving the group can hang on some brokers; never let it block shutdown.
    let close = tokio::task::spawn_blocking(move || drop(kafka));
    if tokio::time::timeout(config.close_timeout, close)
        .await
        .is_err()
    {
        tracing::warn!("закрытие Kafka-консьюмера не уложилось в отведённое время");
    }
    Ok(stats)
}

/// Handle one delivery, retrying while the store is down; `None` if given up because
/// the consumer is stopping.
async fn process_one<I, D, H>(
    config: &ConsumerConfig,
    consumer: &IdempotentConsumer<I, D>,
    handler: &H,
    delivery: Delivery,
    at: Position,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> (Delivery, Position, Option<DeliveryOutcome>)
where
    I: Inbox,
    D: DeadLetter,
    H: MessageHandler<I::Tx>,
{
    let mut backoff = config.store_backoff.backoff();
    loop {
        match consumer.process(&delivery, handler).await {
            Ok(o) => return (delivery, at, Some(o)),
            Err(e) => {
                let wait = backoff.next().unwrap_or(Duration::from_secs(5));
                tracing::error!(error = %e, message_id = %delivery.id, topic = %delivery.topic,
                    "не удалось обработать сообщение, повтор");
                tokio::select! {
                    biased;
                    // Not processed: its offset is not stored; it comes again.
                    _ = stop.wait_for(|s| *s) => return (delivery, at, None),
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

/// Where a message sits in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Position {
    topic: String,
    partition: i32,
    offset: i64,
}

/// The received, unfinished messages: which keys are busy (with the messages of that
/// key waiting their turn) and, per partition, which offsets are unfinished — an offset
/// is stored only up to the first unfinished one.
#[derive(Default)]
struct Window {
    /// Per (topic, key): the messages of a busy key waiting behind the one in progress.
    keys: std::collections::HashMap<
        (String, String),
        std::collections::VecDeque<(Delivery, Position)>,
    >,
    /// Per (topic, partition): unfinished offsets, the highest finished one, the
    /// highest stored one.
    partitions: std::collections::HashMap<(String, i32), PartitionWindow>,
    /// Received and not finished (in progress or queued).
    len: usize,
}

#[derive(Default)]
struct PartitionWindow {
    unfinished: std::collections::BTreeSet<i64>,
    finished_max: Option<i64>,
    stored: Option<i64>,
}

impl Window {
    fn len(&self) -> usize {
        self.len
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A message arrived: returns it if it can start now (its key is not busy).
    fn receive(&mut self, delivery: Delivery, at: Position) -> Option<(Delivery, Position)> {
        self.len += 1;
        self.partitions
            .entry((at.topic.clone(), at.partition))
            .or_default()
            .unfinished
            .insert(at.offset);
        match self.keys.entry((at.topic.clone(), delivery.key.clone())) {
            std::collections::hash_map::Entry::Occupied(mut waiting) => {
                waiting.get_mut().push_back((delivery, at));
                None
            }
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(std::collections::VecDeque::new());
                Some((delivery, at))
            }
        }
    }

    /// The message at `at` is finished: the offset to store (the last one before the
    /// first unfinished offset of its partition), if that moved forward.
    fn finish(&mut self, at: &Position) -> Option<i64> {
        self.len = self.len.saturating_sub(1);
        let p = self.partitions.get_mut(&(at.topic.clone(), at.partition))?;
        p.unfinished.remove(&at.offset);
        p.finished_max = Some(p.finished_max.map_or(at.offset, |m| m.max(at.offset)));
        let through = match p.unfinished.first() {
            Some(first) => first - 1,
            None => p.finished_max?,
        };
        if p.stored.is_some_and(|s| s >= through) {
            return None;
        }
        p.stored = Some(through);
        Some(through)
    }

    /// The next waiting message of the key of the message finished at `at`, if any;
    /// otherwise the key is free again.
    fn next_of_key(&mut self, at: &Position, key: String) -> Option<(Delivery, Position)> {
        let k = (at.topic.clone(), key);
        let waiting = self.keys.get_mut(&k)?;
        match waiting.pop_front() {
            Some(next) => Some(next),
            None => {
                self.keys.remove(&k);
                None
            }
        }
    }

    /// Forget the messages waiting behind a busy key (at shutdown): they are not
    /// settled, their offsets are not stored, and they come again.
    fn drop_queued(&mut self) {
        for waiting in self.keys.values_mut() {
            self.len = self.len.saturating_sub(waiting.len());
            waiting.clear();
        }
    }
}

/// A partition with messages nobody consumed: topic, partition, the group's offset.
type Unconsumed = (String, i32, i64);

/// The idle consumer's self-check (see [`ConsumerConfig::watchdog_interval`]).
struct Watchdog {
    /// Partitions with unconsumed messages, and the group's offset on each, seen when
    /// this member was first found holding no partitions (and when).
    unconsumed_since: Option<(std::time::Instant, Vec<Unconsumed>)>,
    /// How long a member may hold nothing while nobody consumes before it rejoins:
    /// well beyond any join or rebalance (three session timeouts), so a slow join is
    /// never cut short.
    rejoin_after: Duration,
}

impl Watchdog {
    const TIMEOUT: Duration = Duration::from_secs(2);

    fn new(session_timeout: Duration) -> Self {
        Self {
            unconsumed_since: None,
            rejoin_after: session_timeout.saturating_mul(3),
        }
    }

    /// Blocking (librdkafka metadata and offset requests): run off the async threads.
    fn check(&mut self, kafka: &StreamConsumer<LagContext>, topics: &[String]) -> KafkaResult<()> {
        let assignment = kafka.assignment()?;
        if assignment.count() > 0 {
            self.unconsumed_since = None;
            return self.seek_back_from_beyond_the_end(kafka, &assignment);
        }
        // No partitions: fine if another member consumes them, not if nobody does.
        let mut all = TopicPartitionList::new();
        for topic in topics {
            let md = kafka.fetch_metadata(Some(topic), Self::TIMEOUT)?;
            for t in md.topics() {
                for p in t.partitions() {
                    all.add_partition(t.name(), p.id());
                }
            }
        }
        let committed = kafka.committed_offsets(all, Self::TIMEOUT)?;
        let mut unconsumed = Vec::new();
        for e in committed.elements() {
            let (low, high) = kafka.fetch_watermarks(e.topic(), e.partition(), Self::TIMEOUT)?;
            let at = match e.offset() {
                Offset::Offset(o) => o,
                _ => low,
            };
            if at < high {
                unconsumed.push((e.topic().to_owned(), e.partition(), at));
            }
        }
        match &self.unconsumed_since {
            _ if unconsumed.is_empty() => self.unconsumed_since = None,
            // Somebody consumed meanwhile, or this is the first sighting: (re)start the clock.
            Some((_, before)) if *before != unconsumed => {
                self.unconsumed_since = Some((std::time::Instant::now(), unconsumed));
            }
            None => self.unconsumed_since = Some((std::time::Instant::now(), unconsumed)),
            Some((since, _)) if since.elapsed() >= self.rejoin_after => {
                tracing::warn!(
                    partitions = unconsumed.len(),
                    "консьюмер не держит ни одной партиции, а сообщения никто не читает: \
                     переподключение к группе"
                );
                kafka.unsubscribe();
                let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
                kafka.subscribe(&topics)?;
                self.unconsumed_since = None;
            }
            Some(_) => {}
        }
        Ok(())
    }

    /// A partition whose position (or, before the first message, committed offset) lies
    /// beyond the end of its log is moved to the start of the log.
    fn seek_back_from_beyond_the_end(
        &self,
        kafka: &StreamConsumer<LagContext>,
        assignment: &TopicPartitionList,
    ) -> KafkaResult<()> {
        let position = kafka.position()?;
        let committed = kafka.committed_offsets(assignment.clone(), Self::TIMEOUT)?;
        for e in assignment.elements() {
            let (topic, partition) = (e.topic(), e.partition());
            let offset_in = |l: &TopicPartitionList| {
                l.find_partition(topic, partition)
                    .and_then(|p| match p.offset() {
                        Offset::Offset(o) => Some(o),
                        _ => None,
                    })
            };
            let Some(at) = offset_in(&position).or_else(|| offset_in(&committed)) else {
                continue;
            };
            let (low, high) = kafka.fetch_watermarks(topic, partition, Self::TIMEOUT)?;
            if at > high {
                tracing::warn!(
                    topic,
                    partition,
                    offset = at,
                    log_end = high,
                    "позиция консьюмера за концом журнала (топик создан заново?): \
                     чтение с начала журнала"
                );
                kafka.seek(topic, partition, Offset::Offset(low), Self::TIMEOUT)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod window_tests {
    use super::*;

    fn msg(key: &str) -> Delivery {
        crate::OutboxMessage::new("t", key, "x").to_delivery()
    }

    fn at(partition: i32, offset: i64) -> Position {
        Position {
            topic: "t".into(),
            partition,
            offset,
        }
    }

    #[test]
    fn one_key_waits_its_turn_and_other_keys_start_at_once() {
        let mut w = Window::default();
        assert!(w.receive(msg("a"), at(0, 0)).is_some());
        assert!(w.receive(msg("a"), at(0, 1)).is_none(), "a is busy");
        assert!(w.receive(msg("b"), at(0, 2)).is_some());
        assert_eq!(w.len(), 3);
        let (next, next_at) = w.next_of_key(&at(0, 0), "a".into()).expect("a1 queued");
        assert_eq!((next.key.as_str(), next_at.offset), ("a", 1));
        assert!(w.next_of_key(&at(0, 1), "a".into()).is_none());
        // The key is free again.
        assert!(w.receive(msg("a"), at(0, 3)).is_some());
    }

    #[test]
    fn the_offset_stops_before_the_first_unfinished_message() {
        let mut w = Window::default();
        for o in 10..14 {
            w.receive(msg(&format!("k{o}")), at(0, o));
        }
        w.receive(msg("other"), at(1, 5));
        assert_eq!(
            w.finish(&at(0, 11)),
            Some(9),
            "10 unfinished: nothing past it"
        );
        assert_eq!(w.finish(&at(0, 12)), None, "still 10");
        assert_eq!(w.finish(&at(0, 10)), Some(12), "10..12 done, 13 not");
        assert_eq!(w.finish(&at(1, 5)), Some(5), "partitions are independent");
        assert_eq!(w.finish(&at(0, 13)), Some(13));
        assert!(w.is_empty());
    }

    #[test]
    fn queued_messages_are_forgotten_at_shutdown_and_hold_their_offset_back() {
        let mut w = Window::default();
        w.receive(msg("a"), at(0, 0));
        w.receive(msg("a"), at(0, 1));
        w.receive(msg("b"), at(0, 2));
        w.drop_queued();
        assert_eq!(w.len(), 2);
        assert_eq!(w.finish(&at(0, 0)), Some(0));
        assert_eq!(w.finish(&at(0, 2)), None, "offset 1 was never handled");
        assert!(w.is_empty());
    }
}
