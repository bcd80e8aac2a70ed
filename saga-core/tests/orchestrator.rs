//! The orchestrator over the memory backends, composed as a service would compose it:
//! saga state, business rows and outgoing commands in one unit of work.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use outbox::memory::{MemoryOutbox, MemoryTx};
use outbox::{OutboxMessage, OutboxStore, Transactional};
use saga_core::{
    CommandKind, CommandSink, Dispatched, MemorySagaStore, Orchestrator, SagaCommand,
    SagaDefinition, SagaEvent, SagaId, SagaInstance, SagaStatus, SagaStore, StepStatus,
};

/// Order rows, committed through the unit of work like a real repository.
#[derive(Clone, Default)]
struct Orders(Arc<Mutex<HashMap<SagaId, &'static str>>>);

impl Orders {
    fn set(&self, tx: &mut MemoryTx, id: SagaId, status: &'static str) {
        let rows = self.0.clone();
        tx.on_commit(move || {
            rows.lock().unwrap().insert(id, status);
        });
    }
    fn get(&self, id: SagaId) -> Option<&'static str> {
        self.0.lock().unwrap().get(&id).copied()
    }
}

/// Local steps touch the order rows; payment commands go to the outbox.
#[derive(Clone)]
struct Sink {
    orders: Orders,
    outbox: MemoryOutbox,
    fail_confirm: bool,
    /// How many more times `cancel_order` (a local compensation) fails.
    fail_cancel: Arc<AtomicI64>,
}

impl CommandSink<MemoryTx> for Sink {
    async fn dispatch(
        &self,
        tx: &mut MemoryTx,
        saga: &SagaInstance,
        cmd: &SagaCommand,
    ) -> saga_core::Result<Dispatched> {
        match cmd.name.as_str() {
            "create_order" => {
                self.orders.set(tx, saga.id, "PENDING");
                Ok(Dispatched::Succeeded)
            }
            "cancel_order" if self.fail_cancel.fetch_sub(1, Ordering::SeqCst) > 0 => {
                Ok(Dispatched::Failed("order row locked".into()))
            }
            "cancel_order" => {
                self.orders.set(tx, saga.id, "CANCELLED");
                Ok(Dispatched::Succeeded)
            }
            "confirm_order" if self.fail_confirm => {
                Ok(Dispatched::Failed("order was cancelled".into()))
            }
            "confirm_order" => {
                self.orders.set(tx, saga.id, "CONFIRMED");
                Ok(Dispatched::Succeeded)
            }
            remote => {
                let msg =
                    OutboxMessage::new("saga.commands", saga.id.to_string(), remote.to_owned())
                        .with_header("idempotency-key", cmd.idempotency_key.clone());
                self.outbox
                    .enqueue(tx, msg)
                    .await
                    .map_err(saga_core::Error::dispatch)?;
                Ok(Dispatched::Sent)
            }
        }
    }
}

struct World {
    orch: Orchestrator<MemorySagaStore, Sink>,
    orders: Orders,
    outbox: MemoryOutbox,
    clock: Arc<AtomicI64>,
}

/// The payment step (1) refused for `reason`.
fn declined(reason: &str) -> SagaEvent {
    SagaEvent::StepFailed {
        step: 1,
        reason: reason.into(),
    }
}

fn definition(compensate_on_timeout: bool) -> SagaDefinition {
    saga_core::conformance::create_order_saga(compensate_on_timeout)
}

fn world(compensate_on_timeout: bool, fail_confirm: bool) -> World {
    let orders = Orders::default();
    let outbox = MemoryOutbox::new();
    let clock = Arc::new(AtomicI64::new(1_000_000));
    let c = clock.clone();
    let orch = Orchestrator::new(
        MemorySagaStore::new(),
        Sink {
            orders: orders.clone(),
            outbox: outbox.clone(),
            fail_confirm,
            fail_cancel: Arc::default(),
        },
    )
    .register(definition(compensate_on_timeout))
    .with_clock(move || c.load(Ordering::SeqCst));
    World {
        orch,
        orders,
        outbox,
        clock,
    }
}

impl World {
    async fn start(&self) -> SagaId {
        let id = SagaId::new();
        let mut tx = self.orch.store().begin().await.unwrap();
        let applied = self
            .orch
            .start(
                &mut tx,
                "create_order",
                id,
                Bytes::from_static(b"order data"),
            )
            .await
            .unwrap();
        assert_eq!(applied.sent.len(), 1);
        assert_eq!(applied.sent[0].name, "payment.debit");
        assert_eq!(applied.sent[0].idempotency_key, format!("{id}:1:action"));
        self.orch.store().commit(tx).await.unwrap();
        id
    }

    fn saga(&self, id: SagaId) -> SagaInstance {
        self.orch.store().get(id).unwrap()
    }

    fn label(&self, id: SagaId) -> String {
        let def = self.orch.definition("create_order").unwrap();
        self.saga(id).state.label(def)
    }

    /// Drain the outbox: claim everything, mark it sent, return the payloads.
    async fn commands(&self) -> Vec<String> {
        let batch = self
            .outbox
            .claim("test", 1000, Duration::from_secs(60))
            .await
            .unwrap();
        let ids: Vec<_> = batch.iter().map(|m| m.id).collect();
        self.outbox.mark_sent(&ids).await.unwrap();
        batch
            .into_iter()
            .map(|m| String::from_utf8(m.payload.to_vec()).unwrap())
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_commits_saga_order_and_command_together() {
    let w = world(true, false);
    let id = w.start().await;
    assert_eq!(w.orders.get(id), Some("PENDING"));
    assert_eq!(w.label(id), "PAYMENT_PENDING");
    assert_eq!(w.commands().await, ["payment.debit"]);

    let a = w
        .orch
        .handle_and_commit(id, SagaEvent::StepSucceeded { step: 1 })
        .await
        .unwrap();
    assert!(a.changed);
    assert_eq!(w.label(id), "COMPLETED");
    assert_eq!(w.orders.get(id), Some("CONFIRMED"));
    assert_eq!(w.saga(id).deadlines, vec![None, None, None]);
    assert!(w.commands().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declined_payment_cancels_the_order_and_fails() {
    let w = world(true, false);
    let id = w.start().await;
    w.orch
        .handle_and_commit(id, declined("insufficient funds"))
        .await
        .unwrap();
    let saga = w.saga(id);
    assert_eq!(saga.state.status, SagaStatus::Failed);
    assert_eq!(
        saga.state.failure_reason.as_deref(),
        Some("insufficient funds")
    );
    assert_eq!(w.orders.get(id), Some("CANCELLED"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_and_stale_replies_change_nothing() {
    let w = world(true, false);
    let id = w.start().await;
    w.orch
        .handle_and_commit(id, SagaEvent::StepSucceeded { step: 1 })
        .await
        .unwrap();
    let version = w.saga(id).version;
    for e in [
        SagaEvent::StepSucceeded { step: 1 },
        declined("late"),
        SagaEvent::DeadlineExpired { step: 1 },
        SagaEvent::CompensationSucceeded { step: 1 },
    ] {
        let a = w.orch.handle_and_commit(id, e).await.unwrap();
        assert!(!a.changed);
    }
    assert_eq!(w.saga(id).version, version);
    assert_eq!(w.orders.get(id), Some("CONFIRMED"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_driver_fires_due_deadlines_until_shut_down() {
    let w = Arc::new(world(true, false));
    let id = w.start().await;
    w.commands().await;
    let (changed_tx, mut changed_rx) = tokio::sync::mpsc::unbounded_channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let driver = {
        let w = w.clone();
        tokio::spawn(async move {
            w.orch
                .run_deadlines(
                    Duration::from_millis(10),
                    10,
                    async {
                        stopped.await.ok();
                    },
                    |ids| {
                        let tx = changed_tx.clone();
                        async move {
                            tx.send(ids).unwrap();
                        }
                    },
                )
                .await
        })
    };
    // The payment deadline passes: the next sweep compensates.
    w.clock.fetch_add(30_000, Ordering::SeqCst);
    let changed = tokio::time::timeout(Duration::from_secs(10), changed_rx.recv())
        .await
        .expect("the driver did not sweep")
        .unwrap();
    assert_eq!(changed, vec![id]);
    assert_eq!(w.label(id), "COMPENSATING");
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), driver)
        .await
        .expect("the driver did not stop")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missed_deadline_refunds_blindly_then_cancels() {
    let w = world(true, false);
    let id = w.start().await;
    w.commands().await;
    assert_eq!(w.saga(id).deadlines[1], Some(1_000_000 + 30_000));
    // Nothing is due yet.
    assert_eq!(w.orch.fire_due_deadlines(10).await.unwrap().len(), 0);
    w.clock.fetch_add(30_000, Ordering::SeqCst);
    assert_eq!(w.orch.fire_due_deadlines(10).await.unwrap(), vec![id]);
    assert_eq!(w.label(id), "COMPENSATING");
    assert_eq!(w.commands().await, ["payment.refund"]);
    // The refund goes unanswered too: it is sent again after another deadline.
    w.clock.fetch_add(30_000, Ordering::SeqCst);
    assert_eq!(w.orch.fire_due_deadlines(10).await.unwrap(), vec![id]);
    assert_eq!(w.commands().await, ["payment.refund"]);
    // A late debit success while the refund is in flight changes nothing.
    assert!(
        !w.orch
            .handle_and_commit(id, SagaEvent::StepSucceeded { step: 1 })
            .await
            .unwrap()
            .changed
    );
    w.orch
        .handle_and_commit(id, SagaEvent::CompensationSucceeded { step: 1 })
        .await
        .unwrap();
    assert_eq!(w.label(id), "FAILED");
    assert_eq!(w.orders.get(id), Some("CANCELLED"));
    assert_eq!(w.saga(id).state.steps[1], StepStatus::Compensated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_success_after_failure_is_refunded() {
    let w = world(false, false);
    let id = w.start().await;
    w.commands().await;
    w.clock.fetch_add(30_001, Ordering::SeqCst);
    w.orch.fire_due_deadlines(10).await.unwrap();
    assert_eq!(w.label(id), "FAILED");
    assert_eq!(w.orders.get(id), Some("CANCELLED"));
    assert!(
        w.commands().await.is_empty(),
        "no blind refund in this mode"
    );
    // The debit did happen after all:
    let a = w
        .orch
        .handle_and_commit(id, SagaEvent::StepSucceeded { step: 1 })
        .await
        .unwrap();
    assert_eq!(a.sent.len(), 1);
    assert_eq!(a.sent[0].kind, CommandKind::Compensation);
    assert_eq!(w.commands().await, ["payment.refund"]);
    w.orch
        .handle_and_commit(id, SagaEvent::CompensationSucceeded { step: 1 })
        .await
        .unwrap();
    assert_eq!(w.label(id), "FAILED");
    assert!(w.saga(id).state.is_terminal());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_step_failure_compensates_the_remote_one() {
    let w = world(true, true);
    let id = w.start().await;
    w.commands().await;
    w.orch
        .handle_and_commit(id, SagaEvent::StepSucceeded { step: 1 })
        .await
        .unwrap();
    assert_eq!(w.label(id), "COMPENSATING");
    assert_eq!(w.commands().await, ["payment.refund"]);
    w.orch
        .handle_and_commit(id, SagaEvent::CompensationSucceeded { step: 1 })
        .await
        .unwrap();
    assert_eq!(w.label(id), "FAILED");
    assert_eq!(w.orders.get(id), Some("CANCELLED"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_unit_of_work_leaves_no_trace() {
    let w = world(true, false);
    let id = SagaId::new();
    let mut tx = w.orch.store().begin().await.unwrap();
    w.orch
        .start(&mut tx, "create_order", id, Bytes::new())
        .await
        .unwrap();
    drop(tx); // e.g. the order insert failed afterwards
    assert!(w.orch.store().get(id).is_none());
    assert!(w.orch.store().is_empty());
    assert_eq!(w.orch.store().len(), 0);

    assert_eq!(w.orders.get(id), None);
    assert!(w.commands().await.is_empty());
    // What commits is there.
    let kept = w.start().await;
    let other = w.start().await;
    assert_ne!(kept, other);
    assert!(!w.orch.store().is_empty());
    assert_eq!(w.orch.store().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_replies_apply_once() {
    let w = Arc::new(world(true, false));
    let id = w.start().await;
    w.commands().await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let w = w.clone();
        tasks.push(tokio::spawn(async move {
            w.orch
                .handle_and_commit(id, SagaEvent::StepSucceeded { step: 1 })
                .await
                .unwrap()
                .changed
        }));
    }
    let mut changed = 0;
    for t in tasks {
        changed += t.await.unwrap() as usize;
    }
    assert_eq!(changed, 1, "exactly one delivery may apply the reply");
    assert_eq!(w.saga(id).version, 2);
    assert_eq!(w.label(id), "COMPLETED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_version_update_conflicts() {
    let w = world(true, false);
    let id = w.start().await;
    let store = w.orch.store();
    let mut a = store.get(id).unwrap();
    let mut b = a.clone();
    a.version += 1;
    b.version += 1;
    let mut tx1 = store.begin().await.unwrap();
    store.update(&mut tx1, &a).await.unwrap();
    let mut tx2 = store.begin().await.unwrap();
    store.update(&mut tx2, &b).await.unwrap();
    store.commit(tx1).await.unwrap();
    assert!(matches!(
        store.commit(tx2).await,
        Err(outbox::Error::Conflict(_))
    ));
}

#[tokio::test]
async fn unknown_saga_and_type_are_errors() {
    let w = world(true, false);
    assert!(matches!(
        w.orch
            .handle_and_commit(SagaId::new(), SagaEvent::Start)
            .await,
        Err(saga_core::Error::NotFound(_))
    ));
    let mut tx = MemoryTx::new();
    assert!(matches!(
        w.orch
            .start(&mut tx, "nope", SagaId::new(), Bytes::new())
            .await,
        Err(saga_core::Error::UnknownType(_))
    ));
}

#[tokio::test]
async fn memory_saga_store_conformance() {
    saga_core::conformance::saga_store_all(|| async { MemorySagaStore::new() }).await;
}

/// Start a saga and return the command its first remote step sent.
async fn start_and_take_the_command(w: &World) -> (SagaId, SagaCommand) {
    let id = SagaId::new();
    let mut tx = w.orch.store().begin().await.unwrap();
    let applied = w
        .orch
        .start(&mut tx, "create_order", id, Bytes::new())
        .await
        .unwrap();
    w.orch.store().commit(tx).await.unwrap();
    (id, applied.sent[0].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_built_from_the_command_drive_the_saga_without_step_indices() {
    // The happy path: the command that was sent answers for itself.
    let w = world(true, false);
    let (id, debit) = start_and_take_the_command(&w).await;
    let def = w.orch.definition("create_order").unwrap();
    assert_eq!(def.step_index("payment"), Some(debit.step));
    assert_eq!(def.step_index("shipping"), None);
    w.orch
        .handle_and_commit(id, debit.succeeded())
        .await
        .unwrap();
    assert_eq!(w.label(id), "COMPLETED");

    // Confirming fails (the order was cancelled meanwhile): the payment is compensated,
    // and the refund answers for itself too.
    let w = world(true, true);
    let (id, debit) = start_and_take_the_command(&w).await;
    let applied = w
        .orch
        .handle_and_commit(id, debit.succeeded())
        .await
        .unwrap();
    let refund = applied
        .sent
        .iter()
        .find(|c| c.kind == CommandKind::Compensation)
        .expect("a refund was sent")
        .clone();
    assert_eq!(
        (refund.name.as_str(), refund.step),
        ("payment.refund", debit.step)
    );
    assert_eq!(
        refund.failed("try again"),
        SagaEvent::CompensationFailed {
            step: debit.step,
            reason: "try again".into()
        }
    );
    w.orch
        .handle_and_commit(id, refund.succeeded())
        .await
        .unwrap();
    assert_eq!(w.saga(id).state.status, SagaStatus::Failed);
    assert_eq!(w.orders.get(id), Some("CANCELLED"));

    // A declined debit, reported through the command.
    let w = world(true, false);
    let (id, debit) = start_and_take_the_command(&w).await;
    w.orch
        .handle_and_commit(id, debit.failed("insufficient funds"))
        .await
        .unwrap();
    assert_eq!(w.saga(id).state.status, SagaStatus::Failed);
}

/// A world whose orchestrator retries a failed local compensation after `retry`.
fn world_retrying(retry: Option<Duration>) -> World {
    let w = world(true, false);
    let World {
        orch,
        orders,
        outbox,
        clock,
    } = w;
    let sink = orch.sink().clone();
    let c = clock.clone();
    let mut orch = Orchestrator::new(MemorySagaStore::new(), sink)
        .register(definition(true))
        .with_clock(move || c.load(Ordering::SeqCst));
    if let Some(retry) = retry {
        orch = orch.with_local_retry(retry);
    }
    World {
        orch,
        orders,
        outbox,
        clock,
    }
}

/// A local compensation that fails is not retried in a loop, nor forgotten: it is
/// tried again once the local retry delay has passed (30 s unless configured).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_local_compensation_is_retried_after_the_retry_delay() {
    for (retry, delay_ms) in [(None, 30_000), (Some(Duration::from_secs(5)), 5_000)] {
        let w = world_retrying(retry);
        w.orch.sink().fail_cancel.store(1, Ordering::SeqCst);
        let id = w.start().await;
        w.commands().await;
        let declined = w
            .orch
            .handle_and_commit(id, declined("insufficient funds"))
            .await
            .unwrap();
        assert!(declined.sent.is_empty());
        let saga = w.saga(id);
        assert_eq!(saga.state.status, SagaStatus::Compensating);
        assert_eq!(saga.state.steps[0], StepStatus::Compensating);
        assert_eq!(saga.deadlines[0], Some(1_000_000 + delay_ms));
        assert_eq!(w.orders.get(id), Some("PENDING"));
        // Not before the delay…
        w.clock.fetch_add(delay_ms - 1, Ordering::SeqCst);
        assert!(w.orch.fire_due_deadlines(10).await.unwrap().is_empty());
        // …then once more, and this time it works.
        w.clock.fetch_add(1, Ordering::SeqCst);
        assert_eq!(w.orch.fire_due_deadlines(10).await.unwrap(), vec![id]);
        let saga = w.saga(id);
        assert_eq!(saga.state.status, SagaStatus::Failed);
        assert_eq!(saga.state.steps[0], StepStatus::Compensated);
        assert_eq!(saga.deadlines, vec![None, None, None]);
        assert_eq!(w.orders.get(id), Some("CANCELLED"));
    }
}

/// History entries as (kind, name, detail).
fn rows(history: &[saga_core::HistoryEntry]) -> Vec<(&str, &str, &str)> {
    history
        .iter()
        .map(|h| (h.kind.as_str(), h.name.as_str(), h.detail.as_str()))
        .collect()
}

/// What a change records in the saga's history: the event with its parameters, the
/// new state and where from, each command with what became of it — all under the
/// saga's new version and the orchestrator's clock; an event that does not apply is
/// recorded as ignored and changes nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_records_events_transitions_and_commands() {
    let w = world(true, false);
    w.orch.sink().fail_cancel.store(1, Ordering::SeqCst);
    let id = w.start().await;
    w.clock.fetch_add(7, Ordering::SeqCst);
    let applied = w
        .orch
        .handle_and_commit(id, declined("insufficient funds"))
        .await
        .unwrap();
    assert_eq!(
        rows(&applied.history),
        [
            ("event", "step_failed", "step 1: insufficient funds"),
            ("transition", "COMPENSATING", "from PAYMENT_PENDING"),
            (
                "command",
                "cancel_order",
                "step 0 (create_order) compensation: failed locally: order row locked"
            ),
        ]
    );
    assert!(applied
        .history
        .iter()
        .all(|h| h.version == 2 && h.at_ms == 1_000_007));
    let stored = w.orch.store().history(id).await.unwrap().unwrap();
    assert_eq!(&stored[stored.len() - 3..], &applied.history[..]);
    let started: Vec<_> = stored.iter().filter(|h| h.version == 1).cloned().collect();
    assert_eq!(
        rows(&started),
        [
            ("event", "start", ""),
            ("transition", "CREATE_ORDER_PENDING", "from STARTED"),
            (
                "command",
                "create_order",
                "step 0 (create_order) action: done locally"
            ),
            ("event", "step_succeeded", "step 0"),
            ("transition", "PAYMENT_PENDING", "from CREATE_ORDER_PENDING"),
            ("command", "payment.debit", "step 1 (payment) action: sent"),
        ]
    );
    // A duplicate: recorded as ignored in what `handle` returns, nothing stored.
    let dup = w
        .orch
        .handle_and_commit(id, declined("again"))
        .await
        .unwrap();
    assert!(!dup.changed);
    assert_eq!(dup.history.len(), 1);
    assert_eq!(dup.history[0].kind, "ignored");
    assert_eq!(dup.saga.version, 2);
    assert_eq!(
        w.orch.store().history(id).await.unwrap().unwrap().len(),
        stored.len()
    );
}

/// A saga store whose commits conflict a given number of times (another writer won),
/// counting the units of work begun.
#[derive(Default)]
struct Conflicting {
    inner: MemorySagaStore,
    conflicts: AtomicI64,
    begun: AtomicI64,
    committed: AtomicI64,
    censuses: AtomicI64,
}

impl outbox::Transactional for Conflicting {
    type Tx = MemoryTx;
    async fn begin(&self) -> outbox::Result<MemoryTx> {
        self.begun.fetch_add(1, Ordering::SeqCst);
        self.inner.begin().await
    }
    async fn commit(&self, tx: MemoryTx) -> outbox::Result<()> {
        if self.conflicts.fetch_sub(1, Ordering::SeqCst) > 0 {
            return Err(outbox::Error::Conflict("another writer won".into()));
        }
        self.committed.fetch_add(1, Ordering::SeqCst);
        self.inner.commit(tx).await
    }
}

impl SagaStore for Conflicting {
    async fn insert(&self, tx: &mut MemoryTx, saga: &SagaInstance) -> saga_core::Result<()> {
        self.inner.insert(tx, saga).await
    }
    async fn load(&self, tx: &mut MemoryTx, id: SagaId) -> saga_core::Result<Option<SagaInstance>> {
        self.inner.load(tx, id).await
    }
    async fn update(&self, tx: &mut MemoryTx, saga: &SagaInstance) -> saga_core::Result<()> {
        self.inner.update(tx, saga).await
    }
    async fn due(&self, now_ms: i64, limit: usize) -> saga_core::Result<Vec<SagaId>> {
        self.inner.due(now_ms, limit).await
    }
    async fn census(&self) -> saga_core::Result<Option<Vec<saga_core::Census>>> {
        self.censuses.fetch_add(1, Ordering::SeqCst);
        self.inner.census().await
    }
}

fn counted() -> Orchestrator<Conflicting, saga_core::conformance::OutboxSink<MemoryOutbox>> {
    Orchestrator::new(
        Conflicting::default(),
        saga_core::conformance::OutboxSink(MemoryOutbox::new()),
    )
    .register(definition(true))
}

/// Start a saga of `saga_type` in a unit of work of its own and commit it.
async fn started<S: SagaStore, D: CommandSink<S::Tx>>(
    orch: &Orchestrator<S, D>,
    saga_type: &str,
) -> SagaId {
    let id = SagaId::new();
    let mut tx = orch.store().begin().await.unwrap();
    orch.start(&mut tx, saga_type, id, Bytes::new())
        .await
        .unwrap();
    orch.store().commit(tx).await.unwrap();
    id
}

/// An event that changes nothing commits nothing.
#[tokio::test]
async fn an_ignored_event_commits_nothing() {
    let orch = counted();
    let id = started(&orch, "create_order").await;
    let ok = SagaEvent::StepSucceeded { step: 1 };
    assert!(
        orch.handle_and_commit(id, ok.clone())
            .await
            .unwrap()
            .changed
    );
    assert_eq!(orch.store().committed.load(Ordering::SeqCst), 2);
    assert!(!orch.handle_and_commit(id, ok).await.unwrap().changed);
    assert_eq!(orch.store().committed.load(Ordering::SeqCst), 2);
}

/// A deadline that is due but no longer means anything (its step already answered) is
/// swept without reporting the saga as changed.
#[tokio::test]
async fn a_due_deadline_that_changes_nothing_is_not_reported() {
    let orch = counted();
    let def = orch.definition("create_order").unwrap().clone();
    let mut saga = SagaInstance::new(&def, SagaId::new(), Bytes::new(), 0);
    saga.state.status = SagaStatus::Completed;
    saga.state.steps = vec![StepStatus::Succeeded; 3];
    saga.deadlines[1] = Some(1);
    let mut tx = orch.store().begin().await.unwrap();
    orch.store().insert(&mut tx, &saga).await.unwrap();
    orch.store().commit(tx).await.unwrap();
    assert!(orch.fire_due_deadlines(10).await.unwrap().is_empty());
}

/// The deadline driver reports the census every 5 s (not every tick) and calls
/// `on_changed` only with sagas that changed.
#[tokio::test(start_paused = true)]
async fn the_driver_counts_every_five_seconds_and_reports_only_changes() {
    let orch = counted();
    let calls = AtomicI64::new(0);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::join!(
        orch.run_deadlines(
            Duration::from_secs(1),
            10,
            async {
                stopped.await.ok();
            },
            |_| {
                calls.fetch_add(1, Ordering::SeqCst);
                async {}
            },
        ),
        async {
            tokio::time::sleep(Duration::from_millis(10_500)).await;
            stop.send(()).unwrap();
        }
    );
    assert_eq!(
        orch.store().censuses.load(Ordering::SeqCst),
        3,
        "at 0, 5 and 10 s of 11 ticks"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 0, "nothing changed");
}

/// A saga of many local steps runs in one unit of work: twenty succeed, the last
/// fails, and all twenty are compensated locally — forty events in one `handle`.
#[tokio::test]
async fn a_long_local_saga_settles_in_one_unit_of_work() {
    struct Local;
    impl CommandSink<MemoryTx> for Local {
        async fn dispatch(
            &self,
            _: &mut MemoryTx,
            _: &SagaInstance,
            cmd: &SagaCommand,
        ) -> saga_core::Result<Dispatched> {
            Ok(if cmd.name == "s20" {
                Dispatched::Failed("no".into())
            } else {
                Dispatched::Succeeded
            })
        }
    }
    let mut def = SagaDefinition::new("long");
    for i in 0..=20 {
        def = def.step(saga_core::Step::new(format!("s{i}")).compensate_with(format!("undo{i}")));
    }
    let orch = Orchestrator::new(MemorySagaStore::new(), Local).register(def.build().unwrap());
    let mut tx = orch.store().begin().await.unwrap();
    let applied = orch
        .start(&mut tx, "long", SagaId::new(), Bytes::new())
        .await
        .unwrap();
    assert_eq!(applied.saga.state.status, SagaStatus::Failed);
    assert_eq!(
        applied
            .saga
            .state
            .steps
            .iter()
            .filter(|s| **s == StepStatus::Compensated)
            .count(),
        20
    );
}

/// `handle_and_commit` retries an optimistic-lock conflict five times, then gives up
/// with `Conflict` instead of looping.
#[tokio::test]
async fn conflicts_are_retried_five_times_then_reported() {
    for (conflicts, ok) in [(5, true), (6, false)] {
        let store = Conflicting::default();
        let orch = Orchestrator::new(
            store,
            saga_core::conformance::OutboxSink(MemoryOutbox::new()),
        )
        .register(definition(true));
        let id = started(&orch, "create_order").await;
        orch.store().conflicts.store(conflicts, Ordering::SeqCst);
        orch.store().begun.store(0, Ordering::SeqCst);
        let r = orch
            .handle_and_commit(id, SagaEvent::StepSucceeded { step: 1 })
            .await;
        if ok {
            assert!(r.unwrap().changed);
            assert_eq!(orch.store().begun.load(Ordering::SeqCst), 6);
        } else {
            assert!(
                matches!(r, Err(saga_core::Error::Conflict(c)) if c == id),
                "{r:?}"
            );
            assert_eq!(
                orch.store().begun.load(Ordering::SeqCst),
                6,
                "1 + 5 retries"
            );
        }
    }
}

/// Without `with_clock`, sagas are stamped with the system's time.
#[tokio::test]
async fn the_default_clock_is_the_system_time() {
    let orch = Orchestrator::new(
        MemorySagaStore::new(),
        saga_core::conformance::OutboxSink(MemoryOutbox::new()),
    )
    .register(definition(true));
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let id = SagaId::new();
    let mut tx = orch.store().begin().await.unwrap();
    let applied = orch
        .start(&mut tx, "create_order", id, Bytes::new())
        .await
        .unwrap();
    let after = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let saga = applied.saga;
    assert!(
        saga.created_at >= before && saga.created_at <= after,
        "{saga:?}"
    );
    assert_eq!(saga.updated_at, saga.created_at);
    assert_eq!(saga.deadlines[1], Some(saga.created_at + 30_000));
}

/// The saga metrics: started, compensations started, finished by outcome with the
/// duration, and the census gauges of unfinished sagas.
#[test]
fn metrics_count_every_saga_and_its_outcome() {
    let recorder = ordersys_testkit::MetricsRecorder::default();
    let count = |name: &str, labels: &[(&str, &str)]| {
        recorder
            .counter(name, labels)
            .unwrap_or_else(|| panic!("{name} {labels:?} is not registered"))
    };
    let gauge = |name: &str, labels: &[(&str, &str)]| {
        recorder
            .gauge(name, labels)
            .unwrap_or_else(|| panic!("{name} {labels:?} is not registered"))
    };
    let durations = |outcome: &str| {
        recorder.histogram(
            "saga_duration_seconds",
            &[("saga", "create_order"), ("outcome", outcome)],
        )
    };
    metrics::with_local_recorder(&recorder, || {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(async {
                let w = world(true, false);
                let saga = [("saga", "create_order")];
                let finished = |outcome| [("saga", "create_order"), ("outcome", outcome)];
                for outcome in ["completed", "compensated", "failed"] {
                    assert_eq!(count("saga_finished_total", &finished(outcome)), 0);
                }
                assert_eq!(count("saga_started_total", &saga), 0);

                // Completed after 1.5 s.
                let done = w.start().await;
                w.clock.fetch_add(1_500, Ordering::SeqCst);
                w.orch
                    .handle_and_commit(done, SagaEvent::StepSucceeded { step: 1 })
                    .await
                    .unwrap();
                // Declined: compensated (the order row was cancelled) after 0.25 s.
                let refused = w.start().await;
                w.clock.fetch_add(250, Ordering::SeqCst);
                w.orch
                    .handle_and_commit(refused, declined("no"))
                    .await
                    .unwrap();
                // Left waiting for its payment.
                let waiting = w.start().await;
                assert_eq!(count("saga_started_total", &saga), 3);
                assert_eq!(count("saga_finished_total", &finished("completed")), 1);
                assert_eq!(count("saga_finished_total", &finished("compensated")), 1);
                assert_eq!(count("saga_finished_total", &finished("failed")), 0);
                assert_eq!(count("saga_compensations_started_total", &saga), 1);
                assert_eq!(durations("completed"), [1.5]);
                assert_eq!(durations("compensated"), [0.25]);

                // The census: one RUNNING saga, not moved for 2 s.
                w.clock.fetch_add(2_000, Ordering::SeqCst);
                w.orch.report_census().await.unwrap();
                let running = [("saga", "create_order"), ("status", "RUNNING")];
                let compensating = [("saga", "create_order"), ("status", "COMPENSATING")];
                assert_eq!(gauge("saga_instances", &running), 1.0);
                assert_eq!(gauge("saga_oldest_update_age_seconds", &running), 2.0);
                assert_eq!(gauge("saga_instances", &compensating), 0.0);
                assert_eq!(gauge("saga_oldest_update_age_seconds", &compensating), 0.0);

                // Its payment deadline passes: compensating (a blind refund is sent).
                w.clock.fetch_add(30_000, Ordering::SeqCst);
                assert_eq!(w.orch.fire_due_deadlines(10).await.unwrap(), [waiting]);
                assert_eq!(count("saga_compensations_started_total", &saga), 2);
                w.orch.report_census().await.unwrap();
                assert_eq!(gauge("saga_instances", &running), 0.0);
                assert_eq!(gauge("saga_instances", &compensating), 1.0);
                assert_eq!(gauge("saga_oldest_update_age_seconds", &compensating), 0.0);

                // A saga whose only step fails has nothing to compensate: "failed".
                let orch = Orchestrator::new(
                    MemorySagaStore::new(),
                    saga_core::conformance::OutboxSink(MemoryOutbox::new()),
                )
                .register(
                    SagaDefinition::new("pay_only")
                        .step(
                            saga_core::Step::new("payment")
                                .action("payment.debit")
                                .compensate_with("payment.refund"),
                        )
                        .build()
                        .unwrap(),
                );
                let id = started(&orch, "pay_only").await;
                orch.handle_and_commit(
                    id,
                    SagaEvent::StepFailed {
                        step: 0,
                        reason: "declined".into(),
                    },
                )
                .await
                .unwrap();
                let failed = [("saga", "pay_only"), ("outcome", "failed")];
                assert_eq!(count("saga_finished_total", &failed), 1);
                let compensated = [("saga", "pay_only"), ("outcome", "compensated")];
                assert_eq!(count("saga_finished_total", &compensated), 0);
                assert_eq!(
                    count("saga_compensations_started_total", &[("saga", "pay_only")]),
                    0
                );
            });
    });
}

/// A stale update is refused when it is made, not only when it commits.
#[tokio::test]
async fn a_stale_update_is_refused_at_once() {
    let w = world(true, false);
    let id = w.start().await;
    let store = w.orch.store();
    let mut stale = store.get(id).unwrap();
    // Version 1 stored: an update must carry 2.
    stale.version = 3;
    let mut tx = store.begin().await.unwrap();
    assert!(matches!(
        store.update(&mut tx, &stale).await,
        Err(saga_core::Error::Conflict(c)) if c == id
    ));
    stale.version = 0;
    assert!(matches!(
        store.update(&mut tx, &stale).await,
        Err(saga_core::Error::Conflict(_))
    ));
    stale.version = 2;
    store.update(&mut tx, &stale).await.unwrap();
}

/// The operator's query: by status, by age, overdue, oldest first, limited.
#[tokio::test]
async fn find_answers_the_operators_query() {
    let w = world(true, false);
    let first = w.start().await;
    w.clock.fetch_add(10, Ordering::SeqCst);
    let second = w.start().await;
    w.clock.fetch_add(10, Ordering::SeqCst);
    let done = w.start().await;
    w.orch
        .handle_and_commit(done, SagaEvent::StepSucceeded { step: 1 })
        .await
        .unwrap();
    let w = &w;
    let find = |q: saga_core::SagaQuery| async move {
        w.orch
            .store()
            .find(&q)
            .await
            .unwrap()
            .expect("the memory store answers queries")
            .into_iter()
            .map(|s| s.id)
            .collect::<Vec<_>>()
    };
    let running = saga_core::SagaQuery {
        status: Some(SagaStatus::Running),
        ..Default::default()
    };
    assert_eq!(find(running.clone()).await, [first, second], "oldest first");
    assert_eq!(
        find(saga_core::SagaQuery {
            limit: 1,
            ..running.clone()
        })
        .await,
        [first]
    );
    assert_eq!(
        find(saga_core::SagaQuery {
            updated_before_ms: Some(1_000_005),
            ..Default::default()
        })
        .await,
        [first]
    );
    assert_eq!(
        find(saga_core::SagaQuery {
            deadline_before_ms: Some(1_000_000 + 30_000),
            ..Default::default()
        })
        .await,
        [first]
    );
    assert_eq!(find(saga_core::SagaQuery::default()).await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_parallel_saga() {
    saga_core::conformance::parallel_saga(MemorySagaStore::new(), MemoryOutbox::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_versioned_sagas() {
    saga_core::conformance::versioned_sagas(MemorySagaStore::new(), MemoryOutbox::new()).await;
}
