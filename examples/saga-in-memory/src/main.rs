//! Run with `cargo run -p example-saga-in-memory`.
//!
//! The create-order saga of ordersys in one process with the in-memory backends:
//! the order side starts sagas (order row + saga + outbox command in one unit of work),
//! a relay publishes commands on the in-process `LocalBus`, a payment consumer debits
//! idempotently and replies through its own outbox, and the order side applies replies
//! to the saga in the unit of work of its inbox. One order is paid and confirmed, one
//! is declined and cancelled.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use outbox::local::LocalBus;
use outbox::memory::{MemoryDeadLetters, MemoryInbox, MemoryOutbox, MemoryTx};
use outbox::{
    Delivery, HandlerError, IdempotentConsumer, MessageHandler, OutboxMessage, OutboxStore, Relay,
    RelayConfig, Transactional,
};
use saga_core::{
    CommandSink, Dispatched, MemorySagaStore, Orchestrator, SagaCommand, SagaDefinition, SagaEvent,
    SagaId, SagaInstance, Step,
};
use tokio::sync::mpsc;

/// Order side: local steps change the order status; payment commands go to the outbox.
/// The saga data is simply "user:amount".
struct OrderSink {
    outbox: MemoryOutbox,
    orders: Arc<Mutex<HashMap<SagaId, &'static str>>>,
}

impl OrderSink {
    fn set(&self, tx: &mut MemoryTx, id: SagaId, status: &'static str) {
        let orders = self.orders.clone();
        tx.on_commit(move || {
            orders.lock().unwrap().insert(id, status);
        });
    }
}

impl CommandSink<MemoryTx> for OrderSink {
    async fn dispatch(
        &self,
        tx: &mut MemoryTx,
        saga: &SagaInstance,
        cmd: &SagaCommand,
    ) -> saga_core::Result<Dispatched> {
        match cmd.name.as_str() {
            "create_order" => self.set(tx, saga.id, "PENDING"),
            "cancel_order" => self.set(tx, saga.id, "CANCELLED"),
            "confirm_order" => self.set(tx, saga.id, "CONFIRMED"),
            remote => {
                let payload = format!("{remote}|{}", String::from_utf8_lossy(&saga.data));
                let msg = OutboxMessage::new("saga.commands", saga.id.to_string(), payload)
                    .with_header("idempotency-key", cmd.idempotency_key.clone());
                self.outbox
                    .enqueue(tx, msg)
                    .await
                    .map_err(saga_core::Error::dispatch)?;
                return Ok(Dispatched::Sent);
            }
        }
        Ok(Dispatched::Succeeded)
    }
}

/// Payment side: debit or refund, reply through the payment outbox — all in the unit of
/// work that also records the command in the inbox.
struct Payment {
    balances: Arc<Mutex<HashMap<String, i64>>>,
    replies: MemoryOutbox,
}

impl MessageHandler<MemoryTx> for Payment {
    type Output = ();
    async fn handle(&self, tx: &mut MemoryTx, msg: &Delivery) -> Result<(), HandlerError> {
        let text = String::from_utf8(msg.payload.to_vec()).map_err(HandlerError::permanent)?;
        let mut parts = text.split(['|', ':']);
        let (Some(cmd), Some(user), Some(amount)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(HandlerError::permanent(format!("bad command {text:?}")));
        };
        let amount: i64 = amount.parse().map_err(HandlerError::permanent)?;
        let balance = *self.balances.lock().unwrap().get(user).unwrap_or(&0);
        let (delta, reply) = match cmd {
            "payment.debit" if balance >= amount => (-amount, "debit_ok"),
            "payment.debit" => (0, "debit_declined"),
            "payment.refund" => (amount, "refund_ok"),
            other => return Err(HandlerError::permanent(format!("unknown command {other}"))),
        };
        let balances = self.balances.clone();
        let user = user.to_owned();
        tx.on_commit(move || *balances.lock().unwrap().entry(user).or_default() += delta);
        self.replies
            .enqueue(
                tx,
                OutboxMessage::new("saga.replies", msg.key.clone(), reply),
            )
            .await
            .map_err(HandlerError::transient)
    }
}

/// Order side: replies move the saga, in the same unit of work as the inbox record.
struct Replies {
    orch: Arc<Orchestrator<MemorySagaStore, OrderSink>>,
    done: mpsc::UnboundedSender<SagaId>,
}

impl MessageHandler<MemoryTx> for Replies {
    type Output = ();
    async fn handle(&self, tx: &mut MemoryTx, msg: &Delivery) -> Result<(), HandlerError> {
        let id = SagaId(msg.key.parse().map_err(HandlerError::permanent)?);
        let event = match &msg.payload[..] {
            b"debit_ok" => SagaEvent::StepSucceeded { step: 1 },
            b"debit_declined" => SagaEvent::StepFailed {
                step: 1,
                reason: "insufficient funds".into(),
            },
            _ => SagaEvent::CompensationSucceeded { step: 1 },
        };
        self.orch
            .handle(tx, id, event)
            .await
            .map_err(HandlerError::transient)?;
        Ok(())
    }

    async fn after_commit(&self, msg: &Delivery, (): ()) {
        // Report only what is committed.
        let saga = msg
            .key
            .parse()
            .ok()
            .and_then(|id| self.orch.store().get(SagaId(id)));
        if let Some(saga) = saga.filter(|s| s.state.is_terminal()) {
            let _ = self.done.send(saga.id);
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bus = LocalBus::new();
    let order_outbox = MemoryOutbox::new();
    let payment_outbox = MemoryOutbox::new();
    let orders = Arc::new(Mutex::new(HashMap::new()));
    let balances = Arc::new(Mutex::new(HashMap::from([
        ("alice".to_owned(), 100_000_i64),
        ("bob".to_owned(), 500),
    ])));

    let def = SagaDefinition::new("create_order")
        .step(Step::new("create_order").compensate_with("cancel_order"))
        .step(
            Step::new("payment")
                .action("payment.debit")
                .compensate_with("payment.refund")
                .deadline(Duration::from_secs(30)),
        )
        .step(Step::new("confirm_order"))
        .build()?;
    let orch = Arc::new(
        Orchestrator::new(
            MemorySagaStore::new(),
            OrderSink {
                outbox: order_outbox.clone(),
                orders: orders.clone(),
            },
        )
        .register(def),
    );

    // Subscriptions: payment consumes commands, the order side consumes replies.
    let payment = Payment {
        balances: balances.clone(),
        replies: payment_outbox.clone(),
    };
    bus.subscribe(
        "saga.commands",
        IdempotentConsumer::new("payment", MemoryInbox::new(), MemoryDeadLetters::new()),
        payment,
    );
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let replies = Replies {
        orch: orch.clone(),
        done: done_tx,
    };
    bus.subscribe(
        "saga.replies",
        IdempotentConsumer::new("order", MemoryInbox::new(), MemoryDeadLetters::new()),
        replies,
    );

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let relays = [
        tokio::spawn(
            Relay::new(order_outbox.clone(), bus.clone(), RelayConfig::default())
                .run(stop(stop_rx.clone())),
        ),
        tokio::spawn(
            Relay::new(payment_outbox.clone(), bus.clone(), RelayConfig::default())
                .run(stop(stop_rx.clone())),
        ),
    ];

    for (user, amount) in [("alice", 2_500), ("bob", 9_999)] {
        let mut tx = orch.store().begin().await?;
        let id = SagaId::new();
        orch.start(
            &mut tx,
            "create_order",
            id,
            Bytes::from(format!("{user}:{amount}")),
        )
        .await?;
        orch.store().commit(tx).await?;
        println!("order {id} for {user}: {amount} cents");
    }
    for _ in 0..2 {
        let id = done_rx.recv().await.expect("saga finished");
        let saga = orch.store().get(id).expect("saga");
        let label = saga.state.label(orch.definition("create_order")?);
        let status = orders.lock().unwrap()[&id];
        println!(
            "order {id}: {status}, saga {label}, reason {:?}",
            saga.state.failure_reason
        );
    }
    println!("balances: {:?}", balances.lock().unwrap());

    stop_tx.send_replace(true);
    for r in relays {
        r.await??;
    }
    Ok(())
}
