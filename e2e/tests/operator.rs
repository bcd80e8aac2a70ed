//! The operator tools of the order service, end to end through the `ordersys-admin`
//! CLI: list sagas by status and age, show one's history, force compensation of a
//! stuck one, and list and replay dead letters — authenticated, logged and counted.

use std::time::Duration;

use base64::Engine as _;
use ordersys_e2e::{email, eventually, Api, Options, System};
use outbox::kafka::KafkaPublisher;
use outbox::{OutboxMessage, Publisher};
use serde_json::{json, Value};

const TOKEN: &str = "operator-token-for-the-e2e-test-of-dlq";

/// Run `ordersys-admin args…` against `sys`'s order service with `token`.
fn admin(sys: &System, token: &str, args: &[&str]) -> (i32, Value) {
    ordersys_e2e::admin_cli(&sys.operator, token, args)
}

fn ok(sys: &System, args: &[&str]) -> Value {
    let (code, v) = admin(sys, TOKEN, args);
    assert_eq!(code, 0, "ordersys-admin {args:?}: {v}");
    v
}

async fn dead_letters(sys: &System, want: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    eventually("the dead letters expected", Duration::from_secs(60), || {
        let v = ok(sys, &["dlq", "list"]);
        let items = v["dead_letters"].as_array().cloned().unwrap_or_default();
        let done = want(&items);
        async move { done.then_some(items) }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_list_show_and_compensate_sagas_and_replay_dead_letters() {
    let mut sys = System::start(Options {
        order_env: vec![
            ("ADMIN_TOKEN".into(), TOKEN.into()),
            // The saga must stay stuck until the operator acts.
            ("PAYMENT_DEADLINE_SECS".into(), "600".into()),
        ],
        ..Options::default()
    })
    .await;

    // Without the token, or with another, nothing.
    for token in ["", "wrong-token"] {
        let (code, v) = admin(&sys, token, &["sagas", "list"]);
        assert_eq!(code, 1);
        assert_eq!(v["error"]["code"], "unauthorized", "{v}");
    }
    // Not on the public gateway, nor on the order service's admin port (where the
    // metrics are scraped from): on a port of their own, loopback by default.
    for url in [
        sys.url("/admin/sagas"),
        format!("{}/admin/sagas", sys.order_admin),
    ] {
        let r = reqwest::Client::new()
            .get(&url)
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{url}");
    }
    assert!(sys.order.logs().contains("инструменты оператора доступны"));

    // --- Dead letters: a poison command is parked by the payment service, listed, and
    // replayed to its topic (where, still poison, it is parked again: the replay went
    // through the payment consumer).
    let mut poison = OutboxMessage::new(
        format!("{}saga.commands", sys.topic_prefix),
        "garbage",
        b"\xff\x00not protobuf".to_vec(),
    );
    sys.saga_mac().seal(&mut poison);
    KafkaPublisher::new(&sys.brokers)
        .unwrap()
        .publish(&poison)
        .await
        .unwrap();
    let pid = poison.id.to_string();
    let items = dead_letters(&sys, |items| items.iter().any(|d| d["message_id"] == pid)).await;
    let parked = items
        .iter()
        .find(|d| d["message_id"] == pid)
        .unwrap()
        .clone();
    assert!(
        parked["reason"]
            .as_str()
            .unwrap()
            .contains("undecodable saga command"),
        "{parked}"
    );
    assert_eq!(
        parked["original_topic"],
        format!("{}saga.commands", sys.topic_prefix)
    );
    let offset = parked["offset"].to_string();
    let partition = parked["partition"].to_string();
    // `dlq show`: the record with its payload (not UTF-8 here: base64 only).
    let shown = ok(&sys, &["dlq", "show", &offset, "--partition", &partition]);
    assert_eq!(shown["message_id"], pid.as_str(), "{shown}");
    assert_eq!(shown["payload"], Value::Null, "{shown}");
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(shown["payload_base64"].as_str().unwrap())
            .unwrap(),
        b"\xff\x00not protobuf"
    );
    let replay = ok(&sys, &["dlq", "replay", &offset, "--partition", &partition]);
    let replay_id = replay["message_id"].as_str().unwrap().to_owned();
    assert_ne!(replay_id, pid);
    let items = dead_letters(&sys, |items| {
        items.iter().any(|d| d["message_id"] == replay_id.as_str())
    })
    .await;
    let again = items
        .iter()
        .find(|d| d["message_id"] == replay_id.as_str())
        .unwrap();
    assert_eq!(again["headers"]["dlq-replay-of"], pid, "{again}");
    // Replaying the same dead letter again sends the same id (the consumer drops it);
    // without --partition the service finds the offset in whichever partition has it.
    let twice = ok(&sys, &["dlq", "replay", &offset]);
    assert_eq!(twice["message_id"], replay_id.as_str());
    let wrong = (parked["partition"].as_i64().unwrap() + 1).to_string();
    let (code, v) = admin(
        &sys,
        TOKEN,
        &["dlq", "replay", &offset, "--partition", &wrong],
    );
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (1, Some("not_found")),
        "{v}"
    );
    let (code, v) = admin(&sys, TOKEN, &["dlq", "replay", "999999"]);
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (1, Some("not_found")),
        "{v}"
    );
    // A dead letter written by someone else, naming a topic of its choice: shown, never
    // replayed there.
    let forged = OutboxMessage::new(
        format!("{}dlq.saga", sys.topic_prefix),
        "forged",
        br#"{"anything":1}"#.to_vec(),
    )
    .with_header("dlq-original-topic", "users.internal")
    .with_header("dlq-reason", "made up");
    KafkaPublisher::new(&sys.brokers)
        .unwrap()
        .publish(&forged)
        .await
        .unwrap();
    let fid = forged.id.to_string();
    let items = dead_letters(&sys, |items| items.iter().any(|d| d["message_id"] == fid)).await;
    let f = items.iter().find(|d| d["message_id"] == fid).unwrap();
    let (offset, partition) = (f["offset"].to_string(), f["partition"].to_string());
    let shown = ok(&sys, &["dlq", "show", &offset, "--partition", &partition]);
    assert_eq!(shown["payload"], r#"{"anything":1}"#, "{shown}");
    let (code, v) = admin(
        &sys,
        TOKEN,
        &["dlq", "replay", &offset, "--partition", &partition],
    );
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (1, Some("not_a_saga_topic")),
        "{v}"
    );

    // --- A saga stuck in PAYMENT_PENDING: the payment service is down.
    let api = Api::new(&sys.base);
    let token = api.signup(&email(), "password-123").await;
    sys.payment.kill();
    let r = api
        .send(
            "POST",
            "/api/v1/orders",
            Some(json!({ "items": [{ "product_id": "book", "quantity": 1, "unit_price": 2500 }], "currency": "USD" })),
            Some(&token),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    let order_id = r.body["order_id"].as_str().unwrap().to_owned();

    let running = ok(&sys, &["sagas", "list", "--status", "RUNNING"]);
    let sagas = running["sagas"].as_array().unwrap();
    assert_eq!(sagas.len(), 1, "{running}");
    let saga = &sagas[0];
    assert_eq!(saga["state"], "PAYMENT_PENDING");
    assert_eq!(saga["overdue"], false);
    let saga_id = saga["id"].as_str().unwrap().to_owned();
    // Not overdue (600 s deadline), not older than an hour, none compensating.
    for filter in [
        &["sagas", "list", "--overdue"][..],
        &["sagas", "list", "--older-than", "1h"],
        &["sagas", "list", "--status", "COMPENSATING"],
    ] {
        assert_eq!(ok(&sys, filter)["sagas"], json!([]), "{filter:?}");
    }
    let (code, v) = admin(&sys, TOKEN, &["sagas", "list", "--status", "STUCK"]);
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (1, Some("validation_failed"))
    );

    // Its history: started, waiting for the payment, the debit command sent — with the
    // trace of the request that placed the order.
    let shown = ok(&sys, &["sagas", "show", &saga_id]);
    assert_eq!(shown["orders"], json!([order_id]));
    let history = shown["history"].as_array().unwrap();
    let kinds: Vec<(&str, &str)> = history
        .iter()
        .map(|h| (h["kind"].as_str().unwrap(), h["name"].as_str().unwrap()))
        .collect();
    assert!(kinds.contains(&("event", "start")), "{kinds:?}");
    assert!(
        kinds.contains(&("transition", "PAYMENT_PENDING")),
        "{kinds:?}"
    );
    assert!(
        history
            .iter()
            .any(|h| h["kind"] == "command" && h["detail"].as_str().unwrap().contains("sent")),
        "{history:?}"
    );
    let trace = history[0]["trace_id"].as_str().unwrap();
    assert!(
        trace.len() == 32 && trace.bytes().all(|b| b.is_ascii_hexdigit()),
        "{history:?}"
    );

    // Force compensation: the saga gives up the payment and refunds blindly.
    let forced = ok(
        &sys,
        &[
            "sagas",
            "compensate",
            &saga_id,
            "--reason",
            "payment service down",
        ],
    );
    assert_eq!(forced["saga"]["status"], "COMPENSATING", "{forced}");
    // Again while compensating: the refund is sent again.
    let again = ok(&sys, &["sagas", "compensate", &saga_id]);
    assert_eq!(again["saga"]["status"], "COMPENSATING", "{again}");
    let shown = ok(&sys, &["sagas", "show", &saga_id]);
    // Drawn where it stands: order created, the payment's refund awaited.
    let drawn = shown["diagram"].as_str().unwrap_or_default();
    for mark in ["class s0 done", "class c1 current"] {
        assert!(drawn.contains(mark), "{mark}: {shown}");
    }
    let (code, text) = ordersys_e2e::admin_cli_text(
        &sys.operator,
        TOKEN,
        &["sagas", "show", &saga_id, "--diagram"],
    );
    assert_eq!(
        (code, text.as_str()),
        (0, drawn),
        "the chart alone, as Mermaid"
    );
    assert!(text.starts_with("flowchart TD\n"), "{text}");
    assert!(
        shown["history"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["kind"] == "event"
                && h["name"] == "abort"
                && h["detail"]
                    .as_str()
                    .unwrap()
                    .contains("payment service down")),
        "{shown}"
    );

    // The payment service comes back: the order ends CANCELLED, nobody is charged.
    sys.restart("payment").await;
    api.wait_order(&token, &order_id, |o| o["status"] == "CANCELLED")
        .await;
    eventually("the refund", Duration::from_secs(60), || {
        let api = api.clone();
        let token = token.clone();
        async move {
            let w = api.send("GET", "/api/v1/wallet", None, Some(&token)).await;
            (w.body["balance"] == 100_000).then_some(())
        }
    })
    .await;
    eventually("the saga to end", Duration::from_secs(60), || {
        let v = ok(&sys, &["sagas", "show", &saga_id]);
        async move { (v["saga"]["status"] == "FAILED").then_some(()) }
    })
    .await;
    let (code, v) = admin(&sys, TOKEN, &["sagas", "compensate", &saga_id]);
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (1, Some("saga_ended")),
        "{v}"
    );

    // Counted and logged.
    let metrics = ordersys_e2e::promql::scrape(&sys.order_admin).await;
    assert!(
        metrics["ordersys_operator_actions_total"] >= 10.0,
        "{metrics:?}"
    );
    let text = reqwest::get(format!("{}/metrics", sys.order_admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "ordersys_operator_actions_total{action=\"compensate\",result=\"ok\"} 2",
        "ordersys_operator_actions_total{action=\"replay_dlq\",result=\"ok\"} 2",
        "ordersys_operator_actions_total{action=\"authenticate\",result=\"refused\"} 2",
    ] {
        assert!(text.contains(line), "{line} missing:\n{text}");
    }
    let logs = sys.order.logs();
    assert!(logs.contains("оператор принудительно запустил компенсацию саги"));
    assert!(logs.contains("оператор повторно отправил сообщение"));
    sys.stop().await;
}
