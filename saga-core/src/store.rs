//! Persistence of saga instances.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use outbox::memory::MemoryTx;
use outbox::Transactional;

use crate::{Error, Result, SagaId, SagaInstance};

/// Stores saga instances inside the application's unit of work (the same transaction as
/// the business rows and the outbox), with optimistic concurrency on `version`.
pub trait SagaStore: Transactional {
    /// Insert a new instance; [`Error::AlreadyExists`] if the id is taken.
    fn insert(
        &self,
        tx: &mut Self::Tx,
        saga: &SagaInstance,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Load an instance (SQL backends lock the row for the rest of `tx`).
    fn load(
        &self,
        tx: &mut Self::Tx,
        id: SagaId,
    ) -> impl Future<Output = Result<Option<SagaInstance>>> + Send;

    /// Read an instance as last committed, outside any unit of work (a status page, a
    /// test, an operator): no transaction to open, no row locked. The default opens a
    /// unit of work, [`load`](Self::load)s and rolls back; the SQL and memory stores read
    /// directly.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> saga_core::Result<()> {
    /// use saga_core::{MemorySagaStore, SagaId, SagaStore};
    ///
    /// let store = MemorySagaStore::new();
    /// assert!(SagaStore::get(&store, SagaId::new()).await?.is_none());
    /// # Ok(()) }
    /// ```
    fn get(&self, id: SagaId) -> impl Future<Output = Result<Option<SagaInstance>>> + Send {
        async move {
            let mut tx = self.begin().await?;
            self.load(&mut tx, id).await
        }
    }

    /// Store `saga`, whose `version` is one more than the stored one; otherwise (someone
    /// else updated it) [`Error::Conflict`], possibly only at commit.
    fn update(
        &self,
        tx: &mut Self::Tx,
        saga: &SagaInstance,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Ids of sagas with a deadline at or before `now_ms`, earliest first.
    fn due(&self, now_ms: i64, limit: usize) -> impl Future<Output = Result<Vec<SagaId>>> + Send;

    /// Sagas that have not ended (status `STARTED`, `RUNNING` or `COMPENSATING`), by type
    /// and status, for the orchestrator's metrics (`saga_instances`,
    /// `saga_oldest_update_age_seconds`). Default: `None` (not reported).
    fn census(&self) -> impl Future<Output = Result<Option<Vec<Census>>>> + Send {
        async { Ok(None) }
    }

    /// Record what happened to `saga_id` in the change that made it `version`, inside
    /// `tx` (the orchestrator calls it after every insert or update). Default: nothing.
    fn append_history(
        &self,
        tx: &mut Self::Tx,
        saga_id: SagaId,
        version: u64,
        entries: &[HistoryEntry],
    ) -> impl Future<Output = Result<()>> + Send {
        let _ = (tx, saga_id, version, entries);
        async { Ok(()) }
    }

    /// Everything recorded for `saga_id`, oldest first. Default: `None` (not kept).
    fn history(
        &self,
        saga_id: SagaId,
    ) -> impl Future<Output = Result<Option<Vec<HistoryEntry>>>> + Send {
        let _ = saga_id;
        async { Ok(None) }
    }

    /// Sagas matching `query`, least recently updated first (operators' listing).
    /// Default: `None` (not supported).
    fn find(
        &self,
        query: &SagaQuery,
    ) -> impl Future<Output = Result<Option<Vec<SagaInstance>>>> + Send {
        let _ = query;
        async { Ok(None) }
    }
}

/// One thing that happened to a saga ([`SagaStore::history`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HistoryEntry {
    /// The saga's version after the change this entry belongs to.
    pub version: u64,
    /// When, unix milliseconds.
    pub at_ms: i64,
    /// `event` (applied), `transition` (status change), `command` (dispatched) or
    /// `ignored` (an event that did not apply, e.g. a duplicate reply).
    pub kind: String,
    /// The event's, command's or new state's name.
    pub name: String,
    /// More: the step, the reason, the previous state.
    pub detail: String,
    /// The trace the change happened in (hex; empty when unknown).
    pub trace_id: String,
}

/// Which sagas [`SagaStore::find`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SagaQuery {
    /// Only in this status.
    pub status: Option<crate::SagaStatus>,
    /// Only those not updated since (unix milliseconds).
    pub updated_before_ms: Option<i64>,
    /// Only those with a step deadline at or before this (unix milliseconds): overdue.
    pub deadline_before_ms: Option<i64>,
    /// At most this many (0: 100).
    pub limit: usize,
}

impl SagaQuery {
    /// The limit in force (default 100, at most 1,000).
    pub fn effective_limit(&self) -> usize {
        match self.limit {
            0 => 100,
            n => n.min(1000),
        }
    }

    /// Whether `saga` matches.
    pub fn matches(&self, saga: &SagaInstance) -> bool {
        self.status.is_none_or(|s| saga.state.status == s)
            && self.updated_before_ms.is_none_or(|t| saga.updated_at <= t)
            && self
                .deadline_before_ms
                .is_none_or(|t| saga.next_deadline().is_some_and(|d| d <= t))
    }
}

/// How many sagas of one type are in one unfinished status ([`SagaStore::census`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Census {
    /// The saga type.
    pub saga_type: String,
    /// `STARTED`, `RUNNING` or `COMPENSATING`.
    pub status: crate::SagaStatus,
    /// How many.
    pub count: u64,
    /// The oldest last update among them, unix milliseconds: how long the stalest one
    /// has not moved.
    pub oldest_update_ms: i64,
}

/// The statuses [`SagaStore::census`] counts.
pub const UNFINISHED: [crate::SagaStatus; 3] = [
    crate::SagaStatus::Started,
    crate::SagaStatus::Running,
    crate::SagaStatus::Compensating,
];

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// In-memory [`SagaStore`] sharing [`MemoryTx`] with the memory outbox and inbox, so a
/// saga update and its outgoing commands commit together.
#[derive(Debug, Clone, Default)]
pub struct MemorySagaStore {
    sagas: Arc<Mutex<HashMap<SagaId, SagaInstance>>>,
    history: Arc<Mutex<HashMap<SagaId, Vec<HistoryEntry>>>>,
}

impl MemorySagaStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The committed state of a saga.
    pub fn get(&self, id: SagaId) -> Option<SagaInstance> {
        lock(&self.sagas).get(&id).cloned()
    }

    /// Number of sagas.
    pub fn len(&self) -> usize {
        lock(&self.sagas).len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Transactional for MemorySagaStore {
    type Tx = MemoryTx;

    async fn begin(&self) -> outbox::Result<MemoryTx> {
        Ok(MemoryTx::new())
    }

    async fn commit(&self, tx: MemoryTx) -> outbox::Result<()> {
        tx.commit()
    }
}

impl SagaStore for MemorySagaStore {
    async fn insert(&self, tx: &mut MemoryTx, saga: &SagaInstance) -> Result<()> {
        if lock(&self.sagas).contains_key(&saga.id) {
            return Err(Error::AlreadyExists(saga.id));
        }
        let id = saga.id;
        let sagas = self.sagas.clone();
        tx.check(move || {
            if lock(&sagas).contains_key(&id) {
                Err(format!("saga {id} already exists"))
            } else {
                Ok(())
            }
        });
        let sagas = self.sagas.clone();
        let saga = saga.clone();
        tx.on_commit(move || {
            lock(&sagas).insert(saga.id, saga);
        });
        Ok(())
    }

    async fn get(&self, id: SagaId) -> Result<Option<SagaInstance>> {
        Ok(MemorySagaStore::get(self, id))
    }

    async fn load(&self, _tx: &mut MemoryTx, id: SagaId) -> Result<Option<SagaInstance>> {
        Ok(lock(&self.sagas).get(&id).cloned())
    }

    async fn update(&self, tx: &mut MemoryTx, saga: &SagaInstance) -> Result<()> {
        let expected = saga
            .version
            .checked_sub(1)
            .ok_or(Error::Conflict(saga.id))?;
        let current = lock(&self.sagas).get(&saga.id).map(|s| s.version);
        match current {
            None => return Err(Error::NotFound(saga.id)),
            Some(v) if v != expected => return Err(Error::Conflict(saga.id)),
            Some(_) => {}
        }
        let id = saga.id;
        let sagas = self.sagas.clone();
        tx.check(move || match lock(&sagas).get(&id) {
            Some(s) if s.version == expected => Ok(()),
            _ => Err(format!("saga {id} was modified concurrently")),
        });
        let sagas = self.sagas.clone();
        let saga = saga.clone();
        tx.on_commit(move || {
            lock(&sagas).insert(saga.id, saga);
        });
        Ok(())
    }

    async fn due(&self, now_ms: i64, limit: usize) -> Result<Vec<SagaId>> {
        let sagas = lock(&self.sagas);
        let mut due: Vec<(i64, SagaId)> = sagas
            .values()
            .filter_map(|s| {
                s.next_deadline()
                    .filter(|d| *d <= now_ms)
                    .map(|d| (d, s.id))
            })
            .collect();
        due.sort();
        Ok(due.into_iter().take(limit).map(|(_, id)| id).collect())
    }

    async fn append_history(
        &self,
        tx: &mut MemoryTx,
        saga_id: SagaId,
        _version: u64,
        entries: &[HistoryEntry],
    ) -> Result<()> {
        let history = self.history.clone();
        let entries = entries.to_vec();
        tx.on_commit(move || {
            lock(&history).entry(saga_id).or_default().extend(entries);
        });
        Ok(())
    }

    async fn history(&self, saga_id: SagaId) -> Result<Option<Vec<HistoryEntry>>> {
        Ok(Some(
            lock(&self.history)
                .get(&saga_id)
                .cloned()
                .unwrap_or_default(),
        ))
    }

    async fn find(&self, query: &SagaQuery) -> Result<Option<Vec<SagaInstance>>> {
        let mut found: Vec<SagaInstance> = lock(&self.sagas)
            .values()
            .filter(|s| query.matches(s))
            .cloned()
            .collect();
        found.sort_by_key(|s| s.updated_at);
        found.truncate(query.effective_limit());
        Ok(Some(found))
    }

    async fn census(&self) -> Result<Option<Vec<Census>>> {
        let mut by: HashMap<(String, crate::SagaStatus), (u64, i64)> = HashMap::new();
        for s in lock(&self.sagas).values() {
            if UNFINISHED.contains(&s.state.status) {
                let e = by
                    .entry((s.saga_type.clone(), s.state.status))
                    .or_insert((0, i64::MAX));
                e.0 += 1;
                e.1 = e.1.min(s.updated_at);
            }
        }
        Ok(Some(
            by.into_iter()
                .map(|((saga_type, status), (count, oldest_update_ms))| Census {
                    saga_type,
                    status,
                    count,
                    oldest_update_ms,
                })
                .collect(),
        ))
    }
}
