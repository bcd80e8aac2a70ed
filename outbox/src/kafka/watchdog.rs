//! The idle consumer's self-check: a member holding no partitions while messages wait
//! unconsumed rejoins the group.

use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::{Offset, TopicPartitionList};

use super::consumer::LagContext;

/// A partition with messages nobody consumed: topic, partition, the group's offset.
pub(super) type Unconsumed = (String, i32, i64);

/// The idle consumer's self-check (see [`ConsumerConfig::watchdog_interval`]).
pub(super) struct Watchdog {
    /// Partitions with unconsumed messages, and the group's offset on each, seen when
    /// this member was first found holding no partitions (and when).
    unconsumed_since: Option<(std::time::Instant, Vec<Unconsumed>)>,
    /// How long a member may hold nothing while nobody consumes before it rejoins:
    /// well beyond any join or rebalance (three session timeouts), so a slow join is
    /// never cut short.
    rejoin_after: Duration,
}

impl Watchdog {
    const TIMEOUT: Duration = Duration::from_secs(2);

    pub(super) fn new(session_timeout: Duration) -> Self {
        Self {
            unconsumed_since: None,
            rejoin_after: session_timeout.saturating_mul(3),
        }
    }

    /// Blocking (librdkafka metadata and offset requests): run off the async threads.
    pub(super) fn check(
        &mut self,
        kafka: &StreamConsumer<LagContext>,
        topics: &[String],
    ) -> KafkaResult<()> {
        let assignment = kafka.assignment()?;
        if assignment.count() > 0 {
            self.unconsumed_since = None;
            return self.seek_back_from_beyond_the_end(kafka, &assignment);
        }
        // No partitions: fine if another member consumes them, not if nobody does.
        let mut all = TopicPartitionList::new();
        for topic in topics {
            let md = kafka.fetch_metadata(Some(topic), Self::TIMEOUT)?;
            for t in md.topics() {
                for p in t.partitions() {
                    all.add_partition(t.name(), p.id());
                }
            }
        }
        let committed = kafka.committed_offsets(all, Self::TIMEOUT)?;
        let mut unconsumed = Vec::new();
        for e in committed.elements() {
            let (low, high) = kafka.fetch_watermarks(e.topic(), e.partition(), Self::TIMEOUT)?;
            let at = match e.offset() {
                Offset::Offset(o) => o,
                _ => low,
            };
            if at < high {
                unconsumed.push((e.topic().to_owned(), e.partition(), at));
            }
        }
        match &self.unconsumed_since {
            _ if unconsumed.is_empty() => self.unconsumed_since = None,
            // Somebody consumed meanwhile, or this is the first sighting: (re)start the clock.
            Some((_, before)) if *before != unconsumed => {
                self.unconsumed_since = Some((std::time::Instant::now(), unconsumed));
            }
            None => self.unconsumed_since = Some((std::time::Instant::now(), unconsumed)),
            Some((since, _)) if since.elapsed() >= self.rejoin_after => {
                tracing::warn!(
                    partitions = unconsumed.len(),
                    "консьюмер не держит ни одной партиции, а сообщения никто не читает: \
                     переподключение к группе"
                );
                kafka.unsubscribe();
                let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
                kafka.subscribe(&topics)?;
                self.unconsumed_since = None;
            }
            Some(_) => {}
        }
        Ok(())
    }

    /// A partition whose position (or, before the first message, committed offset) lies
    /// beyond the end of its log is moved to the start of the log.
    fn seek_back_from_beyond_the_end(
        &self,
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
            if at > high {
                tracing::warn!(
                    topic,
                    partition,
                    offset = at,
                    log_end = high,
                    "позиция консьюмера за концом журнала (топик создан заново?): \
                     чтение с начала журнала"
                );
                kafka.seek(topic, partition, Offset::Offset(low), Self::TIMEOUT)?;
            }
        }
        Ok(())
    }
}
