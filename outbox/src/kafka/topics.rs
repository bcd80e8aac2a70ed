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
