//! A saga with a parallel group driven end to end by the [`Orchestrator`] over a store:
//! both members sent in one unit of work, each with its own deadline, joined once, and
//! compensated as the state machine says — on every backend.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::OutboxSink;
use crate::{Orchestrator, SagaDefinition, SagaEvent, SagaId, SagaStatus, SagaStore, Step};

/// The trip saga of the docs: `flight.book` ∥ `hotel.book` (deadlines 20 s and 10 s,
/// each compensated), then `charge.debit` (compensated by `charge.refund`). Every step is
/// remote (its command goes to the outbox).
pub fn trip_saga() -> SagaDefinition {
    SagaDefinition::new("trip")
        .parallel([
            Step::new("flight")
                .action("flight.book")
                .compensate_with("flight.cancel")
                .deadline(Duration::from_secs(20)),
            Step::new("hotel")
                .action("hotel.book")
                .compensate_with("hotel.cancel")
                .deadline(Duration::from_secs(10)),
        ])
        .step(
            Step::new("charge")
                .action("charge.debit")
                .compensate_with("charge.refund"),
        )
        .build()
        .expect("valid definition")
}

/// [`trip_saga`] on a fresh `store` whose unit of work `outbox` shares: a group sent
/// together and joined once (replies in any order, duplicates changing nothing), a
/// member's failure abandoning the other and compensating it when it succeeds late, a
/// member's own deadline compensating it and abandoning the other.
pub async fn parallel_saga<S, O>(store: S, outbox: O)
where
    S: SagaStore,
    O: outbox::OutboxStore<Tx = S::Tx>,
{
    let clock = Arc::new(AtomicI64::new(1_000_000));
    let c = clock.clone();
    let orch = Orchestrator::new(store, OutboxSink(outbox))
        .register(trip_saga())
        .with_clock(move || c.load(Ordering::SeqCst));
    let def = trip_saga();
    let start = |id: SagaId| super::start_committed(&orch, "trip", id);
    let on = |id: SagaId, event: SagaEvent| {
        let orch = &orch;
        async move {
            let a = orch.handle_and_commit(id, event).await.expect("handle");
            (
                a.changed,
                a.sent.into_iter().map(|c| c.name).collect::<Vec<_>>(),
            )
        }
    };
    let saga = |id: SagaId| {
        let orch = &orch;
        async move {
            SagaStore::get(orch.store(), id)
                .await
                .expect("get")
                .expect("saga")
        }
    };
    let ok = |step| SagaEvent::StepSucceeded { step };

    // Sent together, each member with its own deadline; joined once.
    let a = SagaId::new();
    assert_eq!(start(a).await, ["flight.book", "hotel.book"]);
    let s = saga(a).await;
    assert_eq!(s.deadlines, [Some(1_020_000), Some(1_010_000), None]);
    assert_eq!(
        on(a, ok(1)).await,
        (true, vec![]),
        "hotel first: the join waits"
    );
    assert_eq!(
        on(a, ok(1)).await,
        (false, vec![]),
        "a duplicate changes nothing"
    );
    let s = saga(a).await;
    assert_eq!(s.state.label(&def), "FLIGHT_PENDING");
    assert_eq!(s.deadlines, [Some(1_020_000), None, None]);
    assert_eq!(on(a, ok(0)).await, (true, vec!["charge.debit".to_owned()]));
    assert_eq!(on(a, ok(0)).await, (false, vec![]));
    assert_eq!(on(a, ok(2)).await, (true, vec![]));
    assert_eq!(saga(a).await.state.status, SagaStatus::Completed);

    // The hotel refuses while the flight is out: failed, the flight abandoned — and
    // cancelled when its success arrives late.
    let b = SagaId::new();
    start(b).await;
    let refused = SagaEvent::StepFailed {
        step: 1,
        reason: "full".into(),
    };
    assert_eq!(on(b, refused).await, (true, vec![]));
    let s = saga(b).await;
    assert_eq!(s.state.status, SagaStatus::Failed);
    assert!(!s.is_terminal(), "the flight's answer may still come");
    assert_eq!(
        s.next_deadline(),
        None,
        "nobody waits for the abandoned flight"
    );
    assert_eq!(on(b, ok(0)).await, (true, vec!["flight.cancel".to_owned()]));
    let undone = SagaEvent::CompensationSucceeded { step: 0 };
    assert_eq!(on(b, undone).await, (true, vec![]));
    assert!(saga(b).await.is_terminal());

    // The hotel's own deadline (10 s) passes: cancelled blindly, the flight abandoned.
    let c = SagaId::new();
    start(c).await;
    clock.fetch_add(10_001, Ordering::SeqCst);
    let fired = orch.fire_due_deadlines(100).await.expect("deadlines");
    assert!(fired.contains(&c), "{fired:?}");
    let s = saga(c).await;
    assert_eq!(s.state.status, SagaStatus::Compensating);
    assert_eq!(
        s.state.steps,
        [
            crate::StepStatus::Abandoned,
            crate::StepStatus::Compensating,
            crate::StepStatus::NotStarted
        ]
    );
}
