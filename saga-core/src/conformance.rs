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
    ) -> crate::Result<crate::Dispatch> {
        if !cmd.name.contains('.') {
            return Ok(crate::Dispatch::Succeeded);
        }
        let m = outbox::OutboxMessage::new("saga.commands", saga.id.to_string(), cmd.name.clone());
        self.0.enqueue(tx, m).await.map_err(Error::dispatch)?;
        Ok(crate::Dispatch::Sent)
    }
}

fn def() -> SagaDefinition {
    SagaDefinition::new("conformance")
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
}

/// What is inserted is loaded back field for field; a second insert of the id fails.
pub async fn round_trip_and_duplicate_insert<S: SagaStore>(store: &S) {
    let s = instance(Some(5_000));
    let mut tx = store.begin().await.unwrap();
    store.insert(&mut tx, &s).await.unwrap();
    store.commit(tx).await.unwrap();

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
