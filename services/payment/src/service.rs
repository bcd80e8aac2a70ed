//! Use cases: apply saga commands (debit, refund) exactly once, and read wallets.

use std::sync::Arc;
use std::time::Duration;

use ordersys_kit::messaging::{forward_headers, Topics};
use ordersys_kit::saga_mac::SagaMac;
use ordersys_proto::common::v1::Money;
use ordersys_proto::saga::v1::{CommandType, ReplyStatus, SagaCommand, SagaReply, StepKind};
use outbox::idempotency::IdempotencyStore;
use outbox::{Delivery, HandlerError, MessageHandler, OutboxStore};
use prost::Message;
use saga_core::wire::SagaReply as WireReply;
use tracing::Instrument;
use uuid::Uuid;

use crate::domain::{
    decide_debit, decide_refund, first_debit, DebitDecision, PaymentStatus, RefundDecision,
};
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

/// The answer to a debit that took `amount` from `user` as payment `id` (logged).
fn debited(
    wire: &saga_core::SagaCommand,
    order: Uuid,
    user: Uuid,
    amount: i64,
    id: Uuid,
) -> SagaReply {
    tracing::info!(order_id = %order, user_id = %user, amount, payment_id = %id, "средства списаны");
    let mut reply = reply_to(wire);
    reply.status = ReplyStatus::Succeeded as i32;
    reply.payment_id = id.to_string();
    reply
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
    ) -> Result<Answer, HandlerError> {
        let money = cmd.amount.clone().unwrap_or_default();
        let id = Uuid::now_v7();
        let payment = |status, reason| NewPayment {
            id,
            order,
            user,
            amount: money.amount_minor,
            currency: &money.currency,
            status,
            reason,
        };
        // The common case in two statements: the account holds the amount in the
        // order's currency — checked and taken in one (which write-locks the account
        // first, as below), and the payment row records it. Where the order has a row
        // already (a resend, or a refund that overtook the debit) the money goes back
        // and that row decides, as below.
        let mut row_known = false;
        if money.amount_minor > 0
            && self
                .repo
                .take_balance(tx, user, money.amount_minor, &money.currency)
                .await
                .map_err(transient)?
        {
            let new = payment(PaymentStatus::Debited, None);
            if self.repo.insert_payment(tx, new).await.map_err(transient)? {
                return Ok(Answer::Fresh(debited(
                    wire,
                    order,
                    user,
                    money.amount_minor,
                    id,
                )));
            }
            self.repo
                .add_balance(tx, user, money.amount_minor)
                .await
                .map_err(transient)?;
            row_known = true;
        }
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
        // The payment row is the claim: recorded first as this debit would decide it,
        // read back only when the order already has one (a resend, or a refund that
        // overtook the debit).
        let first = first_debit(
            balance,
            &account_currency,
            money.amount_minor,
            &money.currency,
        );
        let (status, reason) = match &first {
            Ok(()) => (PaymentStatus::Debited, None),
            Err(reason) => (PaymentStatus::Declined, Some(reason.as_str())),
        };
        // (Where the row met above is known to be there, it is not tried again.)
        let recorded = !row_known
            && self
                .repo
                .insert_payment(tx, payment(status, reason))
                .await
                .map_err(transient)?;
        let (decision, existing) = if recorded {
            let decision = match first {
                Ok(()) => DebitDecision::Take,
                Err(reason) => DebitDecision::Decline(reason),
            };
            (decision, None)
        } else {
            // Not the first delivery: the answer it got, if the cache still has it
            // (none can exist while the order has no payment row — so only here).
            if let Some(reply) = self.cached(wire).await {
                return Ok(Answer::Cached(reply));
            }
            let existing = self
                .repo
                .lock_payment(tx, order)
                .await
                .map_err(transient)?
                .ok_or_else(|| transient("the order's payment row is neither new nor there"))?;
            let decision = decide_debit(
                Some((existing.status, existing.reason.clone())),
                balance,
                &account_currency,
                money.amount_minor,
                &money.currency,
            );
            (decision, Some(existing))
        };
        let mut reply = reply_to(wire);
        match decision {
            DebitDecision::Take => {
                self.repo
                    .add_balance(tx, user, -money.amount_minor)
                    .await
                    .map_err(transient)?;
                reply = debited(wire, order, user, money.amount_minor, id);
            }
            DebitDecision::Decline(reason) => {
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
        Ok(Answer::Fresh(reply))
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
                let recorded = self
                    .repo
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
                if !recorded {
                    // A debit committed since the read: the next attempt refunds it.
                    return Err(transient("the order's payment appeared meanwhile"));
                }
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
        // Fast path: a command answered before gets the same answer again — asked of
        // the cache only where the database says it may have been (a debit asks once
        // its payment row turned out to exist already).
        let answer = match command {
            Command::Debit => self.debit(tx, wire, cmd, order, user).await?,
            Command::Refund => match self.cached(wire).await {
                Some(reply) => Answer::Cached(reply),
                None => Answer::Fresh(self.refund(tx, wire, cmd, order, user).await?),
            },
        };
        let reply = match answer {
            Answer::Cached(reply) => {
                self.send_reply(tx, msg, wire, &reply).await?;
                return Ok(None);
            }
            Answer::Fresh(reply) => reply,
        };
        self.send_reply(tx, msg, wire, &reply).await?;
        Ok(Some(Answered {
            key: cache_key(wire),
            reply: reply.encode_to_vec(),
        }))
    }

    /// The reply the idempotency cache holds for `wire` — a read only, no
    /// reservation: the payment row is the claim (a second delivery racing this one
    /// finds it), so there is no one to hold off.
    async fn cached(&self, wire: &saga_core::SagaCommand) -> Option<SagaReply> {
        match self.idempotency.completed(&cache_key(wire)).await {
            Ok(Some(bytes)) => {
                let reply = SagaReply::decode(bytes.as_ref()).ok()?;
                tracing::info!("повторная команда: ответ из кэша идемпотентности");
                Some(reply)
            }
            Ok(None) => None,
            // Redis down: the database still guarantees at-most-once.
            Err(e) => {
                tracing::warn!(error = %e, "хранилище идемпотентности недоступно");
                None
            }
        }
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

/// A command's reply: decided now, or the one given before (from the idempotency cache).
enum Answer {
    Fresh(SagaReply),
    Cached(SagaReply),
}

/// The idempotency cache's key of a command.
fn cache_key(wire: &saga_core::SagaCommand) -> String {
    format!("payment:{}", wire.idempotency_key)
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
