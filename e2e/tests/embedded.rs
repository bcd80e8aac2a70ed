//! The one-process embedded system (`ordersys` with no DATABASE_URL / KAFKA_BROKERS /
//! REDIS_URL): SQLite files, the in-process bus — the same REST contract and saga, and
//! data that survives a restart, including a saga interrupted by the stop.

use std::time::Duration;

use ordersys_e2e::{admin_cli, email, eventually, free_port, wait_ready, Api, Service};
use serde_json::{json, Value};

fn start(data_dir: &std::path::Path, port: u16) -> Service {
    // Embedded: no servers at all, whatever the environment says.
    Service::start("ordersys", ordersys_e2e::embedded_env(data_dir, port))
}

async fn wait_status(api: &Api, token: &str, id: &str, want: &str) -> Value {
    api.wait_order(token, id, |o| o["status"] == want).await
}

fn order(price: i64) -> Option<Value> {
    Some(
        json!({ "items": [{ "product_id": "book", "quantity": 1, "unit_price": price }], "currency": "USD" }),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_system_confirms_orders_and_keeps_everything_across_restarts() {
    let dir = std::env::temp_dir().join(format!(
        "ordersys-embedded-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut sys = start(&dir, port);
    wait_ready(
        &ordersys_e2e::embedded_ready_url(&sys),
        &mut sys,
        Duration::from_secs(60),
    )
    .await;
    assert!(
        sys.logs()
            .contains(&format!("ordersys listening on {base}")),
        "{}",
        sys.logs()
    );
    // The REST port, the system's admin port and the three services' — no gRPC port:
    // the gateway calls the services in process and no other process can.
    let ports = sys.listening_ports();
    assert_eq!(ports.len(), 5, "{ports:?}");
    assert!(ports.contains(&port), "{ports:?}");
    // Readiness and every service's metrics are not on the public port.
    for path in ["/readyz", "/metrics"] {
        let r = reqwest::get(format!("{base}{path}")).await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }
    // The data folder and every file in it are the owner's only.
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        let files: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
        assert!(
            files.iter().any(|f| f.file_name() == "user.db"),
            "{files:?}"
        );
        for f in files {
            assert_eq!(mode(&f.path()), 0o600, "{:?}", f.path());
        }
    }
    let api = Api::new(&base);

    let e = email();
    let token = api.signup(&e, "password-123").await;
    let r = api
        .send("POST", "/api/v1/orders", order(3000), Some(&token))
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    let paid = r.body["order_id"].as_str().unwrap().to_owned();
    let o = wait_status(&api, &token, &paid, "CONFIRMED").await;
    assert_eq!(o["saga_state"], "COMPLETED");
    let r = api
        .send("POST", "/api/v1/orders", order(1_000_000), Some(&token))
        .await;
    let declined = r.body["order_id"].as_str().unwrap().to_owned();
    let o = wait_status(&api, &token, &declined, "CANCELLED").await;
    assert_eq!(o["failure_reason"], "insufficient funds");
    assert_eq!(
        api.send("GET", "/api/v1/wallet", None, Some(&token))
            .await
            .body["balance"],
        97_000
    );

    // Log out one session; place an order and stop the process right away.
    let r = api
        .send(
            "POST",
            "/api/v1/auth/login",
            Some(json!({ "email": e, "password": "password-123" })),
            None,
        )
        .await;
    let revoked = r.body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(
        api.send("POST", "/api/v1/auth/logout", None, Some(&revoked))
            .await
            .status,
        204
    );
    // Place an order and kill the process at once — until a kill caught the saga with
    // its debit command still unsent (read from the stopped process's database), so the
    // restart below has an interrupted saga to resume, not a finished one.
    let mut placed = Vec::new();
    let mut interrupted = None;
    for _ in 0..10 {
        let r = api
            .send("POST", "/api/v1/orders", order(500), Some(&token))
            .await;
        assert_eq!(r.status, 201);
        let id = r.body["order_id"].as_str().unwrap().to_owned();
        placed.push(id.clone());
        sys.kill();
        if pending_with_command_unsent(&dir, &id).await {
            interrupted = Some(id);
            break;
        }
        sys.restart();
        wait_ready(
            &ordersys_e2e::embedded_ready_url(&sys),
            &mut sys,
            Duration::from_secs(60),
        )
        .await;
    }
    let interrupted = interrupted.expect("no kill caught a saga with its command unsent");

    // After the restart: the same data, the revocation, and the interrupted saga finishes.
    sys.restart();
    wait_ready(
        &ordersys_e2e::embedded_ready_url(&sys),
        &mut sys,
        Duration::from_secs(60),
    )
    .await;
    let r = api.send("GET", "/api/v1/orders", None, Some(&token)).await;
    assert_eq!(
        r.status, 200,
        "the token from before the restart still works"
    );
    assert_eq!(
        api.send("GET", "/api/v1/auth/me", None, Some(&revoked))
            .await
            .status,
        401,
        "revocation lost"
    );
    wait_status(&api, &token, &paid, "CONFIRMED").await;
    wait_status(&api, &token, &interrupted, "CONFIRMED").await;
    for id in &placed {
        wait_status(&api, &token, id, "CONFIRMED").await;
    }
    assert_eq!(
        api.send("GET", "/api/v1/wallet", None, Some(&token))
            .await
            .body["balance"],
        97_000 - 500 * placed.len() as i64
    );
    let list = api.send("GET", "/api/v1/orders", None, Some(&token)).await;
    assert_eq!(
        list.body["orders"].as_array().unwrap().len(),
        2 + placed.len()
    );
    sys.kill();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The operator tools' address the (latest) banner shows.
fn operator_url(logs: &str) -> String {
    let at = logs
        .rfind("ordersys-admin --url ")
        .unwrap_or_else(|| panic!("no operator tools in the banner: {logs}"));
    logs[at + "ordersys-admin --url ".len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_dead_letters_are_kept_in_sqlite_listed_and_replayed() {
    const TOKEN: &str = "embedded-operator-token-of-the-e2e-test";
    let dir = std::env::temp_dir().join(format!(
        "ordersys-embedded-dlq-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let port = free_port();
    let mut env = ordersys_e2e::embedded_env(&dir, port);
    env.insert("ADMIN_TOKEN".into(), TOKEN.into());
    let mut sys = Service::start("ordersys", env);
    wait_ready(
        &ordersys_e2e::embedded_ready_url(&sys),
        &mut sys,
        Duration::from_secs(60),
    )
    .await;
    let url = operator_url(&sys.logs());
    let list = |url: &str| {
        let (code, v) = admin_cli(url, TOKEN, &["dlq", "list"]);
        assert_eq!(code, 0, "{v} (at {url})");
        v
    };
    assert_eq!(list(&url)["total"], 0);

    // A poison saga command, written into the payment service's own outbox from outside
    // (its relay polls): the payment consumer cannot decode it and parks it in its file.
    let poison =
        outbox::OutboxMessage::new("saga.commands", "garbage", b"\xff\x00not protobuf".to_vec());
    let pid = poison.id.to_string();
    {
        use outbox::Transactional as _;
        let pool = outbox::sqlite::connect(dir.join("payment.db"))
            .await
            .unwrap();
        let out = outbox::sqlite::SqliteOutbox::new(pool.clone());
        let mut tx = out.begin().await.unwrap();
        outbox::OutboxStore::enqueue(&out, &mut tx, poison)
            .await
            .unwrap();
        out.commit(tx).await.unwrap();
        pool.close().await;
    }
    let parked = eventually("the poison command parked", Duration::from_secs(60), || {
        let v = list(&url);
        async move { (v["total"] == 1).then(|| v["dead_letters"][0].clone()) }
    })
    .await;
    assert_eq!(parked["message_id"], pid.as_str(), "{parked}");
    assert_eq!(parked["service"], "payment");
    assert_eq!(parked["original_topic"], "saga.commands");
    assert!(
        parked["reason"]
            .as_str()
            .unwrap()
            .contains("undecodable saga command"),
        "{parked}"
    );

    // Kept across a restart (the bus's own dead-letter topic would have lost it).
    sys.restart();
    wait_ready(
        &ordersys_e2e::embedded_ready_url(&sys),
        &mut sys,
        Duration::from_secs(60),
    )
    .await;
    let url = operator_url(&sys.logs());
    assert_eq!(list(&url)["dead_letters"][0]["message_id"], pid.as_str());

    // Replayed through the payment outbox: removed, sent under a derived id, parked again
    // by the consumer (still poison) — one dead letter, the replay.
    let offset = parked["offset"].to_string();
    let (code, replay) = admin_cli(
        &url,
        TOKEN,
        &["dlq", "replay", &offset, "--service", "payment"],
    );
    assert_eq!(code, 0, "{replay}");
    let replay_id = replay["message_id"].as_str().unwrap().to_owned();
    assert_ne!(replay_id, pid);
    let again = eventually("the replay parked again", Duration::from_secs(60), || {
        let v = list(&url);
        let found = v["dead_letters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["message_id"] == replay_id.as_str())
            .cloned();
        async move { found.map(|d| (d, v["total"].clone())) }
    })
    .await;
    assert_eq!(again.1, 1, "the replayed dead letter is gone: {}", again.0);
    assert_eq!(
        again.0["headers"]["dlq-replay-of"],
        pid.as_str(),
        "{}",
        again.0
    );
    // The replayed one is no longer there to replay; another service has none at all.
    let again_offset = again.0["offset"].to_string();
    for args in [
        vec!["dlq", "replay", offset.as_str()],
        vec!["dlq", "replay", again_offset.as_str(), "--service", "order"],
    ] {
        let (code, v) = admin_cli(&url, TOKEN, &args);
        assert_eq!(
            (code, v["error"]["code"].as_str()),
            (1, Some("not_found")),
            "{args:?}: {v}"
        );
    }
    sys.kill();
    let _ = std::fs::remove_dir_all(&dir);
}

/// In the (stopped) embedded system's order database: `order` is PENDING and its debit
/// command is still in the outbox, unsent.
async fn pending_with_command_unsent(data_dir: &std::path::Path, order: &str) -> bool {
    use sqlx::{ConnectOptions, Connection};
    let mut db = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(data_dir.join("order.db"))
        .connect()
        .await
        .unwrap();
    let id = uuid::Uuid::parse_str(order).unwrap();
    let status: String = sqlx::query_scalar("SELECT status FROM orders WHERE id = ?")
        .bind(id.as_bytes().as_slice())
        .fetch_one(&mut db)
        .await
        .unwrap();
    let unsent: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM outbox_messages WHERE msg_key = ? AND sent_at_us IS NULL",
    )
    .bind(order)
    .fetch_one(&mut db)
    .await
    .unwrap();
    let _ = db.close().await;
    status == "PENDING" && unsent > 0
}
