//! One relay's bookkeeping of the stream it holds: the cursor, the messages in flight,
//! the holes, the read-ahead — no I/O.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use sqlx::mysql::MySqlRow;
use tokio::task::JoinHandle;

use crate::MessageId;

/// One relay's view of the stream while it holds the lease.
#[derive(Debug)]
pub(super) struct Stream {
    /// Every `seq` ≤ `cursor` was read or is a hole.
    pub(super) cursor: u64,
    /// What `outbox_relay_position` holds.
    pub(super) persisted: u64,
    /// Read and handed to the relay, not yet acknowledged.
    pub(super) inflight: BTreeMap<u64, MessageId>,
    pub(super) seqs: HashMap<MessageId, u64>,
    /// Skipped `seq` ranges `start → (end, first seen)`, both ends included.
    pub(super) holes: BTreeMap<u64, (u64, Instant)>,
    /// Our lease is good until (local clock, taken before asking).
    pub(super) lease_until: Instant,
    pub(super) renewed_at: Instant,
    /// After a failed publish: nothing is read before this.
    pub(super) not_before: Option<Instant>,
    /// The next batch, read while the relay publishes this one.
    pub(super) prefetch: Option<Prefetch>,
}

#[derive(Debug)]
pub(super) struct Prefetch {
    pub(super) after: u64,
    pub(super) limit: usize,
    pub(super) rows: JoinHandle<std::result::Result<Vec<MySqlRow>, sqlx::Error>>,
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        self.rows.abort();
    }
}

impl Stream {
    pub(super) fn new(position: u64, asked: Instant, lease: Duration) -> Self {
        Self {
            cursor: position,
            persisted: position,
            inflight: BTreeMap::new(),
            seqs: HashMap::new(),
            holes: BTreeMap::new(),
            lease_until: asked + lease,
            renewed_at: asked,
            not_before: None,
            prefetch: None,
        }
    }

    /// The highest `seq` below which everything is delivered or known empty.
    pub(super) fn safe_position(&self) -> u64 {
        let mut next = self.cursor + 1;
        if let Some((&s, _)) = self.inflight.first_key_value() {
            next = next.min(s);
        }
        if let Some((&s, _)) = self.holes.first_key_value() {
            next = next.min(s);
        }
        next - 1
    }

    /// Take a row at `seq` into account: fill its hole or record the ones it skips.
    pub(super) fn saw(&mut self, seq: u64, now: Instant) {
        if seq > self.cursor {
            if seq > self.cursor + 1 {
                self.holes.insert(self.cursor + 1, (seq - 1, now));
            }
            self.cursor = seq;
            return;
        }
        // Inside a hole: split it around `seq`.
        let Some((&start, &(end, seen))) = self.holes.range(..=seq).next_back() else {
            return;
        };
        if seq > end {
            return;
        }
        self.holes.remove(&start);
        if start < seq {
            self.holes.insert(start, (seq - 1, seen));
        }
        if seq < end {
            self.holes.insert(seq + 1, (end, seen));
        }
    }

    /// Forget everything from `seq` on: it is read again (after a failure or release).
    pub(super) fn rewind(&mut self, seq: u64) {
        let back = seq.saturating_sub(1).max(self.persisted);
        if back >= self.cursor {
            return;
        }
        self.cursor = back;
        for (_, id) in self.inflight.split_off(&(back + 1)) {
            self.seqs.remove(&id);
        }
        self.holes.retain(|&start, _| start <= back);
        for (_, (end, _)) in self.holes.iter_mut() {
            *end = (*end).min(back);
        }
        self.prefetch = None;
    }
}
