//! The consumer loop: [`run_consumer`] with its [`ConsumerConfig`].

use std::future::Future;
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers as _};
use rdkafka::Message;
use uuid::Uuid;

use crate::store::{DeadLetter, Inbox};
use crate::{
    Delivery, DeliveryOutcome, Headers, IdempotentConsumer, MessageHandler, MessageId, Result,
    MESSAGE_ID_HEADER,
};

use super::kafka_err;
use super::watchdog::Watchdog;
use super::window::{Position, Window};

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
    /// How often the consumer checks that it and its group are not stuck (default
    /// 10 s; `None` turns the check off). The check runs beside consumption (off the
    /// async threads, one at a time, the next one an interval after the last ended):
    /// - a partition of its own positioned **beyond the end of its log** (the topic was
    ///   created again, or the broker lost its data but not the group's offsets — a
    ///   broker that answers such a fetch with nothing instead of `OFFSET_OUT_OF_RANGE`
    ///   would leave it silent forever) is moved to the start of the log, as
    ///   `auto.offset.reset=earliest` would (the inbox drops what was already
    ///   processed). The broker's log end is only a hint (Tansu reports the start of the
    ///   last record batch + 1): a partition counts as beyond the end only when the
    ///   record before its position cannot be read either (each such read waits up to
    ///   2 s), so a consumer at the true end is never rewound;
    /// - a partition **nobody consumes** — not its own, messages waiting, the group's
    ///   committed offset on it unmoved for two session timeouts (a group whose
    ///   assignment lost a partition after members crashed or were cut off; a member
    ///   that holds no partitions at all is the same case) — makes it leave and rejoin
    ///   its group: the rebalance hands every partition out again. A member that is
    ///   merely slow keeps moving its offset and is left alone.
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
    /// How the consumer gets its partitions (default [`Assignment::Group`]).
    pub assignment: Assignment,
    /// With [`Assignment::Static`] and peers (`replicas > 1`): how long a peer's
    /// partition may stand with messages waiting — the group's committed offset on it
    /// unmoved — before this replica takes it over (default 500 ms; `None`: never). The
    /// replica drains it and gives it back as soon as nothing waits there, so a dead
    /// peer's messages wait about this long instead of until the peer is back. Checked
    /// every quarter of it; a statically assigned consumer with peers commits its
    /// offsets every fifth of it (at most every second) so that a live peer's offsets
    /// are seen moving. A peer that is alive but stands still this long (its store
    /// down, a message retried) is taken over too: both then handle the partition for
    /// a while — the inbox still processes each message once, but the per-key order
    /// across the two replicas is not kept in that window.
    pub takeover_after: Option<Duration>,
    /// More librdkafka settings.
    pub extra: Vec<(String, String)>,
}

/// How a consumer of [`run_consumer`] gets its partitions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Assignment {
    /// Membership of the consumer group: the group coordinator shares the partitions
    /// among the live members and hands a dead member's to the others. A restarted
    /// member consumes again once the group let it back in — at once with Apache Kafka
    /// and static membership ([`ConsumerConfig::instance_id`]); the Tansu broker pauses
    /// every join (≈ 8 s measured, docs/RELIABILITY.md).
    #[default]
    Group,
    /// Replica `replica` of `replicas` takes the partitions `p` with
    /// `p % replicas == replica` of each topic, directly — no group join: a restarted
    /// replica consumes again as soon as it is up (≈ 10 ms instead of a join), from the
    /// offsets committed under [`ConsumerConfig::group_id`]. The price: nobody takes over
    /// a dead replica's partitions until it is back, and each replica needs its own
    /// stable index (a StatefulSet ordinal, a compose service each) — two processes with
    /// one index consume the same partitions (the inbox still processes each message
    /// once, but the per-key order across them is lost). Partitions added to a topic
    /// later are seen at the next start. Nobody takes a dead replica's partitions over
    /// for good; with [`ConsumerConfig::takeover_after`] (the default) a live replica
    /// drains a peer's partition whose messages stand waiting, and gives it back.
    Static {
        /// This replica's index, `0..replicas`.
        replica: u32,
        /// How many replicas share the partitions (at least 1).
        replicas: u32,
    },
}

impl Assignment {
    /// Whether `partition` is this replica's.
    ///
    /// ```
    /// use outbox::kafka::Assignment;
    /// let second = Assignment::Static { replica: 1, replicas: 2 };
    /// assert!(second.owns(3) && !second.owns(2));
    /// assert!(Assignment::Group.owns(2)); // the group decides
    /// ```
    pub fn owns(self, partition: i32) -> bool {
        match self {
            Self::Group => true,
            Self::Static { replica, replicas } => {
                u32::try_from(partition).is_ok_and(|p| p % replicas.max(1) == replica)
            }
        }
    }
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
            assignment: Assignment::Group,
            takeover_after: Some(Duration::from_millis(500)),
            extra: Vec::new(),
        }
    }

    /// [`assignment`](Self::assignment): [`Assignment::Static`] as replica `replica`
    /// of `replicas`.
    pub fn with_static_assignment(mut self, replica: u32, replicas: u32) -> Self {
        self.assignment = Assignment::Static { replica, replicas };
        self
    }

    /// [`takeover_after`](Self::takeover_after) (`None`: a dead peer's partitions wait
    /// for it).
    pub fn with_takeover_after(mut self, takeover_after: Option<Duration>) -> Self {
        self.takeover_after = takeover_after;
        self
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
pub(super) struct LagContext {
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

impl ConsumerConfig {
    /// The librdkafka settings of a group member: ours, then the caller's
    /// [`extra`](Self::extra) over them (statistics every 5 s unless set there).
    fn client_config(&self) -> ClientConfig {
        let mut cc = ClientConfig::new();
        cc.set("bootstrap.servers", &self.brokers)
            .set("group.id", &self.group_id)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set(
                "session.timeout.ms",
                self.session_timeout.as_millis().to_string(),
            )
            .set(
                "fetch.wait.max.ms",
                self.fetch_wait_max.as_millis().to_string(),
            )
            .set("statistics.interval.ms", "5000");
        if let (Some(after), Assignment::Static { replicas: 2.., .. }) =
            (self.takeover_after, self.assignment)
        {
            // Peers judge this replica alive by its committed offsets moving.
            let every = (after / 5).clamp(Duration::from_millis(10), Duration::from_secs(1));
            cc.set("auto.commit.interval.ms", every.as_millis().to_string());
        }
        if let (Some(id), Assignment::Group) = (&self.instance_id, self.assignment) {
            cc.set("group.instance.id", id);
        }
        for (k, v) in &self.extra {
            cc.set(k, v);
        }
        cc
    }
}

/// [`Assignment::Static`]: take this replica's partitions of every topic, each from
/// the offset committed under the group (or the start of its log). Blocking.
fn assign_statically(
    kafka: &StreamConsumer<LagContext>,
    config: &ConsumerConfig,
) -> rdkafka::error::KafkaResult<()> {
    let mut tpl = rdkafka::TopicPartitionList::new();
    for topic in &config.topics {
        let md = kafka.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        for t in md.topics() {
            for p in t.partitions() {
                if config.assignment.owns(p.id()) {
                    tpl.add_partition_offset(t.name(), p.id(), rdkafka::Offset::Stored)?;
                }
            }
        }
    }
    if tpl.count() == 0 {
        tracing::warn!(assignment = ?config.assignment, group = %config.group_id,
            "static assignment: no partition is this replica's");
    } else {
        tracing::info!(partitions = tpl.count(), group = %config.group_id,
            "consuming assigned partitions (static assignment, no group join)");
    }
    kafka.assign(&tpl)
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
    let cc = config.client_config();
    let context = LagContext {
        group: config.group_id.clone(),
    };
    let kafka: std::sync::Arc<StreamConsumer<LagContext>> =
        std::sync::Arc::new(cc.create_with_context(context).map_err(kafka_err)?);
    match config.assignment {
        Assignment::Group => {
            let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
            kafka.subscribe(&topics).map_err(kafka_err)?;
        }
        Assignment::Static { .. } => {
            let (k, c) = (kafka.clone(), config.clone());
            tokio::task::spawn_blocking(move || assign_statically(&k, &c))
                .await
                .map_err(crate::Error::storage)?
                .map_err(kafka_err)?;
        }
    }

    tokio::pin!(shutdown);
    let mut stats = ConsumerStats::default();
    // The watchdog runs beside consumption, off the async threads (its librdkafka
    // metadata and offset requests block), one check at a time. It keeps its clocks
    // between checks; a check that panicked leaves them as they were.
    let watchdog = std::sync::Arc::new(std::sync::Mutex::new(Watchdog::new(
        config.session_timeout,
        &cc,
    )));
    let mut checking: Option<tokio::task::JoinHandle<()>> = None;
    let next_check_after = |from: tokio::time::Instant| {
        config
            .watchdog_interval
            .and_then(|every| from.checked_add(every))
    };
    let mut next_check = next_check_after(tokio::time::Instant::now());
    let max_in_flight = config.max_in_flight.max(1);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut stopping = false;
    let mut window = Window::default();
    let mut running = futures::stream::FuturesUnordered::new();
    let takeover = super::takeover::Takeover::of(config).map(|t| {
        let run = super::takeover::run(t, kafka.clone(), config.topics.clone(), stop_rx.clone());
        tokio::spawn(run)
    });
    loop {
        if stopping && running.is_empty() {
            break;
        }
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
                        tracing::warn!(error = %e, "failed to store an offset");
                    }
                }
                if !stopping {
                    if let Some((next, next_at)) = window.next_of_key(&at, delivery.key) {
                        running.push(process_one(config, consumer, handler, next, next_at, stop_rx.clone()));
                    }
                }
            }
            msg = kafka.recv(), if !stopping && window.len() < max_in_flight => {
                let msg = match msg {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(error = %e, "failed to receive a message from Kafka");
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
            _ = async { checking.as_mut().expect("awaited only while running").await },
                if checking.is_some() => {
                checking = None;
                // One interval after this check ended: a slow check (a probe waits up to
                // seconds) never runs back to back with the next.
                next_check = next_check_after(tokio::time::Instant::now());
            }
            // Cancel-safe: a message is taken from the queue only when `recv` is ready.
            () = async { tokio::time::sleep_until(next_check.expect("only when due")).await },
                if !stopping && checking.is_none() && next_check.is_some() => {
                let (k, t, w) = (kafka.clone(), config.topics.clone(), watchdog.clone());
                let grouped = config.assignment == Assignment::Group;
                checking = Some(tokio::task::spawn_blocking(move || {
                    let mut w = w.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    if let Err(e) = w.check(&k, &t, grouped) {
                        tracing::debug!(error = %e, "Kafka consumer check failed");
                    }
                }));
            }
        }
    }
    if let Some(takeover) = takeover {
        // It holds the consumer: let its check end before closing.
        let _ = tokio::time::timeout(config.close_timeout, takeover).await;
    }
    if let Some(check) = checking {
        // It holds the consumer: let it end (bounded by its own timeouts) before closing.
        let _ = tokio::time::timeout(config.close_timeout, check).await;
    }

    if let Err(e) = kafka.commit_consumer_state(CommitMode::Sync) {
        if !matches!(e, KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) {
            tracing::warn!(error = %e, "failed to commit offsets on shutdown");
        }
    }
    // Leaving the group can hang on some brokers; never let it block shutdown.
    let close = tokio::task::spawn_blocking(move || drop(kafka));
    if tokio::time::timeout(config.close_timeout, close)
        .await
        .is_err()
    {
        tracing::warn!("closing the Kafka consumer took longer than allowed");
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
                    "failed to handle a message, retrying");
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::ConsumerConfig;

    #[test]
    fn a_members_settings_are_ours_with_the_callers_over_them() {
        let config = ConsumerConfig::new("k:9092", "g", &["t"])
            .with_session_timeout(Duration::from_secs(6))
            .with_fetch_wait_max(Duration::from_millis(5));
        let cc = config.client_config();
        for (key, value) in [
            ("bootstrap.servers", "k:9092"),
            ("group.id", "g"),
            ("enable.auto.commit", "true"),
            ("auto.commit.interval.ms", "1000"),
            ("enable.auto.offset.store", "false"),
            ("auto.offset.reset", "earliest"),
            ("session.timeout.ms", "6000"),
            ("fetch.wait.max.ms", "5"),
            ("statistics.interval.ms", "5000"),
        ] {
            assert_eq!(cc.get(key), Some(value), "{key}");
        }
        assert_eq!(cc.get("group.instance.id"), None);

        let cc = config
            .with_instance_id("order-0")
            .with_property("statistics.interval.ms", "100")
            .with_property("security.protocol", "ssl")
            .client_config();
        assert_eq!(cc.get("group.instance.id"), Some("order-0"));
        assert_eq!(cc.get("auto.commit.interval.ms"), Some("1000"));

        // Static replicas with peers commit often: peers see them alive by it.
        let of = |c: ConsumerConfig| {
            c.client_config()
                .get("auto.commit.interval.ms")
                .map(str::to_owned)
        };
        let config = ConsumerConfig::new("k:9092", "g", &["t"]);
        assert_eq!(
            of(config.clone().with_static_assignment(1, 2)).as_deref(),
            Some("100")
        );
        assert_eq!(
            of(config.clone().with_static_assignment(0, 1)).as_deref(),
            Some("1000")
        );
        let off = config
            .with_static_assignment(1, 2)
            .with_takeover_after(None);
        assert_eq!(of(off).as_deref(), Some("1000"));
        assert_eq!(cc.get("statistics.interval.ms"), Some("100"));
        assert_eq!(cc.get("security.protocol"), Some("ssl"));
    }
}
