//! `OUTBOX_STREAM=true`: the order and payment services' relays read their MySQL
//! outboxes as streams. Two replicas of each: exactly one replica's relay publishes
//! per service; SIGTERM the one holding the payment stream and it hands the stream back
//! as it stops; SIGKILL the one holding the order stream mid-load and the other takes
//! over from the persisted position (lease 5 s) — every order ends, nobody is charged
//! twice or for nothing, balances add up, per-order message order holds on both topics.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ordersys_e2e::{email, eventually, wait_ready, Api, Options, System};

mod common;
use common::{assert_per_key_order, place, processed};

const CLIENTS: usize = 6;

/// 1 if the order relay `id` holds the order outbox's stream, else 0.
async fn holds(sys: &System, id: String) -> i64 {
    sys.order_count(
        "SELECT COUNT(*) FROM outbox_relay_position WHERE owner = ?",
        &id,
    )
    .await
}

/// 1 if the payment relay `id` holds the payment outbox's stream, else 0.
async fn pays(sys: &System, id: String) -> i64 {
    sys.payment_count(
        "SELECT COUNT(*) FROM outbox_relay_position WHERE owner = ?",
        id.as_bytes(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_relay_streams_each_outbox_and_the_other_replica_takes_over_after_a_kill() {
    let mut sys = System::start(Options {
        two_replicas: true,
        order_env: vec![
            ("OUTBOX_STREAM".into(), "true".into()),
            ("PAYMENT_DEADLINE_SECS".into(), "120".into()),
            ("KAFKA_STATIC_MEMBERSHIP".into(), "false".into()),
        ],
        payment_env: vec![
            ("OUTBOX_STREAM".into(), "true".into()),
            ("KAFKA_STATIC_MEMBERSHIP".into(), "false".into()),
        ],
        ..Options::default()
    })
    .await;
    let second = sys.second.as_ref().unwrap();
    let apis = [Api::new(&sys.base), Api::new(&second.base)];
    let order_admins = [sys.order_admin.clone(), second.order_admin.clone()];
    let payment_admins = [sys.payment_admin.clone(), second.payment_admin.clone()];
    let mut tokens = Vec::new();
    for i in 0..CLIENTS {
        tokens.push(apis[i % 2].signup(&email(), "password-123").await);
    }

    let placed: Arc<Mutex<Vec<(usize, String, i64)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for (user, token) in tokens.iter().enumerate() {
        let (apis, token, placed, stop) =
            (apis.clone(), token.clone(), placed.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let mut n = user;
            while !stop.load(Ordering::Relaxed) {
                let price = 500 + ((n * 7919) % 2500) as i64;
                let (id, _) = place(&apis, n, &token, price)
                    .await
                    .expect("no gateway took the order for a minute");
                placed.lock().unwrap().push((user, id, price));
                n += 1;
            }
        }));
    }

    // Orders flow; both replicas consume, one relay per service publishes.
    eventually("30 orders placed", Duration::from_secs(60), || {
        let n = placed.lock().unwrap().len();
        async move { (n >= 30).then_some(()) }
    })
    .await;
    for (service, admins) in [("order", &order_admins), ("payment", &payment_admins)] {
        // Placed is not yet published (on a loaded machine payment may not have debited
        // anything by now): await the first publish of the service, then look at both.
        eventually(
            &format!("{service}: a relay publishes"),
            Duration::from_secs(60),
            || async {
                let (a, b) = (processed(&admins[0]).await, processed(&admins[1]).await);
                (a.1 + b.1 > 0.0).then_some(())
            },
        )
        .await;
        let (a, b) = (processed(&admins[0]).await, processed(&admins[1]).await);
        assert!(
            (a.1 > 0.0) != (b.1 > 0.0),
            "{service}: exactly one relay publishes with OUTBOX_STREAM (published {} and {})",
            a.1,
            b.1
        );
    }
    let prefix = sys
        .topic_prefix
        .trim_start_matches("e2e.")
        .trim_end_matches('.')
        .to_owned();
    let id = |n: usize| format!("order@{prefix}-{n}");
    let first_holds = holds(&sys, id(1)).await == 1;
    assert!(
        first_holds || holds(&sys, id(2)).await == 1,
        "neither order replica holds the stream"
    );

    // SIGTERM the replica holding the payment stream: by the time it has exited it has
    // handed the stream back (its lease would otherwise name it for up to 5 s more).
    let pay_id = |n: usize| format!("payment@{prefix}-{n}");
    let pay_first = pays(&sys, pay_id(1)).await == 1;
    assert!(
        pay_first || pays(&sys, pay_id(2)).await == 1,
        "neither payment replica holds the stream"
    );
    let (stopped, status) = if pay_first {
        (1, sys.payment.terminate(Duration::from_secs(30)))
    } else {
        let second = sys.second.as_mut().unwrap();
        (2, second.payment.terminate(Duration::from_secs(30)))
    };
    assert!(
        status.is_some_and(|s| s.success()),
        "the payment replica did not stop gracefully: {status:?}"
    );
    assert_eq!(
        pays(&sys, pay_id(stopped)).await,
        0,
        "the stopped payment replica still holds the stream"
    );
    // Back for the rest (the wallet checks below go through either gateway).
    if stopped == 1 {
        sys.restart("payment").await;
    } else {
        let second = sys.second.as_mut().unwrap();
        second.payment.restart();
        let url = format!("{}/readyz", second.payment_admin);
        wait_ready(&url, &mut second.payment, Duration::from_secs(90)).await;
    }

    // Kill the holder; the survivor takes the stream over once its lease expired.
    let before_kill = placed.lock().unwrap().len();
    let survivor = if first_holds {
        sys.order.kill();
        2
    } else {
        sys.second.as_mut().unwrap().order.kill();
        1
    };
    eventually(
        "the survivor to hold the stream",
        Duration::from_secs(30),
        || {
            let (sys, id) = (&sys, id(survivor));
            async move { (holds(sys, id).await == 1).then_some(()) }
        },
    )
    .await;
    eventually(
        "orders placed after the kill",
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

    // Every order ends; confirmed ones were charged once, cancelled ones not at all.
    let api = &apis[survivor - 1];
    let placed = placed.lock().unwrap().clone();
    let mut confirmed: BTreeMap<usize, i64> = BTreeMap::new();
    for (user, id, total) in &placed {
        let o = api
            .wait_order(&tokens[*user], id, |o| {
                o["status"] == "CONFIRMED" || o["status"] == "CANCELLED"
            })
            .await;
        let order = uuid::Uuid::parse_str(id).unwrap();
        let debited = sys
            .payment_count(
                "SELECT COUNT(*) FROM payments WHERE order_id = ? AND status = 'DEBITED'",
                order.as_bytes(),
            )
            .await;
        if o["status"] == "CONFIRMED" {
            assert_eq!(debited, 1, "confirmed order {id} debited {debited} times");
            *confirmed.entry(*user).or_default() += total;
        } else {
            assert_eq!(debited, 0, "cancelled order {id} still debited");
        }
    }
    assert!(!confirmed.is_empty(), "no order was confirmed");
    for (user, token) in tokens.iter().enumerate() {
        let spent = confirmed.get(&user).copied().unwrap_or(0);
        eventually("the balance to settle", Duration::from_secs(60), || {
            let token = token.clone();
            async move {
                let w = api.send("GET", "/api/v1/wallet", None, Some(&token)).await;
                (w.body["balance"] == 100_000 - spent).then_some(())
            }
        })
        .await;
    }
    // Nothing is left past the order stream's position.
    eventually("the order outbox to drain", Duration::from_secs(30), || {
        let sys = &sys;
        async move {
            let left = sys
                .order_count(
                    "SELECT COUNT(*) FROM outbox_messages WHERE seq > \
                     (SELECT position FROM outbox_relay_position WHERE name = ?)",
                    "relay",
                )
                .await;
            (left == 0).then_some(())
        }
    })
    .await;
    for topic in ["saga.commands", "saga.replies"] {
        let n = assert_per_key_order(&sys.brokers, &format!("{}{topic}", sys.topic_prefix)).await;
        assert!(n >= placed.len(), "{topic}: only {n} messages");
    }
    sys.stop().await;
}
