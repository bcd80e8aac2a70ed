//! An in-process message bus for single-process (embedded) deployments: a
//! [`Publisher`] that delivers each message straight to the consumers subscribed to its
//! topic and acknowledges only once every one of them has settled it.
//!
//! Together with a durable outbox (SQLite) this gives the same guarantees as a broker:
//! a row is marked sent only after its consumers committed (or dead-lettered) it, so a
//! crash at any point leaves the row to be delivered again, and the consumers' inboxes
//! drop the repeat. Per-key order comes from the relay, which publishes one key's
//! messages one after the other.
//!
//! A subscription's deliveries that arrive together — a relay round publishes its keys
//! concurrently — share one unit of work
//! ([`IdempotentConsumer::process_batch`]): the first caller handles its own and, in
//! the same unit of work or the next, whatever queued behind it meanwhile (at most 64
//! in one), in its own task — none is spawned; the others wait for their outcome. One transaction and
//! one commit for a whole round instead of one each. Each publish still returns only
//! once its own delivery settled; a batch that fails is redone message by message. If
//! the caller handling the queue gives up (its future is dropped), the deliveries it
//! was handling or that waited fail (their publishes are retried) and the next caller
//! takes over.
//!
//! ```
//! use outbox::local::LocalBus;
//! use outbox::memory::{MemoryDeadLetters, MemoryInbox, MemoryOutbox, MemoryTx};
//! use outbox::{Delivery, MessageHandler, HandlerError, IdempotentConsumer, OutboxMessage, OutboxStore, Relay, RelayConfig, Transactional};
//!
//! struct Print;
//! impl MessageHandler<MemoryTx> for Print {
//!     type Output = ();
//!     async fn handle(&self, _tx: &mut MemoryTx, msg: &Delivery) -> Result<(), HandlerError> {
//!         println!("{} on {}", String::from_utf8_lossy(&msg.payload), msg.topic);
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> outbox::Result<()> {
//! let bus = LocalBus::new();
//! bus.subscribe("saga.commands", IdempotentConsumer::new("payment", MemoryInbox::new(), MemoryDeadLetters::new()), Print);
//!
//! let store = MemoryOutbox::new();
//! let mut tx = store.begin().await?;
//! store.enqueue(&mut tx, OutboxMessage::new("saga.commands", "order-1", "debit")).await?;
//! store.commit(tx).await?;
//! let report = Relay::new(store, bus, RelayConfig::default()).run_once().await?;
//! assert_eq!(report.published, 1); // delivered and settled
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::oneshot;

use crate::store::{DeadLetter, Inbox, Publisher};
use crate::{
    Delivery, DeliveryOutcome, Error, IdempotentConsumer, MessageHandler, OutboxMessage, Result,
};

type Settling = Pin<Box<dyn Future<Output = Result<DeliveryOutcome>> + Send>>;
type Deliver = Arc<dyn Fn(Delivery) -> Settling + Send + Sync>;
/// Subscriptions: topic → (consumer name, delivery function).
type Routes = Arc<RwLock<HashMap<String, Vec<(String, Deliver)>>>>;

/// The in-process bus. Cheap to clone; clones share subscriptions.
#[derive(Clone, Default)]
pub struct LocalBus {
    routes: Routes,
    parked: Arc<Mutex<Vec<(Delivery, String)>>>,
    dead_letter_topic: Option<String>,
}

impl std::fmt::Debug for LocalBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let routes = self.routes.read().unwrap_or_else(|p| p.into_inner());
        let topics: Vec<&String> = routes.keys().collect();
        f.debug_struct("LocalBus")
            .field("topics", &topics)
            .finish_non_exhaustive()
    }
}

impl LocalBus {
    /// A bus with no subscribers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Dead letters (see [`DeadLetter`] for `LocalBus`) go to `topic`'s subscribers.
    pub fn with_dead_letter_topic(mut self, topic: impl Into<String>) -> Self {
        self.dead_letter_topic = Some(topic.into());
        self
    }

    /// Deliver `topic` to `handler` through `consumer` (its inbox drops repeats; its
    /// retry and dead-letter policy apply). Several subscriptions to one topic each get
    /// every message, like consumer groups.
    pub fn subscribe<I, D, H>(&self, topic: &str, consumer: IdempotentConsumer<I, D>, handler: H)
    where
        I: Inbox,
        D: DeadLetter,
        H: MessageHandler<I::Tx> + 'static,
    {
        let name = consumer.name().to_owned();
        let batcher = Arc::new(Batcher {
            consumer,
            handler,
            state: Mutex::new(BatchState::default()),
        });
        let deliver: Deliver = Arc::new(move |d: Delivery| {
            let batcher = batcher.clone();
            Box::pin(async move { batcher.deliver(d).await })
        });
        self.routes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(topic.to_owned())
            .or_default()
            .push((name, deliver));
    }

    /// Messages dead-lettered while no one subscribed to the dead-letter topic.
    pub fn parked(&self) -> Vec<(Delivery, String)> {
        self.parked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn routes_of(&self, topic: &str) -> Vec<(String, Deliver)> {
        self.routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(topic)
            .cloned()
            .unwrap_or_default()
    }
}

/// At most this many deliveries share one unit of work of a subscription.
const MAX_BATCH: usize = 64;

/// A subscription's deliveries: the ones that arrive while a unit of work runs are
/// handled together in the next, by the caller that started the first
/// ([`IdempotentConsumer::process_batch`]) — no task of its own, no thread woken.
struct Batcher<I, D, H> {
    consumer: IdempotentConsumer<I, D>,
    handler: H,
    state: Mutex<BatchState>,
}

/// A delivery waiting for its unit of work, and where its outcome goes.
type Waiting = (Delivery, oneshot::Sender<Result<DeliveryOutcome>>);

#[derive(Default)]
struct BatchState {
    queue: Vec<Waiting>,
    /// A caller is handling the queue.
    leading: bool,
}

impl<I: Inbox, D: DeadLetter, H: MessageHandler<I::Tx>> Batcher<I, D, H> {
    fn state(&self) -> std::sync::MutexGuard<'_, BatchState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Settle `d`: queued for the unit of work in progress's successor, or — if none is
    /// in progress — handled by this caller, together with whatever queues meanwhile,
    /// until the queue is empty.
    async fn deliver(&self, d: Delivery) -> Result<DeliveryOutcome> {
        let (done, outcome) = oneshot::channel();
        let lead = {
            let mut state = self.state();
            state.queue.push((d, done));
            !std::mem::replace(&mut state.leading, true)
        };
        if lead {
            let mut lead = Leading {
                batcher: self,
                done: false,
            };
            // The relay publishes a round's keys concurrently from one task: let the
            // others of the round queue up behind this one first.
            tokio::task::yield_now().await;
            lead.run().await;
        }
        outcome
            .await
            .unwrap_or_else(|_| Err(Error::storage("the delivery was abandoned")))
    }
}

/// The caller handling a subscription's queue. Dropped half way (its caller gave up),
/// it hands back the lead and fails what waits, so that nothing waits forever: those
/// publishes fail and are retried.
struct Leading<'a, I, D, H> {
    batcher: &'a Batcher<I, D, H>,
    /// The queue was found empty and the lead handed back.
    done: bool,
}

impl<I: Inbox, D: DeadLetter, H: MessageHandler<I::Tx>> Leading<'_, I, D, H> {
    async fn run(&mut self) {
        loop {
            let batch: Vec<Waiting> = {
                let mut state = self.batcher.state();
                if state.queue.is_empty() {
                    state.leading = false;
                    self.done = true;
                    return;
                }
                let take = state.queue.len().min(MAX_BATCH);
                let rest = state.queue.split_off(take);
                std::mem::replace(&mut state.queue, rest)
            };
            let (deliveries, senders): (Vec<Delivery>, Vec<_>) = batch.into_iter().unzip();
            let outcomes = self
                .batcher
                .consumer
                .process_batch(&deliveries, &self.batcher.handler)
                .await;
            for (done, outcome) in senders.into_iter().zip(outcomes) {
                let _ = done.send(outcome); // its caller may have given up
            }
        }
    }
}

impl<I, D, H> Drop for Leading<'_, I, D, H> {
    fn drop(&mut self) {
        if self.done {
            return; // another caller may lead by now
        }
        let mut state = self.batcher.state.lock().unwrap_or_else(|p| p.into_inner());
        state.leading = false;
        state.queue.clear(); // their senders dropped: those deliveries fail
    }
}

impl Publisher for LocalBus {
    async fn publish(&self, msg: &OutboxMessage) -> Result<()> {
        let routes = self.routes_of(&msg.topic);
        if routes.is_empty() {
            // Like a broker without consumers yet: keep the row, try again later.
            return Err(Error::publish(&msg.topic, "no subscriber on the local bus"));
        }
        let delivery = msg.to_delivery();
        for (name, deliver) in routes {
            deliver(delivery.clone())
                .await
                .map_err(|e| Error::publish(&msg.topic, format!("consumer {name}: {e}")))?;
        }
        Ok(())
    }
}

impl DeadLetter for LocalBus {
    async fn dead_letter(&self, msg: &Delivery, reason: &str) -> Result<()> {
        let routes = self
            .dead_letter_topic
            .as_deref()
            .map(|t| self.routes_of(t))
            .unwrap_or_default();
        if routes.is_empty() {
            tracing::error!(message_id = %msg.id, topic = %msg.topic, reason, "message held back: nothing subscribed to the dead-letter topic");
            self.parked
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((msg.clone(), reason.to_owned()));
            return Ok(());
        }
        let mut parked = msg.clone();
        parked.headers.insert("dlq-reason", reason);
        parked
            .headers
            .insert("dlq-original-topic", msg.topic.clone());
        if let Some(t) = &self.dead_letter_topic {
            parked.topic = t.clone();
        }
        for (_, deliver) in routes {
            deliver(parked.clone())
                .await
                .map_err(|e| Error::DeadLetter(Box::new(e)))?;
        }
        Ok(())
    }
}
