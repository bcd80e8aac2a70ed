//! The MySQL outbox of a service, drained by leased claims or as a stream
//! (`OUTBOX_STREAM`, see [`KafkaTuning::outbox_stream`](crate::messaging::KafkaTuning::outbox_stream)).

use std::time::Duration;

use outbox::mysql::{MySqlOutbox, MySqlStreamingOutbox, MySqlTx};
use outbox::{Backlog, MessageId, OutboxMessage, OutboxStore, Result, Transactional};
use sqlx::MySqlPool;

/// [`MySqlOutbox`] (any number of relays share the work, a failed publish holds back
/// its key only) or [`MySqlStreamingOutbox`] (one relay at a time, no write per message),
/// chosen at start. Both write the same table in the same way, so the business code and
/// `enqueue` do not depend on the choice.
#[derive(Debug, Clone)]
pub enum MySqlServiceOutbox {
    /// Leased claims.
    Claims(MySqlOutbox),
    /// The stream.
    Stream(MySqlStreamingOutbox),
}

impl MySqlServiceOutbox {
    /// The outbox over `pool`: streaming if `stream`.
    pub fn new(pool: MySqlPool, stream: bool) -> Self {
        if stream {
            Self::Stream(MySqlStreamingOutbox::new(pool))
        } else {
            Self::Claims(MySqlOutbox::new(pool))
        }
    }
}

impl Transactional for MySqlServiceOutbox {
    type Tx = MySqlTx;

    async fn begin(&self) -> Result<MySqlTx> {
        match self {
            Self::Claims(o) => o.begin().await,
            Self::Stream(o) => o.begin().await,
        }
    }

    async fn commit(&self, tx: MySqlTx) -> Result<()> {
        match self {
            Self::Claims(o) => o.commit(tx).await,
            Self::Stream(o) => o.commit(tx).await,
        }
    }
}

impl OutboxStore for MySqlServiceOutbox {
    async fn enqueue(&self, tx: &mut MySqlTx, msg: OutboxMessage) -> Result<()> {
        match self {
            Self::Claims(o) => o.enqueue(tx, msg).await,
            Self::Stream(o) => o.enqueue(tx, msg).await,
        }
    }

    async fn claim(
        &self,
        relay_id: &str,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<OutboxMessage>> {
        match self {
            Self::Claims(o) => o.claim(relay_id, limit, lease).await,
            Self::Stream(o) => o.claim(relay_id, limit, lease).await,
        }
    }

    async fn mark_sent(&self, ids: &[MessageId]) -> Result<()> {
        match self {
            Self::Claims(o) => o.mark_sent(ids).await,
            Self::Stream(o) => o.mark_sent(ids).await,
        }
    }

    async fn record_failure(
        &self,
        id: MessageId,
        error: &str,
        retry_after: Duration,
    ) -> Result<()> {
        match self {
            Self::Claims(o) => o.record_failure(id, error, retry_after).await,
            Self::Stream(o) => o.record_failure(id, error, retry_after).await,
        }
    }

    async fn release(&self, ids: &[MessageId]) -> Result<()> {
        match self {
            Self::Claims(o) => o.release(ids).await,
            Self::Stream(o) => o.release(ids).await,
        }
    }

    async fn purge_sent(&self, retention: Duration) -> Result<u64> {
        match self {
            Self::Claims(o) => o.purge_sent(retention).await,
            Self::Stream(o) => o.purge_sent(retention).await,
        }
    }

    async fn backlog(&self) -> Result<Option<Backlog>> {
        match self {
            Self::Claims(o) => o.backlog().await,
            Self::Stream(o) => o.backlog().await,
        }
    }
    async fn relay_stopped(&self, relay_id: &str) -> Result<()> {
        match self {
            Self::Claims(o) => o.relay_stopped(relay_id).await,
            Self::Stream(o) => o.relay_stopped(relay_id).await,
        }
    }
}
