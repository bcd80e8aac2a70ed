//! Topic creation: [`ensure_topics`].

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::RDKafkaErrorCode;

use crate::{Error, Result};

use super::kafka_err;

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
    ensure_topics_configured(config, topics, replication, &[]).await
}

/// [`ensure_topics_using`] with topic settings for the topics it creates, e.g.
/// `[("min.insync.replicas", "2")]` so that a producer with `acks=all` (ours) is
/// acknowledged only once two replicas hold a message. Existing topics are left alone
/// (their settings included).
///
/// ```no_run
/// # async fn f() -> outbox::Result<()> {
/// let mut config = rdkafka::ClientConfig::new();
/// config.set("bootstrap.servers", "kafka:9092");
/// outbox::kafka::ensure_topics_configured(
///     &config,
///     &[("saga.commands", 3), ("saga.replies", 3), ("dlq.saga", 1)],
///     3,
///     &[("min.insync.replicas", "2")],
/// )
/// .await
/// # }
/// ```
pub async fn ensure_topics_configured(
    config: &ClientConfig,
    topics: &[(&str, i32)],
    replication: i32,
    topic_config: &[(&str, &str)],
) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = config.create().map_err(kafka_err)?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(name, partitions)| {
            topic_config.iter().fold(
                NewTopic::new(name, *partitions, TopicReplication::Fixed(replication)),
                |topic, (key, value)| topic.set(key, value),
            )
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
