//! Saga orchestration for distributed transactions.
//!
//! - [`SagaDefinition`]: ordered [`Step`]s, each an action command with an optional
//!   compensation and a reply deadline.
//! - [`transition`]: the state machine as a pure function over [`SagaState`] and
//!   [`SagaEvent`] (STARTED → *step*_PENDING → COMPLETED, or COMPENSATING → FAILED),
//!   handling deadlines, late successes, duplicates and out-of-order replies.
//! - [`SagaStore`]: persistence with optimistic concurrency, in the application's unit
//!   of work ([`MemorySagaStore`] here; SQLite and MySQL behind features), and
//!   [`SagaStore::get`] to read one outside any.
//! - [`Orchestrator`]: loads, transitions, dispatches commands through a
//!   [`CommandSink`] (typically into the transactional outbox) and saves — atomically.
//! - [`wire`]: the format commands and replies travel in (headers beside your payload),
//!   with helpers both ways and a ready-made [`ReplyHandler`](wire::ReplyHandler) that
//!   applies replies to their sagas — no protocol of your own to write.
//!
//! ```
//! use bytes::Bytes;
//! use outbox::memory::MemoryTx;
//! use saga_core::*;
//!
//! /// Remote steps are "sent"; local ones run in place.
//! struct Sink;
//! impl CommandSink<MemoryTx> for Sink {
//!     async fn dispatch(&self, _tx: &mut MemoryTx, _saga: &SagaInstance, cmd: &SagaCommand)
//!         -> saga_core::Result<Dispatched> {
//!         Ok(if cmd.name.starts_with("payment.") { Dispatched::Sent } else { Dispatched::Succeeded })
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> saga_core::Result<()> {
//! let def = SagaDefinition::new("create_order")
//!     .step(Step::new("create_order").compensate_with("cancel_order"))
//!     .step(Step::new("payment").action("payment.debit").compensate_with("payment.refund"))
//!     .step(Step::new("confirm_order"))
//!     .build()?;
//! let orch = Orchestrator::new(MemorySagaStore::new(), Sink).register(def);
//!
//! let id = SagaId::new();
//! let mut tx = MemoryTx::new();
//! let started = orch.start(&mut tx, "create_order", id, Bytes::new()).await?;
//! tx.commit()?;
//! assert_eq!(started.sent[0].name, "payment.debit");
//!
//! // The payment service replied "debited":
//! let done = orch.handle_and_commit(id, SagaEvent::StepSucceeded { step: 1 }).await?;
//! assert_eq!(done.saga.state.status, SagaStatus::Completed);
//! # Ok(())
//! # }
//! ```
//!
//! # Spans and metrics
//!
//! [`Orchestrator::start`] and [`Orchestrator::handle`] run in `saga.start` /
//! `saga.handle` spans (`saga_id`, `saga_type`, `event`); commands they emit through the
//! outbox carry the span's trace context when `outbox`'s `opentelemetry` feature is on.
//! Metrics go through the [`metrics`](https://docs.rs/metrics) facade (a no-op until
//! the application installs a recorder):
//!
//! | name | type | labels | what |
//! |---|---|---|---|
//! | `saga_started_total` | counter | `saga` | sagas started |
//! | `saga_finished_total` | counter | `saga`, `outcome` | sagas ended: `completed`, `compensated` (undone after a failure), `failed` (failed with nothing to undo) |
//! | `saga_compensations_started_total` | counter | `saga` | sagas that began compensating |
//! | `saga_duration_seconds` | histogram | `saga`, `outcome` | start → end |
//! | `saga_instances` | gauge | `saga`, `status` | unfinished sagas by status (`STARTED`, `RUNNING`, `COMPENSATING`), every 5 s from [`Orchestrator::run_deadlines`] |
//! | `saga_oldest_update_age_seconds` | gauge | `saga`, `status` | how long the stalest of them has not moved |
//!
//! The counters of every registered saga type exist at 0 from [`Orchestrator::register`]
//! on, so an alert on them sees 0 rather than nothing.
//!
//! # Semver
//!
//! `Error`, `Dispatched` and `Applied` are `#[non_exhaustive]`. The state machine's
//! enums (`SagaStatus`, `StepStatus`, `SagaEvent`, `CommandKind`) are exhaustive on
//! purpose: a new state or event changes what every caller must handle, so it comes
//! with a major version. Store data (`SagaInstance`, `HistoryEntry`, `SagaQuery`,
//! `Census`) stays open for backends to build.
//!
//! # Cargo features
//!
#![doc = document_features::document_features!()]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]

#[cfg(feature = "conformance")]
pub mod conformance;
mod definition;
mod diagram;
mod error;
mod instance;
mod machine;
#[cfg(feature = "mysql")]
pub mod mysql;
mod orchestrator;
#[cfg(any(feature = "mysql", feature = "sqlite"))]
mod sql;
#[cfg(feature = "sqlite")]
pub mod sqlite;
mod store;
pub mod wire;

pub use definition::{SagaDefinition, SagaDefinitionBuilder, Step};
pub use error::{Error, Result};
pub use instance::{SagaId, SagaInstance};
pub use machine::{
    transition, CommandKind, Ignored, SagaEvent, SagaState, SagaStatus, StepCommand, StepStatus,
    Transition, UnknownName,
};
pub use orchestrator::{Applied, CommandSink, Dispatched, Orchestrator, SagaCommand};
pub use store::{Census, HistoryEntry, MemorySagaStore, SagaQuery, SagaStore, UNFINISHED};

// The crates this API takes and returns, re-exported so a user needs no matching
// versions of their own: saga data is `bytes::Bytes`, ids wrap `uuid::Uuid`, and the
// unit of work and the outbox come from `outbox`.
pub use bytes;
pub use outbox;
/// `sqlx` 0.8, the SQL toolkit behind the `mysql` and `sqlite` stores (the same as
/// `outbox::sqlx`).
#[cfg(any(feature = "mysql", feature = "sqlite"))]
pub use sqlx;
pub use uuid;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
