//! Run with `cargo run -p example-saga-sqlite`.
//!
//! The create-order saga on one SQLite file, end to end and across a restart: the order
//! side starts a saga (its order row, the saga and the debit command in one
//! transaction), the relay carries commands and replies over the in-process `LocalBus`
//! in the SDK's wire format (`saga_core::wire`), the payment side debits idempotently and
//! replies through the outbox in its inbox transaction, and `wire::ReplyHandler` applies
//! the replies. The process "crashes" right after the first order is placed — before
//! anything was sent — and the second start finishes it from the file. A command nobody
//! understands is parked in the file's dead letters (`SqliteDeadLetters`), to be listed
//! and replayed.

use std::sync::Arc;
use std::time::Duration;

use outbox::local::LocalBus;
use outbox::sqlite::{SqliteDeadLetters, SqliteInbox, SqliteOutbox, SqliteTx};
use outbox::sqlx::{self, SqlitePool};
use outbox::{
    Delivery, HandlerError, IdempotentConsumer, MessageHandler, OutboxMessage, OutboxStore, Relay,
    RelayConfig, Transactional,
};
use saga_core::sqlite::SqliteSagaStore;
use saga_core::wire::{ReplyHandler, SagaReply};
use saga_core::{
    CommandSink, Dispatched, Orchestrator, SagaCommand, SagaDefinition, SagaId, SagaInstance,
    SagaStatus, SagaStore, Step,
};

const COMMANDS: &str = "saga.commands";
const REPLIES: &str = "saga.replies";

/// The order side: local steps set the order's status in the saga's transaction; the
/// payment step goes into the outbox in the wire format (the saga data — `user:amount`
/// — as the payload).
struct Orders(SqliteOutbox);

impl CommandSink<SqliteTx> for Orders {
    async fn dispatch(
        &self,
        tx: &mut SqliteTx,
        saga: &SagaInstance,
        cmd: &SagaCommand,
    ) -> saga_core::Result<Dispatched> {
        let status = match cmd.name.as_str() {
            "create_order" => "PENDING",
            "confirm_order" => "CONFIRMED",
            "cancel_order" => "CANCELLED",
            _ => {
                let msg = cmd.to_message(COMMANDS, saga.id.to_string(), saga.data.clone());
                self.0.enqueue(tx, msg).await?;
                return Ok(Dispatched::Sent);
            }
        };
        sqlx::query("INSERT OR REPLACE INTO orders (saga_id, status) VALUES (?, ?)")
            .bind(saga.id.to_string())
            .bind(status)
            .execute(&mut **tx)
            .await?;
        Ok(Dispatched::Succeeded)
    }
}

/// The payment side: each command applied once (the consumer's inbox record is in the
/// same transaction), its reply enqueued in that transaction too.
struct Payments(SqliteOutbox);

impl MessageHandler<SqliteTx> for Payments {
    type Output = ();

    async fn handle(&self, tx: &mut SqliteTx, msg: &Delivery) -> Result<(), HandlerError> {
        let cmd = SagaCommand::from_delivery(msg).map_err(HandlerError::permanent)?;
        let data = String::from_utf8_lossy(&msg.payload).into_owned();
        let (user, amount) = data
            .split_once(':')
            .and_then(|(u, a)| Some((u.to_owned(), a.parse::<i64>().ok()?)))
            .ok_or_else(|| HandlerError::permanent(format!("bad saga data {data:?}")))?;
        let sql = match cmd.name.as_str() {
            "payment.debit" => {
                "UPDATE wallets SET balance = balance - ?1 WHERE user = ?2 AND balance >= ?1"
            }
            "payment.refund" => "UPDATE wallets SET balance = balance + ?1 WHERE user = ?2",
            other => return Err(HandlerError::permanent(format!("unknown command {other}"))),
        };
        let done = sqlx::query(sql)
            .bind(amount)
            .bind(&user)
            .execute(&mut **tx)
            .await
            .map_err(HandlerError::infrastructure)?;
        let reply = if done.rows_affected() == 1 {
            SagaReply::succeeded(&cmd)
        } else {
            SagaReply::failed(&cmd, "insufficient funds")
        };
        self.0
            .enqueue(tx, reply.to_message(REPLIES, msg.key.clone(), ""))
            .await
            .map_err(HandlerError::infrastructure)
    }
}

type Orchestra = Orchestrator<SqliteSagaStore, Orders>;

/// What each start of the "process" builds over the file: the orchestrator of the
/// create-order saga.
async fn start(pool: &SqlitePool) -> Result<Arc<Orchestra>, Box<dyn std::error::Error>> {
    let definition = SagaDefinition::new("create_order")
        .step(Step::new("create_order").compensate_with("cancel_order"))
        .step(
            Step::new("payment")
                .action("payment.debit")
                .compensate_with("payment.refund")
                .deadline(Duration::from_secs(30)),
        )
        .step(Step::new("confirm_order"))
        .build()?;
    let outbox = SqliteOutbox::new(pool.clone());
    Ok(Arc::new(
        Orchestrator::new(SqliteSagaStore::new(pool.clone()), Orders(outbox)).register(definition),
    ))
}

async fn place(orch: &Orchestra, data: &str) -> Result<SagaId, Box<dyn std::error::Error>> {
    let id = SagaId::new();
    let mut tx = orch.store().begin().await?;
    orch.start(&mut tx, "create_order", id, data.to_owned().into())
        .await?;
    orch.store().commit(tx).await?;
    Ok(id)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let file = std::env::temp_dir().join(format!("example-saga-{}.db", std::process::id()));
    let pool = outbox::sqlite::connect(&file).await?;
    outbox::sqlite::migrate(&pool).await?;
    saga_core::sqlite::migrate(&pool).await?;
    sqlx::query("CREATE TABLE orders (saga_id TEXT PRIMARY KEY, status TEXT NOT NULL)")
        .execute(&pool)
        .await?;
    sqlx::query("CREATE TABLE wallets (user TEXT PRIMARY KEY, balance INTEGER NOT NULL)")
        .execute(&pool)
        .await?;
    sqlx::query("INSERT INTO wallets VALUES ('alice', 10000), ('bob', 500)")
        .execute(&pool)
        .await?;

    // First start: alice orders, and the process dies before anything is sent.
    let alice = place(&*start(&pool).await?, "alice:2500").await?;
    pool.close().await;
    println!("placed {alice} for alice, then the process stopped with its command unsent");

    // Second start, from the file alone.
    let pool = outbox::sqlite::connect(&file).await?;
    let orch = start(&pool).await?;
    let outbox = SqliteOutbox::new(pool.clone());
    let dead = SqliteDeadLetters::new(pool.clone());
    let bus = LocalBus::new();
    bus.subscribe(
        COMMANDS,
        IdempotentConsumer::new("payment", SqliteInbox::new(pool.clone()), dead.clone()),
        Payments(outbox.clone()),
    );
    bus.subscribe(
        REPLIES,
        IdempotentConsumer::new("order", SqliteInbox::new(pool.clone()), dead.clone()),
        ReplyHandler::new(orch.clone()),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let relay = tokio::spawn(
        Relay::new(outbox.clone(), bus, RelayConfig::default()).run(async {
            let _ = stopped.await;
        }),
    );
    let bob = place(&orch, "bob:9999").await?;
    // A command in no format anyone knows: parked, not retried forever.
    let mut tx = outbox.begin().await?;
    outbox
        .enqueue(&mut tx, OutboxMessage::new(COMMANDS, "poison", "???"))
        .await?;
    outbox.commit(tx).await?;

    for (who, id, want) in [
        ("alice", alice, SagaStatus::Completed),
        ("bob", bob, SagaStatus::Failed),
    ] {
        let saga = loop {
            match orch.store().get(id).await? {
                Some(s) if s.is_terminal() => break s,
                _ => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        };
        let (status,): (String,) = sqlx::query_as("SELECT status FROM orders WHERE saga_id = ?")
            .bind(id.to_string())
            .fetch_one(&pool)
            .await?;
        println!(
            "{who}: order {status}, saga {:?}, reason {:?}",
            saga.state.status, saga.state.failure_reason
        );
        assert_eq!(saga.state.status, want);
    }
    while dead.count().await? == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for parked in dead.list(10).await? {
        println!(
            "dead letter #{} on {}: {}",
            parked.seq, parked.delivery.topic, parked.reason
        );
    }
    let balances: Vec<(String, i64)> =
        sqlx::query_as("SELECT user, balance FROM wallets ORDER BY user")
            .fetch_all(&pool)
            .await?;
    println!("balances: {balances:?}");
    assert_eq!(balances, [("alice".into(), 7_500), ("bob".into(), 500)]);

    let _ = stop.send(());
    relay.await??;
    pool.close().await;
    let _ = std::fs::remove_file(&file);
    Ok(())
}
