//! Every (state, event) pair over the SPEC saga: the table lists the pairs that change
//! something; every other pair must be ignored.

use super::*;
use crate::Step;
use std::time::Duration;

fn spec_def(compensate_on_timeout: bool) -> SagaDefinition {
    // (The dev-dependency on this crate turns `conformance` on for its tests.)
    crate::conformance::create_order_saga(compensate_on_timeout)
}

pub(super) fn st(status: SagaStatus, steps: &str) -> SagaState {
    SagaState {
        status,
        steps: steps
            .chars()
            .map(|c| match c {
                'N' => StepStatus::NotStarted,
                'A' => StepStatus::Awaiting,
                'S' => StepStatus::Succeeded,
                'F' => StepStatus::Failed,
                'B' => StepStatus::Abandoned,
                'C' => StepStatus::Compensating,
                'D' => StepStatus::Compensated,
                _ => panic!("bad step code {c}"),
            })
            .collect(),
        failure_reason: None,
    }
}

fn all_events() -> Vec<SagaEvent> {
    // Step 3 is out of range for a 3-step saga.
    events_for(4)
}

/// Every event, for steps `0..steps`.
pub(super) fn events_for(steps: usize) -> Vec<SagaEvent> {
    let mut v = vec![
        SagaEvent::Start,
        SagaEvent::Abort {
            reason: "user".into(),
        },
    ];
    for step in 0..steps {
        v.push(SagaEvent::StepSucceeded { step });
        v.push(SagaEvent::StepFailed {
            step,
            reason: "declined".into(),
        });
        v.push(SagaEvent::DeadlineExpired { step });
        v.push(SagaEvent::CompensationSucceeded { step });
        v.push(SagaEvent::CompensationFailed {
            step,
            reason: "db down".into(),
        });
    }
    v
}

use SagaStatus::*;

struct Row {
    state: SagaState,
    event: SagaEvent,
    status: SagaStatus,
    steps: &'static str,
    commands: &'static [&'static str],
}

fn row(
    state: SagaState,
    event: SagaEvent,
    status: SagaStatus,
    steps: &'static str,
    commands: &'static [&'static str],
) -> Row {
    Row {
        state,
        event,
        status,
        steps,
        commands,
    }
}

fn check(def: &SagaDefinition, states: &[SagaState], table: &[Row]) {
    let mut checked = 0;
    for state in states {
        for event in all_events() {
            let expected = table.iter().find(|r| r.state == *state && r.event == event);
            let got = transition(def, state, &event);
            match (expected, got) {
                (None, Err(_)) => {}
                (None, Ok(t)) => panic!("{state:?} + {event:?} should be ignored, got {t:?}"),
                (Some(_), Err(e)) => panic!("{state:?} + {event:?} should change, got {e}"),
                (Some(r), Ok(t)) => {
                    assert_eq!(t.state.status, r.status, "{state:?} + {event:?}");
                    assert_eq!(
                        t.state.steps,
                        st(r.status, r.steps).steps,
                        "{state:?} + {event:?}"
                    );
                    let names: Vec<&str> = t.commands.iter().map(|c| c.name.as_str()).collect();
                    assert_eq!(names, r.commands, "{state:?} + {event:?}");
                }
            }
            checked += 1;
        }
    }
    // Every state the machine can reach from the start must be in the list, so the
    // table covers what really happens, not only the shapes someone thought of.
    let unlisted: Vec<SagaState> = reachable(def)
        .into_iter()
        .filter(|r| !states.contains(r))
        .collect();
    assert!(
        unlisted.is_empty(),
        "reachable states missing from the table: {unlisted:?}"
    );
    // Every table row must name a state from the list (no dead rows).
    for r in table {
        assert!(
            states.contains(&r.state),
            "row for unlisted state {:?}",
            r.state
        );
    }
    assert_eq!(checked, states.len() * all_events().len());
}

/// Every state reachable from `Started` by any sequence of events (failure reasons
/// dropped: the table compares status and steps).
pub(super) fn reachable(def: &SagaDefinition) -> Vec<SagaState> {
    let mut seen = vec![SagaState::new(def)];
    let mut queue = seen.clone();
    while let Some(state) = queue.pop() {
        for event in events_for(def.steps().len().max(4)) {
            if let Ok(t) = transition(def, &state, &event) {
                let next = SagaState {
                    failure_reason: None,
                    ..t.state
                };
                if !seen.contains(&next) {
                    seen.push(next.clone());
                    queue.push(next);
                }
            }
        }
    }
    seen
}

fn succ(step: usize) -> SagaEvent {
    SagaEvent::StepSucceeded { step }
}
fn fail(step: usize) -> SagaEvent {
    SagaEvent::StepFailed {
        step,
        reason: "declined".into(),
    }
}
fn late(step: usize) -> SagaEvent {
    SagaEvent::DeadlineExpired { step }
}
fn csucc(step: usize) -> SagaEvent {
    SagaEvent::CompensationSucceeded { step }
}
fn cfail(step: usize) -> SagaEvent {
    SagaEvent::CompensationFailed {
        step,
        reason: "db down".into(),
    }
}
fn abort() -> SagaEvent {
    SagaEvent::Abort {
        reason: "user".into(),
    }
}

/// Every state the SPEC create-order saga can reach (with either timeout policy:
/// states of the other branch are listed too, their rows are the same).
fn spec_states() -> Vec<SagaState> {
    vec![
        st(Started, "NNN"),
        st(Running, "ANN"),
        st(Running, "SAN"),
        st(Running, "SSA"),
        st(Completed, "SSS"),
        st(Compensating, "CFN"), // payment declined, undoing the order
        st(Compensating, "SCN"), // payment timed out, refunding blindly
        st(Compensating, "CDN"), // refund done, cancelling the order
        st(Compensating, "SCF"), // confirm failed, refunding
        st(Compensating, "SCB"), // confirm timed out (no compensation), refunding
        st(Failed, "DFN"),
        st(Failed, "DDN"),
        st(Failed, "FNN"),
        st(Failed, "NNN"),
        st(Compensating, "CNN"), // the order step timed out / aborted: undoing it
        st(Failed, "DNN"),
        st(Compensating, "CDF"), // confirm failed, refund done, cancelling
        st(Failed, "DDF"),
        st(Compensating, "CDB"), // confirm timed out, refund done, cancelling
        st(Failed, "DDB"),       // ...and a late answer of the confirm may still come
        st(Compensating, "SCS"), // a late confirm success while refunding
        st(Compensating, "CDS"),
        st(Failed, "DDS"),
    ]
}

/// The rows of [`spec_states`] that change something (everything else is ignored).
fn spec_rows() -> Vec<Row> {
    vec![
        row(
            st(Started, "NNN"),
            SagaEvent::Start,
            Running,
            "ANN",
            &["create_order"],
        ),
        row(st(Started, "NNN"), abort(), Failed, "NNN", &[]),
        row(
            st(Running, "ANN"),
            succ(0),
            Running,
            "SAN",
            &["payment.debit"],
        ),
        row(st(Running, "ANN"), fail(0), Failed, "FNN", &[]),
        row(
            st(Running, "ANN"),
            late(0),
            Compensating,
            "CNN",
            &["cancel_order"],
        ),
        row(
            st(Running, "ANN"),
            abort(),
            Compensating,
            "CNN",
            &["cancel_order"],
        ),
        row(
            st(Running, "SAN"),
            succ(1),
            Running,
            "SSA",
            &["confirm_order"],
        ),
        row(
            st(Running, "SAN"),
            fail(1),
            Compensating,
            "CFN",
            &["cancel_order"],
        ),
        row(
            st(Running, "SAN"),
            late(1),
            Compensating,
            "SCN",
            &["payment.refund"],
        ),
        row(
            st(Running, "SAN"),
            abort(),
            Compensating,
            "SCN",
            &["payment.refund"],
        ),
        row(st(Running, "SSA"), succ(2), Completed, "SSS", &[]),
        row(
            st(Running, "SSA"),
            fail(2),
            Compensating,
            "SCF",
            &["payment.refund"],
        ),
        row(
            st(Running, "SSA"),
            late(2),
            Compensating,
            "SCB",
            &["payment.refund"],
        ),
        row(
            st(Running, "SSA"),
            abort(),
            Compensating,
            "SCB",
            &["payment.refund"],
        ),
        row(st(Compensating, "CFN"), csucc(0), Failed, "DFN", &[]),
        row(
            st(Compensating, "CFN"),
            cfail(0),
            Compensating,
            "CFN",
            &["cancel_order"],
        ),
        row(
            st(Compensating, "CFN"),
            late(0),
            Compensating,
            "CFN",
            &["cancel_order"],
        ),
        row(
            st(Compensating, "SCN"),
            csucc(1),
            Compensating,
            "CDN",
            &["cancel_order"],
        ),
        row(
            st(Compensating, "SCN"),
            cfail(1),
            Compensating,
            "SCN",
            &["payment.refund"],
        ),
        row(
            st(Compensating, "SCN"),
            late(1),
            Compensating,
            "SCN",
            &["payment.refund"],
        ),
        row(st(Compensating, "CDN"), csucc(0), Failed, "DDN", &[]),
        row(
            st(Compensating, "CDN"),
            cfail(0),
            Compensating,
            "CDN",
            &["cancel_order"],
        ),
        row(
            st(Compensating, "CDN"),
            late(0),
            Compensating,
            "CDN",
            &["cancel_order"],
        ),
        row(
            st(Compensating, "SCF"),
            csucc(1),
            Compensating,
            "CDF",
            &["cancel_order"],
        ),
        row(
            st(Compensating, "SCF"),
            cfail(1),
            Compensating,
            "SCF",
            &["payment.refund"],
        ),
        row(
            st(Compensating, "SCF"),
            late(1),
            Compensating,
            "SCF",
            &["payment.refund"],
        ),
        row(
            st(Compensating, "SCB"),
            csucc(1),
            Compensating,
            "CDB",
            &["cancel_order"],
        ),
        row(
            st(Compensating, "SCB"),
            cfail(1),
            Compensating,
            "SCB",
            &["payment.refund"],
        ),
        row(
            st(Compensating, "SCB"),
            late(1),
            Compensating,
            "SCB",
            &["payment.refund"],
        ),
        // A late answer from the abandoned confirm step: it cannot be undone, so it
        // is only recorded; a late failure likewise.
        row(st(Compensating, "SCB"), succ(2), Compensating, "SCS", &[]),
        row(st(Compensating, "SCB"), fail(2), Compensating, "SCF", &[]),
        // Undoing the order step alone (it timed out, or the saga was aborted).
        row(st(Compensating, "CNN"), csucc(0), Failed, "DNN", &[]),
        row(
            st(Compensating, "CNN"),
            cfail(0),
            Compensating,
            "CNN",
            &["cancel_order"],
        ),
        row(
            st(Compensating, "CNN"),
            late(0),
            Compensating,
            "CNN",
            &["cancel_order"],
        ),
        // After a failed confirm and its refund: cancelling the order.
        row(st(Compensating, "CDF"), csucc(0), Failed, "DDF", &[]),
        row(
            st(Compensating, "CDF"),
            cfail(0),
            Compensating,
            "CDF",
            &["cancel_order"],
        ),
        row(
            st(Compensating, "CDF"),
            late(0),
            Compensating,
            "CDF",
            &["cancel_order"],
        ),
        // After a timed-out confirm and its refund: cancelling; the confirm's late
        // answer is only recorded (it has nothing to undo).
        row(st(Compensating, "CDB"), csucc(0), Failed, "DDB", &[]),
        row(
            st(Compensating, "CDB"),
            cfail(0),
            Compensating,
            "CDB",
            &["cancel_order"],
        ),
        row(
            st(Compensating, "CDB"),
            late(0),
            Compensating,
            "CDB",
            &["cancel_order"],
        ),
        row(st(Compensating, "CDB"), succ(2), Compensating, "CDS", &[]),
        row(st(Compensating, "CDB"), fail(2), Compensating, "CDF", &[]),
        row(st(Failed, "DDB"), succ(2), Failed, "DDS", &[]),
        row(st(Failed, "DDB"), fail(2), Failed, "DDF", &[]),
        // A late confirm success recorded while refunding: the refund goes on, then
        // the order is cancelled (the confirm has no compensation).
        row(
            st(Compensating, "SCS"),
            csucc(1),
            Compensating,
            "CDS",
            &["cancel_order"],
        ),
        row(
            st(Compensating, "SCS"),
            cfail(1),
            Compensating,
            "SCS",
            &["payment.refund"],
        ),
        row(
            st(Compensating, "SCS"),
            late(1),
            Compensating,
            "SCS",
            &["payment.refund"],
        ),
        row(st(Compensating, "CDS"), csucc(0), Failed, "DDS", &[]),
        row(
            st(Compensating, "CDS"),
            cfail(0),
            Compensating,
            "CDS",
            &["cancel_order"],
        ),
        row(
            st(Compensating, "CDS"),
            late(0),
            Compensating,
            "CDS",
            &["cancel_order"],
        ),
    ]
}

#[test]
fn every_state_event_pair_compensating_on_timeout() {
    check(&spec_def(true), &spec_states(), &spec_rows());
}

#[test]
fn every_state_event_pair_awaiting_late_reply() {
    // With compensate_on_timeout = false, a timed-out payment is abandoned and only
    // a late success triggers its refund.
    // Every other row is the same as with compensate_on_timeout = true.
    let def = spec_def(false);
    let mut states = spec_states();
    states.extend([
        st(Compensating, "CBN"),
        st(Failed, "DBN"),
        st(Compensating, "DCN"),
        st(Compensating, "CCN"),
    ]);
    let mut table: Vec<Row> = spec_rows()
        .into_iter()
        .filter(|r| !(r.state == st(Running, "SAN") && (r.event == late(1) || r.event == abort())))
        .collect();
    table.extend(vec![
        row(
            st(Running, "SAN"),
            late(1),
            Compensating,
            "CBN",
            &["cancel_order"],
        ),
        row(
            st(Running, "SAN"),
            abort(),
            Compensating,
            "CBN",
            &["cancel_order"],
        ),
        row(st(Compensating, "CBN"), csucc(0), Failed, "DBN", &[]),
        row(
            st(Compensating, "CBN"),
            cfail(0),
            Compensating,
            "CBN",
            &["cancel_order"],
        ),
        row(
            st(Compensating, "CBN"),
            late(0),
            Compensating,
            "CBN",
            &["cancel_order"],
        ),
        // The late success after compensation began: refund it.
        row(
            st(Compensating, "CBN"),
            succ(1),
            Compensating,
            "CCN",
            &["payment.refund"],
        ),
        row(st(Compensating, "CBN"), fail(1), Compensating, "CFN", &[]),
        // ...and after the saga already FAILED.
        row(
            st(Failed, "DBN"),
            succ(1),
            Compensating,
            "DCN",
            &["payment.refund"],
        ),
        row(st(Failed, "DBN"), fail(1), Failed, "DFN", &[]),
        row(st(Compensating, "DCN"), csucc(1), Failed, "DDN", &[]),
        row(
            st(Compensating, "DCN"),
            cfail(1),
            Compensating,
            "DCN",
            &["payment.refund"],
        ),
        row(
            st(Compensating, "DCN"),
            late(1),
            Compensating,
            "DCN",
            &["payment.refund"],
        ),
        // The late success's refund and the order's cancellation both under way.
        row(st(Compensating, "CCN"), csucc(0), Compensating, "DCN", &[]),
        row(st(Compensating, "CCN"), csucc(1), Compensating, "CDN", &[]),
        row(
            st(Compensating, "CCN"),
            cfail(0),
            Compensating,
            "CCN",
            &["cancel_order"],
        ),
        row(
            st(Compensating, "CCN"),
            late(0),
            Compensating,
            "CCN",
            &["cancel_order"],
        ),
        row(
            st(Compensating, "CCN"),
            cfail(1),
            Compensating,
            "CCN",
            &["payment.refund"],
        ),
        row(
            st(Compensating, "CCN"),
            late(1),
            Compensating,
            "CCN",
            &["payment.refund"],
        ),
    ]);
    check(&def, &states, &table);
}

#[test]
fn every_state_event_pair_of_a_must_happen_step() {
    // The cancel saga: a refund that is resent until answered, then a local step.
    let def = SagaDefinition::new("cancel_order")
        .step(
            Step::new("refund")
                .action("payment.refund")
                .deadline(Duration::from_secs(30))
                .resend_on_timeout(true),
        )
        .step(Step::new("mark_cancelled"))
        .build()
        .unwrap();
    let states = vec![
        st(Started, "NN"),
        st(Running, "AN"),
        st(Running, "SA"),
        st(Completed, "SS"),
        st(Failed, "BN"),
        st(Failed, "NN"),
        st(Failed, "FN"),
        st(Failed, "SN"),
        st(Failed, "SB"),
        st(Failed, "SF"),
        st(Failed, "SS"),
    ];
    let table = vec![
        row(
            st(Started, "NN"),
            SagaEvent::Start,
            Running,
            "AN",
            &["payment.refund"],
        ),
        row(st(Started, "NN"), abort(), Failed, "NN", &[]),
        row(
            st(Running, "AN"),
            succ(0),
            Running,
            "SA",
            &["mark_cancelled"],
        ),
        row(st(Running, "AN"), fail(0), Failed, "FN", &[]),
        row(
            st(Running, "AN"),
            late(0),
            Running,
            "AN",
            &["payment.refund"],
        ),
        row(st(Running, "AN"), abort(), Failed, "BN", &[]),
        row(st(Running, "SA"), succ(1), Completed, "SS", &[]),
        row(st(Running, "SA"), fail(1), Failed, "SF", &[]),
        row(st(Running, "SA"), late(1), Failed, "SB", &[]),
        row(st(Running, "SA"), abort(), Failed, "SB", &[]),
        // Late answers of the abandoned refund are recorded, nothing to undo.
        row(st(Failed, "BN"), succ(0), Failed, "SN", &[]),
        row(st(Failed, "BN"), fail(0), Failed, "FN", &[]),
        // ...and those of an abandoned local step.
        row(st(Failed, "SB"), succ(1), Failed, "SS", &[]),
        row(st(Failed, "SB"), fail(1), Failed, "SF", &[]),
    ];
    check(&def, &states, &table);
}

#[test]
fn labels_follow_the_spec_names() {
    let def = spec_def(true);
    assert_eq!(st(Started, "NNN").label(&def), "STARTED");
    assert_eq!(st(Running, "SAN").label(&def), "PAYMENT_PENDING");
    assert_eq!(st(Completed, "SSS").label(&def), "COMPLETED");
    assert_eq!(st(Compensating, "CFN").label(&def), "COMPENSATING");
    assert_eq!(st(Failed, "DFN").label(&def), "FAILED");
    assert!(st(Failed, "DFN").is_terminal());
    assert!(!st(Failed, "DBN").is_terminal());
}

#[test]
fn compensation_runs_in_reverse_order_one_at_a_time() {
    let def = SagaDefinition::new("four")
        .step(Step::new("a").compensate_with("undo_a"))
        .step(Step::new("b").compensate_with("undo_b"))
        .step(Step::new("c"))
        .step(Step::new("d").compensate_with("undo_d"))
        .build()
        .unwrap();
    let mut s = SagaState::new(&def);
    for e in [SagaEvent::Start, succ(0), succ(1), succ(2)] {
        s = transition(&def, &s, &e).unwrap().state;
    }
    let mut t = transition(&def, &s, &fail(3)).unwrap();
    let mut undone = Vec::new();
    loop {
        assert!(t.commands.len() <= 1, "one compensation at a time");
        let Some(c) = t.commands.first().cloned() else {
            break;
        };
        undone.push(c.name.clone());
        t = transition(&def, &t.state, &csucc(c.step)).unwrap();
    }
    assert_eq!(undone, ["undo_b", "undo_a"]); // c has no compensation, d failed
    assert_eq!(t.state.status, Failed);
    assert_eq!(t.state.failure_reason.as_deref(), Some("declined"));
}

#[test]
fn names_parse_back_and_terminal_states_are_exactly_two() {
    for status in [Started, Running, Completed, Compensating, Failed] {
        assert_eq!(SagaStatus::parse(status.as_str()), Some(status));
        assert_eq!(status.to_string(), status.as_str());
    }
    assert_eq!(
        [Started, Running, Completed, Compensating, Failed].map(SagaStatus::as_str),
        ["STARTED", "RUNNING", "COMPLETED", "COMPENSATING", "FAILED"]
    );
    assert_eq!(SagaStatus::parse("completed"), None);
    assert_eq!(SagaStatus::parse(""), None);
    assert_eq!(CommandKind::Action.as_str(), "action");
    assert_eq!(CommandKind::Compensation.as_str(), "compensation");
    let names = [
        SagaEvent::Start,
        succ(0),
        fail(0),
        late(0),
        csucc(0),
        cfail(0),
        abort(),
    ]
    .map(|e| e.name());
    assert_eq!(
        names,
        [
            "start",
            "step_succeeded",
            "step_failed",
            "deadline_expired",
            "compensation_succeeded",
            "compensation_failed",
            "abort"
        ]
    );

    assert!(st(Completed, "SSS").is_terminal());
    assert!(!st(Started, "NNN").is_terminal());
    assert!(!st(Running, "SAN").is_terminal());
    assert!(!st(Compensating, "CFN").is_terminal());
    assert_eq!(st(Running, "SAN").awaiting_step(), Some(1));
    assert_eq!(st(Running, "ANN").awaiting_step(), Some(0));
    assert_eq!(st(Completed, "SSS").awaiting_step(), None);
    // Running with nothing awaited (between local steps) shows the status.
    assert_eq!(st(Running, "SNN").label(&spec_def(true)), "RUNNING");
}

/// A stored state whose status contradicts its steps (a row edited by hand, say: a
/// step AWAITING in a saga that is not RUNNING) is never driven by that step's
/// replies or deadline — in either timeout mode.
#[test]
fn an_awaiting_step_outside_running_is_not_driven() {
    // The spec's saga in both timeout modes, and one whose middle step is resent.
    let resend = SagaDefinition::new("resend")
        .step(Step::new("a"))
        .step(
            Step::new("b")
                .deadline(Duration::from_secs(30))
                .resend_on_timeout(true),
        )
        .step(Step::new("c"))
        .build()
        .unwrap();
    for def in [spec_def(true), spec_def(false), resend] {
        for status in [Started, Completed, Compensating, Failed] {
            let state = st(status, "SAN");
            for event in [succ(1), fail(1), late(1)] {
                assert!(
                    transition(&def, &state, &event).is_err(),
                    "{status:?} with step 1 awaiting must ignore {event:?}"
                );
            }
        }
    }
}

#[test]
fn mismatched_state_is_ignored_not_panicking() {
    let def = spec_def(true);
    assert!(transition(&def, &st(Started, "NN"), &SagaEvent::Start).is_err());
}
