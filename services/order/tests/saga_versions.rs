//! A deploy that changes the order saga, on the real MySQL server (`DATABASE_URL`, default
//! the local test server) with the order service's own parts: its orders, saga store,
//! outbox, command sink and reply handler.
//!
//! Yesterday's process registers the create saga as today's code defines it (version 1);
//! orders are placed and their debits are out when it stops. Today's process registers
//! version 1 and a version 2 with an extra step *before* the payment — so a version-1
//! saga driven by version 2 would take its debit's reply for the wrong step and fail.
//! The old orders finish on version 1, new ones run version 2. A process that no longer
//! registers version 1 dead-letters the replies of a version-1 saga and leaves it as it
//! was, until version 1 is registered again. And a debit's payment id reaches its order
//! whether a confirmation step records it (versions 1, 2) or the reply itself (3).

use std::sync::Arc;
use std::time::Duration;

use ordersys_kit::messaging::Topics;
use ordersys_kit::outbox_store::MySqlServiceOutbox;
use ordersys_order::domain::{Item, Order, OrderStatus};
use ordersys_order::repository::MySqlOrders;
use ordersys_order::saga::{self, MySql, OrderOrchestrator, OrderSink, ReplyHandler, CREATE};
use ordersys_order::service::OrderService;
use ordersys_proto::saga::v1::SagaReply as ReplyMsg;
use outbox::conformance::mysql::TestDb;
use outbox::idempotency::{MemoryCache, MemoryIdempotencyStore};
use outbox::{DeliveryOutcome, IdempotentConsumer, OutboxStore};
use prost::Message as _;
use saga_core::mysql::MySqlSagaStore;
use saga_core::wire::SagaReply;
use saga_core::{SagaCommand, SagaDefinition, SagaStatus, SagaStore, Step, StepStatus};
use uuid::Uuid;

const DEADLINE: Duration = Duration::from_secs(600);

/// Version 2 of the create saga: an extra local step between the order and the payment
/// (here the order's no-op `create_order` command, which the sink knows).
fn create_v2() -> SagaDefinition {
    SagaDefinition::new(CREATE)
        .version(2)
        .step(Step::new("create_order").compensate_with("cancel_order"))
        .step(Step::new("screening").action("create_order"))
        .step(
            Step::new("payment")
                .action("payment.debit")
                .compensate_with("payment.refund")
                .deadline(DEADLINE),
        )
        .step(Step::new("confirm_order"))
        .build()
        .expect("valid saga")
}

/// Version 3: the saga ends with the payment — no confirmation step to record the
/// debit's payment id, so the reply handler records it itself.
fn create_v3() -> SagaDefinition {
    SagaDefinition::new(CREATE)
        .version(3)
        .step(Step::new("create_order").compensate_with("cancel_order"))
        .step(
            Step::new("payment")
                .action("payment.debit")
                .compensate_with("payment.refund")
                .deadline(DEADLINE),
        )
        .build()
        .expect("valid saga")
}

/// One start of the order service over `db`, with these create-saga versions.
struct Process {
    service: OrderService<MySql>,
    orchestrator: Arc<OrderOrchestrator<MySql>>,
    replies: ReplyHandler<MySql>,
}

fn process(db: &TestDb, versions: &[u32]) -> Process {
    let repo = MySqlOrders::new(db.pool.clone());
    let outbox = MySqlServiceOutbox::new(db.pool.clone(), false);
    let mut orchestrator = saga_core::Orchestrator::new(
        MySqlSagaStore::new(db.pool.clone()),
        OrderSink::<MySql>::new(repo.clone(), outbox.clone(), Topics::new("")),
    )
    .register(saga::cancel_order(DEADLINE));
    for v in versions {
        orchestrator = orchestrator.register(match v {
            1 => saga::create_order(DEADLINE),
            2 => create_v2(),
            3 => create_v3(),
            _ => unreachable!(),
        });
    }
    let orchestrator = Arc::new(orchestrator);
    // The relay is never run: the test reads the commands from the outbox itself.
    let relay = outbox::Relay::new(
        outbox,
        outbox::memory::MemoryBroker::new(),
        outbox::RelayConfig::default(),
    )
    .handle();
    let cache = Arc::new(MemoryCache::new());
    let service = OrderService::<MySql>::new(
        repo.clone(),
        orchestrator.clone(),
        cache.clone(),
        Arc::new(MemoryIdempotencyStore::new()),
        relay.clone(),
    );
    let replies = ReplyHandler::<MySql>::new(orchestrator.clone(), repo, cache, relay);
    Process {
        service,
        orchestrator,
        replies,
    }
}

async fn place(p: &Process, user: Uuid) -> Order {
    let items = vec![Item {
        product_id: "book".into(),
        quantity: 1,
        unit_price: 1_000,
    }];
    p.service
        .create(&user.to_string(), items, "USD", "", None)
        .await
        .expect("order placed")
}

/// The debits waiting in the outbox, each with its key (the order id).
async fn debits(db: &TestDb) -> Vec<(SagaCommand, String)> {
    let outbox = MySqlServiceOutbox::new(db.pool.clone(), false);
    let claimed = outbox
        .claim("versions-test", 100, Duration::from_secs(600))
        .await
        .unwrap();
    outbox
        .mark_sent(&claimed.iter().map(|m| m.id).collect::<Vec<_>>())
        .await
        .unwrap();
    claimed
        .iter()
        .map(|m| {
            let cmd = SagaCommand::from_headers(&m.headers).expect("a saga command");
            assert_eq!(cmd.name, "payment.debit");
            (cmd, m.key.clone())
        })
        .collect()
}

/// Answer `cmd` (keyed `order`) as the payment service does (debited), through `p`'s
/// reply handler in the inbox's unit of work.
async fn answer(db: &TestDb, p: &Process, (cmd, order): &(SagaCommand, String)) -> DeliveryOutcome {
    let payload = ReplyMsg {
        payment_id: format!("pay-{}", cmd.saga_id),
        ..Default::default()
    };
    let msg = SagaReply::succeeded(cmd)
        .to_message("saga.replies", order.clone(), payload.encode_to_vec())
        .to_delivery();
    let inbox = outbox::mysql::MySqlInbox::new(db.pool.clone());
    let dead = outbox::memory::MemoryDeadLetters::new();
    IdempotentConsumer::new("order", inbox, dead)
        .process(&msg, &p.replies)
        .await
        .unwrap()
}

async fn saga_of(p: &Process, order: &Order) -> saga_core::SagaInstance {
    p.orchestrator
        .store()
        .get(saga_core::SagaId(order.saga_id))
        .await
        .unwrap()
        .expect("the order's saga")
}

async fn status(p: &Process, order: &Order) -> OrderStatus {
    read(p, order).await.status
}

async fn read(p: &Process, order: &Order) -> Order {
    p.service
        .get(&order.user_id.to_string(), &order.id.to_string())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_orders_finish_on_the_old_saga_and_new_ones_run_the_new() {
    let db = TestDb::new().await;
    MySqlOrders::new(db.pool.clone()).migrate().await.unwrap();
    let user = Uuid::new_v4();

    // Yesterday: version 1 only; three orders wait for their debits.
    let yesterday = process(&db, &[1]);
    let mut old = Vec::new();
    for _ in 0..3 {
        old.push(place(&yesterday, user).await);
    }
    let old_debits = debits(&db).await;
    assert_eq!(old_debits.len(), 3);
    assert!(
        old_debits.iter().all(|(c, _)| c.step == 1),
        "{old_debits:?}"
    );
    drop(yesterday);

    // Today: versions 1 and 2; new orders start on 2 and run its extra step.
    let today = process(&db, &[1, 2]);
    let mut new = Vec::new();
    for _ in 0..2 {
        new.push(place(&today, user).await);
    }
    let new_debits = debits(&db).await;
    assert_eq!(new_debits.len(), 2);
    assert!(
        new_debits.iter().all(|(c, _)| c.step == 2),
        "{new_debits:?}"
    );

    for cmd in old_debits.iter().chain(&new_debits) {
        assert_eq!(answer(&db, &today, cmd).await, DeliveryOutcome::Processed);
    }
    for (orders, version, steps) in [(&old, 1, 3), (&new, 2, 4)] {
        for order in orders {
            let saga = saga_of(&today, order).await;
            assert_eq!(saga.definition_version, version);
            assert_eq!(saga.state.status, SagaStatus::Completed, "{saga:?}");
            assert_eq!(saga.state.steps.len(), steps);
            assert!(saga.state.steps.iter().all(|s| *s == StepStatus::Succeeded));
            // The debit's payment id, recorded by the confirmation's own statement.
            let shown = read(&today, order).await;
            assert_eq!(shown.status, OrderStatus::Confirmed);
            assert_eq!(
                shown.payment_id.as_deref(),
                Some(format!("pay-{}", saga.id).as_str())
            );
        }
    }
    db.drop_db().await;
}

/// A saga whose debit no confirmation follows (version 3) still shows the debit's
/// payment on its order: the reply handler records what no step took.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_no_confirmation_records_is_recorded_by_the_reply() {
    let db = TestDb::new().await;
    MySqlOrders::new(db.pool.clone()).migrate().await.unwrap();
    let p = process(&db, &[3]);
    let order = place(&p, Uuid::new_v4()).await;
    let debit = debits(&db).await.pop().expect("one debit");
    assert_eq!(answer(&db, &p, &debit).await, DeliveryOutcome::Processed);
    let saga = saga_of(&p, &order).await;
    assert_eq!(saga.state.status, SagaStatus::Completed, "{saga:?}");
    let shown = read(&p, &order).await;
    assert_eq!(shown.status, OrderStatus::Pending, "no step confirmed it");
    assert_eq!(
        shown.payment_id.as_deref(),
        Some(format!("pay-{}", saga.id).as_str())
    );
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_for_a_version_no_longer_registered_is_dead_lettered_and_the_saga_kept() {
    let db = TestDb::new().await;
    MySqlOrders::new(db.pool.clone()).migrate().await.unwrap();
    let user = Uuid::new_v4();
    let yesterday = process(&db, &[1]);
    let order = place(&yesterday, user).await;
    let debit = debits(&db).await.pop().expect("one debit");
    let before = saga_of(&yesterday, &order).await;
    drop(yesterday);

    // A deploy that dropped version 1 too early: the reply is parked with the reason,
    // the saga and the order are left exactly as they were.
    let too_early = process(&db, &[2]);
    let outcome = answer(&db, &too_early, &debit).await;
    let DeliveryOutcome::DeadLettered { reason } = outcome else {
        panic!("expected the reply dead-lettered, got {outcome:?}");
    };
    assert!(reason.contains("version 1"), "{reason}");
    assert_eq!(saga_of(&too_early, &order).await, before);
    assert_eq!(status(&too_early, &order).await, OrderStatus::Pending);
    drop(too_early);

    // Version 1 registered again: the replayed reply finishes the order on version 1.
    let fixed = process(&db, &[1, 2]);
    assert_eq!(
        answer(&db, &fixed, &debit).await,
        DeliveryOutcome::Processed
    );
    let saga = saga_of(&fixed, &order).await;
    assert_eq!(
        (saga.definition_version, saga.state.status),
        (1, SagaStatus::Completed)
    );
    assert_eq!(status(&fixed, &order).await, OrderStatus::Confirmed);
    db.drop_db().await;
}

/// A placed order's first reads — the client waiting for its outcome — are answered
/// from the cache the placing filled, not from its row; the change its reply makes
/// replaces what is cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_placed_order_is_read_from_the_cache_until_its_reply_changes_it() {
    let db = TestDb::new().await;
    MySqlOrders::new(db.pool.clone()).migrate().await.unwrap();
    let p = process(&db, &[1]);
    let order = place(&p, Uuid::new_v4()).await;
    // The row changed behind the service's back: a read of the row would show it.
    sqlx::query("UPDATE orders SET total_amount = total_amount + 1 WHERE id = ?")
        .bind(order.id.as_bytes().as_slice())
        .execute(&db.pool)
        .await
        .unwrap();
    let shown = read(&p, &order).await;
    assert_eq!(
        (shown.status, shown.total),
        (OrderStatus::Pending, order.total),
        "answered from the cache"
    );

    let debit = debits(&db).await.pop().expect("one debit");
    assert_eq!(answer(&db, &p, &debit).await, DeliveryOutcome::Processed);
    let shown = read(&p, &order).await;
    assert_eq!(
        (shown.status, shown.total),
        (OrderStatus::Confirmed, order.total + 1),
        "read again after the change"
    );
    db.drop_db().await;
}
