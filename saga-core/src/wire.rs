//! The saga wire format: how a [`SagaCommand`] travels to a participant and its
//! [`SagaReply`] back, as outbox messages — so neither side writes a protocol.
//!
//! The payload is yours (the participant's input, in any encoding; the reply's result);
//! what the orchestrator needs rides in headers, all prefixed `saga-`:
//!
//! | header | command | reply | value |
//! |---|---|---|---|
//! | `saga-id` | ✓ | ✓ | the saga's id (hyphenated UUID) |
//! | `saga-type` | ✓ | ✓ | the definition's name (`create_order`) |
//! | `saga-step` | ✓ | ✓ | the step's index (decimal) |
//! | `saga-step-name` | ✓ | ✓ | the step's name (`payment`) |
//! | `saga-kind` | ✓ | ✓ | `action` or `compensation` |
//! | `saga-command` | ✓ | ✓ | the command's name (`payment.debit`) |
//! | `saga-idempotency-key` | ✓ | ✓ | the same on every resend of the command |
//! | `saga-outcome` | | ✓ | `succeeded` or `failed` |
//! | `saga-reason` | | ✓ (when failed) | why it failed |
//!
//! The helpers go both ways: [`SagaCommand::to_message`] / [`SagaCommand::from_delivery`]
//! for the command, [`SagaReply::succeeded`] / [`SagaReply::failed`],
//! [`SagaReply::to_message`] / [`SagaReply::from_delivery`] for the reply, and
//! [`SagaReply::event`] for the [`SagaEvent`] it means. [`ReplyHandler`] is the whole
//! orchestrator side: a [`MessageHandler`] that applies each reply to its saga in the
//! consumer's unit of work.
//!
//! Headers are not authenticated: whoever can write to the topics can send commands and
//! replies. Restrict who may produce to them (broker ACLs), as for any message.
//!
//! ```
//! use saga_core::wire::SagaReply;
//! use saga_core::{CommandKind, SagaCommand, SagaEvent, SagaId};
//!
//! // The orchestrator's side (in a `CommandSink`): the command as an outbox message.
//! let cmd = SagaCommand {
//!     saga_id: SagaId::new(),
//!     saga_type: "book_trip".into(),
//!     step: 1,
//!     step_name: "hotel".into(),
//!     kind: CommandKind::Action,
//!     name: "hotel.reserve".into(),
//!     idempotency_key: "k-1".into(),
//! };
//! let out = cmd.to_message("trip.commands", "trip-7", r#"{"nights":2}"#);
//!
//! // The participant's side: the command back, then a reply.
//! let got = SagaCommand::from_delivery(&out.to_delivery())?;
//! assert_eq!(got, cmd);
//! let reply = SagaReply::failed(&got, "no rooms left")
//!     .to_message("trip.replies", "trip-7", "");
//!
//! // The orchestrator again: the reply is the event to apply.
//! let reply = SagaReply::from_delivery(&reply.to_delivery())?;
//! assert_eq!(reply.saga_id, cmd.saga_id);
//! assert_eq!(
//!     reply.event(),
//!     SagaEvent::StepFailed { step: 1, reason: "no rooms left".into() }
//! );
//! # Ok::<(), saga_core::wire::WireError>(())
//! ```

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use bytes::Bytes;
use outbox::{Delivery, HandlerError, Headers, MessageHandler, OutboxMessage};

use crate::{
    Applied, CommandKind, CommandSink, Error, Orchestrator, SagaCommand, SagaEvent, SagaId,
    SagaStore,
};

/// Header: the saga's id.
pub const SAGA_ID: &str = "saga-id";
/// Header: the saga's type (its definition's name).
pub const SAGA_TYPE: &str = "saga-type";
/// Header: the step's index.
pub const STEP: &str = "saga-step";
/// Header: the step's name.
pub const STEP_NAME: &str = "saga-step-name";
/// Header: `action` or `compensation`.
pub const KIND: &str = "saga-kind";
/// Header: the command's name.
pub const COMMAND: &str = "saga-command";
/// Header: the command's idempotency key.
pub const IDEMPOTENCY_KEY: &str = "saga-idempotency-key";
/// Header (replies): `succeeded` or `failed`.
pub const OUTCOME: &str = "saga-outcome";
/// Header (failed replies): why.
pub const REASON: &str = "saga-reason";

/// A message that is not a well-formed saga command or reply: which header is missing
/// or invalid. A consumer should dead-letter it (it will not get better).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a saga message: header `{header}` {problem}")]
pub struct WireError {
    /// The header.
    pub header: &'static str,
    /// `is missing`, or what is wrong with its value.
    pub problem: String,
}

impl WireError {
    fn missing(header: &'static str) -> Self {
        Self {
            header,
            problem: "is missing".into(),
        }
    }

    fn invalid(header: &'static str, value: &str) -> Self {
        Self {
            header,
            problem: format!("has an invalid value {value:?}"),
        }
    }
}

fn header<'a>(h: &'a Headers, name: &'static str) -> Result<&'a str, WireError> {
    h.get(name).ok_or(WireError::missing(name))
}

fn parsed<T: FromStr>(h: &Headers, name: &'static str) -> Result<T, WireError> {
    let v = header(h, name)?;
    v.parse().map_err(|_| WireError::invalid(name, v))
}

/// The command's own headers, shared by its reply.
fn put_command(h: &mut Headers, c: &SagaCommand) {
    h.insert(SAGA_ID, c.saga_id.to_string());
    h.insert(SAGA_TYPE, c.saga_type.clone());
    h.insert(STEP, c.step.to_string());
    h.insert(STEP_NAME, c.step_name.clone());
    h.insert(KIND, c.kind.as_str());
    h.insert(COMMAND, c.name.clone());
    h.insert(IDEMPOTENCY_KEY, c.idempotency_key.clone());
}

/// An outbox message whose headers `write` fills.
fn message(
    topic: impl Into<String>,
    key: impl Into<String>,
    payload: impl Into<Bytes>,
    write: impl FnOnce(&mut Headers),
) -> OutboxMessage {
    let mut m = OutboxMessage::new(topic, key, payload);
    write(&mut m.headers);
    m
}

fn read_command(h: &Headers) -> Result<SagaCommand, WireError> {
    let id = header(h, SAGA_ID)?;
    Ok(SagaCommand {
        saga_id: uuid::Uuid::parse_str(id)
            .map(SagaId)
            .map_err(|_| WireError::invalid(SAGA_ID, id))?,
        saga_type: header(h, SAGA_TYPE)?.to_owned(),
        step: parsed(h, STEP)?,
        step_name: header(h, STEP_NAME)?.to_owned(),
        kind: parsed(h, KIND)?,
        name: header(h, COMMAND)?.to_owned(),
        idempotency_key: header(h, IDEMPOTENCY_KEY)?.to_owned(),
    })
}

impl SagaCommand {
    /// The headers that carry this command ([module docs](self) list them).
    pub fn write_headers(&self, headers: &mut Headers) {
        put_command(headers, self);
    }

    /// The command as an outbox message to `topic` with `key` (one saga's messages keep
    /// their order under one key), `payload` the participant's input.
    pub fn to_message(
        &self,
        topic: impl Into<String>,
        key: impl Into<String>,
        payload: impl Into<Bytes>,
    ) -> OutboxMessage {
        message(topic, key, payload, |h| self.write_headers(h))
    }

    /// The command carried by `headers`.
    pub fn from_headers(headers: &Headers) -> Result<Self, WireError> {
        read_command(headers)
    }

    /// The command a participant received (its payload is `msg.payload`).
    pub fn from_delivery(msg: &Delivery) -> Result<Self, WireError> {
        read_command(&msg.headers)
    }
}

/// How a participant's command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done.
    Succeeded,
    /// Refused or failed for good (a business refusal: the saga compensates for an
    /// action, resends a compensation).
    Failed {
        /// Why.
        reason: String,
    },
}

/// A participant's answer to a [`SagaCommand`]: the command it answers and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaReply {
    /// The saga.
    pub saga_id: SagaId,
    /// The command answered (its saga type, step, kind, name and idempotency key).
    pub command: SagaCommand,
    /// How it ended.
    pub outcome: Outcome,
}

impl SagaReply {
    /// `cmd` succeeded.
    pub fn succeeded(cmd: &SagaCommand) -> Self {
        Self {
            saga_id: cmd.saga_id,
            command: cmd.clone(),
            outcome: Outcome::Succeeded,
        }
    }

    /// `cmd` failed because of `reason`.
    pub fn failed(cmd: &SagaCommand, reason: impl Into<String>) -> Self {
        Self {
            saga_id: cmd.saga_id,
            command: cmd.clone(),
            outcome: Outcome::Failed {
                reason: reason.into(),
            },
        }
    }

    /// The event this reply means for its saga: the step's action or compensation
    /// succeeded or failed.
    pub fn event(&self) -> SagaEvent {
        let step = self.command.step;
        match (self.command.kind, &self.outcome) {
            (CommandKind::Action, Outcome::Succeeded) => SagaEvent::StepSucceeded { step },
            (CommandKind::Action, Outcome::Failed { reason }) => SagaEvent::StepFailed {
                step,
                reason: reason.clone(),
            },
            (CommandKind::Compensation, Outcome::Succeeded) => {
                SagaEvent::CompensationSucceeded { step }
            }
            (CommandKind::Compensation, Outcome::Failed { reason }) => {
                SagaEvent::CompensationFailed {
                    step,
                    reason: reason.clone(),
                }
            }
        }
    }

    /// The headers that carry this reply.
    pub fn write_headers(&self, headers: &mut Headers) {
        put_command(headers, &self.command);
        match &self.outcome {
            Outcome::Succeeded => headers.insert(OUTCOME, "succeeded"),
            Outcome::Failed { reason } => {
                headers.insert(OUTCOME, "failed");
                headers.insert(REASON, reason.clone());
            }
        }
    }

    /// The reply as an outbox message to `topic` with `key`, `payload` the participant's
    /// result (may be empty).
    pub fn to_message(
        &self,
        topic: impl Into<String>,
        key: impl Into<String>,
        payload: impl Into<Bytes>,
    ) -> OutboxMessage {
        message(topic, key, payload, |h| self.write_headers(h))
    }

    /// The reply carried by `headers`.
    pub fn from_headers(headers: &Headers) -> Result<Self, WireError> {
        let command = read_command(headers)?;
        let outcome = match header(headers, OUTCOME)? {
            "succeeded" => Outcome::Succeeded,
            "failed" => Outcome::Failed {
                reason: headers.get(REASON).unwrap_or_default().to_owned(),
            },
            other => return Err(WireError::invalid(OUTCOME, other)),
        };
        Ok(Self {
            saga_id: command.saga_id,
            command,
            outcome,
        })
    }

    /// The reply the orchestrator received.
    pub fn from_delivery(msg: &Delivery) -> Result<Self, WireError> {
        Self::from_headers(&msg.headers)
    }
}

/// What [`ReplyHandler::on_applied`] keeps.
type OnApplied = Arc<dyn Fn(&Applied) + Send + Sync>;

/// The orchestrator's side of the wire: applies each reply ([`SagaReply::from_delivery`])
/// to its saga through [`Orchestrator::handle`], in the consumer's unit of work — run it
/// under an [`IdempotentConsumer`](outbox::IdempotentConsumer) so a redelivered reply is
/// skipped by the inbox (and a duplicate that gets through is ignored by the state
/// machine anyway).
///
/// A malformed reply, or one for a saga that does not exist, is a permanent failure
/// (dead-lettered); a storage error or a version conflict is retried. What the reply did
/// ([`Applied`]) goes to [`after_commit`](MessageHandler::after_commit), where
/// [`on_applied`](Self::on_applied) sees it — wake your relay there, since the reply may
/// have enqueued the next command.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use outbox::memory::{MemoryDeadLetters, MemoryInbox, MemoryOutbox};
/// use outbox::{DeliveryOutcome, IdempotentConsumer, Transactional};
/// use saga_core::conformance::{create_order_saga, OutboxSink};
/// use saga_core::wire::{ReplyHandler, SagaReply};
/// use saga_core::{MemorySagaStore, Orchestrator, SagaId, SagaStatus};
///
/// let store = MemorySagaStore::new();
/// let orchestrator = Arc::new(
///     Orchestrator::new(store.clone(), OutboxSink(MemoryOutbox::new()))
///         .register(create_order_saga(true)),
/// );
/// let mut tx = store.begin().await?;
/// let started = orchestrator.start(&mut tx, "create_order", SagaId::new(), "{}".into()).await?;
/// store.commit(tx).await?;
/// let debit = &started.sent[0]; // `payment.debit`, on its way to the participant
///
/// // The participant's reply arrives; the handler applies it.
/// let handler = ReplyHandler::new(orchestrator.clone())
///     .on_applied(|a| println!("saga {} is {}", a.saga.id, a.saga.state.status));
/// let consumer = IdempotentConsumer::new("replies", MemoryInbox::new(), MemoryDeadLetters::new());
/// let reply = SagaReply::succeeded(debit).to_message("saga.replies", "order-1", "");
/// assert_eq!(consumer.process(&reply.to_delivery(), &handler).await?, DeliveryOutcome::Processed);
/// let saga = store.get(debit.saga_id).expect("saga");
/// assert_eq!(saga.state.status, SagaStatus::Completed);
/// # Ok(()) }
/// ```
pub struct ReplyHandler<S, C> {
    orchestrator: Arc<Orchestrator<S, C>>,
    on_applied: Option<OnApplied>,
}

impl<S, C> ReplyHandler<S, C> {
    /// A handler feeding `orchestrator`.
    pub fn new(orchestrator: Arc<Orchestrator<S, C>>) -> Self {
        Self {
            orchestrator,
            on_applied: None,
        }
    }

    /// Call `f` with what each reply did, after its unit of work committed (not for
    /// duplicates the inbox skipped).
    pub fn on_applied(mut self, f: impl Fn(&Applied) + Send + Sync + 'static) -> Self {
        self.on_applied = Some(Arc::new(f));
        self
    }
}

impl<S, C> fmt::Debug for ReplyHandler<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplyHandler")
            .field("on_applied", &self.on_applied.is_some())
            .finish_non_exhaustive()
    }
}

impl<S, C> MessageHandler<S::Tx> for ReplyHandler<S, C>
where
    S: SagaStore,
    C: CommandSink<S::Tx>,
{
    type Output = Applied;

    async fn handle(&self, tx: &mut S::Tx, msg: &Delivery) -> Result<Applied, HandlerError> {
        let reply = SagaReply::from_delivery(msg).map_err(HandlerError::permanent)?;
        match self
            .orchestrator
            .handle(tx, reply.saga_id, reply.event())
            .await
        {
            Ok(applied) => Ok(applied),
            // A saga of a definition version that is not registered is dead-lettered
            // with the reason: replay it once the version is registered again.
            Err(
                e @ (Error::NotFound(_) | Error::UnknownType(_) | Error::UnknownVersion { .. }),
            ) => Err(HandlerError::permanent(e)),
            Err(e) => Err(HandlerError::infrastructure(e)),
        }
    }

    async fn after_commit(&self, _msg: &Delivery, applied: Applied) {
        if let Some(f) = &self.on_applied {
            f(&applied);
        }
    }
}
