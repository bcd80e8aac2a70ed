//! Use cases: apply saga commands (debit, refund) exactly once, and read wallets.

use std::sync::Arc;
use std::time::Duration;

use ordersys_kit::messaging::{forward_headers, Topics};
use ordersys_kit::saga_mac::SagaMac;
use ordersys_proto::common::v1::Money;
use ordersys_proto::saga::v1::{CommandType, ReplyStatus, SagaCommand, SagaReply, StepKind};
use outbox::idempotency::{IdempotencyStore, Reservation};
use outbox::{Delivery, HandlerError, MessageHandler, OutboxStore};
use prost::Message;
use saga_core::wire::SagaReply as WireReply;
use tracing::Instrument;
use uuid::Uuid;

use crate::domain::{decide_debit, decide_refund, DebitDecision, PaymentStatus, RefundDecision};
use crate::repository::{NewPayment, PaymentRepo};

/// Account settings.
#[derive(Debug, Clone)]
pub struct Accounts {
    /// Balance of a new account, minor units.
    pub initial_balance: i64,
    /// Currency of every account.
    pub currency: String,
}

/// Applies `saga.commands`: debit and refund, idempotently, replying through the
/// payment outbox in the same transaction.
///
/// Idempotency has two levels: Redis `idempotency:{key}` (24 h) is the fast path that
/// answers a resent command with the stored reply; the `payments.order_id` unique key is
/// the guarantee — a debit can only ever be recorded once per order.
pub struct CommandHandler<R, O> {
    accounts: Accounts,
    repo: R,
    outbox: O,
    topics: Topics,
    idempotency: Arc<dyn IdempotencyStore>,
    /// Wakes the relay once a reply is committed to the outbox.
    relay: Option<outbox::RelayHandle>,
    /// Checks the commands' seal and seals the replies (`SAGA_KEY`).
    mac: Option<SagaMac>,
}

impl<R, O> std::fmt::Debug for CommandHandler<R, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandHandler")
            .field("accounts", &self.accounts)
            .finish_non_exhaustive()
    }
}

const RESULT_TTL: Duration = Duration::from_secs(24 * 3600);
const PENDING_TTL: Duration = Duration::from_secs(60);

/// The commands the payment service carries out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// `payment.debit`: take the amount from the user's account.
    Debit,
    /// `payment.refund`: give back what the debit of the same order took.
    Refund,
}

impl Command {
    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Debit => "payment.debit",
            Self::Refund => "payment.refund",
        }
    }

    fn proto(self) -> CommandType {
        match self {
            Self::Debit => CommandType::Debit,
            Self::Refund => CommandType::Refund,
        }
    }
}

impl std::str::FromStr for Command {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        [Self::Debit, Self::Refund]
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| format!("unknown saga command {s:?}"))
    }
}

/// The saga command a message carries: from the saga wire headers (`saga_core::wire`),
/// or — from an order service of an earlier release, which sends none — from the proto
/// fields of `payload`.
pub fn command_of(
    msg: &Delivery,
    payload: &SagaCommand,
) -> Result<(Command, saga_core::SagaCommand), HandlerError> {
    if msg.headers.get(saga_core::wire::SAGA_ID).is_some() {
        let cmd = saga_core::SagaCommand::from_delivery(msg).map_err(HandlerError::permanent)?;
        let command = cmd.name.parse().map_err(HandlerError::permanent)?;
        return Ok((command, cmd));
    }
    let command = match CommandType::try_from(payload.command) {
        Ok(CommandType::Debit) => Command::Debit,
        Ok(CommandType::Refund) => Command::Refund,
        _ => {
            return Err(HandlerError::permanent(format!(
                "unknown saga command {}",
                payload.command
            )))
        }
    };
    let cmd = payload
        .saga_command(command.as_str())
        .map_err(HandlerError::permanent)?;
    Ok((command, cmd))
}

fn parse_uuid(field: &str, s: &str) -> Result<Uuid, HandlerError> {
    Uuid::parse_str(s).map_err(|_| HandlerError::permanent(format!("{field} is not a UUID: {s:?}")))
}

/// A storage failure: the database is down, a deadlock, a lock-wait timeout — retried
/// until it passes, never dead-lettered.
fn transient(e: impl std::fmt::Display) -> HandlerError {
    HandlerError::infrastructure(e.to_string())
}

impl<R: PaymentRepo, O: OutboxStore<Tx = R::Tx>> CommandHandler<R, O> {
    /// A handler over `repo`, writing replies to `topics.replies` through `outbox`.
    pub fn new(
        accounts: Accounts,
        repo: R,
        outbox: O,
        topics: Topics,
        idempotency: Arc<dyn IdempotencyStore>,
    ) -> Self {
        Self {
            accounts,
            repo,
            outbox,
            topics,
            idempotency,
            relay: None,
            mac: None,
        }
    }

    /// Take only commands sealed with `mac`'s key, and seal the replies with it
    /// ([`ordersys_kit::saga_mac`]); `None`: unsealed both ways (the in-process bus).
    pub fn sealing(mut self, mac: Option<SagaMac>) -> Self {
        self.mac = mac;
        self
    }

    /// Wake `relay` after each committed reply (the MySQL outbox cannot signal commits).
    pub fn waking(mut self, relay: outbox::RelayHandle) -> Self {
        self.relay = Some(relay);
        self
    }

    async fn debit(
        &self,
        tx: &mut R::Tx,
        wire: &saga_core::SagaCommand,
        cmd: &SagaCommand,
        order: Uuid,
        user: Uuid,
    ) -> Result<SagaReply, HandlerError> {
        let money = cmd.amount.clone().unwrap_or_default();
        // The account first (write-locked: one user's debits queue here instead of
        // deadlocking on the payments index), opened on the first debit.
        let (balance, account_currency) = match self.repo.lock_account(tx, user).await {
            Ok(Some(account)) => account,
            Ok(None) => {
                self.repo
                    .ensure_account(
                        tx,
                        user,
                        self.accounts.initial_balance,
                        &self.accounts.currency,
                    )
                    .await
                    .map_err(transient)?;
                self.repo
                    .lock_account(tx, user)
                    .await
                    .map_err(transient)?
                    .ok_or_else(|| transient("the account just opened is missing"))?
            }
            Err(e) => return Err(transient(e)),
        };
        let existing = self.repo.lock_payment(tx, order).await.map_err(transient)?;
        let decision = decide_debit(
            existing.as_ref().map(|p| (p.status, p.reason.clone())),
            balance,
            &account_currency,
            money.amount_minor,
            &money.currency,
        );
        let mut reply = reply_to(wire);
        match decision {
            DebitDecision::Take => {
                let id = Uuid::now_v7();
                self.repo
                    .add_balance(tx, user, -money.amount_minor)
                    .await
                    .map_err(transient)?;
                self.repo
                    .insert_payment(
                        tx,
                        NewPayment {
                            id,
                            order,
                            user,
                            amount: money.amount_minor,
                            currency: &money.currency,
                            status: PaymentStatus::Debited,
                            reason: None,
                        },
                    )
                    .await
                    .map_err(transient)?;
                tracing::info!(order_id = %order, user_id = %user, amount = money.amount_minor, payment_id = %id, "средства списаны");
                reply.status = ReplyStatus::Succeeded as i32;
                reply.payment_id = id.to_string();
            }
            DebitDecision::Decline(reason) => {
                self.repo
                    .insert_payment(
                        tx,
                        NewPayment {
                            id: Uuid::now_v7(),
                            order,
                            user,
                            amount: money.amount_minor,
                            currency: &money.currency,
                            status: PaymentStatus::Declined,
                            reason: Some(reason.as_str()),
                        },
                    )
                    .await
                    .map_err(transient)?;
                tracing::info!(order_id = %order, user_id = %user, reason = %reason, "списание отклонено");
                reply.status = ReplyStatus::Failed as i32;
                reply.error = reason;
            }
            DebitDecision::AlreadyDebited => {
                tracing::info!(order_id = %order, "повторная команда списания, средства уже списаны");
                reply.status = ReplyStatus::Succeeded as i32;
                reply.payment_id = existing.map(|p| p.id.to_string()).unwrap_or_default();
            }
            DebitDecision::AlreadyRefused(reason) => {
                reply.status = ReplyStatus::Failed as i32;
                reply.error = reason;
            }
        }
        Ok(reply)
    }

    async fn refund(
        &self,
        tx: &mut R::Tx,
        wire: &saga_core::SagaCommand,
        cmd: &SagaCommand,
        order: Uuid,
        user: Uuid,
    ) -> Result<SagaReply, HandlerError> {
        let existing = self.repo.lock_payment(tx, order).await.map_err(transient)?;
        let mut reply = reply_to(wire);
        reply.status = ReplyStatus::Succeeded as i32;
        match decide_refund(existing.as_ref().map(|p| p.status)) {
            RefundDecision::GiveBack => {
                let p = existing.expect("GiveBack implies a payment");
                // To whoever paid: the user a refund command names is not trusted with
                // money (a forged or confused one would credit someone else).
                if p.user != user {
                    tracing::warn!(order_id = %order, "команда возврата называет не того пользователя, что платил: возврат плательщику");
                }
                self.repo
                    .add_balance(tx, p.user, p.amount)
                    .await
                    .map_err(transient)?;
                self.repo
                    .set_status(tx, p.id, PaymentStatus::Refunded)
                    .await
                    .map_err(transient)?;
                reply.payment_id = p.id.to_string();
                tracing::info!(order_id = %order, amount = p.amount, "средства возвращены");
            }
            RefundDecision::Tombstone => {
                let currency = cmd
                    .amount
                    .as_ref()
                    .map(|m| m.currency.clone())
                    .unwrap_or_default();
                self.repo
                    .insert_payment(
                        tx,
                        NewPayment {
                            id: Uuid::now_v7(),
                            order,
                            user,
                            amount: 0,
                            currency: &currency,
                            status: PaymentStatus::Cancelled,
                            reason: Some("refunded before debit"),
                        },
                    )
                    .await
                    .map_err(transient)?;
                tracing::info!(order_id = %order, "возврат до списания: списание по заказу заблокировано");
            }
            RefundDecision::Nothing => {
                reply.payment_id = existing.map(|p| p.id.to_string()).unwrap_or_default();
            }
        }
        Ok(reply)
    }

    #[allow(clippy::too_many_arguments)]
    async fn apply(
        &self,
        tx: &mut R::Tx,
        msg: &Delivery,
        command: Command,
        wire: &saga_core::SagaCommand,
        cmd: &SagaCommand,
        order: Uuid,
        user: Uuid,
    ) -> Result<Option<Answered>, HandlerError> {
        // Fast path: a command we already answered gets the same answer again.
        let key = format!("payment:{}", wire.idempotency_key);
        match self.idempotency.reserve(&key, PENDING_TTL).await {
            Ok(Reservation::Completed(bytes)) => {
                if let Ok(reply) = SagaReply::decode(bytes.as_ref()) {
                    tracing::info!("повторная команда: ответ из кэша идемпотентности");
                    self.send_reply(tx, msg, wire, &reply).await?;
                    return Ok(None);
                }
            }
            Ok(_) => {}
            // Redis down: the database still guarantees at-most-once.
            Err(e) => tracing::warn!(error = %e, "хранилище идемпотентности недоступно"),
        }
        let reply = match command {
            Command::Debit => self.debit(tx, wire, cmd, order, user).await,
            Command::Refund => self.refund(tx, wire, cmd, order, user).await,
        };
        let reply = match reply {
            Ok(r) => r,
            Err(e) => {
                let _ = self.idempotency.release(&key).await;
                return Err(e);
            }
        };
        self.send_reply(tx, msg, wire, &reply).await?;
        Ok(Some(Answered {
            key,
            reply: reply.encode_to_vec(),
        }))
    }

    /// The reply as the saga wire format (`saga_core::wire`) says — its outcome in the
    /// headers — with the proto reply (the payment id) as the payload.
    async fn send_reply(
        &self,
        tx: &mut R::Tx,
        msg: &Delivery,
        wire: &saga_core::SagaCommand,
        reply: &SagaReply,
    ) -> Result<(), HandlerError> {
        let answer = match ReplyStatus::try_from(reply.status) {
            Ok(ReplyStatus::Succeeded) => WireReply::succeeded(wire),
            _ => WireReply::failed(wire, reply.error.clone()),
        };
        let mut out = forward_headers(
            &msg.headers,
            answer.to_message(
                self.topics.replies.clone(),
                msg.key.clone(),
                reply.encode_to_vec(),
            ),
        );
        if let Some(mac) = &self.mac {
            mac.seal(&mut out);
        }
        self.outbox.enqueue(tx, out).await.map_err(transient)
    }
}

/// The proto reply to `wire` (its saga fields repeat the wire headers for an order
/// service of an earlier release).
fn reply_to(wire: &saga_core::SagaCommand) -> SagaReply {
    let command: Result<Command, _> = wire.name.parse();
    #[allow(deprecated)]
    SagaReply {
        saga_id: wire.saga_id.to_string(),
        command: command.map_or(CommandType::Unspecified, Command::proto) as i32,
        status: ReplyStatus::Unspecified as i32,
        payment_id: String::new(),
        error: String::new(),
        idempotency_key: wire.idempotency_key.clone(),
        step: wire.step as u32,
        kind: wire.kind.as_str().to_owned(),
        step_kind: StepKind::from(wire.kind) as i32,
    }
}

/// A command answered in a unit of work: the reply to store under its idempotency key
/// once that unit of work committed.
#[derive(Debug)]
pub struct Answered {
    key: String,
    reply: Vec<u8>,
}

impl<R: PaymentRepo, O: OutboxStore<Tx = R::Tx>> MessageHandler<R::Tx> for CommandHandler<R, O> {
    /// The reply to remember, if this unit of work answered the command itself (not
    /// from the idempotency store).
    type Output = Option<Answered>;

    async fn handle(&self, tx: &mut R::Tx, msg: &Delivery) -> Result<Self::Output, HandlerError> {
        // Before anything else: only the order service's commands have an effect.
        ordersys_kit::saga_mac::check(self.mac.as_ref(), "payment", msg)?;
        let cmd = SagaCommand::decode(msg.payload.as_ref())
            .map_err(|e| HandlerError::permanent(format!("undecodable saga command: {e}")))?;
        let (command, wire) = command_of(msg, &cmd)?;
        let order = parse_uuid("order_id", &cmd.order_id)?;
        let user = parse_uuid("user_id", &cmd.user_id)?;
        if wire.idempotency_key.is_empty() {
            return Err(HandlerError::permanent(
                "saga command without idempotency key",
            ));
        }
        let span = tracing::info_span!(
            "saga_command",
            correlation_id = msg.headers.get(ordersys_kit::context::CORRELATION_ID).unwrap_or(""),
            saga_id = %wire.saga_id,
            order_id = %order,
            command = command.as_str(),
        );
        self.apply(tx, msg, command, &wire, &cmd, order, user)
            .instrument(span)
            .await
    }

    async fn after_commit(&self, _msg: &Delivery, answered: Self::Output) {
        if let Some(r) = &self.relay {
            r.wake();
        }
        if let Some(Answered { key, reply }) = answered {
            if let Err(e) = self.idempotency.complete(&key, &reply, RESULT_TTL).await {
                tracing::warn!(error = %e, "не удалось сохранить результат в хранилище идемпотентности");
            }
        }
    }
}

/// Read side: wallets.
#[derive(Debug, Clone)]
pub struct Wallets<R> {
    repo: R,
    accounts: Accounts,
}

impl<R: PaymentRepo> Wallets<R> {
    /// Wallets over `repo`.
    pub fn new(repo: R, accounts: Accounts) -> Self {
        Self { repo, accounts }
    }

    /// The balance of `user` (the account is opened on first use).
    pub async fn get(&self, user: Uuid) -> sqlx::Result<Money> {
        self.repo
            .open_account(user, self.accounts.initial_balance, &self.accounts.currency)
            .await?;
        let (balance, currency) = self.repo.account(user).await?;
        Ok(Money {
            amount_minor: balance,
            currency,
        })
    }
}
