//! A conformance suite every [`OutboxStore`] / [`Inbox`](crate::Inbox) backend must pass (feature
//! `conformance`). Each function takes a **fresh, empty** store and panics on a
//! violation; backend crates call them from their integration tests, so the memory,
//! MySQL and any user-written backend are held to exactly the same contract.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! use outbox::{conformance, memory::MemoryOutbox};
//! conformance::outbox_store_all(|| async { MemoryOutbox::new() }).await;
//! # }
//! ```

use crate::store::OutboxStore;
use crate::OutboxMessage;

pub(crate) fn msg(topic: &str, key: &str, n: usize) -> OutboxMessage {
    OutboxMessage::new(topic, key, format!("{key}#{n}"))
        .with_header("traceparent", format!("tp-{n}"))
}

async fn enqueue_committed<S: OutboxStore>(store: &S, msgs: Vec<OutboxMessage>) {
    let mut tx = store.begin().await.expect("begin");
    for m in msgs {
        store.enqueue(&mut tx, m).await.expect("enqueue");
    }
    store.commit(tx).await.expect("commit");
}

mod batch;
mod idempotency;
mod inbox;
mod outbox_store;
mod relay;

pub use batch::*;
pub use idempotency::*;
pub use inbox::*;
pub use outbox_store::*;
pub use relay::*;

/// A SQLite database file per test (features `conformance` + `sqlite`).
#[cfg(feature = "sqlite")]
pub mod sqlite;

/// A fresh MySQL database per call, for backend tests (features `conformance` + `mysql`).
#[cfg(feature = "mysql")]
pub mod mysql;
