//! Dead letters: [`KafkaDeadLetter`] parks a message in the dead-letter topic,
//! [`read_dead_letters`] reads them back, [`DeadLetterRecord::replay`] sends one again.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::Consumer;
use rdkafka::{Message, Offset, TopicPartitionList};
use uuid::Uuid;

use crate::store::DeadLetter;
use crate::{Delivery, Error, OutboxMessage, Result};

use super::{kafka_err, to_delivery, KafkaPublisher};

/// Header carrying the reason on a dead-lettered message.
pub const DLQ_REASON_HEADER: &str = "dlq-reason";
/// Header carrying the original topic on a dead-lettered message.
pub const DLQ_TOPIC_HEADER: &str = "dlq-original-topic";

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
pub const DLQ_REPLAY_OF_HEADER: &str = crate::message::REPLAY_OF_HEADER;

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
        crate::message::replay_of(&self.delivery, &self.original_topic)
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
