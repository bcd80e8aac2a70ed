//! The consumer's self-check: a partition of its own beyond the end of the log is read
//! from the start; a partition nobody consumes while messages wait makes it rejoin the
//! group.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::Message;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use super::consumer::LagContext;

/// A partition with messages nobody consumed: topic, partition, the group's offset.
pub(super) type Unconsumed = (String, i32, i64);

/// The consumer's self-check (see [`ConsumerConfig::watchdog_interval`]).
pub(super) struct Watchdog {
    /// Per partition of another member (or of none) with unconsumed messages: the
    /// group's offset on it, and since when it has stood there.
    standing: std::collections::HashMap<(String, i32), (i64, std::time::Instant)>,
    /// How long a partition may wait with nobody consuming it before this member
    /// rejoins: beyond a dead member's expiry and the join after it (two session
    /// timeouts; Tansu takes ≈ 11 s for the two with the default 10 s), so a slow
    /// join is never cut short.
    rejoin_after: Duration,
    /// The consumer's connection settings under a group of its own, for the probe.
    probe_config: ClientConfig,
    /// A consumer outside the group that reads single offsets (created on first use).
    probe: Option<BaseConsumer>,
}

impl Watchdog {
    const TIMEOUT: Duration = Duration::from_secs(2);

    /// `consumer` is the group member's configuration; the probe reads with the same
    /// connection settings outside the group.
    pub(super) fn new(session_timeout: Duration, consumer: &ClientConfig) -> Self {
        let mut probe_config = consumer.clone();
        // librdkafka assigns partitions only in a consumer with a group id; the probe
        // never subscribes (joins no group) and never commits, so its own id is inert.
        let group = consumer.get("group.id").unwrap_or("ordersys");
        probe_config.set("group.id", format!("{group}.watchdog-probe"));
        for group_only in [
            "group.instance.id",
            "statistics.interval.ms",
            "auto.commit.interval.ms",
        ] {
            probe_config.remove(group_only);
        }
        probe_config
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "error");
        Self {
            standing: std::collections::HashMap::new(),
            rejoin_after: session_timeout.saturating_mul(2),
            probe_config,
            probe: None,
        }
    }

    /// Blocking (librdkafka metadata and offset requests): run off the async threads.
    ///
    /// Two faults, both seen with Tansu under crashes and network partitions of group
    /// members: a partition of this member positioned beyond the end of its log (moved to
    /// the start), and a partition **nobody consumes** — not this member's, messages
    /// waiting, and the group's committed offset on it unmoved for `rejoin_after` — which
    /// a group left with an assignment that lost a partition shows (one partition of
    /// three held by no member, until the next rebalance): this member leaves and rejoins
    /// the group, and the rebalance hands every partition out again.
    /// Without a group (`grouped` false: partitions assigned statically) only the
    /// first: nobody else could take a partition over anyway.
    pub(super) fn check(
        &mut self,
        kafka: &StreamConsumer<LagContext>,
        topics: &[String],
        grouped: bool,
    ) -> KafkaResult<()> {
        let assignment = kafka.assignment()?;
        if assignment.count() > 0 {
            self.seek_back_from_beyond_the_end(kafka, &assignment)?;
        }
        if !grouped {
            return Ok(());
        }
        let held: Vec<(String, i32)> = assignment
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition()))
            .collect();
        let mut all = Vec::new();
        for topic in topics {
            let md = kafka.fetch_metadata(Some(topic), Self::TIMEOUT)?;
            for t in md.topics() {
                all.extend(t.partitions().iter().map(|p| (t.name().to_owned(), p.id())));
            }
        }
        let mut others = TopicPartitionList::new();
        for (topic, partition) in not_held(&held, all) {
            others.add_partition(&topic, partition);
        }
        let mut unconsumed = Vec::new();
        if others.count() > 0 {
            let committed = kafka.committed_offsets(others, Self::TIMEOUT)?;
            for e in committed.elements() {
                let (low, high) =
                    kafka.fetch_watermarks(e.topic(), e.partition(), Self::TIMEOUT)?;
                if let Some(at) = waiting_from(e.offset(), low, high) {
                    unconsumed.push((e.topic().to_owned(), e.partition(), at));
                }
            }
        }
        if self.nobody_consumes(unconsumed.clone(), std::time::Instant::now()) {
            tracing::warn!(
                partitions = ?unconsumed,
                held = assignment.count(),
                "partitions with unread messages have no consumer: \
                 rejoining the group"
            );
            kafka.unsubscribe();
            let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
            kafka.subscribe(&topics)?;
        }
        Ok(())
    }

    /// Given the other members' partitions with waiting messages (and the group's offset
    /// on each) seen `now`: whether one of them has stood at the same offset for
    /// `rejoin_after` — then every clock starts over. Each partition has its own clock:
    /// partitions that other members consume (their offsets move) restart only theirs.
    fn nobody_consumes(&mut self, unconsumed: Vec<Unconsumed>, now: std::time::Instant) -> bool {
        let mut standing = std::collections::HashMap::with_capacity(unconsumed.len());
        for (topic, partition, offset) in unconsumed {
            let since = match self.standing.get(&(topic.clone(), partition)) {
                Some((before, since)) if *before == offset => *since,
                _ => now,
            };
            standing.insert((topic, partition), (offset, since));
        }
        let stuck = standing
            .values()
            .any(|(_, since)| now.duration_since(*since) >= self.rejoin_after);
        self.standing = if stuck {
            std::collections::HashMap::new()
        } else {
            standing
        };
        stuck
    }

    /// A partition whose position (or, before the first message, committed offset) lies
    /// beyond the end of its log is moved to the start of the log.
    ///
    /// The broker's log end is only a hint: Tansu's `ListOffsets` (latest) answers the
    /// base offset of the last record batch plus one, so a consumer that read a batch of
    /// several records to its end sits "beyond" it. Only when the record just before the
    /// position cannot be read either is the position really beyond the end.
    fn seek_back_from_beyond_the_end(
        &mut self,
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
            if at > high && !self.log_holds(topic, partition, at - 1)? {
                tracing::warn!(
                    topic,
                    partition,
                    offset = at,
                    log_end = high,
                    "consumer position beyond the end of the log (topic re-created?): \
                     reading from the start of the log"
                );
                kafka.seek(topic, partition, Offset::Offset(low), Self::TIMEOUT)?;
            }
        }
        Ok(())
    }

    /// Whether the record at `offset` can be read (a fetch of that one offset outside the
    /// group).
    /// No record within the timeout — a broker that answers a fetch beyond the end with
    /// nothing — or `OFFSET_OUT_OF_RANGE` means it cannot.
    fn log_holds(&mut self, topic: &str, partition: i32, offset: i64) -> KafkaResult<bool> {
        let probe = match self.probe.take() {
            Some(probe) => probe,
            None => self.probe_config.create()?,
        };
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, Offset::Offset(offset))?;
        probe.assign(&tpl)?;
        let deadline = std::time::Instant::now() + Self::TIMEOUT;
        let held = loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break Ok(false);
            }
            match probe.poll(left) {
                None => break Ok(false),
                Some(Ok(m)) if m.topic() == topic && m.partition() == partition => {
                    break Ok(m.offset() >= offset);
                }
                Some(Ok(_)) => {}
                Some(Err(KafkaError::MessageConsumption(RDKafkaErrorCode::OffsetOutOfRange))) => {
                    break Ok(false)
                }
                Some(Err(e)) => break Err(e),
            }
        };
        probe.unassign()?;
        self.probe = Some(probe);
        held
    }
}

/// The partitions of `all` that are not among `held`.
fn not_held(held: &[(String, i32)], all: Vec<(String, i32)>) -> Vec<(String, i32)> {
    all.into_iter().filter(|p| !held.contains(p)).collect()
}

/// Where the group stands on a partition with messages waiting: its committed offset (the
/// log's start `low` when it has none) if that lies below the log end `high`. The log end
/// may be under-reported, never over-reported: below it always means messages wait.
pub(super) fn waiting_from(committed: Offset, low: i64, high: i64) -> Option<i64> {
    let at = match committed {
        Offset::Offset(o) => o,
        _ => low,
    };
    (at < high).then_some(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watchdog() -> Watchdog {
        let mut consumer = ClientConfig::new();
        consumer.set("group.id", "g");
        Watchdog::new(Duration::from_secs(10), &consumer)
    }

    #[test]
    fn the_partitions_to_watch_are_those_this_member_does_not_hold() {
        let p = |t: &str, n: i32| (t.to_owned(), n);
        let held = [p("saga.commands", 0), p("saga.commands", 2)];
        let all = vec![
            p("saga.commands", 0),
            p("saga.commands", 1),
            p("saga.commands", 2),
            p("saga.replies", 0),
        ];
        assert_eq!(
            not_held(&held, all.clone()),
            [p("saga.commands", 1), p("saga.replies", 0)]
        );
        assert_eq!(not_held(&[], all.clone()), all);
    }

    #[test]
    fn messages_wait_below_the_log_end_from_the_committed_offset_or_the_logs_start() {
        assert_eq!(waiting_from(Offset::Offset(89), 0, 220), Some(89));
        assert_eq!(
            waiting_from(Offset::Offset(220), 0, 220),
            None,
            "at the end"
        );
        assert_eq!(waiting_from(Offset::Offset(221), 0, 220), None);
        // No committed offset: the group would start at the log's start.
        assert_eq!(waiting_from(Offset::Invalid, 40, 220), Some(40));
        assert_eq!(
            waiting_from(Offset::Invalid, 220, 220),
            None,
            "an empty log"
        );
    }

    #[test]
    fn a_partition_that_stands_still_for_two_session_timeouts_means_rejoin() {
        let mut w = watchdog();
        let t0 = std::time::Instant::now();
        let at = |secs| t0 + Duration::from_secs(secs);
        let stuck = vec![("saga.commands".to_owned(), 2, 89)];
        assert!(!w.nobody_consumes(stuck.clone(), at(0)), "first sighting");
        assert!(!w.nobody_consumes(stuck.clone(), at(19)));
        assert!(w.nobody_consumes(stuck.clone(), at(20)));
        // The clock starts over after a rejoin.
        assert!(!w.nobody_consumes(stuck.clone(), at(21)));
        assert!(!w.nobody_consumes(stuck.clone(), at(40)));
        assert!(w.nobody_consumes(stuck, at(41)));
    }

    #[test]
    fn a_partition_whose_offset_moves_or_that_empties_is_left_alone() {
        let mut w = watchdog();
        let t0 = std::time::Instant::now();
        let at = |secs| t0 + Duration::from_secs(secs);
        let offset = |offset| vec![("saga.commands".to_owned(), 2, offset)];
        assert!(!w.nobody_consumes(offset(89), at(0)));
        // A slow member: its offset moves, the clock starts over.
        assert!(!w.nobody_consumes(offset(90), at(15)));
        assert!(!w.nobody_consumes(offset(90), at(34)));
        assert!(w.nobody_consumes(offset(90), at(35)));
        // Caught up in between: nothing waits, the clock stops.
        assert!(!w.nobody_consumes(offset(95), at(36)));
        assert!(!w.nobody_consumes(Vec::new(), at(50)));
        assert!(!w.nobody_consumes(offset(95), at(60)));
        assert!(w.nobody_consumes(offset(95), at(80)));
    }

    #[test]
    fn each_partition_has_its_own_clock() {
        let mut w = watchdog();
        let t0 = std::time::Instant::now();
        let seen = |busy_offset| {
            vec![
                ("saga.commands".to_owned(), 0, busy_offset),
                ("saga.commands".to_owned(), 2, 89),
            ]
        };
        // Partition 0 is consumed by a busy member (its offset moves at every check);
        // partition 2 by nobody.
        for (i, secs) in [0, 10, 15].into_iter().enumerate() {
            assert!(!w.nobody_consumes(seen(100 + i as i64), t0 + Duration::from_secs(secs)));
        }
        assert!(w.nobody_consumes(seen(103), t0 + Duration::from_secs(20)));
    }
}
