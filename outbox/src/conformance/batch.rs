//! The contract of [`IdempotentConsumer::process_batch`] on an [`Inbox`].

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::memory::MemoryDeadLetters;
use crate::store::Inbox;
use crate::{
    Delivery, DeliveryOutcome, HandlerError, IdempotentConsumer, MessageHandler, OutboxMessage,
};

/// A handler whose effect is a record under the consumer name `"effects"` in the same
/// inbox — a write in the unit of work that every backend has. Messages keyed `"bad"`
/// fail permanently after writing their effect.
struct Effects<I> {
    inbox: I,
    handled: AtomicUsize,
    after_commit: AtomicUsize,
}

impl<I: Inbox> MessageHandler<I::Tx> for Effects<I> {
    type Output = ();

    async fn handle(&self, tx: &mut I::Tx, msg: &Delivery) -> Result<(), HandlerError> {
        self.handled.fetch_add(1, Ordering::SeqCst);
        let first = self
            .inbox
            .try_record(tx, "effects", msg.id)
            .await
            .map_err(HandlerError::infrastructure)?;
        assert!(first, "the effect of {} was written twice", msg.key);
        if msg.key == "bad" {
            return Err(HandlerError::permanent("bad message"));
        }
        Ok(())
    }

    async fn after_commit(&self, _msg: &Delivery, (): ()) {
        self.after_commit.fetch_add(1, Ordering::SeqCst);
    }
}

/// Whether the handler's effect of `d` is committed.
async fn has_effect<I: Inbox>(inbox: &I, d: &Delivery) -> bool {
    let mut tx = inbox.begin().await.unwrap();
    !inbox.try_record(&mut tx, "effects", d.id).await.unwrap()
}

/// Batch contract, on a fresh inbox: a batch commits its messages' effects together and
/// skips a repeat inside it; a failing message in a batch rolls the batch back and its
/// neighbours are then handled one by one — each effect exactly once, the bad message
/// dead-lettered with none; a redelivered batch is all duplicates.
pub async fn inbox_batches<I: Inbox + Clone>(inbox: &I) {
    let dead = MemoryDeadLetters::new();
    let consumer = IdempotentConsumer::new("batcher", inbox.clone(), dead.clone())
        .with_retry(resilience::Retry::default().max_attempts(1));
    let handler = Arc::new(Effects {
        inbox: inbox.clone(),
        handled: AtomicUsize::new(0),
        after_commit: AtomicUsize::new(0),
    });
    let msg = |key: &str| OutboxMessage::new("t", key, "x").to_delivery();
    let (a, b) = (msg("a"), msg("b"));

    let outcomes = consumer
        .process_batch(&[a.clone(), b.clone(), a.clone()], &handler)
        .await;
    let outcomes: Vec<DeliveryOutcome> = outcomes.into_iter().map(Result::unwrap).collect();
    assert_eq!(
        outcomes,
        [
            DeliveryOutcome::Processed,
            DeliveryOutcome::Processed,
            DeliveryOutcome::Duplicate
        ]
    );
    assert!(has_effect(inbox, &a).await && has_effect(inbox, &b).await);
    assert_eq!(handler.handled.load(Ordering::SeqCst), 2);
    assert_eq!(handler.after_commit.load(Ordering::SeqCst), 2);

    let (c, bad, d) = (msg("c"), msg("bad"), msg("d"));
    let outcomes = consumer
        .process_batch(&[c.clone(), bad.clone(), d.clone()], &handler)
        .await;
    assert!(
        matches!(outcomes[0], Ok(DeliveryOutcome::Processed)),
        "{outcomes:?}"
    );
    assert!(
        matches!(outcomes[1], Ok(DeliveryOutcome::DeadLettered { .. })),
        "{outcomes:?}"
    );
    assert!(
        matches!(outcomes[2], Ok(DeliveryOutcome::Processed)),
        "{outcomes:?}"
    );
    assert!(has_effect(inbox, &c).await && has_effect(inbox, &d).await);
    assert!(
        !has_effect(inbox, &bad).await,
        "a failed message's effect committed"
    );
    assert_eq!(dead.parked().len(), 1);
    assert_eq!(dead.parked()[0].0.id, bad.id);
    assert_eq!(handler.after_commit.load(Ordering::SeqCst), 4);

    let handled = handler.handled.load(Ordering::SeqCst);
    let outcomes = consumer
        .process_batch(&[a.clone(), bad.clone(), d.clone()], &handler)
        .await;
    assert!(outcomes
        .iter()
        .all(|o| matches!(o, Ok(DeliveryOutcome::Duplicate))));
    assert_eq!(handler.handled.load(Ordering::SeqCst), handled);
    assert_eq!(
        dead.parked().len(),
        1,
        "a settled message was dead-lettered again"
    );
}
