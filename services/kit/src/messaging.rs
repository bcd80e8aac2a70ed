//! Kafka wiring shared by the services: topic names, bootstrap, the outbox relay task.

use std::time::Duration;

use outbox::kafka::ensure_topics;
use outbox::{OutboxStore, Relay, RelayConfig, RelayHandle};

/// The saga topics, with an optional prefix (tests run isolated systems on one broker).
#[derive(Debug, Clone)]
pub struct Topics {
    /// `saga.commands`.
    pub commands: String,
    /// `saga.replies`.
    pub replies: String,
    /// `dlq.saga`.
    pub dlq: String,
    /// Prefix for consumer group ids.
    pub prefix: String,
}

impl Topics {
    /// Topic names under `prefix` (empty: the SPEC names).
    pub fn new(prefix: &str) -> Self {
        Self {
            commands: format!("{prefix}saga.commands"),
            replies: format!("{prefix}saga.replies"),
            dlq: format!("{prefix}dlq.saga"),
            prefix: prefix.to_owned(),
        }
    }

    /// A consumer group id for `service`.
    pub fn group(&self, service: &str) -> String {
        format!("{}{service}", self.prefix)
    }

    /// Create the topics if missing (3 partitions each), retrying while the broker is
    /// not up yet.
    pub async fn ensure(&self, brokers: &str, wait: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let r = ensure_topics(
                brokers,
                &[(&self.commands, 3), (&self.replies, 3), (&self.dlq, 1)],
            )
            .await;
            match r {
                Ok(()) => return Ok(()),
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::warn!(error = %e, "Kafka недоступна, повтор создания топиков");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// How a service exchanges saga messages.
#[derive(Debug, Clone)]
pub enum Messaging {
    /// Through a Kafka cluster (the reference deployment).
    Kafka {
        /// `bootstrap.servers`.
        brokers: String,
    },
    /// Through an in-process [`LocalBus`](outbox::local::LocalBus) shared by the services
    /// of one process (the embedded mode).
    Local(outbox::local::LocalBus),
}

/// The relay id: unique among live relays, stable across restarts of one, so that a
/// restarted relay takes back what it left leased (`RELAY_ID`, else
/// `{service}@{hostname}`).
pub fn relay_id(service: &str) -> String {
    if let Ok(id) = std::env::var("RELAY_ID") {
        if !id.is_empty() {
            return format!("{service}@{id}");
        }
    }
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .unwrap_or_else(|| "localhost".into());
    format!("{service}@{host}")
}

/// A relay from `outbox` to `publisher`, and the handle that wakes it after commits.
pub fn relay<O: OutboxStore, P: outbox::Publisher>(
    outbox: O,
    publisher: P,
    service: &str,
) -> (Relay<O, P>, RelayHandle) {
    let relay = Relay::new(
        outbox,
        publisher,
        RelayConfig {
            relay_id: relay_id(service),
            poll_interval: Duration::from_millis(500),
            ..RelayConfig::default()
        },
    );
    let handle = relay.handle();
    (relay, handle)
}

/// Correlation headers to put on an outgoing message, taken from an incoming one.
pub fn forward_headers(
    from: &outbox::Headers,
    mut msg: outbox::OutboxMessage,
) -> outbox::OutboxMessage {
    for name in [crate::context::CORRELATION_ID, crate::context::TRACEPARENT] {
        if let Some(v) = from.get(name) {
            msg.headers.insert(name, v);
        }
    }
    msg
}
