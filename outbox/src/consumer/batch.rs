//! Several deliveries in one unit of work: [`IdempotentConsumer::process_batch`].

use futures::future::join_all;
use tracing::Instrument;

use super::{outcome_name, IdempotentConsumer, MessageHandler};
use crate::store::{DeadLetter, Inbox};
use crate::{Delivery, DeliveryOutcome, Result};

/// What one unit of work did with each delivery of a batch, with what the handler
/// returned for the processed ones; `None`: a handler failed, nothing was committed.
type Committed<O> = Option<Vec<(DeliveryOutcome, Option<O>)>>;

impl<I: Inbox, D: DeadLetter> IdempotentConsumer<I, D> {
    /// Handle `msgs` in **one** unit of work — one transaction, one commit — with the
    /// same guarantees as [`process`](Self::process) for each: recorded in the inbox
    /// together with the handler's writes, duplicates skipped, `after_commit` called
    /// for each processed one once the unit of work committed. The deliveries are
    /// handled in the order given.
    ///
    /// This is how a consumer saves the database its per-transaction costs (a
    /// begin, a commit, a log flush each) when many messages wait: the outcomes are
    /// those of `process`, only cheaper. If any handler fails, or the store does, the
    /// whole unit of work is rolled back and every delivery goes through
    /// [`process`](Self::process) on its own (concurrently) — with its retries, its
    /// dead-lettering — so one bad message costs its neighbours one rolled-back try,
    /// never their effect. So does one slow message: a unit of work still running
    /// after the [batch timeout](Self::with_batch_timeout) (default 1 s) is given up
    /// the same way, its handlers dropped where they wait. A handler of a batch must therefore not do outside its
    /// unit of work anything it would not repeat on a retry (the same rule as for
    /// `process`, whose attempts are retried too).
    ///
    /// One result per delivery, in order. Deliveries of a committed batch are each
    /// counted in `outbox_consumer_messages_total` and in
    /// `outbox_consumer_handle_duration_seconds` with the batch's time; each gets its
    /// `outbox.consume` span, which continues the trace in its headers.
    ///
    /// ```
    /// use outbox::memory::{MemoryDeadLetters, MemoryInbox, MemoryTx};
    /// use outbox::{Delivery, DeliveryOutcome, HandlerError, IdempotentConsumer, MessageHandler, OutboxMessage};
    ///
    /// struct Print;
    /// impl MessageHandler<MemoryTx> for Print {
    ///     type Output = ();
    ///     async fn handle(&self, _tx: &mut MemoryTx, msg: &Delivery) -> Result<(), HandlerError> {
    ///         println!("got {}", msg.key);
    ///         Ok(())
    ///     }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let consumer = IdempotentConsumer::new("payment", MemoryInbox::new(), MemoryDeadLetters::new());
    /// let first = OutboxMessage::new("saga.commands", "order-1", "debit").to_delivery();
    /// let second = OutboxMessage::new("saga.commands", "order-2", "debit").to_delivery();
    /// let outcomes = consumer.process_batch(&[first.clone(), second], &Print).await;
    /// assert!(outcomes.iter().all(|o| matches!(o, Ok(DeliveryOutcome::Processed))));
    /// // A redelivery in the next batch is recognised.
    /// let again = consumer.process_batch(&[first], &Print).await;
    /// assert!(matches!(again[0], Ok(DeliveryOutcome::Duplicate)));
    /// # }
    /// ```
    pub async fn process_batch<H: MessageHandler<I::Tx>>(
        &self,
        msgs: &[Delivery],
        handler: &H,
    ) -> Vec<Result<DeliveryOutcome>> {
        if msgs.len() > 1 {
            if let Some(outcomes) = self.try_batch(msgs, handler).await {
                return outcomes.into_iter().map(Ok).collect();
            }
        }
        join_all(msgs.iter().map(|m| self.process(m, handler))).await
    }

    /// `msgs` in one unit of work, committed — their outcomes, after `after_commit` —
    /// or `None`: a handler or the store failed, or the unit ran over the batch
    /// timeout; rolled back, nothing took effect (the caller handles each on its own).
    pub(crate) async fn try_batch<H: MessageHandler<I::Tx>>(
        &self,
        msgs: &[Delivery],
        handler: &H,
    ) -> Option<Vec<DeliveryOutcome>> {
        let started = std::time::Instant::now();
        let spans: Vec<tracing::Span> = msgs.iter().map(|m| self.span(m)).collect();
        let attempt = self.attempt_batch(msgs, handler, &spans);
        let done = match tokio::time::timeout(self.batch_timeout, attempt).await {
            Ok(Ok(Some(done))) => done,
            Ok(Ok(None)) => {
                tracing::debug!(consumer = %self.name, messages = msgs.len(),
                    "a handler of the batch failed: rolled back");
                return None;
            }
            Ok(Err(e)) => {
                tracing::debug!(consumer = %self.name, messages = msgs.len(), error = %e,
                    "the batch's unit of work failed");
                return None;
            }
            Err(_) => {
                tracing::debug!(consumer = %self.name, messages = msgs.len(),
                    timeout_ms = self.batch_timeout.as_millis() as u64,
                    "the batch ran over its time: rolled back");
                return None;
            }
        };
        let mut outcomes = Vec::with_capacity(msgs.len());
        let mut after = Vec::new();
        for (((outcome, output), msg), span) in done.into_iter().zip(msgs).zip(spans) {
            let name = outcome_name(&Ok(outcome.clone()));
            span.record("outcome", name);
            self.count(msg, name, started);
            outcomes.push(outcome);
            if let Some(output) = output {
                after.push(handler.after_commit(msg, output).instrument(span));
            }
        }
        join_all(after).await;
        Some(outcomes)
    }

    /// One unit of work over all of `msgs`: committed, or `None` (rolled back) as soon
    /// as a handler fails.
    async fn attempt_batch<H: MessageHandler<I::Tx>>(
        &self,
        msgs: &[Delivery],
        handler: &H,
        spans: &[tracing::Span],
    ) -> Result<Committed<H::Output>> {
        let mut tx = self.inbox.begin().await?;
        let mut done = Vec::with_capacity(msgs.len());
        for (msg, span) in msgs.iter().zip(spans) {
            let step = async {
                if !self.inbox.try_record(&mut tx, &self.name, msg.id).await? {
                    return Ok(Some((DeliveryOutcome::Duplicate, None)));
                }
                Ok(match handler.handle(&mut tx, msg).await {
                    Ok(output) => Some((DeliveryOutcome::Processed, Some(output))),
                    Err(e) => {
                        tracing::debug!(message_id = %msg.id, error = %e,
                            "a message of a batch failed");
                        None
                    }
                })
            }
            .instrument(span.clone())
            .await;
            match step {
                Ok(Some(d)) => done.push(d),
                Ok(None) => return Ok(None), // tx dropped: rolled back
                Err(e) => return Err(e),
            }
        }
        // As in `attempt`: a failed commit is "not applied, try again"; the attempts of
        // `process` that follow find out from the inbox what did commit.
        self.inbox.commit(tx).await?;
        Ok(Some(done))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::sync::Notify;

    use crate::memory::{MemoryDeadLetters, MemoryInbox, MemoryTx};
    use crate::{
        Delivery, DeliveryOutcome, HandlerError, IdempotentConsumer, MessageHandler, OutboxMessage,
    };

    /// Waits for `go` on the message keyed `slow`.
    struct Slow(Arc<Notify>);

    impl MessageHandler<MemoryTx> for Slow {
        type Output = ();
        async fn handle(&self, _tx: &mut MemoryTx, msg: &Delivery) -> Result<(), HandlerError> {
            if msg.key == "slow" {
                self.0.notified().await;
            }
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_message_holds_its_batch_back_only_until_the_batch_timeout() {
        let inbox = MemoryInbox::new();
        let consumer = Arc::new(
            IdempotentConsumer::new("c", inbox.clone(), MemoryDeadLetters::new())
                .with_batch_timeout(Duration::from_millis(100)),
        );
        let go = Arc::new(Notify::new());
        let msgs: Vec<Delivery> = ["a", "slow", "b"]
            .iter()
            .map(|k| OutboxMessage::new("t", *k, "x").to_delivery())
            .collect();
        let run = tokio::spawn({
            let (consumer, msgs, go) = (consumer.clone(), msgs.clone(), go.clone());
            async move { consumer.process_batch(&msgs, &Slow(go)).await }
        });
        // The neighbours commit on their own once the batch ran over its time…
        let neighbours_done = async {
            while !(inbox.contains("c", msgs[0].id) && inbox.contains("c", msgs[2].id)) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(60), neighbours_done)
            .await
            .expect("the neighbours of a slow message waited for it");
        // …while the slow one still waits, in a unit of work of its own.
        assert!(!inbox.contains("c", msgs[1].id));
        go.notify_one();
        let outcomes = run.await.unwrap();
        assert!(
            outcomes
                .iter()
                .all(|o| matches!(o, Ok(DeliveryOutcome::Processed))),
            "{outcomes:?}"
        );
        assert!(inbox.contains("c", msgs[1].id));
    }
}
