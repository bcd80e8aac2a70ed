//! Kafka wiring shared by the services: topic names, bootstrap, the outbox relay task.

use std::time::Duration;

use outbox::kafka::ensure_topics_configured;
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

    /// Create the topics if missing (commands and replies 3 partitions, dead letters 1;
    /// replication factor, `min.insync.replicas` and the `KAFKA_TOPIC_CONFIG` settings
    /// from `tuning`), retrying while the broker is not up yet.
    pub async fn ensure(
        &self,
        brokers: &str,
        tuning: &KafkaTuning,
        wait: Duration,
    ) -> anyhow::Result<()> {
        let config = tuning.client_config(brokers)?;
        let topics = [(&*self.commands, 3), (&*self.replies, 3), (&*self.dlq, 1)];
        let isr = tuning.kafka_min_insync_replicas.to_string();
        let mut owned = tuning.topic_config()?;
        // KAFKA_MIN_INSYNC_REPLICAS unless KAFKA_TOPIC_CONFIG names it too.
        if !owned.iter().any(|(k, _)| k == "min.insync.replicas") {
            owned.push(("min.insync.replicas".to_owned(), isr));
        }
        let settings: Vec<(&str, &str)> = owned
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let replication = tuning.kafka_replication_factor;
        crate::retry::until_up(
            "kafka_topics",
            wait,
            "Kafka недоступна, повтор создания топиков",
            || async {
                Ok(ensure_topics_configured(&config, &topics, replication, &settings).await?)
            },
        )
        .await
    }
}

/// Kafka client settings of the services (environment variables in brackets). The
/// defaults suit Apache Kafka and Kafka-protocol brokers alike: see `docs/BENCHMARKS.md`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct KafkaTuning {
    /// Consumer `fetch.wait.max.ms` (`KAFKA_FETCH_WAIT_MAX_MS`, default 20). Apache Kafka
    /// answers a waiting fetch as soon as a message arrives, whatever this is; brokers
    /// that poll their storage (Tansu) deliver about a quarter of it late on average.
    pub kafka_fetch_wait_max_ms: u64,
    /// Producer `linger.ms` (`KAFKA_LINGER_MS`, default 0): the relay publishes keys
    /// concurrently, so batches form while a request is in flight anyway.
    pub kafka_linger_ms: u64,
    /// Messages a consumer handles at once, one key at a time
    /// (`KAFKA_MAX_IN_FLIGHT`, default 32; 1 = strictly one after the other).
    pub kafka_max_in_flight: usize,
    /// Messages a consumer handles in one database transaction when several wait
    /// (`KAFKA_MAX_BATCH`, default 16; 1 = one transaction per message) — one begin
    /// and one commit for all of them; a batch that fails is handled again message by
    /// message ([`outbox::kafka::ConsumerConfig::max_batch`]).
    pub kafka_max_batch: usize,
    /// More librdkafka properties for every client — producer, consumer, topic admin —,
    /// `;`-separated `name=value` pairs (`KAFKA_PROPERTIES`): TLS and SASL, e.g.
    /// `security.protocol=SASL_SSL;sasl.mechanism=SCRAM-SHA-512;sasl.username=order;
    /// sasl.password=…;ssl.ca.location=/etc/ordersys/kafka-ca.pem`. A secret: `Debug`
    /// (the configuration the services log at start) shows it redacted.
    pub kafka_properties: crate::config::Secret,
    /// Static group membership (`KAFKA_STATIC_MEMBERSHIP`, default true): the consumer
    /// joins as `group.instance.id` = the relay id, so a restarted instance takes its
    /// partitions back at once, without a rebalance. The price: the partitions of an
    /// instance that is gone for good (crashed and not restarted, scaled down) move to
    /// the others only when the broker expires its session (`session.timeout.ms`,
    /// 10 s). `false`: dynamic membership — a graceful stop hands the partitions over at
    /// once, a restart costs a rebalance.
    pub kafka_static_membership: bool,
    /// How the relay reads a MySQL outbox (`OUTBOX_STREAM`, default false): `false`,
    /// leased claims — every replica's relay publishes, a failed publish holds back
    /// its key only; `true`, as a stream — one replica's relay at a time (the others
    /// take over when its lease expires), no row written per message, a failed publish
    /// holds back the stream ([`outbox::mysql::MySqlStreamingOutbox`]).
    pub outbox_stream: bool,
    /// Replication factor of the topics the service creates when they are missing
    /// (`KAFKA_REPLICATION_FACTOR`, default 1: one broker). On a cluster: 3.
    pub kafka_replication_factor: i32,
    /// `min.insync.replicas` of the topics the service creates
    /// (`KAFKA_MIN_INSYNC_REPLICAS`, default 1). Producers use `acks=all`: with 2, a
    /// message is acknowledged once two replicas hold it. On a cluster: 2.
    pub kafka_min_insync_replicas: u32,
    /// Settings of the topics the service creates (`KAFKA_TOPIC_CONFIG`, `;`-separated
    /// `name=value`, default none: the broker's defaults), e.g.
    /// `cleanup.policy=delete;retention.ms=604800000` — Apache Kafka's defaults, made
    /// explicit for brokers that keep everything unless a topic says otherwise (Tansu
    /// trims a topic's log only when its `cleanup.policy` names `delete`).
    pub kafka_topic_config: String,
    /// How the consumers get their partitions (`KAFKA_ASSIGNMENT`, default `group`):
    /// `group`, membership of the consumer group (the coordinator shares the partitions
    /// and hands a dead member's to the others; a restart waits for the group to take
    /// it back — ≈ 8 s on Tansu); `static` (one replica: every partition) or
    /// `static:I/N` (replica I of N takes the partitions p with p % N == I), no group
    /// join — a restarted service consumes again at once, but nobody takes over a dead
    /// replica's partitions until it is back ([`outbox::kafka::Assignment`]) — unless
    /// the takeover below drains them meanwhile.
    pub kafka_assignment: String,
    /// With `static:I/N`, N > 1: after how many milliseconds a peer's partition whose
    /// messages wait unconsumed is taken over and drained by this replica
    /// (`KAFKA_TAKEOVER_MS`, default 500; 0: never —
    /// [`outbox::kafka::ConsumerConfig::takeover_after`]).
    pub kafka_takeover_ms: u64,
}

impl Default for KafkaTuning {
    fn default() -> Self {
        Self {
            kafka_fetch_wait_max_ms: 20,
            kafka_linger_ms: 0,
            kafka_max_in_flight: 32,
            kafka_max_batch: 16,
            kafka_properties: crate::config::Secret::default(),
            kafka_static_membership: true,
            outbox_stream: false,
            kafka_replication_factor: 1,
            kafka_min_insync_replicas: 1,
            kafka_topic_config: String::new(),
            kafka_assignment: "group".into(),
            kafka_takeover_ms: 500,
        }
    }
}

/// `;`-separated `name=value` pairs of the variable `var`.
fn name_values(var: &str, text: &str) -> anyhow::Result<Vec<(String, String)>> {
    text.split(';')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.trim().to_owned())),
            _ => anyhow::bail!("{var}: {p:?} is not name=value"),
        })
        .collect()
}

impl KafkaTuning {
    /// `KAFKA_PROPERTIES` as (name, value) pairs; an entry without `=` is an error.
    pub fn properties(&self) -> anyhow::Result<Vec<(String, String)>> {
        name_values("KAFKA_PROPERTIES", &self.kafka_properties)
    }

    /// `KAFKA_TOPIC_CONFIG` as (name, value) pairs; an entry without `=` is an error.
    pub fn topic_config(&self) -> anyhow::Result<Vec<(String, String)>> {
        name_values("KAFKA_TOPIC_CONFIG", &self.kafka_topic_config)
    }

    /// `KAFKA_ASSIGNMENT` as an [`outbox::kafka::Assignment`]; anything but `group`,
    /// `static` or `static:I/N` with I < N is an error.
    pub fn assignment(&self) -> anyhow::Result<outbox::kafka::Assignment> {
        use outbox::kafka::Assignment;
        let text = self.kafka_assignment.trim();
        let bad = || {
            anyhow::anyhow!("KAFKA_ASSIGNMENT: {text:?} is not group, static or static:I/N (I < N)")
        };
        match text {
            "" | "group" => Ok(Assignment::Group),
            "static" => Ok(Assignment::Static {
                replica: 0,
                replicas: 1,
            }),
            _ => {
                let (i, n) = text
                    .strip_prefix("static:")
                    .and_then(|r| r.split_once('/'))
                    .ok_or_else(bad)?;
                let (replica, replicas) = (
                    i.trim().parse::<u32>().map_err(|_| bad())?,
                    n.trim().parse::<u32>().map_err(|_| bad())?,
                );
                anyhow::ensure!(replica < replicas, bad());
                Ok(Assignment::Static { replica, replicas })
            }
        }
    }

    /// A client config for `brokers` with [`properties`](Self::properties) applied.
    pub fn client_config(&self, brokers: &str) -> anyhow::Result<rdkafka::ClientConfig> {
        let mut c = rdkafka::ClientConfig::new();
        c.set("bootstrap.servers", brokers);
        for (k, v) in self.properties()? {
            c.set(k, v);
        }
        Ok(c)
    }

    /// A publisher for `brokers` with these settings.
    pub fn publisher(&self, brokers: &str) -> anyhow::Result<outbox::kafka::KafkaPublisher> {
        let mut c = outbox::kafka::producer_config(brokers);
        c.set("linger.ms", self.kafka_linger_ms.to_string());
        for (k, v) in self.properties()? {
            c.set(k, v);
        }
        Ok(outbox::kafka::KafkaPublisher::from_config(&c)?)
    }

    /// The `group.instance.id` of `service`'s consumer: its [`relay_id`] with static
    /// membership, none without.
    pub fn instance_id(&self, service: &str) -> Option<String> {
        self.kafka_static_membership.then(|| relay_id(service))
    }

    /// Apply the consumer settings to `config`.
    pub fn consumer(
        &self,
        mut config: outbox::kafka::ConsumerConfig,
    ) -> anyhow::Result<outbox::kafka::ConsumerConfig> {
        config.fetch_wait_max = Duration::from_millis(self.kafka_fetch_wait_max_ms);
        config.max_in_flight = self.kafka_max_in_flight.max(1);
        config.max_batch = self.kafka_max_batch.max(1);
        config.assignment = self.assignment()?;
        config.takeover_after =
            (self.kafka_takeover_ms > 0).then(|| Duration::from_millis(self.kafka_takeover_ms));
        config.extra.extend(self.properties()?);
        Ok(config)
    }
}

/// How a service exchanges saga messages.
#[derive(Debug, Clone)]
pub enum Messaging {
    /// Through a Kafka cluster (the reference deployment).
    Kafka {
        /// `bootstrap.servers`.
        brokers: String,
        /// Client settings.
        tuning: KafkaTuning,
    },
    /// Through an in-process [`LocalBus`](outbox::local::LocalBus) shared by the services
    /// of one process (the embedded mode), with their durable dead letters.
    Local {
        /// The bus.
        bus: outbox::local::LocalBus,
        /// Where each service's consumers park what they give up on.
        dead_letters: crate::parked::LocalDeadLetters,
    },
}

impl Messaging {
    /// A new in-process bus with no dead-letter shelves yet.
    pub fn local() -> Self {
        Self::Local {
            bus: outbox::local::LocalBus::new(),
            dead_letters: Default::default(),
        }
    }

    /// The dead-letter shelves of the in-process services (none with Kafka: the
    /// dead-letter topic holds them).
    pub fn local_dead_letters(&self) -> Option<&crate::parked::LocalDeadLetters> {
        match self {
            Self::Local { dead_letters, .. } => Some(dead_letters),
            Self::Kafka { .. } => None,
        }
    }

    /// Whether the relay reads a MySQL outbox as a stream (Kafka with
    /// [`KafkaTuning::outbox_stream`]).
    pub fn outbox_stream(&self) -> bool {
        matches!(self, Self::Kafka { tuning, .. } if tuning.outbox_stream)
    }
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
/// `stream`: the outbox is read as a stream ([`Messaging::outbox_stream`]) — a lease of
/// 5 s (a replica that dies stops the stream for at most that long, well inside the
/// saga's payment deadline) and a poll every 50 ms (a commit wakes the relay of its own
/// replica only, which may not be the one holding the stream).
pub fn relay<O: OutboxStore, P: outbox::Publisher>(
    outbox: O,
    publisher: P,
    service: &str,
    stream: bool,
) -> (Relay<O, P>, RelayHandle) {
    let config = RelayConfig::with_id(relay_id(service));
    let config = if stream {
        config
            .with_lease(Duration::from_secs(5))
            .with_poll_interval(Duration::from_millis(50))
    } else {
        config.with_poll_interval(Duration::from_millis(500))
    };
    let relay = Relay::new(outbox, publisher, config);
    let handle = relay.handle();
    (relay, handle)
}

/// Correlation headers to put on an outgoing message, taken from an incoming one: the
/// correlation id always; the incoming `traceparent` only if the message carries none
/// of its own (it normally has the handling span's, set by `OutboxMessage::new`).
pub fn forward_headers(
    from: &outbox::Headers,
    mut msg: outbox::OutboxMessage,
) -> outbox::OutboxMessage {
    if let Some(v) = from.get(crate::context::CORRELATION_ID) {
        msg.headers.insert(crate::context::CORRELATION_ID, v);
    }
    if msg.headers.get(crate::context::TRACEPARENT).is_none() {
        if let Some(v) = from.get(crate::context::TRACEPARENT) {
            msg.headers.insert(crate::context::TRACEPARENT, v);
        }
    }
    msg
}

/// How often [`housekeeping`] purges.
pub const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(3600);

/// Purges, every `every` until `shutdown`: inbox records older than `inbox_retention`
/// and expired idempotency keys (a no-op for Redis, which expires them itself; the
/// SQLite table of the embedded mode would grow forever otherwise). The first purge
/// runs at start, so a service that restarts often still purges.
pub async fn housekeeping<I: outbox::Inbox>(
    inbox: I,
    idempotency: std::sync::Arc<dyn outbox::idempotency::IdempotencyStore>,
    inbox_retention: Duration,
    every: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        match inbox.purge(inbox_retention).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "старые записи inbox удалены"),
            Err(e) => tracing::warn!(error = %e, "не удалось удалить старые записи inbox"),
        }
        match idempotency.purge_expired().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "истёкшие ключи идемпотентности удалены"),
            Err(e) => {
                tracing::warn!(error = %e, "не удалось удалить истёкшие ключи идемпотентности")
            }
        }
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// Spawn [`housekeeping`] into a service's task set: every [`HOUSEKEEPING_EVERY`],
/// inbox records older than `inbox_retention_hours` and expired idempotency keys go.
pub fn spawn_housekeeping<I: outbox::Inbox>(
    tasks: &mut tokio::task::JoinSet<anyhow::Result<()>>,
    inbox: I,
    idempotency: std::sync::Arc<dyn outbox::idempotency::IdempotencyStore>,
    inbox_retention_hours: u64,
    stop: crate::shutdown::Shutdown,
) {
    let retention = Duration::from_secs(inbox_retention_hours.saturating_mul(3600));
    tasks.spawn(async move {
        housekeeping(
            inbox,
            idempotency,
            retention,
            HOUSEKEEPING_EVERY,
            stop.wait(),
        )
        .await;
        Ok(())
    });
}

#[cfg(test)]
mod tests;
