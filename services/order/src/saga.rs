//! The sagas of the order service and their wiring: definitions, the command sink
//! (local steps on the order row, remote steps into the outbox) and the reply handler.

use std::sync::Arc;
use std::time::Duration;

use ordersys_kit::context::{CORRELATION_ID, TRACEPARENT};
use ordersys_kit::messaging::Topics;
use ordersys_kit::outbox_store::MySqlServiceOutbox;
use ordersys_proto::common::v1::Money;
use ordersys_proto::saga::v1::{CommandType, ReplyStatus, SagaCommand as CommandMsg, SagaReply};
use outbox::idempotency::Cache;
use outbox::mysql::MySqlTx;
use outbox::sqlite::{SqliteOutbox, SqliteTx};
use outbox::{Delivery, HandlerError, MessageHandler, OutboxMessage, OutboxStore, RelayHandle};
use prost::Message;
use saga_core::mysql::MySqlSagaStore;
use saga_core::sqlite::SqliteSagaStore;
use saga_core::SagaStore;
use saga_core::{
    CommandKind, CommandSink, Dispatched, Orchestrator, SagaCommand, SagaDefinition, SagaEvent,
    SagaId, SagaInstance, SagaStatus, Step,
};
use uuid::Uuid;

use crate::domain::{OrderStatus, SagaData};
use crate::repository::{MySqlOrders, OrderRepo, SqliteOrders};

/// Name of the create-order saga.
pub const CREATE: &str = "create_order";
/// Name of the saga that cancels a confirmed order.
pub const CANCEL: &str = "cancel_order";

/// SPEC §4: create (PENDING) / cancel → debit / refund → confirm.
pub fn create_order(payment_deadline: Duration) -> SagaDefinition {
    SagaDefinition::new(CREATE)
        .step(Step::new("create_order").compensate_with("cancel_order"))
        .step(
            Step::new("payment")
                .action("payment.debit")
                .compensate_with("payment.refund")
                .deadline(payment_deadline),
        )
        .step(Step::new("confirm_order"))
        .build()
        .expect("valid saga")
}

/// Refund a confirmed order's debit (resent until answered), then mark it cancelled.
pub fn cancel_order(payment_deadline: Duration) -> SagaDefinition {
    SagaDefinition::new(CANCEL)
        .step(
            Step::new("refund")
                .action("payment.refund")
                .deadline(payment_deadline)
                .resend_on_timeout(true),
        )
        .step(Step::new("mark_cancelled"))
        .build()
        .expect("valid saga")
}

/// The storage a deployment of the order service runs on: one unit of work type shared
/// by the orders, the sagas and the outbox.
pub trait Backend: Send + Sync + 'static {
    /// The unit of work.
    type Tx: Send + 'static;
    /// Orders.
    type Repo: OrderRepo<Tx = Self::Tx>;
    /// Saga instances.
    type Sagas: SagaStore<Tx = Self::Tx>;
    /// The outbox.
    type Outbox: OutboxStore<Tx = Self::Tx> + Clone;
}

/// MySQL (the reference deployment).
#[derive(Debug)]
pub struct MySql;

impl Backend for MySql {
    type Tx = MySqlTx;
    type Repo = MySqlOrders;
    type Sagas = MySqlSagaStore;
    type Outbox = MySqlServiceOutbox;
}

/// SQLite (the embedded mode).
#[derive(Debug)]
pub struct Sqlite;

impl Backend for Sqlite {
    type Tx = SqliteTx;
    type Repo = SqliteOrders;
    type Sagas = SqliteSagaStore;
    type Outbox = SqliteOutbox;
}

/// Carries out saga commands inside the orchestrator's unit of work.
pub struct OrderSink<B: Backend> {
    repo: B::Repo,
    outbox: B::Outbox,
    topics: Topics,
}

impl<B: Backend> std::fmt::Debug for OrderSink<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrderSink")
            .field("topics", &self.topics)
            .finish_non_exhaustive()
    }
}

impl<B: Backend> OrderSink<B> {
    /// Local steps change `repo`; commands go to `topics.commands` through `outbox`.
    pub fn new(repo: B::Repo, outbox: B::Outbox, topics: Topics) -> Self {
        Self {
            repo,
            outbox,
            topics,
        }
    }
}

fn data_of(saga: &SagaInstance) -> saga_core::Result<SagaData> {
    serde_json::from_slice(&saga.data).map_err(saga_core::Error::dispatch)
}

impl<B: Backend> CommandSink<B::Tx> for OrderSink<B> {
    async fn dispatch(
        &self,
        tx: &mut B::Tx,
        saga: &SagaInstance,
        cmd: &SagaCommand,
    ) -> saga_core::Result<Dispatched> {
        let data = data_of(saga)?;
        let db = |e: sqlx::Error| saga_core::Error::dispatch(e);
        match cmd.name.as_str() {
            // The row was inserted in this same unit of work before the saga started.
            "create_order" => Ok(Dispatched::Succeeded),
            "cancel_order" | "mark_cancelled" => {
                let reason =
                    saga.state
                        .failure_reason
                        .as_deref()
                        .or(if cmd.name == "mark_cancelled" {
                            Some("cancelled by the customer")
                        } else {
                            None
                        });
                self.repo
                    .set_status(tx, data.order_id, OrderStatus::Cancelled, reason)
                    .await
                    .map_err(db)?;
                tracing::info!(order_id = %data.order_id, reason = ?reason, "заказ отменён");
                Ok(Dispatched::Succeeded)
            }
            "confirm_order" => {
                let n = self
                    .repo
                    .set_status(tx, data.order_id, OrderStatus::Confirmed, None)
                    .await
                    .map_err(db)?;
                if n == 0 {
                    return Ok(Dispatched::Failed("order is no longer pending".into()));
                }
                tracing::info!(order_id = %data.order_id, "заказ подтверждён");
                Ok(Dispatched::Succeeded)
            }
            "payment.debit" | "payment.refund" => {
                let command = if cmd.name == "payment.debit" {
                    CommandType::Debit
                } else {
                    CommandType::Refund
                };
                let msg = CommandMsg {
                    saga_id: saga.id.to_string(),
                    command: command as i32,
                    order_id: data.order_id.to_string(),
                    user_id: data.user_id.to_string(),
                    amount: Some(Money {
                        amount_minor: data.amount,
                        currency: data.currency.clone(),
                    }),
                    idempotency_key: cmd.idempotency_key.clone(),
                    step: cmd.step as u32,
                    kind: cmd.kind.as_str().to_owned(),
                };
                // Key = order id: every message about one order lands in one partition, in order.
                let mut out = OutboxMessage::new(
                    self.topics.commands.clone(),
                    data.order_id.to_string(),
                    msg.encode_to_vec(),
                );
                if !data.correlation_id.is_empty() {
                    out.headers
                        .insert(CORRELATION_ID, data.correlation_id.clone());
                }
                // The current span's context (set by `OutboxMessage::new`) continues the
                // trace through this step; the one of the request that started the saga
                // stands in where there is none (a deadline fired by the sweep).
                if !data.traceparent.is_empty() && out.headers.get(TRACEPARENT).is_none() {
                    out.headers.insert(TRACEPARENT, data.traceparent.clone());
                }
                self.outbox
                    .enqueue(tx, out)
                    .await
                    .map_err(saga_core::Error::dispatch)?;
                tracing::info!(order_id = %data.order_id, saga_id = %saga.id, command = %cmd.name, "команда саги записана в outbox");
                Ok(Dispatched::Sent)
            }
            other => Err(saga_core::Error::dispatch(format!(
                "unknown saga command {other}"
            ))),
        }
    }
}

/// The orchestrator type of the order service.
pub type OrderOrchestrator<B> = Orchestrator<<B as Backend>::Sagas, OrderSink<B>>;

/// Applies `saga.replies` to the sagas, in the unit of work that records the reply in
/// the inbox; invalidates the order cache and wakes the relay after commit.
pub struct ReplyHandler<B: Backend> {
    orchestrator: Arc<OrderOrchestrator<B>>,
    repo: B::Repo,
    cache: Arc<dyn Cache>,
    relay: RelayHandle,
}

impl<B: Backend> std::fmt::Debug for ReplyHandler<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplyHandler").finish_non_exhaustive()
    }
}

impl<B: Backend> ReplyHandler<B> {
    /// A handler over `orchestrator`.
    pub fn new(
        orchestrator: Arc<OrderOrchestrator<B>>,
        repo: B::Repo,
        cache: Arc<dyn Cache>,
        relay: RelayHandle,
    ) -> Self {
        Self {
            orchestrator,
            repo,
            cache,
            relay,
        }
    }
}

/// The saga event a reply means.
pub fn event_of(reply: &SagaReply) -> Result<SagaEvent, String> {
    let step = reply.step as usize;
    let ok = match ReplyStatus::try_from(reply.status) {
        Ok(ReplyStatus::Succeeded) => true,
        Ok(ReplyStatus::Failed) => false,
        _ => return Err(format!("reply with unknown status {}", reply.status)),
    };
    let reason = if reply.error.is_empty() {
        "payment failed".to_owned()
    } else {
        reply.error.clone()
    };
    Ok(match (reply.kind.as_str(), ok) {
        ("action", true) => SagaEvent::StepSucceeded { step },
        ("action", false) => SagaEvent::StepFailed { step, reason },
        ("compensation", true) => SagaEvent::CompensationSucceeded { step },
        ("compensation", false) => SagaEvent::CompensationFailed { step, reason },
        (other, _) => return Err(format!("reply with unknown kind {other:?}")),
    })
}

/// Cache key of an order.
pub fn cache_key(order: Uuid) -> String {
    order.to_string()
}

/// Invalidate an order's cache entry: a short-lived marker that readers filling the cache
/// (with `set_if_absent`) cannot overwrite, so a value read before the change cannot
/// land after it.
pub async fn invalidate(cache: &dyn Cache, order: Uuid) {
    if let Err(e) = cache
        .set(&cache_key(order), b"", Duration::from_secs(2))
        .await
    {
        tracing::warn!(error = %e, order_id = %order, "не удалось сбросить кэш заказа");
    }
}

impl<B: Backend> MessageHandler<B::Tx> for ReplyHandler<B> {
    type Output = ();
    async fn handle(&self, tx: &mut B::Tx, msg: &Delivery) -> Result<(), HandlerError> {
        let reply = SagaReply::decode(msg.payload.as_ref())
            .map_err(|e| HandlerError::permanent(format!("undecodable saga reply: {e}")))?;
        let saga_id = Uuid::parse_str(&reply.saga_id)
            .map(SagaId)
            .map_err(|_| HandlerError::permanent(format!("bad saga id {:?}", reply.saga_id)))?;
        let event = event_of(&reply).map_err(HandlerError::permanent)?;
        let debited = matches!(
            (CommandType::try_from(reply.command), &event),
            (Ok(CommandType::Debit), SagaEvent::StepSucceeded { .. })
        );
        match self.orchestrator.handle(tx, saga_id, event).await {
            Ok(applied) => {
                if !applied.changed {
                    tracing::info!(saga_id = %saga_id, "ответ саги проигнорирован (дубликат или устарел)");
                }
                // The order shows the payment only if the saga took the debit forward. A
                // debit that succeeded after the saga gave up on it (deadline passed,
                // order cancelled meanwhile) is being refunded: a CANCELLED order does not
                // show it.
                let kept = matches!(
                    applied.saga.state.status,
                    SagaStatus::Running | SagaStatus::Completed
                );
                if debited && applied.changed && kept {
                    if let Ok(order) = Uuid::parse_str(&msg.key) {
                        self.repo
                            .set_payment(tx, order, &reply.payment_id)
                            .await
                            .map_err(|e| HandlerError::infrastructure(e.to_string()))?;
                    }
                }
                Ok(())
            }
            Err(saga_core::Error::NotFound(_)) => {
                Err(HandlerError::permanent(format!("no saga {saga_id}")))
            }
            // Storage trouble and version conflicts: retried until they pass.
            Err(e) => Err(HandlerError::infrastructure(e.to_string())),
        }
    }

    async fn after_commit(&self, msg: &Delivery, (): ()) {
        self.relay.wake();
        if let Ok(order) = Uuid::parse_str(&msg.key) {
            invalidate(&*self.cache, order).await;
        }
    }
}

/// Every second: fire the deadlines that passed, then invalidate the affected orders.
pub async fn sweep_deadlines<B: Backend>(
    orchestrator: Arc<OrderOrchestrator<B>>,
    repo: B::Repo,
    cache: Arc<dyn Cache>,
    relay: RelayHandle,
    stop: ordersys_kit::shutdown::Shutdown,
) -> anyhow::Result<()> {
    orchestrator
        .run_deadlines(Duration::from_secs(1), 100, stop.wait(), |changed| {
            relay.wake();
            let (repo, cache) = (repo.clone(), cache.clone());
            async move {
                for saga in changed {
                    for order in repo.orders_of_saga(saga.0).await.unwrap_or_default() {
                        invalidate(&*cache, order).await;
                    }
                }
            }
        })
        .await;
    Ok(())
}

/// The kind string of a command kind (for tests and tools).
pub fn kind_str(k: CommandKind) -> &'static str {
    k.as_str()
}
