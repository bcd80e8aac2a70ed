//! Static replicas standing in for each other: a replica takes over a peer's partition
//! whose messages wait with nobody consuming them, drains it and gives it back.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::{Offset, TopicPartitionList};

use super::consumer::LagContext;
use super::consumer_config::{Assignment, ConsumerConfig};
use super::watchdog::waiting_from;

/// A partition: topic and number.
type Partition = (String, i32);

/// What one check decided: the peers' partitions to take and the taken ones to give back.
#[derive(Debug, Default, PartialEq, Eq)]
struct Decision {
    take: Vec<Partition>,
    release: Vec<Partition>,
}

/// The takeover of [`ConsumerConfig::takeover_after`]: one per statically assigned
/// consumer with peers.
pub(super) struct Takeover {
    /// How long a peer's partition may stand with messages waiting before it is taken.
    after: Duration,
    assignment: Assignment,
    group: String,
    /// The peers' partitions of every topic (read once, at the first check).
    peers: Option<Vec<Partition>>,
    /// Per peer partition with messages waiting and not taken: the group's offset on it
    /// and since when it has stood there.
    standing: HashMap<Partition, (i64, Instant)>,
    /// The peers' partitions this replica consumes now.
    taken: HashSet<Partition>,
}

impl Takeover {
    const TIMEOUT: Duration = Duration::from_secs(2);

    /// The takeover of `config`'s consumer, if it has one: a static assignment with
    /// peers and [`ConsumerConfig::takeover_after`] set.
    pub(super) fn of(config: &ConsumerConfig) -> Option<Self> {
        let after = config.takeover_after?;
        match config.assignment {
            Assignment::Static { replicas, .. } if replicas > 1 => Some(Self {
                after,
                assignment: config.assignment,
                group: config.group_id.clone(),
                peers: None,
                standing: HashMap::new(),
                taken: HashSet::new(),
            }),
            _ => None,
        }
    }

    /// How often to check: a quarter of the standing time (at least every 50 ms).
    pub(super) fn interval(&self) -> Duration {
        (self.after / 4).max(Duration::from_millis(50))
    }

    /// One check. Blocking (librdkafka metadata and offset requests): run off the async
    /// threads.
    pub(super) fn check(
        &mut self,
        kafka: &StreamConsumer<LagContext>,
        topics: &[String],
    ) -> KafkaResult<()> {
        let peers = match &self.peers {
            Some(peers) => peers.clone(),
            None => {
                let mut peers = Vec::new();
                for topic in topics {
                    let md = kafka.fetch_metadata(Some(topic), Self::TIMEOUT)?;
                    for t in md.topics() {
                        peers.extend(
                            t.partitions()
                                .iter()
                                .filter(|p| !self.assignment.owns(p.id()))
                                .map(|p| (t.name().to_owned(), p.id())),
                        );
                    }
                }
                self.peers = Some(peers.clone());
                peers
            }
        };
        if peers.is_empty() {
            return Ok(());
        }
        let mut list = TopicPartitionList::new();
        for (topic, partition) in &peers {
            list.add_partition(topic, *partition);
        }
        let committed = kafka.committed_offsets(list, Self::TIMEOUT)?;
        let mut waiting = Vec::new();
        for e in committed.elements() {
            let (low, high) = kafka.fetch_watermarks(e.topic(), e.partition(), Self::TIMEOUT)?;
            if let Some(at) = waiting_from(e.offset(), low, high) {
                waiting.push((e.topic().to_owned(), e.partition(), at));
            }
        }
        let decision = self.decide(waiting, Instant::now());
        if !decision.take.is_empty() {
            let mut take = TopicPartitionList::new();
            for (topic, partition) in &decision.take {
                take.add_partition_offset(topic, *partition, Offset::Stored)?;
            }
            kafka.incremental_assign(&take)?;
            for (topic, partition) in &decision.take {
                tracing::warn!(topic = %topic, partition, group = %self.group,
                    after_ms = self.after.as_millis() as u64,
                    "taking over a partition of another replica: its messages wait \
                     and nobody consumes them (replica down?)");
                metrics::counter!("outbox_consumer_takeovers_total",
                    "group" => self.group.clone(), "topic" => topic.clone())
                .increment(1);
            }
        }
        if !decision.release.is_empty() {
            let mut release = TopicPartitionList::new();
            for (topic, partition) in &decision.release {
                release.add_partition(topic, *partition);
            }
            kafka.incremental_unassign(&release)?;
            tracing::info!(partitions = ?decision.release, group = %self.group,
                "gave back the partitions taken over: nothing waits on them");
        }
        Ok(())
    }

    /// Given the peers' partitions with messages waiting (and the group's offset on
    /// each) seen `now`: take those that stood at one offset for `after` and are not
    /// taken yet; give back the taken ones where nothing waits any more. A taken
    /// partition where messages still wait stays taken (this replica works on it).
    fn decide(&mut self, waiting: Vec<(String, i32, i64)>, now: Instant) -> Decision {
        let waits: HashSet<Partition> = waiting.iter().map(|(t, p, _)| (t.clone(), *p)).collect();
        let mut decision = Decision::default();
        let mut release: Vec<Partition> = self
            .taken
            .iter()
            .filter(|p| !waits.contains(*p))
            .cloned()
            .collect();
        release.sort();
        for p in &release {
            self.taken.remove(p);
        }
        decision.release = release;
        let mut standing = HashMap::with_capacity(waiting.len());
        for (topic, partition, offset) in waiting {
            let key = (topic, partition);
            if self.taken.contains(&key) {
                continue;
            }
            let since = match self.standing.get(&key) {
                Some((before, since)) if *before == offset => *since,
                _ => now,
            };
            if now.duration_since(since) >= self.after {
                self.taken.insert(key.clone());
                decision.take.push(key);
            } else {
                standing.insert(key, (offset, since));
            }
        }
        decision.take.sort();
        self.standing = standing;
        decision
    }
}

/// Run `takeover`'s checks beside consumption until `stop` is set: one at a time, off
/// the async threads, an [`interval`](Takeover::interval) after the last one ended.
pub(super) async fn run(
    mut takeover: Takeover,
    kafka: std::sync::Arc<StreamConsumer<LagContext>>,
    topics: Vec<String>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let every = takeover.interval();
    loop {
        tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => return,
            () = tokio::time::sleep(every) => {}
        }
        let k = kafka.clone();
        let t = topics.clone();
        let checked = tokio::task::spawn_blocking(move || {
            let result = takeover.check(&k, &t);
            (takeover, result)
        })
        .await;
        match checked {
            Ok((back, result)) => {
                takeover = back;
                if let Err(e) = result {
                    tracing::debug!(error = %e, "Kafka takeover check failed");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "Kafka takeover check panicked: no more takeovers");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn takeover(after_ms: u64) -> Takeover {
        let config = ConsumerConfig::new("b:9092", "g", &["t"])
            .with_static_assignment(0, 2)
            .with_takeover_after(Some(Duration::from_millis(after_ms)));
        Takeover::of(&config).expect("static with a peer")
    }

    fn p(n: i32) -> Partition {
        ("t".to_owned(), n)
    }

    #[test]
    fn only_a_static_replica_with_peers_takes_over() {
        let config = ConsumerConfig::new("b:9092", "g", &["t"]);
        assert!(Takeover::of(&config).is_none(), "group membership");
        assert!(Takeover::of(&config.clone().with_static_assignment(0, 1)).is_none());
        assert!(Takeover::of(&config.clone().with_static_assignment(1, 3)).is_some());
        let off = config
            .with_static_assignment(1, 3)
            .with_takeover_after(None);
        assert!(Takeover::of(&off).is_none());
        assert_eq!(takeover(500).interval(), Duration::from_millis(125));
        assert_eq!(takeover(100).interval(), Duration::from_millis(50));
    }

    #[test]
    fn a_partition_standing_with_messages_waiting_is_taken_then_given_back() {
        let mut t = takeover(500);
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let waits = |offset| vec![("t".to_owned(), 1, offset)];
        assert_eq!(
            t.decide(waits(7), at(0)),
            Decision::default(),
            "first sighting"
        );
        assert_eq!(t.decide(waits(7), at(499)), Decision::default());
        assert_eq!(
            t.decide(waits(7), at(500)),
            Decision {
                take: vec![p(1)],
                release: vec![]
            }
        );
        // Taken and still waiting (being drained): kept, not taken twice.
        assert_eq!(t.decide(waits(9), at(600)), Decision::default());
        // Drained: given back.
        assert_eq!(
            t.decide(Vec::new(), at(700)),
            Decision {
                take: vec![],
                release: vec![p(1)]
            }
        );
        // Messages wait again (the peer still down): a new clock.
        assert_eq!(t.decide(waits(12), at(800)), Decision::default());
        assert_eq!(t.decide(waits(12), at(1300)).take, vec![p(1)]);
    }

    #[test]
    fn a_live_peer_moving_its_offset_is_left_alone() {
        let mut t = takeover(500);
        let t0 = Instant::now();
        for (i, ms) in [0u64, 200, 400, 600, 800, 1000].into_iter().enumerate() {
            let waiting = vec![("t".to_owned(), 1, 100 + i as i64)];
            assert_eq!(
                t.decide(waiting, t0 + Duration::from_millis(ms)),
                Decision::default()
            );
        }
        // Nothing waiting at all: nothing to do.
        assert_eq!(
            t.decide(Vec::new(), t0 + Duration::from_secs(5)),
            Decision::default()
        );
    }

    #[test]
    fn each_partition_has_its_own_clock() {
        let mut t = takeover(500);
        let t0 = Instant::now();
        let seen = |busy| vec![("t".to_owned(), 1, busy), ("t".to_owned(), 3, 40)];
        assert_eq!(t.decide(seen(10), t0), Decision::default());
        let d = t.decide(seen(11), t0 + Duration::from_millis(500));
        assert_eq!(d.take, vec![p(3)]);
    }
}
