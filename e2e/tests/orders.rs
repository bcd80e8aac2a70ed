//! SPEC §4–§8 order flow end to end: the create-order saga through REST, the outbox,
//! Kafka and the payment service — and staying correct under redelivery, timeouts and
//! outages. Real processes, real MariaDB, Redis and Kafka.

use std::time::Duration;

use ordersys_e2e::{email, Api, Options, Reply, System};
use ordersys_proto::common::v1::Money;
use ordersys_proto::saga::v1::{CommandType, SagaCommand, StepKind};
use outbox::kafka::KafkaPublisher;
use outbox::{OutboxMessage, Publisher};
use prost::Message;
use serde_json::{json, Value};

fn order_body(lines: &[(i32, i64)], currency: &str) -> Option<Value> {
    let items: Vec<Value> = lines
        .iter()
        .enumerate()
        .map(|(i, (q, p))| json!({ "product_id": format!("sku-{i}"), "quantity": q, "unit_price": p }))
        .collect();
    Some(json!({ "items": items, "currency": currency }))
}

async fn wait_order(api: &Api, token: &str, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    api.wait_order(token, id, done).await
}

async fn balance(api: &Api, token: &str) -> i64 {
    let r = api.send("GET", "/api/v1/wallet", None, Some(token)).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["currency"], "USD");
    r.body["balance"].as_i64().unwrap()
}

fn status_is(s: &'static str) -> impl Fn(&Value) -> bool {
    move |o| o["status"] == s
}

async fn create(api: &Api, token: &str, lines: &[(i32, i64)]) -> Reply {
    api.send(
        "POST",
        "/api/v1/orders",
        order_body(lines, "USD"),
        Some(token),
    )
    .await
}

async fn debits(sys: &System, order_id: &str) -> i64 {
    let order = uuid::Uuid::parse_str(order_id).unwrap();
    sys.payment_count(
        "SELECT COUNT(*) FROM payments WHERE order_id = ? AND status = 'DEBITED'",
        order.as_bytes(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_through_the_saga() {
    orders_through_the_saga_on(false).await;
}

/// The same flow with user, order and payment on SQLite files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_through_the_saga_on_sqlite() {
    orders_through_the_saga_on(true).await;
}

async fn orders_through_the_saga_on(sqlite: bool) {
    let sys = System::start(Options {
        sqlite,
        ..Options::default()
    })
    .await;
    let api = Api::new(&sys.base);
    let token = api.signup(&email(), "password-123").await;
    assert_eq!(balance(&api, &token).await, 100_000);

    // Happy path: create → pay → confirm.
    let r = create(&api, &token, &[(2, 1500), (1, 250)]).await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.body["status"], "PENDING");
    assert_eq!(r.body["total_amount"], 3250);
    assert_eq!(r.body["currency"], "USD");
    assert_eq!(r.body["items"].as_array().unwrap().len(), 2);
    let id = r.body["order_id"].as_str().unwrap().to_owned();
    let o = wait_order(&api, &token, &id, status_is("CONFIRMED")).await;
    assert_eq!(o["saga_state"], "COMPLETED");
    assert!(
        o["payment_id"].as_str().is_some_and(|p| !p.is_empty()),
        "{o}"
    );
    assert!(o.get("failure_reason").is_none());
    assert_eq!(balance(&api, &token).await, 100_000 - 3250);
    assert_eq!(debits(&sys, &id).await, 1);

    // Insufficient funds: compensated, nothing taken.
    let r = create(&api, &token, &[(1, 200_000)]).await;
    assert_eq!(r.status, 201);
    let poor = r.body["order_id"].as_str().unwrap().to_owned();
    let o = wait_order(&api, &token, &poor, status_is("CANCELLED")).await;
    assert_eq!(o["saga_state"], "FAILED");
    assert_eq!(o["failure_reason"], "insufficient funds");
    assert!(o.get("payment_id").is_none());
    assert_eq!(balance(&api, &token).await, 100_000 - 3250);

    // Cancel a confirmed order: refunded; a second cancel is a conflict.
    let r = api
        .send(
            "POST",
            &format!("/api/v1/orders/{id}/cancel"),
            None,
            Some(&token),
        )
        .await;
    assert_eq!(r.status, 202, "{r:?}");
    let o = wait_order(&api, &token, &id, status_is("CANCELLED")).await;
    assert_eq!(o["failure_reason"], "cancelled by the customer");
    assert_eq!(balance(&api, &token).await, 100_000);
    let r = api
        .send(
            "POST",
            &format!("/api/v1/orders/{id}/cancel"),
            None,
            Some(&token),
        )
        .await;
    assert_eq!((r.status, r.error_code()), (409, "conflict"));

    // Another user sees none of it.
    let other = api.signup(&email(), "password-123").await;
    let r = api
        .send("GET", &format!("/api/v1/orders/{id}"), None, Some(&other))
        .await;
    assert_eq!((r.status, r.error_code()), (404, "not_found"));
    let r = api
        .send(
            "POST",
            &format!("/api/v1/orders/{id}/cancel"),
            None,
            Some(&other),
        )
        .await;
    assert_eq!(r.status, 404);
    let r = api
        .send("GET", "/api/v1/orders/not-a-uuid", None, Some(&token))
        .await;
    assert_eq!(r.status, 404);
    let r = api.send("GET", "/api/v1/orders", None, Some(&other)).await;
    assert_eq!(r.body["orders"].as_array().unwrap().len(), 0);
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_and_redelivered_commands_never_charge_twice() {
    idempotency_on(false).await;
}

/// The same guarantees with the services on SQLite files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_on_sqlite() {
    idempotency_on(true).await;
}

async fn idempotency_on(sqlite: bool) {
    let sys = System::start(Options {
        sqlite,
        ..Options::default()
    })
    .await;
    let api = Api::new(&sys.base);
    let token = api.signup(&email(), "password-123").await;

    // The same Idempotency-Key, sent three times at once and once more later.
    let send = || {
        api.raw(
            api.client()
                .post(sys.url("/api/v1/orders"))
                .bearer_auth(&token)
                .header("idempotency-key", "checkout-7f3a")
                .json(&order_body(&[(1, 1000)], "USD").unwrap()),
        )
    };
    let (a, b, c) = tokio::join!(send(), send(), send());
    let ids: Vec<String> = [a, b, c]
        .iter()
        .map(|r| {
            assert_eq!(r.status, 201, "{r:?}");
            r.body["order_id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert!(ids.iter().all(|i| *i == ids[0]), "{ids:?}");
    let id = ids[0].clone();
    wait_order(&api, &token, &id, status_is("CONFIRMED")).await;
    let again = send().await;
    assert_eq!(again.body["order_id"], id.as_str());
    assert_eq!(again.body["status"], "CONFIRMED");
    let list = api.send("GET", "/api/v1/orders", None, Some(&token)).await;
    assert_eq!(list.body["orders"].as_array().unwrap().len(), 1);
    assert_eq!(balance(&api, &token).await, 100_000 - 1000);

    // The debit command published again (a relay that died before mark-sent, or a
    // broker redelivery): a new message id, the same idempotency key.
    let user_id = api
        .send("GET", "/api/v1/auth/me", None, Some(&token))
        .await
        .body["user_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Without the saga wire headers, as an order service of an earlier release sends it.
    #[allow(deprecated)]
    let cmd = SagaCommand {
        saga_id: id.clone(),
        command: CommandType::Debit as i32,
        order_id: id.clone(),
        user_id,
        amount: Some(Money {
            amount_minor: 1000,
            currency: "USD".into(),
        }),
        idempotency_key: format!("{id}:1:action"),
        step: 1,
        kind: "action".into(),
        step_kind: StepKind::Action as i32,
    };
    let publisher = KafkaPublisher::new(&sys.brokers).unwrap();
    let topic = format!("{}saga.commands", sys.topic_prefix);
    // Sealed as the order service seals them (SAGA_KEY).
    let mut dup1 = OutboxMessage::new(topic.clone(), id.clone(), cmd.encode_to_vec());
    let mut dup2 = OutboxMessage::new(topic, id.clone(), cmd.encode_to_vec());
    sys.saga_mac().seal(&mut dup1);
    sys.saga_mac().seal(&mut dup2);
    publisher.publish(&dup1).await.unwrap();
    publisher.publish(&dup1).await.unwrap(); // the very same message twice
    publisher.publish(&dup2).await.unwrap();
    // Wait until the payment service has settled both messages.
    let processed = |msg: uuid::Uuid| {
        let sys = &sys;
        async move {
            sys.payment_count(
                "SELECT COUNT(*) FROM inbox_messages WHERE message_id = ?",
                msg.as_bytes(),
            )
            .await
                == 1
        }
    };
    ordersys_e2e::eventually(
        "the duplicates processed",
        Duration::from_secs(60),
        || async { (processed(dup1.id.0).await && processed(dup2.id.0).await).then_some(()) },
    )
    .await;
    assert_eq!(debits(&sys, &id).await, 1);
    assert_eq!(balance(&api, &token).await, 100_000 - 1000);
    let o = wait_order(&api, &token, &id, status_is("CONFIRMED")).await;
    assert_eq!(o["saga_state"], "COMPLETED");

    // The same key with a different order: refused, nothing placed, nobody charged.
    let with_key = |key: &'static str, quantity: i32| {
        api.raw(
            api.client()
                .post(sys.url("/api/v1/orders"))
                .bearer_auth(&token)
                .header("idempotency-key", key)
                .json(&order_body(&[(quantity, 1000)], "USD").unwrap()),
        )
    };
    let other = with_key("checkout-7f3a", 2).await;
    assert_eq!(
        (other.status, other.error_code()),
        (422, "idempotency_key_reused"),
        "{other:?}"
    );
    // Keys are case-sensitive: another spelling is another key, another order.
    let upper = with_key("CHECKOUT-7F3A", 1).await;
    assert_eq!(upper.status, 201, "{upper:?}");
    let upper_id = upper.body["order_id"].as_str().unwrap().to_owned();
    assert_ne!(upper_id, id);
    wait_order(&api, &token, &upper_id, status_is("CONFIRMED")).await;
    let list = api.send("GET", "/api/v1/orders", None, Some(&token)).await;
    assert_eq!(list.body["orders"].as_array().unwrap().len(), 2);
    assert_eq!(balance(&api, &token).await, 100_000 - 2000);
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_lists_paginate() {
    let sys = System::start(Options::default()).await;
    let api = Api::new(&sys.base);
    let token = api.signup(&email(), "password-123").await;

    for (name, body) in [
        ("no items", json!({ "items": [], "currency": "USD" })),
        ("zero quantity", order_body(&[(0, 100)], "USD").unwrap()),
        (
            "negative quantity",
            order_body(&[(-2, 100)], "USD").unwrap(),
        ),
        ("zero price", order_body(&[(1, 0)], "USD").unwrap()),
        ("unknown currency", order_body(&[(1, 100)], "XYZ").unwrap()),
        // A real currency, but the wallets hold USD: it could never be paid.
        (
            "currency no wallet holds",
            order_body(&[(1, 100)], "EUR").unwrap(),
        ),
        (
            "missing currency",
            json!({ "items": [{ "product_id": "a", "quantity": 1, "unit_price": 1 }] }),
        ),
        (
            "quantity as text",
            json!({ "items": [{ "product_id": "a", "quantity": "1", "unit_price": 1 }], "currency": "USD" }),
        ),
    ] {
        let r = api
            .send("POST", "/api/v1/orders", Some(body), Some(&token))
            .await;
        assert_eq!(
            (r.status, r.error_code()),
            (422, "validation_failed"),
            "{name}: {r:?}"
        );
    }
    let r = api
        .raw(
            api.client()
                .post(sys.url("/api/v1/orders"))
                .bearer_auth(&token)
                .header("content-type", "application/json")
                .body("{\"items\": ["),
        )
        .await;
    assert_eq!((r.status, r.error_code()), (400, "bad_request"));
    // An Idempotency-Key sent empty is a mistake, not "no key".
    let r = api
        .raw(
            api.client()
                .post(sys.url("/api/v1/orders"))
                .bearer_auth(&token)
                .header("Idempotency-Key", "")
                .json(&order_body(&[(1, 100)], "USD").unwrap()),
        )
        .await;
    assert_eq!(
        (r.status, r.error_code()),
        (422, "validation_failed"),
        "{r:?}"
    );
    // A path that is not valid percent-encoded UTF-8 gets the JSON error shape.
    for path in ["/api/v1/orders/%FF", "/api/v1/orders/%FF/cancel"] {
        let method = if path.ends_with("cancel") {
            "POST"
        } else {
            "GET"
        };
        let r = api.send(method, path, None, Some(&token)).await;
        assert_eq!(
            (r.status, r.error_code()),
            (400, "bad_request"),
            "{path}: {r:?}"
        );
    }
    let many: Vec<(i32, i64)> = vec![(1, 1); 3000];
    let r = api
        .send(
            "POST",
            "/api/v1/orders",
            order_body(&many, "USD"),
            Some(&token),
        )
        .await;
    assert_eq!((r.status, r.error_code()), (413, "payload_too_large"));
    // A 10 MB body from a client that writes its whole request before reading (curl,
    // most simple clients): it gets to read the 413, not a reset connection.
    let got = write_then_read(
        &sys.base,
        &format!(
            "POST /api/v1/orders HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            10 << 20
        ),
        &vec![b'x'; 10 << 20],
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 413"), "{got}");
    assert!(got.contains("\"payload_too_large\""), "{got}");
    // The same without a length (chunked): the 413 too, read by the client.
    let chunked = |body: &[u8]| -> Vec<u8> {
        let mut out = Vec::new();
        for part in body.chunks(64 << 10) {
            out.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
            out.extend_from_slice(part);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n\r\n");
        out
    };
    let head = format!(
        "POST /api/v1/orders HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    let got = write_then_read(&sys.base, &head, &chunked(&vec![b'x'; 10 << 20])).await;
    assert!(got.starts_with("HTTP/1.1 413"), "{got}");
    assert!(got.contains("\"payload_too_large\""), "{got}");
    // A chunked body within the limit is an order like any other (another user's: this
    // one must have none yet).
    let other = api.signup(&email(), "password-123").await;
    let small = serde_json::to_vec(&order_body(&[(1, 100)], "USD")).unwrap();
    let got = write_then_read(
        &sys.base,
        &head
            .replace(&token, &other)
            .replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n"),
        &chunked(&small),
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 201"), "{got}");
    // Headers over the limit: 431 in the JSON shape too.
    let got = write_then_read(
        &sys.base,
        &format!(
            "GET /api/v1/orders HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
             X-Padding: {}\r\nConnection: close\r\n\r\n",
            "p".repeat(20_000)
        ),
        b"",
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 431"), "{got}");
    assert!(got.contains("\"request_header_fields_too_large\""), "{got}");
    let r = api
        .send(
            "POST",
            "/api/v1/orders",
            order_body(&[(1, 100)], "USD"),
            None,
        )
        .await;
    assert_eq!(r.status, 401);
    // Nothing was created by any of that.
    let r = api.send("GET", "/api/v1/orders", None, Some(&token)).await;
    assert_eq!(r.body["orders"].as_array().unwrap().len(), 0);
    assert_eq!(balance(&api, &token).await, 100_000);

    // Pagination: newest first, cursor to the next page, no cursor after the last.
    let mut ids = Vec::new();
    for price in [100, 200, 300] {
        let r = create(&api, &token, &[(1, price)]).await;
        ids.push(r.body["order_id"].as_str().unwrap().to_owned());
    }
    let p1 = api
        .send("GET", "/api/v1/orders?limit=2", None, Some(&token))
        .await;
    let got: Vec<&str> = p1.body["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["order_id"].as_str().unwrap())
        .collect();
    assert_eq!(got, [ids[2].as_str(), ids[1].as_str()]);
    let cursor = p1.body["next_cursor"]
        .as_str()
        .expect("a next cursor")
        .to_owned();
    let p2 = api
        .send(
            "GET",
            &format!("/api/v1/orders?limit=2&cursor={cursor}"),
            None,
            Some(&token),
        )
        .await;
    let got: Vec<&str> = p2.body["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["order_id"].as_str().unwrap())
        .collect();
    assert_eq!(got, [ids[0].as_str()]);
    assert!(p2.body["next_cursor"].is_null());
    // No limit: the default page size (20).
    let r = api.send("GET", "/api/v1/orders", None, Some(&token)).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["orders"].as_array().unwrap().len(), 3);
    // `limit` is an integer (the document says so): empty is not "none given"; and each
    // parameter comes at most once.
    for q in [
        "limit=",
        "limit=0",
        "limit=101",
        "limit=abc",
        "limit=2&limit=3",
        "cursor=garbage",
    ] {
        let r = api
            .send("GET", &format!("/api/v1/orders?{q}"), None, Some(&token))
            .await;
        assert_eq!(r.status, 422, "{q}: {r:?}");
    }
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_outage_past_the_deadline_compensates_and_nothing_is_lost() {
    let mut sys = System::start(Options {
        order_env: vec![("PAYMENT_DEADLINE_SECS".into(), "2".into())],
        ..Options::default()
    })
    .await;
    let api = Api::new(&sys.base);
    let token = api.signup(&email(), "password-123").await;
    assert_eq!(balance(&api, &token).await, 100_000); // opens the account

    sys.payment.kill();
    let r = create(&api, &token, &[(1, 5000)]).await;
    assert_eq!(r.status, 201);
    let id = r.body["order_id"].as_str().unwrap().to_owned();
    assert_eq!(r.body["saga_state"], "PAYMENT_PENDING");
    // No reply within the deadline: the saga gives up and sends a refund.
    let o = wait_order(&api, &token, &id, |o| o["saga_state"] == "COMPENSATING").await;
    assert_eq!(o["status"], "PENDING");

    // Payment comes back: it applies the debit (late) and then the refund, in order.
    sys.restart("payment").await;
    let o = wait_order(&api, &token, &id, status_is("CANCELLED")).await;
    assert_eq!(o["saga_state"], "FAILED");
    assert!(
        o["failure_reason"].as_str().unwrap().contains("timed out"),
        "{o}"
    );
    assert_eq!(
        balance(&api, &token).await,
        100_000,
        "the late debit was refunded"
    );
    // The balance alone would also hold if the debit never happened: the payment row
    // shows it did, and was refunded; the order does not show a refunded payment.
    assert_eq!(
        payment_rows(&sys, &id).await,
        [("REFUNDED".to_owned(), 5000)],
        "one debit, refunded"
    );
    assert!(o.get("payment_id").is_none_or(Value::is_null), "{o}");

    // A pending order cancelled by its owner while payment is down ends the same way.
    sys.payment.kill();
    let r = create(&api, &token, &[(1, 700)]).await;
    let id2 = r.body["order_id"].as_str().unwrap().to_owned();
    let r = api
        .send(
            "POST",
            &format!("/api/v1/orders/{id2}/cancel"),
            None,
            Some(&token),
        )
        .await;
    assert_eq!(r.status, 202);
    sys.restart("payment").await;
    let o = wait_order(&api, &token, &id2, status_is("CANCELLED")).await;
    assert_eq!(o["failure_reason"], "cancelled by the customer");
    assert_eq!(o["saga_state"], "FAILED");
    assert!(o.get("payment_id").is_none_or(Value::is_null), "{o}");
    assert_eq!(balance(&api, &token).await, 100_000);
    // No DEBITED row left behind for the cancelled order (refunded, or never debited).
    for (status, _) in payment_rows(&sys, &id2).await {
        assert_ne!(status, "DEBITED", "cancelled order {id2} still charged");
    }
    sys.stop().await;
}

/// `(status, amount)` of the payment rows of an order, straight from the payment database.
async fn payment_rows(sys: &System, order_id: &str) -> Vec<(String, i64)> {
    use sqlx::Connection;
    let mut db = sqlx::MySqlConnection::connect(&sys.payment_db_url)
        .await
        .unwrap();
    let order = uuid::Uuid::parse_str(order_id).unwrap();
    sqlx::query_as("SELECT status, amount FROM payments WHERE order_id = ? ORDER BY created_at_ms")
        .bind(order.as_bytes().as_slice())
        .fetch_all(&mut db)
        .await
        .unwrap()
}

/// Collects deliveries in memory.
#[derive(Clone, Default)]
struct Collect(std::sync::Arc<std::sync::Mutex<Vec<outbox::Delivery>>>);

impl outbox::MessageHandler<outbox::memory::MemoryTx> for Collect {
    type Output = ();
    async fn handle(
        &self,
        _tx: &mut outbox::memory::MemoryTx,
        msg: &outbox::Delivery,
    ) -> Result<(), outbox::HandlerError> {
        self.0.lock().unwrap().push(msg.clone());
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_command_is_dead_lettered_and_payment_carries_on() {
    let sys = System::start(Options::default()).await;
    let api = Api::new(&sys.base);
    let token = api.signup(&email(), "password-123").await;

    // Poison on every partition of saga.commands (30 keys cannot all hash to fewer than
    // the 3 partitions; the placement is deterministic, so this never flakes), so the
    // orders below are behind a poison message whatever partition they land on.
    let publisher = KafkaPublisher::new(&sys.brokers).unwrap();
    // Sealed as the order service's (SAGA_KEY): poison the service itself could send.
    let poisons: Vec<OutboxMessage> = (0..30)
        .map(|i| {
            let mut m = OutboxMessage::new(
                format!("{}saga.commands", sys.topic_prefix),
                format!("garbage-{i}"),
                b"\xff\x00not protobuf".to_vec(),
            );
            sys.saga_mac().seal(&mut m);
            m
        })
        .collect();
    for p in &poisons {
        publisher.publish(p).await.unwrap();
    }
    let poison = &poisons[0];

    // Orders placed after the poison messages still go through.
    for price in [400, 500, 600] {
        let r = create(&api, &token, &[(1, price)]).await;
        let id = r.body["order_id"].as_str().unwrap().to_owned();
        wait_order(&api, &token, &id, status_is("CONFIRMED")).await;
    }
    assert_eq!(balance(&api, &token).await, 100_000 - 1500);

    // The poison message is on the dead-letter topic, with its reason.
    let seen = Collect::default();
    let consumer = outbox::IdempotentConsumer::new(
        "dlq-reader",
        outbox::memory::MemoryInbox::new(),
        outbox::memory::MemoryDeadLetters::new(),
    );
    let dlq = format!("{}dlq.saga", sys.topic_prefix);
    let mut config = outbox::kafka::ConsumerConfig::new(
        &sys.brokers,
        format!("reader-{}", uuid::Uuid::new_v4()),
        &[&dlq],
    );
    config.session_timeout = Duration::from_secs(6);
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let s = seen.clone();
    let task = tokio::spawn(async move {
        outbox::kafka::run_consumer(&config, &consumer, &s, async {
            let _ = rx.await;
        })
        .await
    });
    let all_parked = || {
        let seen = seen.0.lock().unwrap();
        poisons.iter().all(|p| seen.iter().any(|d| d.id == p.id))
    };
    ordersys_e2e::eventually(
        &format!("every poison message on {dlq}"),
        Duration::from_secs(60),
        || async { all_parked().then_some(()) },
    )
    .await;
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
    let parked = seen
        .0
        .lock()
        .unwrap()
        .iter()
        .find(|d| d.id == poison.id)
        .cloned()
        .unwrap();
    assert_eq!(&parked.payload[..], b"\xff\x00not protobuf");
    assert!(
        parked
            .headers
            .get("dlq-reason")
            .unwrap()
            .contains("undecodable"),
        "{parked:?}"
    );
    assert_eq!(
        parked.headers.get("dlq-original-topic"),
        Some(format!("{}saga.commands", sys.topic_prefix).as_str())
    );
    sys.stop().await;
}

/// SIGTERM of the order service while orders are being placed: it stops gracefully
/// (exit status 0, in bounded time); every request is answered (201 or an error, none
/// hangs); every 201 names an order that exists and gets CONFIRMED; retrying the failed
/// ones with their `Idempotency-Key` after the restart gives exactly one order per key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_requests_stops_cleanly_and_leaves_nothing_half_done() {
    let mut sys = System::start(Options {
        gateway_env: vec![
            ("RATE_LIMIT_PER_MINUTE".into(), "100000".into()),
            ("BREAKER_OPEN_SECS".into(), "1".into()),
        ],
        ..Options::default()
    })
    .await;
    let api = Api::new(&sys.base);
    let token = api.signup(&email(), "password-123").await;
    assert_eq!(balance(&api, &token).await, 100_000);

    let keys: Vec<String> = (0..24).map(|i| format!("sigterm-{i}")).collect();
    let post = |key: String| {
        let (api, token) = (api.clone(), token.clone());
        async move {
            let rb = api
                .client()
                .post(format!("{}/api/v1/orders", api.base()))
                .bearer_auth(&token)
                .header("Idempotency-Key", &key)
                .json(&order_body(&[(1, 100)], "USD"));
            (key, api.raw(rb).await)
        }
    };
    let in_flight: Vec<_> = keys
        .iter()
        .cloned()
        .map(|k| tokio::spawn(post(k)))
        .collect();
    tokio::time::sleep(Duration::from_millis(20)).await; // let some reach the service
                                                         // Blocks this worker while the POSTs go on, on the other.
    let exit = tokio::task::block_in_place(|| sys.order.terminate(Duration::from_secs(20)));
    let mut answers = Vec::new();
    for t in in_flight {
        answers.push(t.await.unwrap());
    }
    assert!(
        exit.is_some_and(|s| s.success()),
        "the order service did not stop gracefully within 20 s: {exit:?}"
    );
    let mut placed = std::collections::BTreeMap::new();
    for (key, r) in &answers {
        match r.status {
            201 => {
                placed.insert(key.clone(), r.body["order_id"].as_str().unwrap().to_owned());
            }
            500..=599 => {}
            other => panic!("{key}: unexpected {other}: {r:?}"),
        }
    }
    sys.restart("order").await;
    // The gateway's breaker may have opened meanwhile: wait until it lets reads through.
    ordersys_e2e::eventually("orders readable again", Duration::from_secs(30), || {
        let (api, token) = (&api, &token);
        async move {
            let r = api.send("GET", "/api/v1/orders", None, Some(token)).await;
            (r.status == 200).then_some(())
        }
    })
    .await;
    // Every 201 names a real order that completes; the rest are retried with their key.
    for key in &keys {
        let id = match placed.get(key) {
            Some(id) => id.clone(),
            None => {
                ordersys_e2e::eventually(
                    &format!("{key} placed on retry"),
                    Duration::from_secs(60),
                    || async {
                        let (_, r) = post(key.clone()).await;
                        (r.status == 201).then(|| r.body["order_id"].as_str().unwrap().to_owned())
                    },
                )
                .await
            }
        };
        wait_order(&api, &token, &id, status_is("CONFIRMED")).await;
        // Asked again, the key names the same order.
        let (_, again) = post(key.clone()).await;
        assert_eq!(again.body["order_id"], id.as_str(), "{key}");
    }
    let list = api
        .send("GET", "/api/v1/orders?limit=100", None, Some(&token))
        .await;
    assert_eq!(
        list.body["orders"].as_array().unwrap().len(),
        keys.len(),
        "one order per key, nothing half-done or doubled"
    );
    assert_eq!(
        balance(&api, &token).await,
        100_000 - 100 * keys.len() as i64
    );
    eprintln!(
        "answered 201 before the restart: {} of {}",
        placed.len(),
        keys.len()
    );
    sys.stop().await;
}

/// A client that sends its headers and then drips (here: stops) its body is answered
/// 408 in the JSON shape once `REQUEST_TIMEOUT_SECS` passes, and its connection freed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_dripping_its_body_gets_a_408() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let sys = System::start(Options {
        gateway_env: vec![
            ("RATE_LIMIT_PER_MINUTE".into(), "100000".into()),
            // Short, yet above what registering takes (an Argon2 hash, unoptimised in a
            // debug build: over a second on a busy machine — 1 s made the sign-up itself
            // time out).
            ("REQUEST_TIMEOUT_SECS".into(), "4".into()),
        ],
        ..Options::default()
    })
    .await;
    let api = Api::new(&sys.base);
    let token = api.signup(&email(), "password-123").await;
    let mut s = tokio::net::TcpStream::connect(sys.base.trim_start_matches("http://"))
        .await
        .unwrap();
    s.write_all(
        format!(
            "POST /api/v1/orders HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"items\""
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            let n = s.read(&mut buf).await.unwrap_or(0);
            got.extend_from_slice(&buf[..n]);
            if n == 0 || String::from_utf8_lossy(&got).contains("request_timeout") {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("no answer to a request whose body never came");
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
    assert!(got.contains("\"request_timeout\""), "{got}");
    // Nothing was placed.
    let r = api.send("GET", "/api/v1/orders", None, Some(&token)).await;
    assert_eq!(r.body["orders"].as_array().unwrap().len(), 0);
    sys.stop().await;
}

/// Send `head` and `body` on a new connection, all of it, and only then read the answer
/// to the end (the server closes after it).
async fn write_then_read(base: &str, head: &str, body: &[u8]) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(base.trim_start_matches("http://"))
        .await
        .unwrap();
    let io = async {
        s.write_all(head.as_bytes()).await?;
        s.write_all(body).await?;
        let mut got = Vec::new();
        s.read_to_end(&mut got).await?;
        Ok::<_, std::io::Error>(got)
    };
    let got = tokio::time::timeout(Duration::from_secs(30), io)
        .await
        .expect("no answer within 30 s")
        .unwrap_or_else(|e| panic!("the connection failed before the answer was read: {e}"));
    String::from_utf8_lossy(&got).into_owned()
}
