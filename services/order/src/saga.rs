//! The sagas of the order service and their wiring: definitions, the command sink
//! (local steps on the order row, remote steps into the outbox) and the reply handler.

use ordersys_kit::saga_mac::SagaMac;
use std::sync::Arc;
use std::time::Duration;

use ordersys_kit::context::{CORRELATION_ID, TRACEPARENT};
use ordersys_kit::messaging::Topics;
use ordersys_kit::outbox_store::MySqlServiceOutbox;
use ordersys_proto::common::v1::Money;
use ordersys_proto::saga::v1::{
    CommandType, ReplyStatus, SagaCommand as CommandMsg, SagaReply as ReplyMsg, StepKind,
};
use outbox::idempotency::Cache;
use outbox::mysql::MySqlTx;
use outbox::sqlite::{SqliteOutbox, SqliteTx};
use outbox::{Delivery, HandlerError, MessageHandler, OutboxStore, RelayHandle};
use prost::Message;
use saga_core::mysql::MySqlSagaStore;
use saga_core::sqlite::SqliteSagaStore;
use saga_core::wire::{Outcome, SagaReply};
use saga_core::SagaStore;
use saga_core::{
    CommandSink, Dispatched, Orchestrator, SagaCommand, SagaDefinition, SagaEvent, SagaInstance,
    SagaStatus, Step,
};
use uuid::Uuid;

use crate::domain::{OrderStatus, SagaData};
use crate::repository::{MySqlOrders, OrderRepo, SqliteOrders};

/// Name of the create-order saga.
pub const CREATE: &str = "create_order";
/// Name of the saga that cancels a confirmed order.
pub const CANCEL: &str = "cancel_order";

/// The commands the order service's sagas send: local ones it carries out on the order
/// row, remote ones it sends to the payment service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Local: the order row was written with the saga's start; nothing more to do.
    CreateOrder,
    /// Local: the create saga's compensation — the order becomes CANCELLED.
    CancelOrder,
    /// Local: the order becomes CONFIRMED.
    ConfirmOrder,
    /// Local: the cancel saga's last step — the order becomes CANCELLED.
    MarkCancelled,
    /// Remote: take the order's amount from the user's account.
    PaymentDebit,
    /// Remote: give back what the debit took.
    PaymentRefund,
}

impl Command {
    /// Every command.
    pub const ALL: [Command; 6] = [
        Self::CreateOrder,
        Self::CancelOrder,
        Self::ConfirmOrder,
        Self::MarkCancelled,
        Self::PaymentDebit,
        Self::PaymentRefund,
    ];

    /// The name in the saga definitions and on the wire (`payment.debit`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CreateOrder => "create_order",
            Self::CancelOrder => "cancel_order",
            Self::ConfirmOrder => "confirm_order",
            Self::MarkCancelled => "mark_cancelled",
            Self::PaymentDebit => "payment.debit",
            Self::PaymentRefund => "payment.refund",
        }
    }
}

impl std::str::FromStr for Command {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| format!("unknown saga command {s:?}"))
    }
}

/// SPEC §4: create (PENDING) / cancel → debit / refund → confirm.
pub fn create_order(payment_deadline: Duration) -> SagaDefinition {
    SagaDefinition::new(CREATE)
        .step(Step::new("create_order").compensate_with(Command::CancelOrder.as_str()))
        .step(
            Step::new("payment")
                .action(Command::PaymentDebit.as_str())
                .compensate_with(Command::PaymentRefund.as_str())
                .deadline(payment_deadline),
        )
        .step(Step::new(Command::ConfirmOrder.as_str()))
        .build()
        .expect("valid saga")
}

/// Refund a confirmed order's debit (resent until answered), then mark it cancelled.
pub fn cancel_order(payment_deadline: Duration) -> SagaDefinition {
    SagaDefinition::new(CANCEL)
        .step(
            Step::new("refund")
                .action(Command::PaymentRefund.as_str())
                .deadline(payment_deadline)
                .resend_on_timeout(true),
        )
        .step(Step::new(Command::MarkCancelled.as_str()))
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
    mac: Option<SagaMac>,
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
            mac: None,
        }
    }

    /// Seal every command with `mac`'s key ([`ordersys_kit::saga_mac`]); `None`: unsealed
    /// (the in-process bus).
    pub fn sealing(mut self, mac: Option<SagaMac>) -> Self {
        self.mac = mac;
        self
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
        let command: Command = cmd.name.parse().map_err(saga_core::Error::dispatch)?;
        match command {
            // The row was inserted in this same unit of work before the saga started.
            Command::CreateOrder => Ok(Dispatched::Succeeded),
            Command::CancelOrder | Command::MarkCancelled => {
                let reason = saga
                    .state
                    .failure_reason
                    .as_deref()
                    .or((command == Command::MarkCancelled).then_some("cancelled by the customer"));
                self.repo
                    .set_status(tx, data.order_id, OrderStatus::Cancelled, reason)
                    .await
                    .map_err(db)?;
                tracing::info!(order_id = %data.order_id, reason = ?reason, "заказ отменён");
                Ok(Dispatched::Succeeded)
            }
            Command::ConfirmOrder => {
                // Right after the debit's reply (the usual way here): its payment id is
                // recorded by the same statement, and taken once it was.
                let payment = DEBIT_PAYMENT
                    .try_with(|slot| slot.lock().expect("lock").clone())
                    .ok()
                    .flatten();
                let n = self
                    .repo
                    .confirm(tx, data.order_id, payment.as_deref())
                    .await
                    .map_err(db)?;
                if n == 0 {
                    return Ok(Dispatched::Failed("order is no longer pending".into()));
                }
                let _ = DEBIT_PAYMENT.try_with(|slot| slot.lock().expect("lock").take());
                tracing::info!(order_id = %data.order_id, "заказ подтверждён");
                Ok(Dispatched::Succeeded)
            }
            Command::PaymentDebit | Command::PaymentRefund => {
                let command = if command == Command::PaymentDebit {
                    CommandType::Debit
                } else {
                    CommandType::Refund
                };
                // The saga's fields repeat the wire headers for a payment service of an
                // earlier release.
                #[allow(deprecated)]
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
                    step_kind: StepKind::from(cmd.kind) as i32,
                };
                // Key = order id: every message about one order lands in one partition, in
                // order. The saga's wire headers (`saga_core::wire`) say which command this is.
                let mut out = cmd.to_message(
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
                if let Some(mac) = &self.mac {
                    mac.seal(&mut out);
                }
                self.outbox
                    .enqueue(tx, out)
                    .await
                    .map_err(saga_core::Error::dispatch)?;
                tracing::info!(order_id = %data.order_id, saga_id = %saga.id, command = %cmd.name, "команда саги записана в outbox");
                Ok(Dispatched::Sent)
            }
        }
    }
}

tokio::task_local! {
    /// The payment id a debit's reply carries, while the reply is applied: the order's
    /// confirmation (a local step the reply's `handle` runs) takes it to record it in
    /// the same `UPDATE` — one statement per order less.
    static DEBIT_PAYMENT: Arc<std::sync::Mutex<Option<String>>>;
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
    mac: Option<SagaMac>,
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
            mac: None,
        }
    }

    /// Take only replies sealed with `mac`'s key ([`ordersys_kit::saga_mac`]); `None`:
    /// any (the in-process bus).
    pub fn sealing(mut self, mac: Option<SagaMac>) -> Self {
        self.mac = mac;
        self
    }
}

/// The reply a message carries: from the saga wire headers (`saga_core::wire`), or —
/// from a payment service of an earlier release, which sends none — from the proto
/// fields. `reply` is the message's decoded payload.
pub fn reply_of(msg: &Delivery, reply: &ReplyMsg) -> Result<SagaReply, String> {
    if msg.headers.get(saga_core::wire::SAGA_ID).is_some() {
        return SagaReply::from_delivery(msg).map_err(|e| e.to_string());
    }
    let name = match CommandType::try_from(reply.command) {
        Ok(CommandType::Debit) => Command::PaymentDebit,
        Ok(CommandType::Refund) => Command::PaymentRefund,
        _ => return Err(format!("reply to unknown command {}", reply.command)),
    };
    let outcome = match ReplyStatus::try_from(reply.status) {
        Ok(ReplyStatus::Succeeded) => Outcome::Succeeded,
        Ok(ReplyStatus::Failed) => Outcome::Failed {
            reason: if reply.error.is_empty() {
                "payment failed".to_owned()
            } else {
                reply.error.clone()
            },
        },
        _ => return Err(format!("reply with unknown status {}", reply.status)),
    };
    let command = reply.saga_command(name.as_str())?;
    Ok(SagaReply {
        saga_id: command.saga_id,
        command,
        outcome,
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
        // Before anything else: only the payment service's replies move a saga.
        ordersys_kit::saga_mac::check(self.mac.as_ref(), "order", msg)?;
        let payload = ReplyMsg::decode(msg.payload.as_ref())
            .map_err(|e| HandlerError::permanent(format!("undecodable saga reply: {e}")))?;
        let reply = reply_of(msg, &payload).map_err(HandlerError::permanent)?;
        let (saga_id, event) = (reply.saga_id, reply.event());
        let debited = reply.command.name == Command::PaymentDebit.as_str()
            && matches!(event, SagaEvent::StepSucceeded { .. });
        // The payment id of a successful debit, for the confirmation this reply leads
        // to (a local step run inside `handle`) to record in its own statement; left
        // here if no step took it.
        let payment = Arc::new(std::sync::Mutex::new(
            debited.then(|| payload.payment_id.clone()),
        ));
        let handled = DEBIT_PAYMENT
            .scope(
                payment.clone(),
                self.orchestrator.handle(tx, saga_id, event),
            )
            .await;
        match handled {
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
                let untaken = payment.lock().expect("lock").take();
                if let (Some(payment_id), true) = (untaken, applied.changed && kept) {
                    if let Ok(order) = Uuid::parse_str(&msg.key) {
                        self.repo
                            .set_payment(tx, order, &payment_id)
                            .await
                            .map_err(|e| HandlerError::infrastructure(e.to_string()))?;
                    }
                }
                Ok(())
            }
            Err(saga_core::Error::NotFound(_)) => {
                Err(HandlerError::permanent(format!("no saga {saga_id}")))
            }
            // A saga of a version this deploy no longer registers: parked with the
            // reason (the saga left as it is) instead of holding up its partition; replay
            // it once the version is registered again.
            Err(
                e @ (saga_core::Error::UnknownVersion { .. } | saga_core::Error::UnknownType(_)),
            ) => Err(HandlerError::permanent(e.to_string())),
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

#[cfg(test)]
mod tests {
    use super::*;
    use saga_core::{CommandKind, SagaId};

    fn debit() -> SagaCommand {
        SagaCommand {
            saga_id: SagaId::new(),
            saga_type: CREATE.into(),
            step: 1,
            step_name: "payment".into(),
            kind: CommandKind::Action,
            name: Command::PaymentDebit.as_str().into(),
            idempotency_key: "k".into(),
        }
    }

    #[test]
    fn every_command_name_parses_back_and_no_other() {
        for c in Command::ALL {
            assert_eq!(c.as_str().parse::<Command>(), Ok(c));
        }
        assert!("payment.credit".parse::<Command>().is_err());
        // Every command the definitions name is one of them.
        for def in [
            create_order(Duration::from_secs(1)),
            cancel_order(Duration::from_secs(1)),
        ] {
            for step in def.steps() {
                for name in std::iter::once(&step.action).chain(step.compensation.as_ref()) {
                    assert!(name.parse::<Command>().is_ok(), "{name}");
                }
            }
        }
    }

    /// The wire headers win over the proto's saga fields.
    #[test]
    fn a_reply_is_read_from_the_wire_headers() {
        let cmd = debit();
        let proto = ReplyMsg {
            step: 7,
            status: ReplyStatus::Succeeded as i32,
            ..Default::default()
        };
        let msg = SagaReply::failed(&cmd, "no money")
            .to_message("saga.replies", "o", proto.encode_to_vec())
            .to_delivery();
        let reply = reply_of(&msg, &proto).unwrap();
        assert_eq!(
            reply.event(),
            SagaEvent::StepFailed {
                step: 1,
                reason: "no money".into()
            }
        );
        let mut broken = msg.clone();
        broken.headers.insert(saga_core::wire::KIND, "undo");
        assert!(reply_of(&broken, &proto).unwrap_err().contains("saga-kind"));
    }

    /// A payment service of an earlier release sends no headers: the proto fields say it,
    /// the kind as an enum or, older still, as a string.
    #[test]
    #[allow(deprecated)]
    fn a_reply_without_headers_is_read_from_the_proto() {
        let id = SagaId::new();
        let base = ReplyMsg {
            saga_id: id.to_string(),
            command: CommandType::Refund as i32,
            status: ReplyStatus::Failed as i32,
            step: 1,
            ..Default::default()
        };
        let msg = outbox::OutboxMessage::new("saga.replies", "o", "").to_delivery();
        let with_enum = ReplyMsg {
            step_kind: StepKind::Compensation as i32,
            ..base.clone()
        };
        let reply = reply_of(&msg, &with_enum).unwrap();
        assert_eq!(
            (reply.saga_id, reply.command.name.as_str()),
            (id, "payment.refund")
        );
        assert_eq!(
            reply.event(),
            SagaEvent::CompensationFailed {
                step: 1,
                reason: "payment failed".into()
            }
        );
        let with_string = ReplyMsg {
            kind: "action".into(),
            status: ReplyStatus::Succeeded as i32,
            ..base.clone()
        };
        assert_eq!(
            reply_of(&msg, &with_string).unwrap().event(),
            SagaEvent::StepSucceeded { step: 1 }
        );
        for bad in [
            ReplyMsg {
                kind: "undo".into(),
                ..base.clone()
            },
            ReplyMsg {
                step_kind: 1,
                status: 0,
                ..base.clone()
            },
            ReplyMsg {
                step_kind: 1,
                command: 0,
                ..base.clone()
            },
            ReplyMsg {
                step_kind: 1,
                saga_id: "x".into(),
                ..base.clone()
            },
        ] {
            assert!(reply_of(&msg, &bad).is_err(), "{bad:?}");
        }
    }
}
