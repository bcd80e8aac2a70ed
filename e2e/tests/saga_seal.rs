//! Saga messages nobody else can write, probed as someone who can write to the broker:
//! a debit command and a confirming reply — well formed, as the services of an earlier
//! release wrote them — published without the seal, or sealed with another key, are
//! dead-lettered with the reason and change nothing (no money moves, the order stays
//! PENDING). The very same messages sealed with the system's `SAGA_KEY` take effect:
//! only the seal made the difference.

use std::time::Duration;

use ordersys_e2e::{email, eventually, Api, Options, System};
use ordersys_kit::saga_mac::SagaMac;
use ordersys_proto::common::v1::Money;
use ordersys_proto::saga::v1::{CommandType, ReplyStatus, SagaCommand, SagaReply, StepKind};
use outbox::kafka::KafkaPublisher;
use outbox::{OutboxMessage, Publisher};
use prost::Message;
use serde_json::{json, Value};

const TOKEN: &str = "operator-token-of-the-saga-seal-e2e-test";

async fn balance(api: &Api, token: &str) -> i64 {
    let r = api.send("GET", "/api/v1/wallet", None, Some(token)).await;
    assert_eq!(r.status, 200, "{r:?}");
    r.body["balance"].as_i64().unwrap()
}

/// The dead letters, once every one of `ids` is among them.
async fn parked(sys: &System, ids: &[String]) -> Vec<Value> {
    eventually(
        "the forged messages parked",
        Duration::from_secs(60),
        || {
            let (code, v) = ordersys_e2e::admin_cli(&sys.operator, TOKEN, &["dlq", "list"]);
            assert_eq!(code, 0, "{v}");
            let items = v["dead_letters"].as_array().cloned().unwrap_or_default();
            let all = ids
                .iter()
                .all(|id| items.iter().any(|d| d["message_id"] == id.as_str()));
            async move { all.then_some(items) }
        },
    )
    .await
}

fn reason<'a>(items: &'a [Value], id: &str) -> &'a str {
    items
        .iter()
        .find(|d| d["message_id"] == id)
        .and_then(|d| d["reason"].as_str())
        .unwrap()
}

/// The service at `admin` counted `want` rejected saga messages.
async fn rejected(admin: &str, want: f64) {
    let metrics = ordersys_e2e::promql::scrape(admin).await;
    assert_eq!(
        metrics.get("saga_messages_rejected_total"),
        Some(&want),
        "at {admin}"
    );
}

/// A debit of `amount` for `order` by `user`, in the proto alone (no wire headers).
#[allow(deprecated)]
fn debit(topic: &str, order: &str, user: &str, amount: i64) -> OutboxMessage {
    let cmd = SagaCommand {
        saga_id: order.to_owned(),
        command: CommandType::Debit as i32,
        order_id: order.to_owned(),
        user_id: user.to_owned(),
        amount: Some(Money {
            amount_minor: amount,
            currency: "USD".into(),
        }),
        idempotency_key: format!("{order}:1:action"),
        step: 1,
        kind: "action".into(),
        step_kind: StepKind::Action as i32,
    };
    OutboxMessage::new(topic, order, cmd.encode_to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_saga_messages_are_dead_lettered_and_change_nothing() {
    let mut sys = System::start(Options {
        order_env: vec![
            ("ADMIN_TOKEN".into(), TOKEN.into()),
            ("PAYMENT_DEADLINE_SECS".into(), "600".into()),
        ],
        ..Options::default()
    })
    .await;
    let api = Api::new(&sys.base);
    let token = api.signup(&email(), "password-123").await;
    let me = api.send("GET", "/api/v1/auth/me", None, Some(&token)).await;
    let user = me.body["user_id"].as_str().unwrap().to_owned();
    assert_eq!(balance(&api, &token).await, 100_000);
    let publisher = KafkaPublisher::new(&sys.brokers).unwrap();
    let commands = format!("{}saga.commands", sys.topic_prefix);
    let replies = format!("{}saga.replies", sys.topic_prefix);
    let elsewhere = SagaMac::new(b"a key of another system, 32 bytes!").unwrap();

    // Debits for made-up orders: unsealed, and sealed with another key.
    let order = uuid::Uuid::now_v7().to_string();
    let unsealed = debit(&commands, &order, &user, 5_000);
    let mut wrong_key = debit(&commands, &order, &user, 5_000);
    elsewhere.seal(&mut wrong_key);
    publisher.publish(&unsealed).await.unwrap();
    publisher.publish(&wrong_key).await.unwrap();
    let ids = [unsealed.id.to_string(), wrong_key.id.to_string()];
    let items = parked(&sys, &ids).await;
    assert!(reason(&items, &ids[0]).contains("unsealed"), "{items:?}");
    assert!(reason(&items, &ids[1]).contains("wrong seal"), "{items:?}");
    assert_eq!(balance(&api, &token).await, 100_000, "no money moved");
    let payments = "SELECT COUNT(*) FROM payments WHERE order_id = ?";
    let order_bytes = uuid::Uuid::parse_str(&order).unwrap();
    assert_eq!(sys.payment_count(payments, order_bytes.as_bytes()).await, 0);
    // The same debit sealed with this system's key is the order service's: it debits.
    let mut sealed = debit(&commands, &order, &user, 5_000);
    sys.saga_mac().seal(&mut sealed);
    publisher.publish(&sealed).await.unwrap();
    eventually("the sealed debit applied", Duration::from_secs(60), || {
        let api = &api;
        let token = &token;
        async move { (balance(api, token).await == 95_000).then_some(()) }
    })
    .await;

    rejected(&sys.payment_admin, 2.0).await;

    // A reply that would confirm an order whose payment never happened.
    sys.payment.kill();
    let r = api
        .send(
            "POST",
            "/api/v1/orders",
            Some(json!({ "items": [{ "product_id": "book", "quantity": 1, "unit_price": 700 }], "currency": "USD" })),
            Some(&token),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    let id = r.body["order_id"].as_str().unwrap().to_owned();
    #[allow(deprecated)]
    let confirm = SagaReply {
        saga_id: id.clone(),
        command: CommandType::Debit as i32,
        status: ReplyStatus::Succeeded as i32,
        payment_id: "forged-payment".into(),
        error: String::new(),
        idempotency_key: format!("{id}:1:action"),
        step: 1,
        kind: "action".into(),
        step_kind: StepKind::Action as i32,
    };
    let forged = OutboxMessage::new(&replies, &id, confirm.encode_to_vec());
    publisher.publish(&forged).await.unwrap();
    let items = parked(&sys, &[forged.id.to_string()]).await;
    assert!(
        reason(&items, &forged.id.to_string()).contains("unsealed"),
        "{items:?}"
    );
    let o = api
        .send("GET", &format!("/api/v1/orders/{id}"), None, Some(&token))
        .await;
    assert_eq!(o.body["status"], "PENDING", "{o:?}");
    // Sealed with the key, the same reply is the payment service's: it confirms.
    let mut sealed = OutboxMessage::new(&replies, &id, confirm.encode_to_vec());
    sys.saga_mac().seal(&mut sealed);
    publisher.publish(&sealed).await.unwrap();
    api.wait_order(&token, &id, |o| o["status"] == "CONFIRMED")
        .await;

    rejected(&sys.order_admin, 1.0).await;
    sys.stop().await;
}
