//! Scale out: two replicas each of the order service, the payment service and the
//! gateway on one MariaDB, broker and Redis. Clients place orders through both gateways
//! (falling over to the other, with the same `Idempotency-Key`, when one fails); one
//! replica of each service is stopped mid-load — the order service and the gateway with
//! SIGTERM (a graceful stop, bounded in time, that leaves no outbox lease behind), the
//! payment service with SIGKILL. Every order ends, nobody is charged
//! twice or for nothing, every balance adds up, messages of one order stay in order on
//! every topic, and both replicas did work before the kill (the partitions and the
//! outbox were shared between them).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ordersys_e2e::{email, eventually, Api, Options, System};

mod common;
use common::{assert_per_key_order, place, processed};

const CLIENTS: usize = 8;

#[derive(Debug, Clone)]
struct Placed {
    user: usize,
    id: String,
    total: i64,
    via: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_the_work_and_survive_losing_one_of_each() {
    let mut sys = System::start(Options {
        two_replicas: true,
        // Orders held up by the kill are paid late, not given up.
        // Replicas that stop for good hand their partitions over (as in Kubernetes, whose
        // manifests set this too): with static membership a gone member keeps its
        // partitions until its session expires — and Tansu was seen never expiring it.
        order_env: vec![
            ("PAYMENT_DEADLINE_SECS".into(), "120".into()),
            ("KAFKA_STATIC_MEMBERSHIP".into(), "false".into()),
        ],
        payment_env: vec![("KAFKA_STATIC_MEMBERSHIP".into(), "false".into())],
        ..Options::default()
    })
    .await;
    let second = sys.second.as_ref().unwrap();
    let apis = [Api::new(&sys.base), Api::new(&second.base)];
    let (order2_admin, payment2_admin) = (second.order_admin.clone(), second.payment_admin.clone());
    let mut tokens = Vec::new();
    for i in 0..CLIENTS {
        tokens.push(apis[i % 2].signup(&email(), "password-123").await);
    }

    let placed: Arc<Mutex<Vec<Placed>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for (user, token) in tokens.iter().enumerate() {
        let (apis, token, placed, stop) =
            (apis.clone(), token.clone(), placed.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let mut n = user;
            while !stop.load(Ordering::Relaxed) {
                let price = 500 + ((n * 7919) % 2500) as i64;
                let (id, via) = place(&apis, n, &token, price)
                    .await
                    .expect("no gateway took the order for a minute");
                placed.lock().unwrap().push(Placed {
                    user,
                    id,
                    total: price,
                    via,
                });
                n += 1;
            }
        }));
    }

    // Both replicas of each service work, then one of each dies.
    eventually(
        "both replicas to have done work",
        Duration::from_secs(60),
        || {
            let (a, b, c, d) = (
                sys.order_admin.clone(),
                order2_admin.clone(),
                sys.payment_admin.clone(),
                payment2_admin.clone(),
            );
            async move {
                let all = [
                    processed(&a).await,
                    processed(&b).await,
                    processed(&c).await,
                    processed(&d).await,
                ];
                all.iter()
                    .all(|(consumed, published)| *consumed > 0.0 && *published > 0.0)
                    .then_some(())
            }
        },
    )
    .await;
    let before_kill = placed.lock().unwrap().len();
    sys.payment.kill();
    for (name, service) in [("order", &mut sys.order), ("gateway", &mut sys.gateway)] {
        let status = service.terminate(Duration::from_secs(40));
        assert!(
            status.is_some_and(|s| s.success()),
            "{name} did not stop cleanly within 40 s: {status:?}"
        );
    }
    // The stopped relay finished its round: nothing is left leased to it.
    let leased = sys
        .order_count(
            "SELECT COUNT(*) FROM outbox_messages WHERE sent_at IS NULL AND leased_by = ?",
            &format!(
                "order@{}-1",
                sys.topic_prefix
                    .trim_start_matches("e2e.")
                    .trim_end_matches('.')
            ),
        )
        .await;
    assert_eq!(
        leased, 0,
        "the stopped order service left {leased} messages leased"
    );
    // The load goes on against the survivors until they have taken 20 more orders.
    eventually(
        "orders placed after the stop",
        Duration::from_secs(90),
        || {
            let n = placed.lock().unwrap().len();
            async move { (n >= before_kill + 20).then_some(()) }
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    let placed = placed.lock().unwrap().clone();
    for via in 0..2 {
        assert!(
            placed.iter().any(|p| p.via == via),
            "gateway {via} took no order"
        );
    }

    // Every order ends; confirmed ones were charged once, cancelled ones not at all.
    let survivor = &apis[1];
    let mut confirmed: BTreeMap<usize, i64> = BTreeMap::new();
    for p in &placed {
        let o = survivor
            .wait_order(&tokens[p.user], &p.id, |o| {
                o["status"] == "CONFIRMED" || o["status"] == "CANCELLED"
            })
            .await;
        let order = uuid::Uuid::parse_str(&p.id).unwrap();
        let debited = sys
            .payment_count(
                "SELECT COUNT(*) FROM payments WHERE order_id = ? AND status = 'DEBITED'",
                order.as_bytes(),
            )
            .await;
        if o["status"] == "CONFIRMED" {
            assert_eq!(
                debited, 1,
                "confirmed order {} debited {debited} times",
                p.id
            );
            *confirmed.entry(p.user).or_default() += p.total;
        } else {
            assert_eq!(debited, 0, "cancelled order {} still debited", p.id);
        }
    }
    for (user, token) in tokens.iter().enumerate() {
        let spent = confirmed.get(&user).copied().unwrap_or(0);
        eventually("the balance to settle", Duration::from_secs(60), || {
            let token = token.clone();
            async move {
                let w = survivor
                    .send("GET", "/api/v1/wallet", None, Some(&token))
                    .await;
                (w.body["balance"] == 100_000 - spent).then_some(())
            }
        })
        .await;
    }
    assert!(!confirmed.is_empty(), "no order was confirmed");

    // Per-order message order held on both topics, whichever relay published.
    for topic in ["saga.commands", "saga.replies"] {
        let n = assert_per_key_order(&sys.brokers, &format!("{}{topic}", sys.topic_prefix)).await;
        assert!(n >= placed.len(), "{topic}: only {n} messages");
    }
    sys.stop().await;
}

/// The breaker state of `breaker` on the gateway whose admin port is `base` (`absent` if
/// it has none).
async fn breaker_state(base: &str, breaker: &str) -> String {
    let series = format!("resilience_breaker_state{{breaker=\"{breaker}\"}}");
    (ordersys_e2e::promql::series(base, &series).await).unwrap_or_else(|| "absent".into())
}

/// One gateway in front of two replicas of the order and the payment service (issue 30):
/// a replica killed with SIGKILL costs no request — a call that finds it dead goes to
/// the other replica (even an order without an `Idempotency-Key`: it never reached the
/// dead one), and only the dead replica's breaker opens; restarted, it takes calls
/// again within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_in_front_of_two_replicas_refuses_nothing_when_one_dies() {
    let mut sys = System::start(Options {
        two_replicas: true,
        gateway_to_every_replica: true,
        ..Options::default()
    })
    .await;
    let api = Api::new(&sys.base);
    let token = api.signup(&email(), "password-123").await;
    let body = serde_json::json!({
        "items": [{ "product_id": "book", "quantity": 1, "unit_price": 100 }],
        "currency": "USD"
    });
    let calls = |api: Api, token: String, body: serde_json::Value| async move {
        let created = api
            .send("POST", "/api/v1/orders", Some(body), Some(&token))
            .await;
        let list = api.send("GET", "/api/v1/orders", None, Some(&token)).await;
        let wallet = api.send("GET", "/api/v1/wallet", None, Some(&token)).await;
        [created.status, list.status, wallet.status]
    };
    assert_eq!(
        calls(api.clone(), token.clone(), body.clone()).await,
        [201, 200, 200]
    );

    sys.order.kill();
    sys.payment.kill();
    for i in 0..20 {
        let answers = calls(api.clone(), token.clone(), body.clone()).await;
        assert_eq!(
            answers,
            [201, 200, 200],
            "round {i} with one replica of each dead"
        );
    }
    let name =
        |service: &str, grpc: &str| format!("{service}@{}", grpc.trim_start_matches("http://"));
    let (order1, payment1) = (name("order", &sys.grpc[1]), name("payment", &sys.grpc[2]));
    let admin = sys.gateway_admin.clone();
    assert_eq!(breaker_state(&admin, &order1).await, "1", "{order1}");
    assert_eq!(breaker_state(&admin, &payment1).await, "1", "{payment1}");

    sys.restart("order").await;
    eventually(
        "the restarted replica's breaker closes",
        Duration::from_secs(15),
        || {
            let (api, token, body, base, order1) = (
                api.clone(),
                token.clone(),
                body.clone(),
                admin.clone(),
                order1.clone(),
            );
            async move {
                let answers = calls(api, token, body).await;
                assert_eq!(answers, [201, 200, 200]);
                (breaker_state(&base, &order1).await == "0").then_some(())
            }
        },
    )
    .await;
    sys.stop().await;
}
