//! In-memory backends: for unit tests, examples and embedded single-process use.
//!
//! Writes made through a [`MemoryTx`] become visible only at commit, all together;
//! commits of all memory stores are serialised, so a unit of work that touches the
//! outbox, the inbox and (in `saga-core`) the saga store is atomic and isolated.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::store::claimable;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use crate::store::{DeadLetter, Inbox, OutboxStore, Publisher, Transactional};
use crate::{Delivery, Error, MessageId, OutboxMessage, Result};

/// Serialises the validation + apply phase of every memory commit in the process.
static COMMIT_LOCK: Mutex<()> = Mutex::new(());

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

type Check = Box<dyn Fn() -> std::result::Result<(), String> + Send>;
type Apply = Box<dyn FnOnce() + Send>;

/// A unit of work over memory stores: staged checks and writes applied at commit.
///
/// Dropping it without [`commit`](Self::commit) discards every staged write (rollback).
#[derive(Default)]
pub struct MemoryTx {
    checks: Vec<Check>,
    applies: Vec<Apply>,
    /// Inbox records staged in this unit of work (inbox, consumer, message): a second
    /// record of one of them in the same unit is refused, as a database would.
    recorded: std::collections::HashSet<(usize, String, MessageId)>,
}

impl fmt::Debug for MemoryTx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryTx")
            .field("checks", &self.checks.len())
            .field("writes", &self.applies.len())
            .finish()
    }
}

impl MemoryTx {
    /// An empty unit of work.
    pub fn new() -> Self {
        Self::default()
    }

    /// A condition that must still hold at commit time (e.g. an expected version);
    /// if any check fails, nothing is applied and commit returns [`Error::Conflict`].
    pub fn check(&mut self, f: impl Fn() -> std::result::Result<(), String> + Send + 'static) {
        self.checks.push(Box::new(f));
    }

    /// A write applied at commit, after every check passed.
    pub fn on_commit(&mut self, f: impl FnOnce() + Send + 'static) {
        self.applies.push(Box::new(f));
    }

    /// Whether nothing is staged.
    pub fn is_empty(&self) -> bool {
        self.checks.is_empty() && self.applies.is_empty()
    }

    /// Validate every check and apply every write, atomically with respect to other
    /// memory commits.
    pub fn commit(self) -> Result<()> {
        let _guard = lock(&COMMIT_LOCK);
        for check in &self.checks {
            check().map_err(Error::Conflict)?;
        }
        for apply in self.applies {
            apply();
        }
        Ok(())
    }
}

#[derive(Debug)]
struct Row {
    msg: OutboxMessage,
    sent_at: Option<Instant>,
    /// `(owner, until)`; no owner = a failed message held back until its retry time.
    lease: Option<(Option<String>, Instant)>,
    last_error: Option<String>,
}

#[derive(Debug, Default)]
struct OutboxState {
    rows: BTreeMap<u64, Row>,
    index: HashMap<MessageId, u64>,
    next_seq: u64,
}

impl OutboxState {
    fn row_mut(&mut self, id: &MessageId) -> Option<&mut Row> {
        let seq = self.index.get(id)?;
        self.rows.get_mut(seq)
    }
}

/// In-memory [`OutboxStore`]. Cheap to clone; clones share the same outbox.
#[derive(Debug, Clone, Default)]
pub struct MemoryOutbox {
    state: Arc<Mutex<OutboxState>>,
    notify: Arc<Notify>,
}

impl MemoryOutbox {
    /// An empty outbox.
    pub fn new() -> Self {
        Self::default()
    }

    /// Messages not yet marked sent.
    pub fn pending(&self) -> usize {
        lock(&self.state)
            .rows
            .values()
            .filter(|r| r.sent_at.is_none())
            .count()
    }

    /// Messages marked sent and not yet purged.
    pub fn sent(&self) -> usize {
        lock(&self.state)
            .rows
            .values()
            .filter(|r| r.sent_at.is_some())
            .count()
    }

    /// A message as stored now (with its attempt count), if present.
    pub fn get(&self, id: MessageId) -> Option<(OutboxMessage, Option<String>)> {
        let mut st = lock(&self.state);
        st.row_mut(&id)
            .map(|r| (r.msg.clone(), r.last_error.clone()))
    }
}

impl Transactional for MemoryOutbox {
    type Tx = MemoryTx;

    async fn begin(&self) -> Result<MemoryTx> {
        Ok(MemoryTx::new())
    }

    async fn commit(&self, tx: MemoryTx) -> Result<()> {
        tx.commit()
    }
}

impl OutboxStore for MemoryOutbox {
    async fn enqueue(&self, tx: &mut MemoryTx, msg: OutboxMessage) -> Result<()> {
        let id = msg.id;
        let state = self.state.clone();
        tx.check(move || {
            if lock(&state).index.contains_key(&id) {
                Err(format!("outbox message {id} already exists"))
            } else {
                Ok(())
            }
        });
        let state = self.state.clone();
        let notify = self.notify.clone();
        tx.on_commit(move || {
            let mut st = lock(&state);
            st.next_seq += 1;
            let seq = st.next_seq;
            st.index.insert(msg.id, seq);
            st.rows.insert(
                seq,
                Row {
                    msg,
                    sent_at: None,
                    lease: None,
                    last_error: None,
                },
            );
            drop(st);
            notify.notify_one();
        });
        Ok(())
    }

    async fn claim(
        &self,
        relay_id: &str,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<OutboxMessage>> {
        let now = Instant::now();
        let mut st = lock(&self.state);
        let unsent: Vec<(u64, String, bool)> = st
            .rows
            .iter()
            .filter(|(_, r)| r.sent_at.is_none())
            .map(|(seq, r)| {
                let leased = matches!(&r.lease, Some((owner, until))
                        if *until > now && owner.as_deref() != Some(relay_id));
                (*seq, r.msg.key.clone(), leased)
            })
            .collect();
        let chosen = claimable(unsent.iter().map(|(_, k, l)| (k.as_str(), *l)), limit);
        let mut out = Vec::with_capacity(chosen.len());
        for i in chosen {
            let row = st.rows.get_mut(&unsent[i].0).expect("row listed above");
            row.lease = Some((Some(relay_id.to_owned()), now + lease));
            out.push(row.msg.clone());
        }
        Ok(out)
    }

    async fn mark_sent(&self, ids: &[MessageId]) -> Result<()> {
        let now = Instant::now();
        let mut st = lock(&self.state);
        for id in ids {
            if let Some(row) = st.row_mut(id) {
                row.sent_at = Some(now);
                row.lease = None;
            }
        }
        Ok(())
    }

    async fn record_failure(
        &self,
        id: MessageId,
        error: &str,
        retry_after: Duration,
    ) -> Result<()> {
        let mut st = lock(&self.state);
        if let Some(row) = st.row_mut(&id) {
            row.msg.attempts += 1;
            row.last_error = Some(error.to_owned());
            // Held back, by nobody, until the retry time.
            row.lease = Some((None, Instant::now() + retry_after));
        }
        Ok(())
    }

    async fn release(&self, ids: &[MessageId]) -> Result<()> {
        let mut st = lock(&self.state);
        for id in ids {
            if let Some(row) = st.row_mut(id) {
                row.lease = None;
            }
        }
        Ok(())
    }

    async fn purge_sent(&self, retention: Duration) -> Result<u64> {
        let now = Instant::now();
        let mut st = lock(&self.state);
        let doomed: Vec<(u64, MessageId)> = st
            .rows
            .iter()
            .filter(|(_, r)| {
                r.sent_at
                    .is_some_and(|at| now.duration_since(at) >= retention)
            })
            .map(|(seq, r)| (*seq, r.msg.id))
            .collect();
        for (seq, id) in &doomed {
            st.rows.remove(seq);
            st.index.remove(id);
        }
        Ok(doomed.len() as u64)
    }

    async fn backlog(&self) -> Result<Option<crate::Backlog>> {
        let st = lock(&self.state);
        let mut unsent = st.rows.values().filter(|r| r.sent_at.is_none());
        let oldest = unsent.next().map(|r| r.msg.created_at);
        Ok(Some(crate::Backlog {
            messages: u64::from(oldest.is_some()) + unsent.count() as u64,
            oldest,
        }))
    }

    fn commit_signal(&self) -> Option<Arc<Notify>> {
        Some(self.notify.clone())
    }
}

/// In-memory [`Inbox`]. Cheap to clone; clones share state.
#[derive(Debug, Clone, Default)]
pub struct MemoryInbox {
    seen: Arc<Mutex<HashMap<(String, MessageId), Instant>>>,
}

impl MemoryInbox {
    /// An empty inbox.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `consumer` has recorded `id`.
    pub fn contains(&self, consumer: &str, id: MessageId) -> bool {
        lock(&self.seen).contains_key(&(consumer.to_owned(), id))
    }
}

impl Transactional for MemoryInbox {
    type Tx = MemoryTx;

    async fn begin(&self) -> Result<MemoryTx> {
        Ok(MemoryTx::new())
    }

    async fn commit(&self, tx: MemoryTx) -> Result<()> {
        tx.commit()
    }
}

impl Inbox for MemoryInbox {
    async fn try_record(&self, tx: &mut MemoryTx, consumer: &str, id: MessageId) -> Result<bool> {
        let key = (consumer.to_owned(), id);
        if lock(&self.seen).contains_key(&key) {
            return Ok(false);
        }
        let staged = (Arc::as_ptr(&self.seen) as usize, key.0.clone(), id);
        if !tx.recorded.insert(staged) {
            return Ok(false); // recorded earlier in this unit of work
        }
        let seen = self.seen.clone();
        let k = key.clone();
        tx.check(move || {
            if lock(&seen).contains_key(&k) {
                Err(format!("message {} already processed by {}", k.1, k.0))
            } else {
                Ok(())
            }
        });
        let seen = self.seen.clone();
        tx.on_commit(move || {
            lock(&seen).insert(key, Instant::now());
        });
        Ok(true)
    }

    async fn purge(&self, retention: Duration) -> Result<u64> {
        let now = Instant::now();
        let mut seen = lock(&self.seen);
        let before = seen.len();
        seen.retain(|_, at| now.saturating_duration_since(*at) < retention);
        Ok((before - seen.len()) as u64)
    }
}

/// An in-process broker: records every published message in order and can be told to
/// fail the next publishes (fault injection for tests).
#[derive(Debug, Clone)]
pub struct MemoryBroker {
    log: Arc<Mutex<Vec<OutboxMessage>>>,
    fail_next: Arc<Mutex<u32>>,
    poisoned: Arc<Mutex<HashSet<String>>>,
    count: Arc<watch::Sender<usize>>,
}

impl Default for MemoryBroker {
    fn default() -> Self {
        Self {
            log: Arc::default(),
            fail_next: Arc::default(),
            poisoned: Arc::default(),
            count: Arc::new(watch::channel(0).0),
        }
    }
}

impl MemoryBroker {
    /// An empty broker.
    pub fn new() -> Self {
        Self::default()
    }

    /// Make the next `n` publishes fail.
    pub fn fail_next(&self, n: u32) {
        *lock(&self.fail_next) = n;
    }

    /// Refuse every message with this key until [`heal_key`](Self::heal_key) (a message
    /// the broker keeps rejecting, e.g. one that is too large).
    pub fn fail_key(&self, key: &str) {
        lock(&self.poisoned).insert(key.to_owned());
    }

    /// Accept messages with this key again.
    pub fn heal_key(&self, key: &str) {
        lock(&self.poisoned).remove(key);
    }

    /// Everything published so far, in order.
    pub fn published(&self) -> Vec<OutboxMessage> {
        lock(&self.log).clone()
    }

    /// Published messages of one topic, in order.
    pub fn published_on(&self, topic: &str) -> Vec<OutboxMessage> {
        lock(&self.log)
            .iter()
            .filter(|m| m.topic == topic)
            .cloned()
            .collect()
    }

    /// Wait until at least `n` messages have been published in total.
    pub async fn wait_for(&self, n: usize) {
        let mut rx = self.count.subscribe();
        // The sender lives as long as `self`, so this cannot fail.
        let _ = rx.wait_for(|c| *c >= n).await;
    }
}

impl Publisher for MemoryBroker {
    async fn publish(&self, msg: &OutboxMessage) -> Result<()> {
        {
            let mut f = lock(&self.fail_next);
            if *f > 0 {
                *f -= 1;
                return Err(Error::publish(&msg.topic, "injected broker failure"));
            }
        }
        if lock(&self.poisoned).contains(&msg.key) {
            return Err(Error::publish(&msg.topic, "injected: key refused"));
        }
        let n = {
            let mut log = lock(&self.log);
            log.push(msg.clone());
            log.len()
        };
        self.count.send_replace(n);
        Ok(())
    }
}

/// In-memory [`DeadLetter`] sink that keeps what it receives.
#[derive(Debug, Clone, Default)]
pub struct MemoryDeadLetters {
    parked: Arc<Mutex<Vec<(Delivery, String)>>>,
}

impl MemoryDeadLetters {
    /// An empty sink.
    pub fn new() -> Self {
        Self::default()
    }

    /// Everything dead-lettered so far, with reasons.
    pub fn parked(&self) -> Vec<(Delivery, String)> {
        lock(&self.parked).clone()
    }
}

impl DeadLetter for MemoryDeadLetters {
    async fn dead_letter(&self, msg: &Delivery, reason: &str) -> Result<()> {
        lock(&self.parked).push((msg.clone(), reason.to_owned()));
        Ok(())
    }
}

#[cfg(test)]
mod tx_tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Writes apply at commit, in order, only when every check holds; a failing check
    /// applies none of them and reports the conflict.
    #[test]
    fn a_unit_of_work_applies_all_or_nothing() {
        let applied = Arc::new(Mutex::new(Vec::new()));
        let mut tx = MemoryTx::new();
        assert!(tx.is_empty());
        for i in 0..3 {
            let a = applied.clone();
            tx.on_commit(move || a.lock().unwrap().push(i));
        }
        assert!(!tx.is_empty(), "writes staged");
        assert!(applied.lock().unwrap().is_empty(), "nothing before commit");
        tx.commit().unwrap();
        assert_eq!(*applied.lock().unwrap(), [0, 1, 2]);

        let checked = Arc::new(AtomicU32::new(0));
        let mut tx = MemoryTx::new();
        let c = checked.clone();
        tx.check(move || {
            c.fetch_add(1, Ordering::SeqCst);
            Err("version moved".into())
        });
        assert!(!tx.is_empty(), "a check alone is something staged");
        let a = applied.clone();
        tx.on_commit(move || a.lock().unwrap().push(9));
        assert!(matches!(tx.commit(), Err(Error::Conflict(why)) if why == "version moved"));
        assert_eq!(checked.load(Ordering::SeqCst), 1);
        assert_eq!(*applied.lock().unwrap(), [0, 1, 2], "nothing applied");
    }
}
