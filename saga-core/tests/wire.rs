//! The saga wire format end to end on the memory backends: an orchestrator sends its
//! commands with `SagaCommand::to_message`, a participant reads them back with
//! `SagaCommand::from_delivery` and answers with `SagaReply`, and `ReplyHandler` applies
//! the answers — forward to COMPLETED, and back through the compensations on a refusal.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use outbox::memory::{MemoryDeadLetters, MemoryInbox, MemoryOutbox, MemoryTx};
use outbox::{Delivery, DeliveryOutcome, IdempotentConsumer, OutboxStore, Transactional};
use saga_core::wire::{self, Outcome, ReplyHandler, SagaReply, WireError};
use saga_core::{
    CommandKind, CommandSink, Dispatched, MemorySagaStore, Orchestrator, SagaCommand,
    SagaDefinition, SagaEvent, SagaId, SagaInstance, SagaStatus, SagaStore, Step,
};

/// flight, then hotel, then a local `charge`; each remote step compensated.
fn trip() -> SagaDefinition {
    SagaDefinition::new("book_trip")
        .step(
            Step::new("flight")
                .action("flight.book")
                .compensate_with("flight.cancel"),
        )
        .step(
            Step::new("hotel")
                .action("hotel.reserve")
                .compensate_with("hotel.release"),
        )
        .step(Step::new("charge"))
        .build()
        .unwrap()
}

/// Remote commands go out through the outbox in the wire format, the saga's data as the
/// payload; local ones succeed in place.
struct Sink(MemoryOutbox);

impl CommandSink<MemoryTx> for Sink {
    async fn dispatch(
        &self,
        tx: &mut MemoryTx,
        saga: &SagaInstance,
        cmd: &SagaCommand,
    ) -> saga_core::Result<Dispatched> {
        if !cmd.name.contains('.') {
            return Ok(Dispatched::Succeeded);
        }
        let msg = cmd.to_message("trip.commands", saga.id.to_string(), saga.data.clone());
        self.0.enqueue(tx, msg).await?;
        Ok(Dispatched::Sent)
    }
}

struct Trip {
    store: MemorySagaStore,
    outbox: MemoryOutbox,
    orchestrator: Arc<Orchestrator<MemorySagaStore, Sink>>,
    consumer: IdempotentConsumer<MemoryInbox, MemoryDeadLetters>,
    dead: MemoryDeadLetters,
    applied: Arc<AtomicUsize>,
    handler: ReplyHandler<MemorySagaStore, Sink>,
}

impl Trip {
    fn new() -> Self {
        let store = MemorySagaStore::new();
        let outbox = MemoryOutbox::new();
        let orchestrator =
            Arc::new(Orchestrator::new(store.clone(), Sink(outbox.clone())).register(trip()));
        let applied = Arc::new(AtomicUsize::new(0));
        let seen = applied.clone();
        let handler = ReplyHandler::new(orchestrator.clone()).on_applied(move |_| {
            seen.fetch_add(1, Ordering::SeqCst);
        });
        let dead = MemoryDeadLetters::new();
        Self {
            consumer: IdempotentConsumer::new("trip-replies", MemoryInbox::new(), dead.clone()),
            store,
            outbox,
            orchestrator,
            dead,
            applied,
            handler,
        }
    }

    async fn start(&self) -> SagaId {
        let id = SagaId::new();
        let mut tx = self.store.begin().await.unwrap();
        self.orchestrator
            .start(&mut tx, "book_trip", id, "2 travellers".into())
            .await
            .unwrap();
        self.store.commit(tx).await.unwrap();
        id
    }

    /// The commands waiting in the outbox, as a participant receives them (and marks
    /// them sent).
    async fn receive(&self) -> Vec<Delivery> {
        let claimed = self
            .outbox
            .claim("participant", 100, std::time::Duration::from_secs(30))
            .await
            .unwrap();
        let ids: Vec<_> = claimed.iter().map(|m| m.id).collect();
        self.outbox.mark_sent(&ids).await.unwrap();
        claimed.iter().map(|m| m.to_delivery()).collect()
    }

    async fn deliver(&self, reply: &SagaReply, key: &str) -> DeliveryOutcome {
        let msg = reply.to_message("trip.replies", key, "").to_delivery();
        self.consumer.process(&msg, &self.handler).await.unwrap()
    }

    async fn saga(&self, id: SagaId) -> SagaInstance {
        SagaStore::get(&self.store, id)
            .await
            .unwrap()
            .expect("saga")
    }
}

#[tokio::test]
async fn commands_and_replies_drive_a_saga_to_completed() {
    let t = Trip::new();
    let id = t.start().await;

    let sent = t.receive().await;
    assert_eq!(sent.len(), 1);
    let flight = SagaCommand::from_delivery(&sent[0]).unwrap();
    assert_eq!(
        (
            flight.saga_id,
            flight.saga_type.as_str(),
            flight.step,
            flight.step_name.as_str()
        ),
        (id, "book_trip", 0, "flight")
    );
    assert_eq!(
        (flight.kind, flight.name.as_str()),
        (CommandKind::Action, "flight.book")
    );
    assert_eq!(
        &sent[0].payload[..],
        b"2 travellers",
        "the payload is the sink's"
    );
    assert!(!t.saga(id).await.is_terminal());

    assert_eq!(
        t.deliver(&SagaReply::succeeded(&flight), "trip").await,
        DeliveryOutcome::Processed
    );
    let sent = t.receive().await;
    let hotel = SagaCommand::from_delivery(&sent[0]).unwrap();
    assert_eq!((hotel.step, hotel.name.as_str()), (1, "hotel.reserve"));
    assert_ne!(hotel.idempotency_key, flight.idempotency_key);

    let reply = t.deliver(&SagaReply::succeeded(&hotel), "trip").await;
    assert_eq!(reply, DeliveryOutcome::Processed);
    let saga = t.saga(id).await;
    assert_eq!(saga.state.status, SagaStatus::Completed);
    assert!(saga.is_terminal());
    assert_eq!(
        t.applied.load(Ordering::SeqCst),
        2,
        "on_applied once per reply"
    );
    assert!(t.dead.parked().is_empty());
}

#[tokio::test]
async fn a_refusal_compensates_through_the_wire_and_a_redelivery_is_skipped() {
    let t = Trip::new();
    let id = t.start().await;
    let flight = SagaCommand::from_delivery(&t.receive().await[0]).unwrap();
    t.deliver(&SagaReply::succeeded(&flight), "trip").await;
    let hotel = SagaCommand::from_delivery(&t.receive().await[0]).unwrap();

    // The hotel refuses: the flight is cancelled (the hotel had nothing to undo).
    let refused = SagaReply::failed(&hotel, "no rooms left");
    let msg = refused.to_message("trip.replies", "trip", "").to_delivery();
    assert_eq!(
        t.consumer.process(&msg, &t.handler).await.unwrap(),
        DeliveryOutcome::Processed
    );
    let saga = t.saga(id).await;
    assert_eq!(saga.state.status, SagaStatus::Compensating);
    assert_eq!(saga.state.failure_reason.as_deref(), Some("no rooms left"));
    // The same message again: the inbox skips it, the handler is not called.
    assert_eq!(
        t.consumer.process(&msg, &t.handler).await.unwrap(),
        DeliveryOutcome::Duplicate
    );
    assert_eq!(t.applied.load(Ordering::SeqCst), 2);

    let cancel = SagaCommand::from_delivery(&t.receive().await[0]).unwrap();
    assert_eq!(
        (cancel.step, cancel.kind, cancel.name.as_str()),
        (0, CommandKind::Compensation, "flight.cancel")
    );
    // A compensation that failed is sent again; one that succeeded ends the saga.
    t.deliver(&SagaReply::failed(&cancel, "airline busy"), "trip")
        .await;
    assert_eq!(t.saga(id).await.state.status, SagaStatus::Compensating);
    t.deliver(&SagaReply::succeeded(&cancel), "trip").await;
    let saga = t.saga(id).await;
    assert_eq!(saga.state.status, SagaStatus::Failed);
    assert!(saga.is_terminal());
}

#[tokio::test]
async fn a_malformed_reply_or_one_for_no_saga_is_dead_lettered() {
    let t = Trip::new();
    // No saga headers at all.
    let bare = outbox::OutboxMessage::new("trip.replies", "k", "ok").to_delivery();
    let outcome = t.consumer.process(&bare, &t.handler).await.unwrap();
    assert!(
        matches!(&outcome, DeliveryOutcome::DeadLettered { reason } if reason.contains("saga-id")),
        "{outcome:?}"
    );
    // Well-formed, but for a saga nobody started.
    let stranger = SagaCommand {
        saga_id: SagaId::new(),
        saga_type: "book_trip".into(),
        step: 0,
        step_name: "flight".into(),
        kind: CommandKind::Action,
        name: "flight.book".into(),
        idempotency_key: "x".into(),
    };
    let outcome = t.deliver(&SagaReply::succeeded(&stranger), "k").await;
    assert!(
        matches!(&outcome, DeliveryOutcome::DeadLettered { reason } if reason.contains("not found")),
        "{outcome:?}"
    );
    assert_eq!(t.dead.parked().len(), 2);
    assert_eq!(t.applied.load(Ordering::SeqCst), 0);
}

fn command() -> SagaCommand {
    SagaCommand {
        saga_id: SagaId::new(),
        saga_type: "book_trip".into(),
        step: 12,
        step_name: "hotel".into(),
        kind: CommandKind::Compensation,
        name: "hotel.release".into(),
        idempotency_key: "saga:12:compensation".into(),
    }
}

#[test]
fn every_field_survives_the_round_trip_both_ways() {
    let cmd = command();
    let msg = cmd.to_message("t", "k", "p");
    assert_eq!(SagaCommand::from_headers(&msg.headers), Ok(cmd.clone()));
    for (reply, event) in [
        (
            SagaReply::succeeded(&cmd),
            SagaEvent::CompensationSucceeded { step: 12 },
        ),
        (
            SagaReply::failed(&cmd, "busy"),
            SagaEvent::CompensationFailed {
                step: 12,
                reason: "busy".into(),
            },
        ),
    ] {
        let back = SagaReply::from_headers(&reply.to_message("t", "k", "").headers).unwrap();
        assert_eq!(back, reply);
        assert_eq!(back.event(), event);
    }
    let mut action = cmd.clone();
    action.kind = CommandKind::Action;
    assert_eq!(
        SagaReply::succeeded(&action).event(),
        SagaEvent::StepSucceeded { step: 12 }
    );
    assert_eq!(
        SagaReply::failed(&action, "no").event(),
        SagaEvent::StepFailed {
            step: 12,
            reason: "no".into()
        }
    );
    assert_eq!(
        SagaReply::failed(&action, "no").outcome,
        Outcome::Failed {
            reason: "no".into()
        }
    );
}

#[test]
fn a_missing_or_invalid_header_is_named() {
    let headers = command().to_message("t", "k", "").headers;
    for name in [
        wire::SAGA_ID,
        wire::SAGA_TYPE,
        wire::STEP,
        wire::STEP_NAME,
        wire::KIND,
        wire::COMMAND,
        wire::IDEMPOTENCY_KEY,
    ] {
        let without: outbox::Headers = headers.iter().filter(|(n, _)| *n != name).collect();
        let err = SagaCommand::from_headers(&without).unwrap_err();
        assert_eq!((err.header, err.problem.as_str()), (name, "is missing"));
    }
    for (name, bad) in [
        (wire::SAGA_ID, "not-a-uuid"),
        (wire::STEP, "-1"),
        (wire::KIND, "undo"),
    ] {
        let mut h = headers.clone();
        h.insert(name, bad);
        let err: WireError = SagaCommand::from_headers(&h).unwrap_err();
        assert_eq!(err.header, name);
        assert!(err.problem.contains(bad), "{err}");
    }
    // A reply needs its outcome, and only `succeeded` or `failed`.
    let err = SagaReply::from_headers(&headers).unwrap_err();
    assert_eq!(
        (err.header, err.problem.as_str()),
        (wire::OUTCOME, "is missing")
    );
    let mut h = headers.clone();
    h.insert(wire::OUTCOME, "maybe");
    assert_eq!(
        SagaReply::from_headers(&h).unwrap_err().header,
        wire::OUTCOME
    );
}
