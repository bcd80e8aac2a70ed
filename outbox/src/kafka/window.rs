//! The consumer's window of received, unfinished messages: one key at a time, offsets
//! stored only up to the first unfinished one.

use crate::Delivery;

/// Where a message sits in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Position {
    pub(super) topic: String,
    pub(super) partition: i32,
    pub(super) offset: i64,
}

/// The received, unfinished messages: which keys are busy (with the messages of that
/// key waiting their turn) and, per partition, which offsets are unfinished — an offset
/// is stored only up to the first unfinished one.
#[derive(Default)]
pub(super) struct Window {
    /// Per (topic, key): the messages of a busy key waiting behind the one in progress.
    keys: std::collections::HashMap<
        (String, String),
        std::collections::VecDeque<(Delivery, Position)>,
    >,
    /// Per (topic, partition): unfinished offsets, the highest finished one, the
    /// highest stored one.
    partitions: std::collections::HashMap<(String, i32), PartitionWindow>,
    /// Received and not finished (in progress or queued).
    len: usize,
}

#[derive(Default)]
struct PartitionWindow {
    unfinished: std::collections::BTreeSet<i64>,
    finished_max: Option<i64>,
    stored: Option<i64>,
}

impl Window {
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// A message arrived: returns it if it can start now (its key is not busy).
    pub(super) fn receive(
        &mut self,
        delivery: Delivery,
        at: Position,
    ) -> Option<(Delivery, Position)> {
        self.len += 1;
        self.partitions
            .entry((at.topic.clone(), at.partition))
            .or_default()
            .unfinished
            .insert(at.offset);
        match self.keys.entry((at.topic.clone(), delivery.key.clone())) {
            std::collections::hash_map::Entry::Occupied(mut waiting) => {
                waiting.get_mut().push_back((delivery, at));
                None
            }
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(std::collections::VecDeque::new());
                Some((delivery, at))
            }
        }
    }

    /// The message at `at` is finished: the offset to store (the last one before the
    /// first unfinished offset of its partition), if that moved forward.
    pub(super) fn finish(&mut self, at: &Position) -> Option<i64> {
        self.len = self.len.saturating_sub(1);
        let p = self.partitions.get_mut(&(at.topic.clone(), at.partition))?;
        p.unfinished.remove(&at.offset);
        p.finished_max = Some(p.finished_max.map_or(at.offset, |m| m.max(at.offset)));
        let through = match p.unfinished.first() {
            Some(first) => first - 1,
            None => p.finished_max?,
        };
        if p.stored.is_some_and(|s| s >= through) {
            return None;
        }
        p.stored = Some(through);
        Some(through)
    }

    /// The next waiting message of the key of the message finished at `at`, if any;
    /// otherwise the key is free again.
    pub(super) fn next_of_key(
        &mut self,
        at: &Position,
        key: String,
    ) -> Option<(Delivery, Position)> {
        let k = (at.topic.clone(), key);
        let waiting = self.keys.get_mut(&k)?;
        match waiting.pop_front() {
            Some(next) => Some(next),
            None => {
                self.keys.remove(&k);
                None
            }
        }
    }

    /// Forget the messages waiting behind a busy key (at shutdown): they are not
    /// settled, their offsets are not stored, and they come again.
    pub(super) fn drop_queued(&mut self) {
        for waiting in self.keys.values_mut() {
            self.len = self.len.saturating_sub(waiting.len());
            waiting.clear();
        }
    }
}

#[cfg(test)]
mod window_tests {
    use super::*;

    fn msg(key: &str) -> Delivery {
        crate::OutboxMessage::new("t", key, "x").to_delivery()
    }

    fn at(partition: i32, offset: i64) -> Position {
        Position {
            topic: "t".into(),
            partition,
            offset,
        }
    }

    #[test]
    fn one_key_waits_its_turn_and_other_keys_start_at_once() {
        let mut w = Window::default();
        assert_eq!(w.len(), 0);
        assert!(w.receive(msg("a"), at(0, 0)).is_some());
        assert_eq!(w.len(), 1, "a message in progress");
        assert!(w.receive(msg("a"), at(0, 1)).is_none(), "a is busy");
        assert!(w.receive(msg("b"), at(0, 2)).is_some());
        assert_eq!(w.len(), 3);
        let (next, next_at) = w.next_of_key(&at(0, 0), "a".into()).expect("a1 queued");
        assert_eq!((next.key.as_str(), next_at.offset), ("a", 1));
        assert!(w.next_of_key(&at(0, 1), "a".into()).is_none());
        // The key is free again.
        assert!(w.receive(msg("a"), at(0, 3)).is_some());
    }

    #[test]
    fn the_offset_stops_before_the_first_unfinished_message() {
        let mut w = Window::default();
        for o in 10..14 {
            w.receive(msg(&format!("k{o}")), at(0, o));
        }
        w.receive(msg("other"), at(1, 5));
        assert_eq!(
            w.finish(&at(0, 11)),
            Some(9),
            "10 unfinished: nothing past it"
        );
        assert_eq!(w.finish(&at(0, 12)), None, "still 10");
        assert_eq!(w.finish(&at(0, 10)), Some(12), "10..12 done, 13 not");
        assert_eq!(w.finish(&at(1, 5)), Some(5), "partitions are independent");
        assert_eq!(w.finish(&at(0, 13)), Some(13));
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn queued_messages_are_forgotten_at_shutdown_and_hold_their_offset_back() {
        let mut w = Window::default();
        w.receive(msg("a"), at(0, 0));
        w.receive(msg("a"), at(0, 1));
        w.receive(msg("b"), at(0, 2));
        w.drop_queued();
        assert_eq!(w.len(), 2);
        assert_eq!(w.finish(&at(0, 0)), Some(0));
        assert_eq!(w.finish(&at(0, 2)), None, "offset 1 was never handled");
        assert_eq!(w.len(), 0);
    }
}
