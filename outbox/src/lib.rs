//! The transactional outbox, and its consumer-side counterpart.
//!
//! 1. **Enqueue** a message with [`OutboxStore::enqueue`] inside the same unit of work
//!    (database transaction) as the business write: both commit or neither does.
//! 2. A [`Relay`] claims batches, publishes them through a [`Publisher`] (Kafka in
//!    production) and marks them sent after the broker acknowledged them — at least
//!    once, in order per key, with leases so several relays can share an outbox; a
//!    message whose publish fails backs off on its own, the other keys flow on.
//! 3. Consumers run their handler through an [`IdempotentConsumer`]: an [`Inbox`]
//!    record in the handler's own unit of work drops redeliveries, transient failures
//!    are retried with backoff, and what still fails goes to a [`DeadLetter`] sink.
//!
//! In-memory backends live in [`memory`], and [`local::LocalBus`] is an in-process
//! broker for single-process deployments; SQLite, MySQL, Kafka and Redis backends come
//! behind cargo features (below), as does OpenTelemetry context through the broker.
//!
//! ```
//! use outbox::memory::{MemoryBroker, MemoryOutbox};
//! use outbox::{OutboxMessage, OutboxStore, Relay, RelayConfig, Transactional};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> outbox::Result<()> {
//! let store = MemoryOutbox::new();
//! let mut tx = store.begin().await?;
//! store.enqueue(&mut tx, OutboxMessage::new("saga.commands", "order-1", "debit")).await?;
//! store.commit(tx).await?;
//!
//! let broker = MemoryBroker::new();
//! let relay = Relay::new(store.clone(), broker.clone(), RelayConfig::default());
//! let report = relay.run_once().await?;
//! assert_eq!(report.published, 1);
//! assert_eq!(broker.published_on("saga.commands").len(), 1);
//! # Ok(())
//! # }
//! ```
//!
//! # Semver
//!
//! Settings (`RelayConfig`, `kafka::ConsumerConfig`) and reports (`RoundReport`,
//! `kafka::ConsumerStats`) are `#[non_exhaustive]`: build settings from
//! `RelayConfig::with_id` / `ConsumerConfig::new` and their `with_*` methods (or assign
//! fields), so a new setting is not a breaking change. So are the enums that may grow
//! (`Error`, `HandlerError`, `DeliveryOutcome`). Deliberately open: the data that
//! backends and callers build field by field (`OutboxMessage`, `Delivery`, `Backlog`) and
//! `idempotency::Reservation`, whose states every caller must handle.
//!
//! # Cargo features
//!
#![doc = document_features::document_features!()]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]

#[cfg(feature = "conformance")]
pub mod conformance;
mod consumer;
mod error;
pub mod idempotency;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod local;
pub mod memory;
mod message;
#[cfg(feature = "mysql")]
pub mod mysql;
mod relay;
#[cfg(feature = "sqlite")]
pub mod sqlite;
mod store;
pub mod trace;

pub use consumer::{DeliveryOutcome, HandlerError, IdempotentConsumer, MessageHandler};
pub use error::{BoxError, Error, Result};
pub use message::{Delivery, Headers, MessageId, OutboxMessage, MESSAGE_ID_HEADER};
pub use relay::{Relay, RelayConfig, RelayHandle, RoundReport};
pub use store::{Backlog, DeadLetter, Inbox, OutboxStore, Publisher, Transactional};

// The crates this API takes and returns, re-exported so a user needs no matching
// version of their own (a second `sqlx` or `redis` in the build is a type mismatch,
// not a choice): payloads are `bytes::Bytes`, ids wrap `uuid::Uuid`.
pub use bytes;
/// The Kafka client (`rdkafka` 0.38) behind [`kafka`]: its `ClientConfig` and message
/// types, at the version this crate is built with.
#[cfg(feature = "kafka")]
pub use rdkafka;
/// The Redis client (`redis` 1.x) behind the Redis stores of [`idempotency`]: build
/// the `ConnectionManager` they take with this one.
#[cfg(feature = "redis")]
pub use redis;
/// `sqlx` 0.8, the SQL toolkit behind the `mysql` and `sqlite` modules: open pools and
/// transactions with this one (`outbox::sqlx::SqlitePool`, …).
#[cfg(any(feature = "mysql", feature = "sqlite"))]
pub use sqlx;
pub use uuid;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
