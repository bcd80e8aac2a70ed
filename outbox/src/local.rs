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
        let consumer = Arc::new(consumer);
        let handler = Arc::new(handler);
        let name = consumer.name().to_owned();
        let deliver: Deliver = Arc::new(move |d: Delivery| {
            let (consumer, handler) = (consumer.clone(), handler.clone());
            Box::pin(async move { consumer.process(&d, &*handler).await })
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
