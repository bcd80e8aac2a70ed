//! Parallel groups: a table of the transitions that matter for a trip saga
//! (flight ∥ hotel, then charge), and properties checked on every state the machine can
//! reach (found by BFS) for several group shapes: the join waits for every member,
//! nothing that succeeded is left uncompensated, duplicates change nothing, every state
//! can still end.

use std::time::Duration;

use super::tests::{events_for as events, reachable, st};
use super::*;
use crate::Step;

fn trip() -> SagaDefinition {
    SagaDefinition::new("trip")
        .parallel([
            Step::new("flight")
                .compensate_with("flight.cancel")
                .deadline(Duration::from_secs(20)),
            Step::new("hotel")
                .compensate_with("hotel.cancel")
                .deadline(Duration::from_secs(10)),
        ])
        .step(Step::new("charge").compensate_with("refund"))
        .build()
        .unwrap()
}

/// Three members with every timeout policy, between two plain steps.
fn mixed() -> SagaDefinition {
    SagaDefinition::new("mixed")
        .step(Step::new("reserve").compensate_with("release"))
        .parallel([
            Step::new("a").compensate_with("undo_a"),
            Step::new("b")
                .compensate_with("undo_b")
                .compensate_on_timeout(false)
                .deadline(Duration::from_secs(5)),
            Step::new("c").deadline(Duration::from_secs(5)),
        ])
        .step(Step::new("notify"))
        .build()
        .unwrap()
}

/// Apply `event` and return (status, steps as letters, command names).
fn apply(
    def: &SagaDefinition,
    state: &SagaState,
    event: SagaEvent,
) -> (SagaStatus, String, Vec<String>) {
    let t = transition(def, state, &event).unwrap_or_else(|e| panic!("{e}"));
    let letters = t
        .state
        .steps
        .iter()
        .map(|s| match s {
            StepStatus::NotStarted => 'N',
            StepStatus::Awaiting => 'A',
            StepStatus::Succeeded => 'S',
            StepStatus::Failed => 'F',
            StepStatus::Abandoned => 'B',
            StepStatus::Compensating => 'C',
            StepStatus::Compensated => 'D',
        })
        .collect();
    (
        t.state.status,
        letters,
        t.commands.into_iter().map(|c| c.name).collect(),
    )
}

use SagaStatus::*;

#[test]
fn a_group_is_sent_together_and_joined() {
    let def = trip();
    let (s, steps, sent) = apply(&def, &SagaState::new(&def), SagaEvent::Start);
    assert_eq!((s, steps.as_str()), (Running, "AAN"));
    assert_eq!(sent, ["flight", "hotel"]);
    // One member done: the join still waits.
    let (s, steps, sent) = apply(
        &def,
        &st(Running, "AAN"),
        SagaEvent::StepSucceeded { step: 1 },
    );
    assert_eq!((s, steps.as_str(), sent.len()), (Running, "ASN", 0));
    let (s, steps, sent) = apply(
        &def,
        &st(Running, "ASN"),
        SagaEvent::StepSucceeded { step: 0 },
    );
    assert_eq!((s, steps.as_str()), (Running, "SSA"));
    assert_eq!(sent, ["charge"]);
    // The label is the first awaited member's.
    assert_eq!(st(Running, "ASN").label(&def), "FLIGHT_PENDING");
    assert_eq!(st(Running, "AAN").label(&def), "FLIGHT_PENDING");
}

#[test]
fn a_member_failing_abandons_the_others_and_undoes_the_done_ones() {
    let def = trip();
    // The hotel refuses after the flight was booked: the flight is cancelled.
    let (s, steps, sent) = apply(
        &def,
        &st(Running, "SAN"),
        SagaEvent::StepFailed {
            step: 1,
            reason: "full".into(),
        },
    );
    assert_eq!((s, steps.as_str()), (Compensating, "CFN"));
    assert_eq!(sent, ["flight.cancel"]);
    // The flight refuses while the hotel is still out: nothing to undo yet, the hotel is
    // abandoned — FAILED, but not over while its answer may come.
    let (s, steps, sent) = apply(
        &def,
        &st(Running, "AAN"),
        SagaEvent::StepFailed {
            step: 0,
            reason: "no seat".into(),
        },
    );
    assert_eq!((s, steps.as_str(), sent.len()), (Failed, "FBN", 0));
    assert!(!st(Failed, "FBN").is_terminal());
    // The hotel's late success: undone.
    let (s, steps, sent) = apply(
        &def,
        &st(Failed, "FBN"),
        SagaEvent::StepSucceeded { step: 1 },
    );
    assert_eq!((s, steps.as_str()), (Compensating, "FCN"));
    assert_eq!(sent, ["hotel.cancel"]);
    let (s, steps, _) = apply(
        &def,
        &st(Compensating, "FCN"),
        SagaEvent::CompensationSucceeded { step: 1 },
    );
    assert_eq!((s, steps.as_str()), (Failed, "FDN"));
    assert!(st(Failed, "FDN").is_terminal());
    // The hotel's deadline (its own, 10 s) passes first: compensated at once
    // (compensate_on_timeout), the flight abandoned.
    let (s, steps, sent) = apply(
        &def,
        &st(Running, "AAN"),
        SagaEvent::DeadlineExpired { step: 1 },
    );
    assert_eq!((s, steps.as_str()), (Compensating, "BCN"));
    assert_eq!(sent, ["hotel.cancel"]);
}

#[test]
fn a_group_is_compensated_all_at_once_after_the_later_stages() {
    let def = trip();
    let (s, steps, sent) = apply(
        &def,
        &st(Running, "SSA"),
        SagaEvent::StepFailed {
            step: 2,
            reason: "card".into(),
        },
    );
    assert_eq!((s, steps.as_str()), (Compensating, "CCF"));
    assert_eq!(sent, ["flight.cancel", "hotel.cancel"]);
    let (s, steps, sent) = apply(
        &def,
        &st(Compensating, "CCF"),
        SagaEvent::CompensationSucceeded { step: 1 },
    );
    assert_eq!((s, steps.as_str(), sent.len()), (Compensating, "CDF", 0));
    let (s, steps, _) = apply(
        &def,
        &st(Compensating, "CDF"),
        SagaEvent::CompensationSucceeded { step: 0 },
    );
    assert_eq!((s, steps.as_str()), (Failed, "DDF"));
    // Aborted while both are out: both compensated blindly.
    let abort = SagaEvent::Abort {
        reason: "user".into(),
    };
    let (s, steps, sent) = apply(&def, &st(Running, "AAN"), abort);
    assert_eq!((s, steps.as_str()), (Compensating, "CCN"));
    assert_eq!(sent, ["flight.cancel", "hotel.cancel"]);
}

/// The properties every reachable state and every transition out of it must have.
fn check_properties(def: &SagaDefinition) {
    use StepStatus as P;
    let states = reachable(def);
    let n = def.steps().len();
    for s in &states {
        let has = |p: P| s.steps.contains(&p);
        match s.status {
            Completed => assert!(s.steps.iter().all(|p| *p == P::Succeeded), "{s:?}"),
            Failed => assert!(!has(P::Awaiting) && !has(P::Compensating), "{s:?}"),
            Compensating => assert!(has(P::Compensating), "{s:?}"),
            Started => assert!(s.steps.iter().all(|p| *p == P::NotStarted), "{s:?}"),
            Running => {
                // The join: one stage awaited, every stage before it done, none after begun.
                let first = s.awaiting_step().unwrap_or_else(|| panic!("{s:?}"));
                let stage = def.stage(first);
                for j in 0..n {
                    let ok = if j < stage.start {
                        s.steps[j] == P::Succeeded
                    } else if j < stage.end {
                        matches!(s.steps[j], P::Awaiting | P::Succeeded)
                    } else {
                        s.steps[j] == P::NotStarted
                    };
                    assert!(ok, "step {j} of {s:?}");
                }
            }
        }
        // Nothing that succeeded is left undone once the saga has failed for good.
        if s.status == Failed && s.is_terminal() {
            for (j, p) in s.steps.iter().enumerate() {
                assert!(
                    !(*p == P::Succeeded && def.steps()[j].compensation.is_some()),
                    "lost compensation of step {j} in {s:?}"
                );
            }
        }
        for event in events(n) {
            let Ok(t) = transition(def, s, &event) else {
                continue;
            };
            for c in &t.commands {
                let want = match c.kind {
                    CommandKind::Action => P::Awaiting,
                    CommandKind::Compensation => P::Compensating,
                };
                assert_eq!(
                    t.state.steps[c.step], want,
                    "{c:?} after {event:?} in {s:?}"
                );
            }
            // A reply delivered twice changes nothing the second time.
            if matches!(
                event,
                SagaEvent::StepSucceeded { .. }
                    | SagaEvent::StepFailed { .. }
                    | SagaEvent::CompensationSucceeded { .. }
            ) {
                assert!(
                    transition(def, &t.state, &event).is_err(),
                    "{event:?} twice from {s:?}"
                );
            }
        }
    }
    // Every reachable state can still end (COMPLETED, or FAILED with nothing pending).
    let mut can_end: Vec<bool> = states.iter().map(SagaState::is_terminal).collect();
    loop {
        let mut grew = false;
        for (i, s) in states.iter().enumerate() {
            if can_end[i] {
                continue;
            }
            let reaches_end = events(n).iter().any(|e| {
                transition(def, s, e).is_ok_and(|t| {
                    let next = SagaState {
                        failure_reason: None,
                        ..t.state
                    };
                    states
                        .iter()
                        .position(|x| *x == next)
                        .is_some_and(|k| can_end[k])
                })
            });
            if reaches_end {
                can_end[i] = true;
                grew = true;
            }
        }
        if !grew {
            break;
        }
    }
    let stuck: Vec<_> = states.iter().zip(&can_end).filter(|(_, e)| !**e).collect();
    assert!(stuck.is_empty(), "states that can never end: {stuck:?}");
}

#[test]
fn every_reachable_state_of_a_parallel_saga_keeps_the_rules() {
    check_properties(&trip());
    check_properties(&mixed());
    // The sequential SPEC saga keeps them too.
    check_properties(&crate::conformance::create_order_saga(true));
    check_properties(&crate::conformance::create_order_saga(false));
}
