//! Graceful shutdown, request by request and message by message.
//!
//! - A gateway told to stop (SIGTERM) while it holds requests — held up by an order
//!   service frozen with SIGSTOP — stops accepting connections, answers every request it
//!   had taken once the order service runs again, and exits cleanly.
//! - The payment service and the user service, stopped with SIGTERM mid-load, exit
//!   cleanly within the grace period, the payment relay leaves nothing leased, and once
//!   they are back every order ends with nobody charged twice or for nothing.
//!
//! (The order service and the gateway under load: `replicas.rs`; SIGKILL of every
//! service: the fault suite, `chaos`.)

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ordersys_e2e::{email, eventually, Api, Options, System};
use serde_json::json;

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill {sig} {pid}");
}

/// Bytes waiting, unread, in the receive queues of the sockets of local TCP `port`
/// (listening and accepted alike) — what a frozen server has been sent so far.
fn unread_bytes(port: u16) -> u64 {
    let mut total = 0;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(queues)) = (f.get(1), f.get(4)) else {
                continue;
            };
            let local_port = local
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if local_port != Some(port) {
                continue;
            }
            let rx = queues
                .split(':')
                .nth(1)
                .and_then(|q| u64::from_str_radix(q, 16).ok());
            total += rx.unwrap_or(0);
        }
    }
    total
}

async fn client_get(sys: &System, token: &str) -> u16 {
    reqwest::Client::new()
        .get(sys.url("/api/v1/orders"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn order_body(price: i64) -> serde_json::Value {
    json!({ "items": [{ "product_id": "book", "quantity": 1, "unit_price": price }], "currency": "USD" })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminating_gateway_answers_every_request_it_has_taken() {
    let mut sys = System::start(Options {
        gateway_env: vec![
            ("RATE_LIMIT_PER_MINUTE".into(), "100000".into()),
            // Long enough for the frozen order service not to time the requests out.
            ("DOWNSTREAM_TIMEOUT_MS".into(), "30000".into()),
        ],
        ..Options::default()
    })
    .await;
    let api = Api::new(&sys.base);
    let token = api.signup(&email(), "password-123").await;
    let order_port: u16 = sys.grpc[1].rsplit(':').next().unwrap().parse().unwrap();

    // A gateway that has been serving: its connection to the order service is up (it
    // connects on first use; a frozen service would never finish the handshake).
    let warm = client_get(&sys, &token).await;
    assert_eq!(warm, 200, "GET /api/v1/orders before the freeze");
    // Freeze the order service; each request then sits in the gateway, sent on to the
    // order service (its bytes unread there) but unanswered.
    let order_pid = sys.order.pid().expect("order service running");
    signal(order_pid, "-STOP");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let mut in_flight = Vec::new();
    for i in 0..4 {
        let before = unread_bytes(order_port);
        let rb = client
            .post(sys.url("/api/v1/orders"))
            .bearer_auth(&token)
            .header(
                "Idempotency-Key",
                format!("graceful-{i}-{}", uuid::Uuid::new_v4()),
            )
            .json(&order_body(100 + i));
        in_flight.push(tokio::spawn(rb.send()));
        // Taken: the gateway has read it and passed it on.
        eventually(
            &format!("request {i} to reach the frozen order service"),
            Duration::from_secs(10),
            || async move { (unread_bytes(order_port) > before).then_some(()) },
        )
        .await;
    }

    // Stop the gateway while it holds the four requests: it stops accepting at once...
    let gateway_pid = sys.gateway.pid().expect("gateway running");
    signal(gateway_pid, "-TERM");
    let addr = sys.base.trim_start_matches("http://").to_owned();
    eventually(
        "the gateway to stop accepting",
        Duration::from_secs(10),
        || {
            let addr = addr.clone();
            async move {
                tokio::net::TcpStream::connect(&addr)
                    .await
                    .is_err()
                    .then_some(())
            }
        },
    )
    .await;
    // ... and, once the order service runs again, answers every one of them.
    signal(order_pid, "-CONT");
    let mut ids = Vec::new();
    for (i, r) in in_flight.into_iter().enumerate() {
        let r = r
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("request {i} lost: {e}"));
        assert_eq!(r.status().as_u16(), 201, "request {i}");
        let body: serde_json::Value = r.json().await.unwrap();
        ids.push(body["order_id"].as_str().unwrap().to_owned());
    }
    let status = sys.gateway.terminate(Duration::from_secs(40));
    assert!(
        status.is_some_and(|s| s.success()),
        "the gateway did not exit cleanly: {status:?}"
    );

    // The orders it took go through.
    sys.restart("gateway").await;
    for id in &ids {
        let o = api
            .wait_order(&token, id, |o| o["status"] != "PENDING")
            .await;
        assert_eq!(o["status"], "CONFIRMED", "{o}");
    }
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_and_user_stop_gracefully_mid_load_and_nothing_is_lost() {
    const CLIENTS: usize = 4;
    let mut sys = System::start(Options {
        // Orders held up while payment is away are paid late, not given up.
        order_env: vec![("PAYMENT_DEADLINE_SECS".into(), "120".into())],
        ..Options::default()
    })
    .await;
    let api = Api::new(&sys.base);
    let mut users = Vec::new();
    for _ in 0..CLIENTS {
        let e = email();
        let token = api.signup(&e, "password-123").await;
        users.push((e, token));
    }

    // Orders from every client, and logins besides (the user service's work).
    let placed: Arc<Mutex<Vec<(usize, String, i64)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for (user, (mail, token)) in users.iter().cloned().enumerate() {
        let (api, placed, stop) = (Api::new(&sys.base), placed.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let price = 200 + ((user * 31 + n * 7) % 900) as i64;
                let rb = api
                    .client()
                    .post(format!("{}/api/v1/orders", api.base()))
                    .bearer_auth(&token)
                    .header("Idempotency-Key", uuid::Uuid::new_v4().to_string())
                    .json(&order_body(price));
                // The gateway and the order service stay up: every order is taken.
                let r = api.raw(rb).await;
                assert_eq!(r.status, 201, "{r:?}");
                let id = r.body["order_id"].as_str().unwrap().to_owned();
                placed.lock().unwrap().push((user, id, price));
                if n % 3 == 0 {
                    // While the user service is away, a login is 503 — answered, never
                    // hung; one caught by the stop in the middle of its hashing may get
                    // no answer within the gateway's deadline: 504 upstream_timeout.
                    let creds = json!({ "email": mail, "password": "password-123" });
                    let r = api
                        .send("POST", "/api/v1/auth/login", Some(creds), None)
                        .await;
                    assert!(
                        matches!(
                            (r.status, r.error_code()),
                            (200, _) | (503, _) | (504, "upstream_timeout")
                        ),
                        "{r:?}"
                    );
                }
                n += 1;
            }
        }));
    }
    let placed_now = || placed.lock().unwrap().len();
    eventually("the load to run", Duration::from_secs(60), || {
        let n = placed_now();
        async move { (n >= 20).then_some(()) }
    })
    .await;

    for name in ["payment", "user"] {
        let service = if name == "payment" {
            &mut sys.payment
        } else {
            &mut sys.user
        };
        let status = service.terminate(Duration::from_secs(40));
        assert!(
            status.is_some_and(|s| s.success()),
            "{name} did not stop cleanly within 40 s: {status:?}"
        );
    }
    // The stopped payment relay finished its round: nothing left leased to it.
    let relay = format!(
        "payment@{}-1",
        sys.topic_prefix
            .trim_start_matches("e2e.")
            .trim_end_matches('.')
    );
    let leased = sys
        .payment_count(
            "SELECT COUNT(*) FROM outbox_messages WHERE sent_at IS NULL AND leased_by = ?",
            relay.as_bytes(),
        )
        .await;
    assert_eq!(
        leased, 0,
        "the stopped payment service left {leased} messages leased"
    );
    // Orders keep coming while both are away; then they come back.
    let before = placed_now();
    eventually(
        "orders while payment is away",
        Duration::from_secs(60),
        || {
            let n = placed_now();
            async move { (n >= before + 10).then_some(()) }
        },
    )
    .await;
    sys.restart("payment").await;
    sys.restart("user").await;
    let before = placed_now();
    eventually("orders after the restart", Duration::from_secs(60), || {
        let n = placed_now();
        async move { (n >= before + 10).then_some(()) }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }

    // Every order ends; confirmed ones were charged once, cancelled ones not at all.
    let placed = placed.lock().unwrap().clone();
    let mut spent = [0i64; CLIENTS];
    for (user, id, price) in &placed {
        let o = api
            .wait_order(&users[*user].1, id, |o| {
                o["status"] == "CONFIRMED" || o["status"] == "CANCELLED"
            })
            .await;
        let debited = sys
            .payment_count(
                "SELECT COUNT(*) FROM payments WHERE order_id = ? AND status = 'DEBITED'",
                uuid::Uuid::parse_str(id).unwrap().as_bytes(),
            )
            .await;
        if o["status"] == "CONFIRMED" {
            assert_eq!(debited, 1, "confirmed order {id} debited {debited} times");
            spent[*user] += price;
        } else {
            assert_eq!(debited, 0, "cancelled order {id} still debited");
        }
    }
    assert!(spent.iter().any(|s| *s > 0), "no order was confirmed");
    for (user, (_, token)) in users.iter().enumerate() {
        let want = 100_000 - spent[user];
        eventually("the balance to settle", Duration::from_secs(60), || {
            let api = &api;
            async move {
                let w = api.send("GET", "/api/v1/wallet", None, Some(token)).await;
                (w.body["balance"] == want).then_some(())
            }
        })
        .await;
    }
    sys.stop().await;
}
