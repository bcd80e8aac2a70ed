//! The conformance suite every [`SagaStore`] backend must pass (feature `conformance`).
//! Each function takes a **fresh, empty** store and panics on a violation.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! saga_core::conformance::saga_store_all(|| async { saga_core::MemorySagaStore::new() }).await;
//! # }
//! ```

use std::future::Future;

mod parallel;
mod versions;
pub use parallel::{parallel_saga, trip_saga};
pub use versions::versioned_sagas;

use bytes::Bytes;

use crate::{
    transition, Error, SagaDefinition, SagaEvent, SagaId, SagaInstance, SagaStatus, SagaStore, Step,
};

/// The SPEC's create-order saga, for backend tests and benchmarks: `create_order`
/// (local, compensated by `cancel_order`), `payment` (`payment.debit`, compensated by
/// `payment.refund`, 30 s deadline; on timeout a blind refund if
/// `compensate_on_timeout`, else the step is abandoned), `confirm_order` (local).
pub fn create_order_saga(compensate_on_timeout: bool) -> SagaDefinition {
    SagaDefinition::new("create_order")
        .step(Step::new("create_order").compensate_with("cancel_order"))
        .step(
            Step::new("payment")
                .action("payment.debit")
                .compensate_with("payment.refund")
                .deadline(std::time::Duration::from_secs(30))
                .compensate_on_timeout(compensate_on_timeout),
        )
        .step(Step::new("confirm_order"))
        .build()
        .expect("valid definition")
}

/// A [`CommandSink`](crate::CommandSink) for tests: a command whose name has a dot
/// (`payment.debit`) is a remote step, enqueued on `saga.commands` (key: the saga id)
/// in the orchestrator's unit of work; any other is a local step that succeeds at once.
#[derive(Debug, Clone)]
pub struct OutboxSink<O>(pub O);

impl<O: outbox::OutboxStore> crate::CommandSink<O::Tx> for OutboxSink<O> {
    async fn dispatch(
        &self,
        tx: &mut O::Tx,
        saga: &SagaInstance,
        cmd: &crate::SagaCommand,
    ) -> crate::Result<crate::Dispatched> {
        if !cmd.name.contains('.') {
            return Ok(crate::Dispatched::Succeeded);
        }
        let m = outbox::OutboxMessage::new("saga.commands", saga.id.to_string(), cmd.name.clone());
        self.0.enqueue(tx, m).await.map_err(Error::dispatch)?;
        Ok(crate::Dispatched::Sent)
    }
}

/// Start a `saga_type` saga `id` in a unit of work of its own and commit it; the names
/// of the commands it sent.
async fn start_committed<S: SagaStore, K: crate::CommandSink<S::Tx>>(
    orch: &crate::Orchestrator<S, K>,
    saga_type: &str,
    id: crate::SagaId,
) -> Vec<String> {
    let mut tx = orch.store().begin().await.expect("begin");
    let applied = orch
        .start(&mut tx, saga_type, id, Bytes::from_static(b"data"))
        .await
        .expect("start");
    orch.store().commit(tx).await.expect("commit");
    applied.sent.into_iter().map(|c| c.name).collect()
}

fn def() -> SagaDefinition {
    SagaDefinition::new("conformance")
        // Not the default version: a store must keep it.
        .version(7)
        .step(Step::new("a").compensate_with("undo_a"))
        .step(Step::new("b"))
        .build()
        .expect("valid definition")
}

fn instance(deadline: Option<i64>) -> SagaInstance {
    let d = def();
    let mut s = SagaInstance::new(
        &d,
        SagaId::new(),
        Bytes::from_static(b"\x00data\xff"),
        1_000,
    );
    s.state = transition(&d, &s.state, &SagaEvent::Start)
        .expect("start")
        .state;
    s.deadlines[0] = deadline;
    s
}

/// Run every saga-store check, each on a fresh store from `fresh`.
pub async fn saga_store_all<S, F, Fut>(fresh: F)
where
    S: SagaStore,
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
{
    round_trip_and_duplicate_insert(&fresh().await).await;
    optimistic_versions(&fresh().await).await;
    rollback_discards(&fresh().await).await;
    due_deadlines_in_order(&fresh().await).await;
    history_find_and_census(&fresh().await).await;
}

/// The operators' queries, where the backend supports them (`None` = not supported,
/// allowed): history kept in order per saga and committed with the unit of work;
/// `find` filtering by status, idle time and overdue deadline, least recently updated
/// first, within the limit; `census` counting only unfinished sagas.
pub async fn history_find_and_census<S: SagaStore>(store: &S) {
    let mut old = instance(Some(5_000));
    old.updated_at = 1_000;
    let mut new = instance(None);
    new.updated_at = 3_000;
    let mut done = instance(None);
    done.state.status = SagaStatus::Completed;
    let entry = |version: u64, name: &str| crate::HistoryEntry {
        version,
        at_ms: 1_000 + version as i64,
        kind: "event".into(),
        name: name.into(),
        detail: format!("detail of {name}"),
        trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
    };
    let mut tx = store.begin().await.unwrap();
    for s in [&old, &new, &done] {
        store.insert(&mut tx, s).await.unwrap();
    }
    store
        .append_history(
            &mut tx,
            old.id,
            0,
            &[entry(0, "start"), entry(0, "dispatch")],
        )
        .await
        .unwrap();
    store.commit(tx).await.unwrap();
    let mut tx = store.begin().await.unwrap();
    store
        .append_history(&mut tx, old.id, 1, &[entry(1, "never committed")])
        .await
        .unwrap();
    drop(tx); // rolled back
    let mut tx = store.begin().await.unwrap();
    store
        .append_history(&mut tx, old.id, 1, &[entry(1, "reply")])
        .await
        .unwrap();
    store.commit(tx).await.unwrap();

    if let Some(h) = store.history(old.id).await.unwrap() {
        let names: Vec<&str> = h.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["start", "dispatch", "reply"]);
        assert_eq!(h[2], entry(1, "reply"));
        assert_eq!(store.history(new.id).await.unwrap(), Some(Vec::new()));
    }

    let ids = |found: Option<Vec<SagaInstance>>| {
        found.map(|v| v.into_iter().map(|s| s.id).collect::<Vec<_>>())
    };
    let running = Some(SagaStatus::Running);
    let q = |status, updated_before_ms, deadline_before_ms, limit| crate::SagaQuery {
        status,
        updated_before_ms,
        deadline_before_ms,
        limit,
    };
    if let Some(all) = ids(store.find(&q(running, None, None, 0)).await.unwrap()) {
        assert_eq!(all, [old.id, new.id], "least recently updated first");
        let found = |query| async move { ids(store.find(&query).await.unwrap()).unwrap() };
        assert_eq!(found(q(running, Some(2_000), None, 0)).await, [old.id]);
        assert_eq!(found(q(None, None, Some(6_000), 0)).await, [old.id]);
        assert_eq!(found(q(None, None, Some(4_000), 0)).await, []);
        assert_eq!(found(q(running, None, None, 1)).await, [old.id]);
        assert_eq!(
            found(q(Some(SagaStatus::Completed), None, None, 0)).await,
            [done.id]
        );
    }

    if let Some(census) = store.census().await.unwrap() {
        assert_eq!(
            census,
            [crate::Census {
                saga_type: "conformance".into(),
                status: SagaStatus::Running,
                count: 2,
                oldest_update_ms: 1_000,
            }]
        );
    }
}

/// What is inserted is loaded back field for field — in a unit of work with `load`, and
/// with `get` once committed (not before); a second insert of the id fails.
pub async fn round_trip_and_duplicate_insert<S: SagaStore>(store: &S) {
    let s = instance(Some(5_000));
    let mut tx = store.begin().await.unwrap();
    store.insert(&mut tx, &s).await.unwrap();
    assert_eq!(
        store.get(s.id).await.unwrap(),
        None,
        "get saw an uncommitted insert"
    );
    store.commit(tx).await.unwrap();
    assert_eq!(store.get(s.id).await.unwrap().as_ref(), Some(&s));
    assert_eq!(store.get(SagaId::new()).await.unwrap(), None);

    let mut tx = store.begin().await.unwrap();
    let loaded = store
        .load(&mut tx, s.id)
        .await
        .unwrap()
        .expect("inserted saga");
    assert_eq!(loaded, s);
    assert!(store.load(&mut tx, SagaId::new()).await.unwrap().is_none());
    drop(tx);

    let mut tx = store.begin().await.unwrap();
    let dup = store.insert(&mut tx, &s).await;
    let dup_at_commit = match dup {
        Err(Error::AlreadyExists(id)) => {
            assert_eq!(id, s.id);
            false
        }
        Ok(()) => true,
        Err(e) => panic!("unexpected error {e}"),
    };
    if dup_at_commit {
        assert!(
            store.commit(tx).await.is_err(),
            "duplicate insert committed"
        );
    }
}

/// Updates must carry the next version; a stale writer gets a conflict and changes
/// nothing.
pub async fn optimistic_versions<S: SagaStore>(store: &S) {
    let s = instance(None);
    let mut tx = store.begin().await.unwrap();
    store.insert(&mut tx, &s).await.unwrap();
    store.commit(tx).await.unwrap();

    let mut next = s.clone();
    next.version = 1;
    next.state.status = SagaStatus::Compensating;
    next.state.failure_reason = Some("declined".into());
    let mut tx = store.begin().await.unwrap();
    store.update(&mut tx, &next).await.unwrap();
    store.commit(tx).await.unwrap();

    // A writer that loaded version 0 and now tries to write version 1 again.
    let mut stale = s.clone();
    stale.version = 1;
    stale.state.status = SagaStatus::Completed;
    let conflict = {
        // Scoped, so the refused unit of work is rolled back (and its locks released).
        let mut tx = store.begin().await.unwrap();
        match store.update(&mut tx, &stale).await {
            Err(Error::Conflict(_)) => true,
            Ok(()) => store.commit(tx).await.is_err(),
            Err(e) => panic!("unexpected error {e}"),
        }
    };
    assert!(conflict, "stale update was accepted");

    let mut tx = store.begin().await.unwrap();
    let now = store.load(&mut tx, s.id).await.unwrap().unwrap();
    assert_eq!(now, next);

    let mut missing = instance(None);
    missing.version = 1;
    assert!(store.update(&mut tx, &missing).await.is_err());
}

/// A dropped unit of work leaves the store as it was.
pub async fn rollback_discards<S: SagaStore>(store: &S) {
    let s = instance(None);
    let mut tx = store.begin().await.unwrap();
    store.insert(&mut tx, &s).await.unwrap();
    drop(tx);
    let mut tx = store.begin().await.unwrap();
    assert!(store.load(&mut tx, s.id).await.unwrap().is_none());
}

/// `due` returns sagas whose earliest deadline has passed, earliest first, up to `limit`.
pub async fn due_deadlines_in_order<S: SagaStore>(store: &S) {
    let late = instance(Some(3_000));
    let early = instance(Some(2_000));
    let future = instance(Some(9_000));
    let none = instance(None);
    let mut tx = store.begin().await.unwrap();
    for s in [&late, &early, &future, &none] {
        store.insert(&mut tx, s).await.unwrap();
    }
    store.commit(tx).await.unwrap();
    assert_eq!(store.due(5_000, 10).await.unwrap(), vec![early.id, late.id]);
    assert_eq!(store.due(5_000, 1).await.unwrap(), vec![early.id]);
    assert!(store.due(1_000, 10).await.unwrap().is_empty());
}
