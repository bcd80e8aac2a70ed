//! Kafka backends (feature `kafka`, rdkafka with its bundled librdkafka):
//! [`KafkaPublisher`] for the relay, [`KafkaDeadLetter`] for the `dlq.saga` topic,
//! [`run_consumer`] for at-least-once consumption through an
//! [`IdempotentConsumer`](crate::IdempotentConsumer),
//! and [`ensure_topics`].
//!
//! Works with Apache Kafka 3.x and Kafka-protocol brokers; only standard client features
//! are used.

mod consumer;
mod consumer_config;
mod dead_letter;
mod publisher;
mod takeover;
mod topics;
mod watchdog;
mod window;

pub use consumer::{run_consumer, to_delivery, ConsumerStats};
pub use consumer_config::{Assignment, ConsumerConfig};
pub use dead_letter::{
    read_dead_letters, DeadLetterRecord, KafkaDeadLetter, DLQ_REASON_HEADER, DLQ_REPLAY_OF_HEADER,
    DLQ_TOPIC_HEADER,
};
pub use publisher::{producer_config, KafkaPublisher};
pub use topics::{
    ensure_topics, ensure_topics_configured, ensure_topics_using, ensure_topics_with,
};

use crate::Error;
use rdkafka::error::KafkaError;

fn kafka_err(e: KafkaError) -> Error {
    Error::storage(e)
}
