//! Test doubles shared by the integration tests of this crate.
#![allow(dead_code)] // each test file uses part of it

use std::sync::Arc;
use std::time::Duration;

use outbox::memory::{MemoryInbox, MemoryTx};
use outbox::Transactional;

#[cfg(feature = "kafka")]
pub mod kafka;

/// A memory inbox whose unit of work cannot begin while `down` is set.
#[derive(Clone, Default)]
pub struct DownInbox {
    /// Where records go while up.
    pub inner: MemoryInbox,
    /// Set: `begin` fails as a database that is down would.
    pub down: Arc<std::sync::atomic::AtomicBool>,
    /// How many units of work were asked for.
    pub attempts: Arc<std::sync::atomic::AtomicU32>,
}

impl Transactional for DownInbox {
    type Tx = MemoryTx;
    async fn begin(&self) -> outbox::Result<MemoryTx> {
        self.attempts
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(outbox::Error::storage("database is down"));
        }
        self.inner.begin().await
    }
    async fn commit(&self, tx: MemoryTx) -> outbox::Result<()> {
        self.inner.commit(tx).await
    }
}

impl outbox::Inbox for DownInbox {
    async fn try_record(
        &self,
        tx: &mut MemoryTx,
        consumer: &str,
        id: outbox::MessageId,
    ) -> outbox::Result<bool> {
        self.inner.try_record(tx, consumer, id).await
    }
    async fn purge(&self, retention: Duration) -> outbox::Result<u64> {
        self.inner.purge(retention).await
    }
}
