//! The consumer side: idempotent handling with an inbox, retry, dead-lettering.

use std::fmt;
use std::future::Future;

use resilience::{Retry, RetryError};
use tracing::Instrument;

use crate::error::BoxError;
use crate::store::{DeadLetter, Inbox};
use crate::{Delivery, Error, Result};

mod batch;

/// Why a handler failed, which decides whether it is retried.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandlerError {
    /// Might succeed later (a database deadlock, a timeout): retried with backoff.
    #[error("transient: {0}")]
    Transient(#[source] BoxError),
    /// Will never succeed (undecodable payload, violated invariant): dead-lettered at once.
    #[error("permanent: {0}")]
    Permanent(#[source] BoxError),
    /// The handler's own infrastructure failed — the database is unreachable, a deadlock,
    /// a lock-wait timeout, a serialization conflict. Not the message's fault: retried
    /// without limit (with backoff) and never dead-lettered; [`process`] returns `Err`
    /// after its retries, so the caller does not settle the message and it comes again.
    ///
    /// [`process`]: IdempotentConsumer::process
    #[error("infrastructure: {0}")]
    Infrastructure(#[source] BoxError),
}

impl HandlerError {
    /// A transient failure.
    pub fn transient(e: impl Into<BoxError>) -> Self {
        Self::Transient(e.into())
    }

    /// A permanent failure.
    pub fn permanent(e: impl Into<BoxError>) -> Self {
        Self::Permanent(e.into())
    }

    /// An infrastructure failure (retried without limit, never dead-lettered).
    pub fn infrastructure(e: impl Into<BoxError>) -> Self {
        Self::Infrastructure(e.into())
    }
}

/// Business logic for one message, run inside the unit of work that also records the
/// message in the inbox: its writes (including outbox replies) commit together with
/// that record, or not at all.
///
/// The unit of work may carry other messages too
/// ([`IdempotentConsumer::process_batch`], which `run_consumer` and the in-process bus
/// use when several messages wait): a handler must not end it (commit or roll back by
/// hand), and should not count on it being fresh. A batch that runs over its time is
/// given up — its handlers' futures dropped where they wait, the unit of work rolled
/// back — and redone message by message, so `handle` must leave nothing half done
/// outside its unit of work when dropped at an `.await`. On MySQL's default isolation
/// (repeatable read) a plain `SELECT` sees the snapshot of the unit's first read, which
/// may be an earlier message's: read rows that other transactions change with a locking
/// read (`FOR UPDATE`) or guard the write (`UPDATE … WHERE version = ?`) — a stale read
/// then fails the write, the handler returns an error, and the message is redone on its
/// own.
pub trait MessageHandler<Tx>: Send + Sync {
    /// What [`handle`](Self::handle) decided that must only act once its unit of work
    /// committed (a reply to cache, an id to announce): handed to
    /// [`after_commit`](Self::after_commit). `()` when nothing follows a commit.
    type Output: Send;

    /// Handle `msg`, writing through `tx`.
    fn handle(
        &self,
        tx: &mut Tx,
        msg: &Delivery,
    ) -> impl Future<Output = std::result::Result<Self::Output, HandlerError>> + Send;

    /// Called after the unit of work of a processed message committed, with what
    /// `handle` returned: side effects that must only follow a commit, like invalidating
    /// a cache. Not called for duplicates, dead-lettered messages or attempts that did
    /// not commit. Default: nothing.
    fn after_commit(
        &self,
        msg: &Delivery,
        output: Self::Output,
    ) -> impl Future<Output = ()> + Send {
        let _ = (msg, output);
        async {}
    }
}

/// A shared handler is a handler: keep an `Arc` of it to look at its state, give the bus
/// or the consumer a clone.
impl<Tx: Send, H: MessageHandler<Tx>> MessageHandler<Tx> for std::sync::Arc<H> {
    type Output = H::Output;

    fn handle(
        &self,
        tx: &mut Tx,
        msg: &Delivery,
    ) -> impl Future<Output = std::result::Result<Self::Output, HandlerError>> + Send {
        (**self).handle(tx, msg)
    }

    fn after_commit(
        &self,
        msg: &Delivery,
        output: Self::Output,
    ) -> impl Future<Output = ()> + Send {
        (**self).after_commit(msg, output)
    }
}

/// What became of a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeliveryOutcome {
    /// Handled and committed.
    Processed,
    /// Already processed earlier: skipped, nothing written.
    Duplicate,
    /// Failed permanently or after the last retry; sent to the dead-letter sink.
    DeadLettered {
        /// Why.
        reason: String,
    },
}

/// Runs a [`MessageHandler`] for each delivery exactly once in effect: duplicates are dropped
/// by the [`Inbox`], transient failures retried with a [`Retry`] policy (default 3
/// attempts, 100/200 ms), and messages that still fail go to a [`DeadLetter`] sink
/// (also recorded in the inbox, so a redelivery is not dead-lettered twice).
///
/// When [`process`](Self::process) returns `Ok`, the delivery is settled and the caller
/// may commit its offset; on `Err` (the store or the dead-letter sink is down) it must
/// not, and the message will come again.
///
/// ```
/// use outbox::memory::{MemoryDeadLetters, MemoryInbox, MemoryTx};
/// use outbox::{Delivery, MessageHandler, HandlerError, IdempotentConsumer, OutboxMessage, DeliveryOutcome};
///
/// struct Print;
/// impl MessageHandler<MemoryTx> for Print {
///     type Output = ();
///     async fn handle(&self, _tx: &mut MemoryTx, msg: &Delivery) -> Result<(), HandlerError> {
///         println!("got {} bytes", msg.payload.len());
///         Ok(())
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> outbox::Result<()> {
/// let consumer = IdempotentConsumer::new("payment", MemoryInbox::new(), MemoryDeadLetters::new());
/// let msg = OutboxMessage::new("saga.commands", "order-1", "debit").to_delivery();
/// assert_eq!(consumer.process(&msg, &Print).await?, DeliveryOutcome::Processed);
/// assert_eq!(consumer.process(&msg, &Print).await?, DeliveryOutcome::Duplicate);
/// # Ok(())
/// # }
/// ```
pub struct IdempotentConsumer<I, D> {
    name: String,
    inbox: I,
    dead_letter: D,
    retry: Retry,
    /// How long a batch's unit of work may take before it is given up.
    batch_timeout: std::time::Duration,
    /// Topics whose outcome counters exist (registered at 0 on first sight, so a
    /// dashboard or alert sees `dead_lettered 0`, not nothing).
    topics_seen: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl<I, D> fmt::Debug for IdempotentConsumer<I, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotentConsumer")
            .field("name", &self.name)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

enum Attempt<O> {
    /// Committed: what the handler returned (none for a duplicate).
    Done(DeliveryOutcome, Option<O>),
    Failed(HandlerError),
}

impl<I: Inbox, D: DeadLetter> IdempotentConsumer<I, D> {
    /// A consumer named `name` (the inbox key: each consumer keeps its own record).
    pub fn new(name: impl Into<String>, inbox: I, dead_letter: D) -> Self {
        Self {
            name: name.into(),
            inbox,
            dead_letter,
            retry: Retry::default().named("outbox.consume"),
            batch_timeout: std::time::Duration::from_secs(1),
            topics_seen: Default::default(),
        }
    }

    /// Use another retry policy for transient failures.
    pub fn with_retry(mut self, retry: Retry) -> Self {
        self.retry = retry;
        self
    }

    /// How long the unit of work of a batch ([`process_batch`](Self::process_batch))
    /// may take before it is rolled back and its messages are handled one by one
    /// (default 1 s; a batch normally takes milliseconds): the longest one slow message
    /// — a handler waiting for a lock or a slow service — holds back the others of its
    /// batch.
    pub fn with_batch_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.batch_timeout = timeout;
        self
    }

    /// The consumer's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The inbox in use.
    pub fn inbox(&self) -> &I {
        &self.inbox
    }

    async fn attempt<H: MessageHandler<I::Tx>>(
        &self,
        msg: &Delivery,
        handler: &H,
    ) -> Result<Attempt<H::Output>> {
        let mut tx = self.inbox.begin().await?;
        if !self.inbox.try_record(&mut tx, &self.name, msg.id).await? {
            return Ok(Attempt::Done(DeliveryOutcome::Duplicate, None));
        }
        let output = match handler.handle(&mut tx, msg).await {
            Ok(o) => o,
            Err(e) => return Ok(Attempt::Failed(e)), // tx dropped: rolled back
        };
        // A conflict at commit means "not applied, try again" — never "duplicate": the
        // next attempt's inbox check tells whether a concurrent delivery of the same
        // message committed first.
        self.inbox.commit(tx).await?;
        Ok(Attempt::Done(DeliveryOutcome::Processed, Some(output)))
    }

    /// Handle one delivery (see the type docs for the guarantees), inside an
    /// `outbox.consume` span that continues the trace carried in the delivery's headers
    /// (see [`trace`](crate::trace)), counted in `outbox_consumer_messages_total` and
    /// timed in `outbox_consumer_handle_duration_seconds`.
    pub async fn process<H: MessageHandler<I::Tx>>(
        &self,
        msg: &Delivery,
        handler: &H,
    ) -> Result<DeliveryOutcome> {
        let span = self.span(msg);
        let started = std::time::Instant::now();
        let result = self
            .process_inner(msg, handler)
            .instrument(span.clone())
            .await;
        let outcome = outcome_name(&result);
        span.record("outcome", outcome);
        self.count(msg, outcome, started);
        result
    }

    /// The `outbox.consume` span of `msg`, continuing the trace in its headers.
    fn span(&self, msg: &Delivery) -> tracing::Span {
        let span = tracing::info_span!(
            "outbox.consume",
            otel.name = %format_args!("{} process", msg.topic),
            otel.kind = "consumer",
            consumer = %self.name,
            messaging.destination.name = %msg.topic,
            messaging.message.id = %msg.id,
            key = %msg.key,
            outcome = tracing::field::Empty,
        );
        crate::trace::set_parent(&span, &msg.headers);
        span
    }

    /// Count one delivery's outcome (`outbox_consumer_messages_total`, registering every
    /// outcome of a topic at 0 on first sight) and time it.
    fn count(&self, msg: &Delivery, outcome: &'static str, started: std::time::Instant) {
        let (consumer, topic) = (self.name.clone(), msg.topic.clone());
        let first_sight = self
            .topics_seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(topic.clone());
        if first_sight {
            for o in ["processed", "duplicate", "dead_lettered", "failed"] {
                metrics::counter!("outbox_consumer_messages_total",
                    "consumer" => consumer.clone(), "topic" => topic.clone(), "outcome" => o)
                .increment(0);
            }
        }
        metrics::counter!("outbox_consumer_messages_total",
            "consumer" => consumer.clone(), "topic" => topic.clone(), "outcome" => outcome)
        .increment(1);
        metrics::histogram!("outbox_consumer_handle_duration_seconds",
            "consumer" => consumer, "topic" => topic)
        .record(started.elapsed().as_secs_f64());
    }

    async fn process_inner<H: MessageHandler<I::Tx>>(
        &self,
        msg: &Delivery,
        handler: &H,
    ) -> Result<DeliveryOutcome> {
        enum Fail {
            Store(Error),
            Handler(HandlerError),
        }
        let result = self
            .retry
            .call_if(
                || async {
                    match self.attempt(msg, handler).await {
                        Ok(Attempt::Done(o, output)) => Ok((o, output)),
                        Ok(Attempt::Failed(e)) => Err(Fail::Handler(e)),
                        Err(e) => Err(Fail::Store(e)),
                    }
                },
                |f| !matches!(f, Fail::Handler(HandlerError::Permanent(_))),
            )
            .await;
        let (error, attempts) = match result {
            Ok((outcome, output)) => {
                if let Some(output) = output {
                    handler.after_commit(msg, output).await;
                }
                return Ok(outcome);
            }
            Err(RetryError::Failed { error, attempts }) => (error, attempts),
            Err(RetryError::DeadlineExceeded { last, attempts }) => match last {
                Some(error) => (error, attempts),
                None => return Err(Error::Handler("deadline exceeded".into())),
            },
            // `RetryError` may grow variants; whatever it is, it did not succeed.
            Err(_) => return Err(Error::Handler("the retry ended without a result".into())),
        };
        let reason = match error {
            // Infrastructure trouble is not the message's fault: do not park it.
            Fail::Store(e) => return Err(e),
            Fail::Handler(HandlerError::Infrastructure(e)) => return Err(Error::Handler(e)),
            Fail::Handler(e) => format!("{e} (after {attempts} attempt(s))"),
        };
        tracing::warn!(consumer = %self.name, message_id = %msg.id, reason = %reason,
            "message sent to the dead-letter queue");
        self.dead_letter.dead_letter(msg, &reason).await?;
        // Remember it, so that a redelivery is recognised as settled.
        let mut tx = self.inbox.begin().await?;
        if self.inbox.try_record(&mut tx, &self.name, msg.id).await? {
            match self.inbox.commit(tx).await {
                Ok(()) | Err(Error::Conflict(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(DeliveryOutcome::DeadLettered { reason })
    }
}

/// The `outcome` label of a delivery's result.
fn outcome_name(result: &Result<DeliveryOutcome>) -> &'static str {
    match result {
        Ok(DeliveryOutcome::Processed) => "processed",
        Ok(DeliveryOutcome::Duplicate) => "duplicate",
        Ok(DeliveryOutcome::DeadLettered { .. }) => "dead_lettered",
        Err(_) => "failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{MemoryDeadLetters, MemoryInbox};

    #[test]
    fn a_consumer_is_known_by_its_name() {
        let c = IdempotentConsumer::new("payments", MemoryInbox::new(), MemoryDeadLetters::new());
        assert_eq!(c.name(), "payments");
    }
}
