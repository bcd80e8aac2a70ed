//! The orchestrator: applies events to persisted sagas and dispatches their commands in
//! the same unit of work.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use tracing::Instrument;

use crate::{
    transition, CommandKind, Error, Result, SagaDefinition, SagaEvent, SagaId, SagaInstance,
    SagaStatus, SagaStore, StepStatus,
};

/// A command to carry out, handed to the [`CommandSink`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaCommand {
    /// The saga it belongs to.
    pub saga_id: SagaId,
    /// The saga's type name.
    pub saga_type: String,
    /// Step index.
    pub step: usize,
    /// Step name.
    pub step_name: String,
    /// Action or compensation.
    pub kind: CommandKind,
    /// Command name from the definition (`payment.debit`).
    pub name: String,
    /// Deterministic key for the participant's idempotency: resends carry the same key.
    pub idempotency_key: String,
}

impl SagaCommand {
    /// The event that reports this command done: [`SagaEvent::StepSucceeded`] for an
    /// action, [`SagaEvent::CompensationSucceeded`] for a compensation, for this step —
    /// so a reply handler never computes step indices itself (keep `step` and `kind`
    /// with the command on its way to the participant and back, e.g. in the message's
    /// headers).
    ///
    /// ```
    /// use saga_core::{CommandKind, SagaCommand, SagaEvent, SagaId};
    /// let cmd = SagaCommand {
    ///     saga_id: SagaId::new(),
    ///     saga_type: "create_order".into(),
    ///     step: 1,
    ///     step_name: "payment".into(),
    ///     kind: CommandKind::Action,
    ///     name: "payment.debit".into(),
    ///     idempotency_key: "k".into(),
    /// };
    /// assert_eq!(cmd.succeeded(), SagaEvent::StepSucceeded { step: 1 });
    /// assert_eq!(
    ///     cmd.failed("insufficient funds"),
    ///     SagaEvent::StepFailed { step: 1, reason: "insufficient funds".into() }
    /// );
    /// ```
    pub fn succeeded(&self) -> SagaEvent {
        match self.kind {
            CommandKind::Action => SagaEvent::StepSucceeded { step: self.step },
            CommandKind::Compensation => SagaEvent::CompensationSucceeded { step: self.step },
        }
    }

    /// The event that reports this command refused for `reason`:
    /// [`SagaEvent::StepFailed`] or [`SagaEvent::CompensationFailed`].
    pub fn failed(&self, reason: impl Into<String>) -> SagaEvent {
        let reason = reason.into();
        match self.kind {
            CommandKind::Action => SagaEvent::StepFailed {
                step: self.step,
                reason,
            },
            CommandKind::Compensation => SagaEvent::CompensationFailed {
                step: self.step,
                reason,
            },
        }
    }
}

/// What a [`CommandSink`] did with a command.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Dispatched {
    /// Handed on (written to the outbox); the reply comes later as an event.
    Sent,
    /// Executed locally within the unit of work, successfully.
    Succeeded,
    /// Executed locally within the unit of work, and refused for this reason.
    Failed(String),
}

/// Carries out saga commands inside the orchestrator's unit of work: writes remote
/// commands to the outbox (in the same transaction as the saga update), or runs local
/// steps (e.g. "confirm the order row") directly.
pub trait CommandSink<Tx>: Send + Sync {
    /// Carry out `cmd` for `saga`.
    fn dispatch(
        &self,
        tx: &mut Tx,
        saga: &SagaInstance,
        cmd: &SagaCommand,
    ) -> impl Future<Output = Result<Dispatched>> + Send;
}

/// What [`Orchestrator::handle`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Applied {
    /// The saga after the event (as it will be once the unit of work commits).
    pub saga: SagaInstance,
    /// Whether anything changed (false: the event was a duplicate / stale / out of order).
    pub changed: bool,
    /// Commands handed on with [`Dispatched::Sent`].
    pub sent: Vec<SagaCommand>,
    /// What the change recorded in the saga's history ([`SagaStore::history`]).
    pub history: Vec<crate::HistoryEntry>,
}

type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// Drives sagas: start them, feed them replies and deadlines, persist, dispatch.
///
/// Everything for one event — loading the saga, running the state machine (and any local
/// steps it leads to), writing outgoing commands and updating the saga — happens in one
/// unit of work, so a crash at any point leaves either the old state or the new state
/// with its commands, never one without the other.
pub struct Orchestrator<S, D> {
    store: S,
    sink: D,
    /// Per saga type, every registered version.
    definitions: HashMap<String, BTreeMap<u32, Arc<SagaDefinition>>>,
    clock: Clock,
    default_retry: Duration,
}

impl<S, D> fmt::Debug for Orchestrator<S, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Orchestrator")
            .field(
                "definitions",
                &self
                    .definitions
                    .iter()
                    .map(|(name, versions)| (name, versions.keys().collect::<Vec<_>>()))
                    .collect::<BTreeMap<_, _>>(),
            )
            .finish_non_exhaustive()
    }
}

fn system_now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// How many times [`Orchestrator::handle_and_commit`] retries after an optimistic-lock conflict.
const CONFLICT_RETRIES: usize = 5;

impl<S: SagaStore, D: CommandSink<S::Tx>> Orchestrator<S, D> {
    /// An orchestrator over `store`, dispatching through `sink`.
    pub fn new(store: S, sink: D) -> Self {
        Self {
            store,
            sink,
            definitions: HashMap::new(),
            clock: Arc::new(system_now_ms),
            default_retry: Duration::from_secs(30),
        }
    }

    /// Register a saga definition under its name and [version](SagaDefinition::version)
    /// (registering a name and version again replaces that version).
    ///
    /// New sagas of a type start on its **highest** registered version; every instance
    /// records the version it started on and is driven by that version to its end. So
    /// a deploy that changes a saga gives the new definition a new version and keeps
    /// the old one registered until no instance of it is left
    /// ([`SagaStore::find`] by type shows them). An instance whose version is not
    /// registered is not driven by another one: its events fail with
    /// [`Error::UnknownVersion`] (logged, the instance left exactly as it is) until the
    /// version is registered again.
    ///
    /// ```
    /// use saga_core::{MemorySagaStore, Orchestrator, SagaDefinition, Step};
    /// # use saga_core::{CommandSink, Dispatched, SagaCommand, SagaInstance};
    /// # struct Local;
    /// # impl CommandSink<outbox::memory::MemoryTx> for Local {
    /// #     async fn dispatch(&self, _: &mut outbox::memory::MemoryTx, _: &SagaInstance, _: &SagaCommand)
    /// #         -> saga_core::Result<Dispatched> { Ok(Dispatched::Sent) }
    /// # }
    /// let v1 = SagaDefinition::new("trip").step(Step::new("book")).build().unwrap();
    /// let v2 = SagaDefinition::new("trip").version(2)
    ///     .step(Step::new("quote")).step(Step::new("book")).build().unwrap();
    /// let orch = Orchestrator::new(MemorySagaStore::new(), Local).register(v1).register(v2);
    /// assert_eq!(orch.definition("trip").unwrap().version(), 2, "new sagas start on v2");
    /// assert_eq!(orch.definition_version("trip", 1).unwrap().steps().len(), 1);
    /// assert!(orch.definition_version("trip", 3).is_err());
    /// ```
    pub fn register(mut self, def: SagaDefinition) -> Self {
        // Every counter exists (at 0) from the start, for dashboards and alerts.
        let saga = def.name().to_owned();
        metrics::counter!("saga_started_total", "saga" => saga.clone()).increment(0);
        metrics::counter!("saga_compensations_started_total", "saga" => saga.clone()).increment(0);
        for outcome in ["completed", "compensated", "failed"] {
            metrics::counter!("saga_finished_total", "saga" => saga.clone(), "outcome" => outcome)
                .increment(0);
        }
        self.definitions
            .entry(def.name().to_owned())
            .or_default()
            .insert(def.version(), Arc::new(def));
        self
    }

    /// Use another clock (unix milliseconds), e.g. in tests.
    pub fn with_clock(mut self, clock: impl Fn() -> i64 + Send + Sync + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// When a local compensation fails, try it again after this long (default 30 s;
    /// a step's own deadline wins).
    pub fn with_local_retry(mut self, d: Duration) -> Self {
        self.default_retry = d;
        self
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The sink.
    pub fn sink(&self) -> &D {
        &self.sink
    }

    /// The definition new sagas of `saga_type` start on: its highest registered version.
    pub fn definition(&self, saga_type: &str) -> Result<&Arc<SagaDefinition>> {
        self.definitions
            .get(saga_type)
            .and_then(|versions| versions.values().next_back())
            .ok_or_else(|| Error::UnknownType(saga_type.to_owned()))
    }

    /// Version `version` of the definition of `saga_type`.
    pub fn definition_version(
        &self,
        saga_type: &str,
        version: u32,
    ) -> Result<&Arc<SagaDefinition>> {
        let versions = self
            .definitions
            .get(saga_type)
            .ok_or_else(|| Error::UnknownType(saga_type.to_owned()))?;
        versions.get(&version).ok_or_else(|| Error::UnknownVersion {
            saga_type: saga_type.to_owned(),
            version,
        })
    }

    /// The definition `saga` is driven by: the version it started on.
    pub fn definition_of(&self, saga: &SagaInstance) -> Result<&Arc<SagaDefinition>> {
        self.definition_version(&saga.saga_type, saga.definition_version)
    }

    /// Create saga `id` of `saga_type` with `data` inside `tx` (next to the business
    /// write that begins it) and start it: its first commands are dispatched in `tx`.
    pub async fn start(
        &self,
        tx: &mut S::Tx,
        saga_type: &str,
        id: SagaId,
        data: Bytes,
    ) -> Result<Applied> {
        let span = tracing::info_span!("saga.start", saga_id = %id, saga_type = %saga_type);
        async {
            let def = self.definition(saga_type)?.clone();
            let now = (self.clock)();
            let saga = SagaInstance::new(&def, id, data, now);
            let applied = self.drive(tx, &def, saga, SagaEvent::Start).await?;
            self.store.insert(tx, &applied.saga).await?;
            self.store
                .append_history(tx, id, applied.saga.version, &applied.history)
                .await?;
            metrics::counter!("saga_started_total", "saga" => saga_type.to_owned()).increment(1);
            Ok(applied)
        }
        .instrument(span)
        .await
    }

    /// Apply `event` to saga `id` inside `tx`.
    pub async fn handle(&self, tx: &mut S::Tx, id: SagaId, event: SagaEvent) -> Result<Applied> {
        let span = tracing::info_span!("saga.handle", saga_id = %id, event = event.name(),
            saga_type = tracing::field::Empty);
        async {
            let saga = self.store.load(tx, id).await?.ok_or(Error::NotFound(id))?;
            tracing::Span::current().record("saga_type", saga.saga_type.as_str());
            let def = match self.definition_of(&saga) {
                Ok(def) => def.clone(),
                Err(e) => {
                    tracing::error!(saga_id = %id, saga_type = %saga.saga_type,
                        definition_version = saga.definition_version, error = %e,
                        "saga left as it is: its definition version is not registered");
                    metrics::counter!("saga_unknown_version_total",
                        "saga" => saga.saga_type.clone())
                    .increment(1);
                    return Err(e);
                }
            };
            let applied = self.drive(tx, &def, saga, event).await?;
            if applied.changed {
                self.store.update(tx, &applied.saga).await?;
                self.store
                    .append_history(tx, id, applied.saga.version, &applied.history)
                    .await?;
            }
            Ok(applied)
        }
        .instrument(span)
        .await
    }

    /// Apply `event` in a unit of work of its own, retrying on optimistic-lock conflicts.
    pub async fn handle_and_commit(&self, id: SagaId, event: SagaEvent) -> Result<Applied> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut tx = self.store.begin().await?;
            let result = match self.handle(&mut tx, id, event.clone()).await {
                Ok(applied) if !applied.changed => return Ok(applied), // nothing to commit
                Ok(applied) => match self.store.commit(tx).await {
                    Ok(()) => return Ok(applied),
                    Err(outbox::Error::Conflict(_)) => Err(Error::Conflict(id)),
                    Err(e) => Err(e.into()),
                },
                Err(e) => Err(e),
            };
            match result {
                Err(Error::Conflict(_)) if attempt <= CONFLICT_RETRIES => continue,
                other => return other,
            }
        }
    }

    /// Feed [`SagaEvent::DeadlineExpired`] to up to `limit` sagas whose deadline has
    /// passed. Returns the sagas that changed. Run it periodically (every second or so).
    pub async fn fire_due_deadlines(&self, limit: usize) -> Result<Vec<SagaId>> {
        let now = (self.clock)();
        let mut changed = Vec::new();
        for id in self.store.due(now, limit).await? {
            let mut tx = self.store.begin().await?;
            let Some(saga) = self.store.load(&mut tx, id).await? else {
                continue;
            };
            let due_steps: Vec<usize> = saga
                .deadlines
                .iter()
                .enumerate()
                .filter(|(_, d)| d.is_some_and(|d| d <= now))
                .map(|(i, _)| i)
                .collect();
            drop(tx);
            for step in due_steps {
                tracing::warn!(saga_id = %id, step, "saga step reply deadline passed");
                match self
                    .handle_and_commit(id, SagaEvent::DeadlineExpired { step })
                    .await
                {
                    Ok(a) if a.changed => changed.push(id),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::error!(saga_id = %id, error = %e, "failed to handle a passed deadline")
                    }
                }
            }
        }
        Ok(changed)
    }

    /// The deadline driver: [`fire_due_deadlines`](Self::fire_due_deadlines) (up to
    /// `limit` sagas) every `every` until `shutdown` resolves, handing the sagas each
    /// sweep changed to `on_changed` (to wake a relay for the commands they emitted,
    /// invalidate caches…). A sweep that fails is logged and retried at the next tick;
    /// a sweep in progress finishes before it returns.
    ///
    /// ```
    /// # use saga_core::*;
    /// # use saga_core::outbox::memory::MemoryTx;
    /// # struct Sink;
    /// # impl CommandSink<MemoryTx> for Sink {
    /// #     async fn dispatch(&self, _: &mut MemoryTx, _: &SagaInstance, _: &SagaCommand)
    /// #         -> saga_core::Result<Dispatched> { Ok(Dispatched::Sent) }
    /// # }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use std::time::Duration;
    /// let orch = Orchestrator::new(MemorySagaStore::new(), Sink);
    /// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    /// let driver = orch.run_deadlines(Duration::from_secs(1), 100, async { stopped.await.ok(); },
    ///     |changed| async move { println!("{} sagas moved on", changed.len()) });
    /// stop.send(()).unwrap();
    /// driver.await;
    /// # }
    /// ```
    pub async fn run_deadlines<F, Fut>(
        &self,
        every: Duration,
        limit: usize,
        shutdown: impl Future<Output = ()>,
        mut on_changed: F,
    ) where
        F: FnMut(Vec<SagaId>) -> Fut,
        Fut: Future<Output = ()>,
    {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        let mut last_census: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                _ = tick.tick() => {}
            }
            if last_census.is_none_or(|at| at.elapsed() >= CENSUS_EVERY) {
                last_census = Some(tokio::time::Instant::now());
                if let Err(e) = self.report_census().await {
                    tracing::debug!(error = %e, "failed to count sagas");
                }
            }
            match self.fire_due_deadlines(limit).await {
                Ok(changed) if !changed.is_empty() => on_changed(changed).await,
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "failed to process saga deadlines"),
            }
        }
    }

    /// Report the unfinished sagas as gauges: `saga_instances{saga,status}` and
    /// `saga_oldest_update_age_seconds{saga,status}` (how long the stalest one has not
    /// moved), for every registered type and every unfinished status (0 when none).
    /// [`run_deadlines`](Self::run_deadlines) calls it every 5 s; a store without
    /// [`SagaStore::census`] reports nothing.
    pub async fn report_census(&self) -> Result<()> {
        let Some(census) = self.store.census().await? else {
            return Ok(());
        };
        let now = (self.clock)();
        for saga_type in self.definitions.keys() {
            for status in crate::UNFINISHED {
                let found = census
                    .iter()
                    .find(|c| &c.saga_type == saga_type && c.status == status);
                let (count, age) = found.map_or((0, 0), |c| (c.count, now - c.oldest_update_ms));
                let labels = [
                    ("saga", saga_type.clone()),
                    ("status", status.as_str().to_owned()),
                ];
                metrics::gauge!("saga_instances", &labels).set(count as f64);
                metrics::gauge!("saga_oldest_update_age_seconds", &labels)
                    .set(age.max(0) as f64 / 1000.0);
            }
        }
        Ok(())
    }

    async fn drive(
        &self,
        tx: &mut S::Tx,
        def: &SagaDefinition,
        mut saga: SagaInstance,
        event: SagaEvent,
    ) -> Result<Applied> {
        let now = (self.clock)();
        let mut queue = VecDeque::from([event]);
        let mut changed = false;
        let mut sent = Vec::new();
        let mut history = Vec::new();
        let trace_id = outbox::trace::current_trace_id().unwrap_or_default();
        let mut note = |kind: &str, name: String, detail: String| {
            history.push(crate::HistoryEntry {
                version: 0, // set below, once the new version is known
                at_ms: now,
                kind: kind.to_owned(),
                name,
                detail,
                trace_id: trace_id.clone(),
            })
        };
        let mut budget = settle_budget(def.steps().len());
        while let Some(event) = queue.pop_front() {
            budget = budget
                .checked_sub(1)
                .ok_or_else(|| Error::dispatch(format!("saga {} did not settle", saga.id)))?;
            let t = match transition(def, &saga.state, &event) {
                Ok(t) => t,
                Err(ignored) => {
                    tracing::debug!(saga_id = %saga.id, reason = %ignored, "saga event ignored");
                    note("ignored", event.name().to_owned(), ignored.to_string());
                    continue;
                }
            };
            changed = true;
            note("event", event.name().to_owned(), event_detail(&event));
            let from = saga.state.label(def);
            let was = saga.state.status;
            saga.state = t.state;
            record_outcome(&saga, was, now);
            for (i, st) in saga.state.steps.iter().enumerate() {
                if !matches!(st, StepStatus::Awaiting | StepStatus::Compensating) {
                    saga.deadlines[i] = None;
                }
            }
            tracing::info!(saga_id = %saga.id, saga_type = %saga.saga_type, from = %from,
                to = %saga.state.label(def), "saga changed state");
            note("transition", saga.state.label(def), format!("from {from}"));
            for c in t.commands {
                let step = &def.steps()[c.step];
                let cmd = SagaCommand {
                    saga_id: saga.id,
                    saga_type: saga.saga_type.clone(),
                    step: c.step,
                    step_name: step.name.clone(),
                    kind: c.kind,
                    name: c.name,
                    idempotency_key: saga.idempotency_key(c.step, c.kind),
                };
                let dispatched = self.sink.dispatch(tx, &saga, &cmd).await?;
                let outcome = match &dispatched {
                    Dispatched::Sent => "sent".to_owned(),
                    Dispatched::Succeeded => "done locally".to_owned(),
                    Dispatched::Failed(reason) => format!("failed locally: {reason}"),
                };
                note(
                    "command",
                    cmd.name.clone(),
                    format!(
                        "step {} ({}) {}: {outcome}",
                        cmd.step,
                        cmd.step_name,
                        cmd.kind.as_str()
                    ),
                );
                match dispatched {
                    Dispatched::Sent => {
                        saga.deadlines[c.step] = step.deadline.map(|d| now + d.as_millis() as i64);
                        sent.push(cmd);
                    }
                    Dispatched::Succeeded => queue.push_back(match c.kind {
                        CommandKind::Action => SagaEvent::StepSucceeded { step: c.step },
                        CommandKind::Compensation => {
                            SagaEvent::CompensationSucceeded { step: c.step }
                        }
                    }),
                    Dispatched::Failed(reason) => match c.kind {
                        CommandKind::Action => queue.push_back(SagaEvent::StepFailed {
                            step: c.step,
                            reason,
                        }),
                        CommandKind::Compensation => {
                            // Retry later through the deadline sweep, not in a tight loop.
                            tracing::warn!(saga_id = %saga.id, step = c.step, reason = %reason,
                                "local compensation failed, retrying later");
                            let retry = step.deadline.unwrap_or(self.default_retry);
                            saga.deadlines[c.step] = Some(now + retry.as_millis() as i64);
                        }
                    },
                }
            }
        }
        if changed {
            saga.version += 1;
            saga.updated_at = now;
        }
        for h in &mut history {
            h.version = saga.version;
        }
        Ok(Applied {
            saga,
            changed,
            sent,
            history,
        })
    }
}

/// How many events one unit of work may apply to a saga of `steps` steps before it is
/// declared unable to settle. Every local step moves the machine forward (a saga runs
/// at most every action and every compensation once: 2 × steps + 1), so this generous
/// bound only stops a defect — a sink or machine that keeps the queue growing — from
/// looping forever.
fn settle_budget(steps: usize) -> usize {
    4 * steps + 8
}

/// The parameters of `event`, for its history entry.
fn event_detail(event: &SagaEvent) -> String {
    match event {
        SagaEvent::Start => String::new(),
        SagaEvent::StepSucceeded { step }
        | SagaEvent::DeadlineExpired { step }
        | SagaEvent::CompensationSucceeded { step } => format!("step {step}"),
        SagaEvent::StepFailed { step, reason } | SagaEvent::CompensationFailed { step, reason } => {
            format!("step {step}: {reason}")
        }
        SagaEvent::Abort { reason } => reason.clone(),
    }
}

/// How often [`Orchestrator::run_deadlines`] reports the census.
const CENSUS_EVERY: Duration = Duration::from_secs(5);

/// Count a saga that just ended, and how long it took (see the crate docs' metrics).
fn record_outcome(saga: &SagaInstance, was: SagaStatus, now_ms: i64) {
    let status = saga.state.status;
    if status == was {
        return;
    }
    let outcome = match status {
        SagaStatus::Completed => "completed",
        SagaStatus::Failed if saga.state.steps.contains(&StepStatus::Compensated) => "compensated",
        SagaStatus::Failed => "failed",
        SagaStatus::Compensating => {
            metrics::counter!("saga_compensations_started_total", "saga" => saga.saga_type.clone())
                .increment(1);
            return;
        }
        _ => return,
    };
    metrics::counter!("saga_finished_total", "saga" => saga.saga_type.clone(), "outcome" => outcome)
        .increment(1);
    let secs = (now_ms - saga.created_at).max(0) as f64 / 1000.0;
    metrics::histogram!("saga_duration_seconds", "saga" => saga.saga_type.clone(), "outcome" => outcome)
        .record(secs);
}
