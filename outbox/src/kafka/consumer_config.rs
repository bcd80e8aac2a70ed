//! [`ConsumerConfig`] and [`Assignment`]: the settings of [`run_consumer`].

use std::time::Duration;

use rdkafka::config::ClientConfig;

#[cfg(doc)]
use super::run_consumer;
#[cfg(doc)]
use crate::IdempotentConsumer;

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
    /// How many messages, at most, share one unit of work (default 16; 1: each its
    /// own). Messages received together — of different keys, each the next of its key
    /// — are handled in one transaction through
    /// [`IdempotentConsumer::process_batch`]: one begin and one commit for all of
    /// them instead of one each, which is most of what a small message costs the
    /// database. The messages of a batch finish together: a batch whose handler or
    /// store fails, or that runs over the consumer's batch timeout
    /// ([`IdempotentConsumer::with_batch_timeout`], 1 s), falls back to one unit of
    /// work per message, so neither a bad nor a slow message holds its neighbours back
    /// for long. Within
    /// [`max_in_flight`](Self::max_in_flight): batches never hold more messages than
    /// that together.
    pub max_batch: usize,
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
            max_batch: 16,
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

    /// [`max_batch`](Self::max_batch) (1: one unit of work per message).
    pub fn with_max_batch(mut self, max_batch: usize) -> Self {
        self.max_batch = max_batch;
        self
    }

    /// One more librdkafka setting ([`extra`](Self::extra)), e.g. TLS or SASL.
    pub fn with_property(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.extra.push((name.into(), value.into()));
        self
    }
}

impl ConsumerConfig {
    /// The librdkafka settings of a group member: ours, then the caller's
    /// [`extra`](Self::extra) over them (statistics every 5 s unless set there).
    pub(super) fn client_config(&self) -> ClientConfig {
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::ConsumerConfig;

    #[test]
    fn a_static_replica_owns_every_nth_partition_from_its_index() {
        use super::Assignment;
        let of = |replica, replicas| {
            (0..7)
                .filter(|p| Assignment::Static { replica, replicas }.owns(*p))
                .collect::<Vec<i32>>()
        };
        assert_eq!(of(0, 3), [0, 3, 6]);
        assert_eq!(of(2, 3), [2, 5]);
        assert_eq!(of(0, 1), [0, 1, 2, 3, 4, 5, 6]);
        assert_eq!(of(0, 0), [0, 1, 2, 3, 4, 5, 6], "0 replicas count as 1");
        let only = Assignment::Static {
            replica: 0,
            replicas: 1,
        };
        assert!(!only.owns(-1), "no partition below 0");
        assert!(Assignment::Group.owns(5) && Assignment::Group.owns(-1));
    }

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
