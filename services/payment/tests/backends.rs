//! The payment command handler on both backends — MySQL (real MariaDB) and SQLite (the
//! embedded mode) — through the same idempotent consumer: a debit applied once however
//! often it is delivered, a refund giving it back, a refund before its debit blocking
//! the debit, and a reply in the outbox for every command.

use std::sync::Arc;
use std::time::Duration;

use ordersys_kit::messaging::Topics;
use ordersys_payment::repository::{MySqlPayments, PaymentRepo, SqlitePayments};
use ordersys_payment::service::{Accounts, CommandHandler};
use ordersys_proto::common::v1::Money;
use ordersys_proto::saga::v1::{CommandType, ReplyStatus, SagaCommand, SagaReply};
use outbox::idempotency::MemoryIdempotencyStore;
use outbox::memory::MemoryDeadLetters;
use outbox::{DeliveryOutcome, IdempotentConsumer, Inbox, OutboxMessage, OutboxStore};
use prost::Message;
use uuid::Uuid;

/// The command as the order service sends it: the saga wire headers
/// (`saga_core::wire`) and the proto payload.
fn command(kind: CommandType, order: Uuid, user: Uuid, amount: i64) -> OutboxMessage {
    let msg = legacy_command(kind, order, user, amount);
    let (name, step_kind) = if kind == CommandType::Debit {
        ("payment.debit", saga_core::CommandKind::Action)
    } else {
        ("payment.refund", saga_core::CommandKind::Compensation)
    };
    let wire = saga_core::SagaCommand {
        saga_id: saga_core::SagaId(order),
        saga_type: "create_order".into(),
        step: 1,
        step_name: "payment".into(),
        kind: step_kind,
        name: name.into(),
        idempotency_key: format!("{order}:1:{}", step_kind.as_str()),
    };
    // The proto's saga fields deliberately wrong: the headers are what counts.
    let mut payload = SagaCommand::decode(msg.payload.as_ref()).unwrap();
    payload.step = 99;
    payload.idempotency_key.clear();
    wire.to_message("saga.commands", order.to_string(), payload.encode_to_vec())
}

/// The command as an order service of an earlier release sends it: no saga headers,
/// the saga's fields in the proto (the kind as a string).
#[allow(deprecated)]
fn legacy_command(kind: CommandType, order: Uuid, user: Uuid, amount: i64) -> OutboxMessage {
    let step_kind = if kind == CommandType::Debit {
        "action"
    } else {
        "compensation"
    };
    let cmd = SagaCommand {
        saga_id: order.to_string(),
        command: kind as i32,
        order_id: order.to_string(),
        user_id: user.to_string(),
        amount: Some(Money {
            amount_minor: amount,
            currency: "USD".into(),
        }),
        idempotency_key: format!("{order}:1:{step_kind}"),
        step: 1,
        kind: step_kind.into(),
        step_kind: 0,
    };
    OutboxMessage::new("saga.commands", order.to_string(), cmd.encode_to_vec())
}

async fn scenario<R, O, I>(repo: R, outbox: O, inbox: I)
where
    R: PaymentRepo,
    O: OutboxStore<Tx = R::Tx> + Clone,
    I: Inbox<Tx = R::Tx>,
{
    let accounts = Accounts {
        initial_balance: 10_000,
        currency: "USD".into(),
    };
    let handler = CommandHandler::new(
        accounts.clone(),
        repo.clone(),
        outbox.clone(),
        Topics::new(""),
        Arc::new(MemoryIdempotencyStore::new()),
    );
    let consumer = IdempotentConsumer::new("payment", inbox, MemoryDeadLetters::new());
    let user = Uuid::now_v7();

    // A debit delivered twice (same message) and resent (new message, same key — from a
    // sender of an earlier release, without the wire headers).
    let order = Uuid::now_v7();
    let debit = command(CommandType::Debit, order, user, 2_500);
    assert_eq!(
        consumer
            .process(&debit.to_delivery(), &handler)
            .await
            .unwrap(),
        DeliveryOutcome::Processed
    );
    assert_eq!(
        consumer
            .process(&debit.to_delivery(), &handler)
            .await
            .unwrap(),
        DeliveryOutcome::Duplicate
    );
    let resent = legacy_command(CommandType::Debit, order, user, 2_500);
    assert_eq!(
        consumer
            .process(&resent.to_delivery(), &handler)
            .await
            .unwrap(),
        DeliveryOutcome::Processed
    );
    assert_eq!(
        repo.account(user).await.unwrap().0,
        7_500,
        "debited exactly once"
    );

    // Refund gives it back, once.
    let refund = command(CommandType::Refund, order, user, 2_500);
    consumer
        .process(&refund.to_delivery(), &handler)
        .await
        .unwrap();
    consumer
        .process(
            &command(CommandType::Refund, order, user, 2_500).to_delivery(),
            &handler,
        )
        .await
        .unwrap();
    assert_eq!(repo.account(user).await.unwrap().0, 10_000);

    // A refund that overtakes its debit blocks it; too large a debit is declined.
    let late = Uuid::now_v7();
    consumer
        .process(
            &command(CommandType::Refund, late, user, 1_000).to_delivery(),
            &handler,
        )
        .await
        .unwrap();
    consumer
        .process(
            &command(CommandType::Debit, late, user, 1_000).to_delivery(),
            &handler,
        )
        .await
        .unwrap();
    let poor = Uuid::now_v7();
    consumer
        .process(
            &command(CommandType::Debit, poor, user, 1_000_000).to_delivery(),
            &handler,
        )
        .await
        .unwrap();
    assert_eq!(repo.account(user).await.unwrap().0, 10_000);

    // Every settled command left a reply in the outbox, in order per order id.
    let replies = outbox
        .claim("test", 100, Duration::from_secs(30))
        .await
        .unwrap();
    let statuses: Vec<(String, i32)> = replies
        .iter()
        .map(|m| {
            let r = SagaReply::decode(m.payload.as_ref()).unwrap();
            // The wire headers say the same as the proto status, for the right step.
            let wire = saga_core::wire::SagaReply::from_headers(&m.headers).unwrap();
            assert_eq!(
                matches!(wire.outcome, saga_core::wire::Outcome::Succeeded),
                r.status == ReplyStatus::Succeeded as i32
            );
            assert_eq!(
                (wire.command.step, wire.saga_id.to_string()),
                (1, m.key.clone())
            );
            (m.key.clone(), r.status)
        })
        .collect();
    let ok = ReplyStatus::Succeeded as i32;
    let failed = ReplyStatus::Failed as i32;
    assert_eq!(
        statuses,
        vec![
            (order.to_string(), ok),
            (order.to_string(), ok),
            (order.to_string(), ok),
            (order.to_string(), ok),
            (late.to_string(), ok),
            (late.to_string(), failed),
            (poor.to_string(), failed),
        ]
    );

    // A refund naming someone else than the payer pays the payer back, not them.
    let (payer, other) = (Uuid::now_v7(), Uuid::now_v7());
    let (paid, others_order) = (Uuid::now_v7(), Uuid::now_v7());
    for (order, who) in [(paid, payer), (others_order, other)] {
        consumer
            .process(
                &command(CommandType::Debit, order, who, 1_000).to_delivery(),
                &handler,
            )
            .await
            .unwrap();
    }
    consumer
        .process(
            &command(CommandType::Refund, paid, other, 1_000).to_delivery(),
            &handler,
        )
        .await
        .unwrap();
    assert_eq!(
        repo.account(payer).await.unwrap().0,
        10_000,
        "the payer got it back"
    );
    assert_eq!(
        repo.account(other).await.unwrap().0,
        9_000,
        "the one named did not"
    );

    // Resent with the idempotency cache gone (Redis restarted empty, or down): the
    // payments' unique key answers as the first time — no second debit, the same
    // payment, the same refusal (even where the balance would now allow it).
    let forgetful = CommandHandler::new(
        accounts,
        repo.clone(),
        outbox.clone(),
        Topics::new(""),
        Arc::new(MemoryIdempotencyStore::new()),
    );
    // Last, the first debit of `order`, refunded since, resent twice: the cache gives
    // its first answer again; without the cache the database refuses it now.
    for (resent, by) in [
        (
            command(CommandType::Debit, others_order, other, 1_000),
            &forgetful,
        ),
        (command(CommandType::Debit, poor, user, 1), &forgetful),
        (command(CommandType::Debit, order, user, 2_500), &handler),
        (command(CommandType::Debit, order, user, 2_500), &forgetful),
    ] {
        assert_eq!(
            consumer.process(&resent.to_delivery(), by).await.unwrap(),
            DeliveryOutcome::Processed
        );
    }
    assert_eq!(repo.account(other).await.unwrap().0, 9_000);
    assert_eq!(repo.account(user).await.unwrap().0, 10_000);
    let mut answers: Vec<(String, i32, String, String)> = outbox
        .claim("test", 100, Duration::from_secs(30))
        .await
        .unwrap()
        .iter()
        .map(|m| {
            let r = SagaReply::decode(m.payload.as_ref()).unwrap();
            (m.key.clone(), r.status, r.payment_id, r.error)
        })
        .collect();
    let first_payment = |of: Uuid| {
        let id = answers
            .iter()
            .find(|a| a.0 == of.to_string())
            .map(|a| a.2.clone())
            .expect("the first debit's reply");
        assert!(!id.is_empty());
        id
    };
    let (others_payment, refunded_payment) = (first_payment(others_order), first_payment(order));
    assert_eq!(
        answers.split_off(answers.len() - 4),
        vec![
            (others_order.to_string(), ok, others_payment, String::new()),
            (
                poor.to_string(),
                failed,
                String::new(),
                "insufficient funds".to_owned()
            ),
            (order.to_string(), ok, refunded_payment, String::new()),
            (
                order.to_string(),
                failed,
                String::new(),
                "payment was cancelled".to_owned()
            ),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_handling_on_mysql() {
    // A database of its own, dropped at the end — and if the test panics.
    let db = outbox::conformance::mysql::TestDb::new().await;
    let repo = MySqlPayments::new(db.pool.clone());
    repo.migrate().await.unwrap();
    scenario(
        repo,
        outbox::mysql::MySqlOutbox::new(db.pool.clone()),
        outbox::mysql::MySqlInbox::new(db.pool.clone()),
    )
    .await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_handling_on_sqlite() {
    let file = outbox::conformance::sqlite::TempDbFile::new("ordersys-pay");
    let pool = ordersys_kit::db::connect_sqlite(&file.url()).await.unwrap();
    let repo = SqlitePayments::new(pool.clone());
    repo.migrate().await.unwrap();
    scenario(
        repo,
        outbox::sqlite::SqliteOutbox::new(pool.clone()),
        outbox::sqlite::SqliteInbox::new(pool.clone()),
    )
    .await;
    pool.close().await;
}
