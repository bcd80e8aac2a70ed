//! `GET /api/v1/orders/{id}?wait=`: a read that answers when the order is decided instead
//! of being polled for it — through a gateway in front of two replicas of the order
//! service, where the reply may be applied by the replica that does not hold the read
//! (it hears of the change through Redis).

use ordersys_e2e::{email, Api, Options, System};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_read_answers_once_the_order_is_decided() {
    let sys = System::start(Options {
        two_replicas: true,
        gateway_to_every_replica: true,
        ..Options::default()
    })
    .await;
    let second = sys.second.as_ref().expect("two replicas");
    let api = Api::new(&sys.base);
    let token = api.signup(&email(), "password-123").await;

    // Both payment replicas frozen: the debit waits, the order stays PENDING.
    sys.payment.signal("-STOP");
    second.payment.signal("-STOP");
    let r = api.post_order(&token, "wait-1", 400).await;
    assert_eq!(r.status, 201, "{r:?}");
    let id = r.body["order_id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/orders/{id}");
    let waiting = tokio::spawn({
        let (api, token, path) = (api.clone(), token.clone(), path.clone());
        async move {
            api.send("GET", &format!("{path}?wait=25s"), None, Some(&token))
                .await
        }
    });
    // Meanwhile a read without a wait answers at once: still PENDING.
    let now = api.send("GET", &path, None, Some(&token)).await;
    assert_eq!(
        (now.status, now.body["status"].as_str()),
        (200, Some("PENDING"))
    );
    let zero = api
        .send("GET", &format!("{path}?wait=0"), None, Some(&token))
        .await;
    assert_eq!(zero.body["status"], "PENDING", "{zero:?}");

    // The payments run again: the waiting read answers with the decided order (had it
    // answered before the debit, it would say PENDING).
    sys.payment.signal("-CONT");
    second.payment.signal("-CONT");
    let decided = waiting.await.unwrap();
    assert_eq!(decided.status, 200, "{decided:?}");
    assert_eq!(decided.body["status"], "CONFIRMED", "{decided:?}");
    // It was the order service that waited (not the gateway asking again and again):
    // one of the replicas counts a wait that ended with the decision.
    let mut decided_waits = 0.0;
    for admin in [&sys.order_admin, &second.order_admin] {
        let series = "ordersys_order_waits_total{outcome=\"decided\"}";
        decided_waits += ordersys_e2e::promql::series(admin, series)
            .await
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
    }
    assert!(
        decided_waits >= 1.0,
        "no wait of the order service ended decided"
    );

    // A decided order is answered at once, whatever the wait; a wait that is no duration
    // of at most 30 s, or given twice, is refused.
    let again = api
        .send("GET", &format!("{path}?wait=30s"), None, Some(&token))
        .await;
    assert_eq!(again.body["status"], "CONFIRMED");
    for bad in ["31s", "30001ms", "abc", "-1", "5m", "", "1s&wait=2s"] {
        let r = api
            .send("GET", &format!("{path}?wait={bad}"), None, Some(&token))
            .await;
        assert_eq!(
            (r.status, r.error_code()),
            (422, "validation_failed"),
            "wait={bad}: {r:?}"
        );
    }
    // Someone else's order is not waited for: 404 at once.
    let other = api.signup(&email(), "password-123").await;
    let r = api
        .send("GET", &format!("{path}?wait=25s"), None, Some(&other))
        .await;
    assert_eq!(r.status, 404, "{r:?}");
    sys.stop().await;
}
