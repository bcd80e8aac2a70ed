//! Degraded dependencies, one at a time, on servers of the test's own (so they can be
//! killed): Redis down → protected routes fail closed and recover by themselves; MySQL
//! down → `/readyz` not ready, writes answered 503 (or 504 outcome unknown), nothing half-written, recovery by
//! itself; the broker down → orders still accepted (outbox) and completed once it is
//! back.

use std::time::Duration;

use ordersys_e2e::infra::{Daemon, Kind, Scratch};
use ordersys_e2e::{email, eventually, Api, Options, System};
use serde_json::json;

async fn status_of(url: &str) -> u16 {
    match reqwest::get(url).await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

async fn order_status(api: &Api, token: &str, id: &str) -> Option<String> {
    let r = api
        .send("GET", &format!("/api/v1/orders/{id}"), None, Some(token))
        .await;
    (r.status == 200).then(|| r.body["status"].as_str().unwrap_or("").to_owned())
}

async fn balance(api: &Api, token: &str) -> i64 {
    let r = api.send("GET", "/api/v1/wallet", None, Some(token)).await;
    assert_eq!(r.status, 200, "{r:?}");
    r.body["balance"].as_i64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_protected_routes_fail_closed_and_recover_by_themselves() {
    let scratch = Scratch::new("degraded");
    let mut redis = Daemon::start(Kind::Redis, &scratch.0).unwrap();
    let sys = System::start(Options {
        redis_url: Some(redis.url()),
        ..Options::default()
    })
    .await;
    let api = Api::new(&sys.base);
    let user = email();
    let creds = json!({ "email": user, "password": "password-123" });
    let token = api.signup(&user, "password-123").await;
    // A second session, revoked before the outage.
    let revoked = api.revoked_token(&user, "password-123").await;
    let orders = |t: String| {
        let api = &api;
        async move { api.send("GET", "/api/v1/orders", None, Some(&t)).await }
    };
    assert_eq!(orders(token.clone()).await.status, 200);
    assert_eq!(orders(revoked.clone()).await.status, 401);

    redis.kill();
    // Fail closed: while revocation cannot be checked, no token is accepted — not even
    // one that is valid — and the answer says the service is unavailable. The gateway's
    // mirror of the revoked tokens stops answering when its subscription drops with the
    // connection (at once for a killed server; within three heartbeats for a silent
    // one): from then on every lookup asks Redis, and fails.
    eventually("the gateway to fail closed", Duration::from_secs(5), || {
        let t = token.clone();
        let orders = &orders;
        async move { (orders(t).await.status == 503).then_some(()) }
    })
    .await;
    for t in [&token, &revoked] {
        let r = orders(t.clone()).await;
        assert_eq!(r.status, 503, "{r:?}");
        assert_eq!(r.error_code(), "service_unavailable", "{r:?}");
    }
    // Public routes do not depend on Redis: the rate limiter fails open.
    let r = api
        .send("POST", "/api/v1/auth/login", Some(creds), None)
        .await;
    assert_eq!(r.status, 200, "login while Redis is down: {r:?}");

    redis.restart().unwrap();
    eventually(
        "the valid token is accepted again",
        Duration::from_secs(30),
        || {
            let t = token.clone();
            let orders = &orders;
            async move { (orders(t).await.status == 200).then_some(()) }
        },
    )
    .await;
    // The revocation survived the Redis restart (append-only file).
    assert_eq!(orders(revoked).await.status, 401);
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_down_readyz_not_ready_writes_503_nothing_half_written_then_recovers() {
    let scratch = Scratch::new("degraded");
    let mut db = Daemon::start(Kind::MariaDb, &scratch.0).unwrap();
    let sys = System::start(Options {
        mysql_server_url: Some(db.url()),
        ..Options::default()
    })
    .await;
    let api = Api::new(&sys.base);
    let token = api.signup(&email(), "password-123").await;
    let r = api.post_order(&token, "before-the-outage", 1000).await;
    assert_eq!(r.status, 201, "{r:?}");
    let first = r.body["order_id"].as_str().unwrap().to_owned();
    eventually("the first order confirmed", Duration::from_secs(60), || {
        let (api, token, first) = (&api, &token, &first);
        async move { (order_status(api, token, first).await? == "CONFIRMED").then_some(()) }
    })
    .await;

    db.kill();
    for admin in [&sys.order_admin, &sys.payment_admin, &sys.user_admin] {
        let url = format!("{admin}/readyz");
        eventually(&format!("{url} not ready"), Duration::from_secs(30), || {
            let url = url.clone();
            async move { (status_of(&url).await == 503).then_some(()) }
        })
        .await;
    }
    // The order service answers "unavailable" (503), or does not answer in time while
    // it waits for a connection — then the gateway cannot know whether the order was
    // placed and says so (504 `outcome_unknown`): the retry below decides.
    let r = api.post_order(&token, "during-the-outage", 2000).await;
    assert!(
        matches!(
            (r.status, r.error_code()),
            (503, "service_unavailable") | (504, "outcome_unknown")
        ),
        "a write while MySQL is down: {r:?}"
    );

    db.restart().unwrap();
    for admin in [&sys.order_admin, &sys.payment_admin, &sys.user_admin] {
        let url = format!("{admin}/readyz");
        eventually(&format!("{url} ready"), Duration::from_secs(60), || {
            let url = url.clone();
            async move { (status_of(&url).await == 200).then_some(()) }
        })
        .await;
    }
    // The client retries the same request: one order, placed now.
    let second = eventually("the retried order placed", Duration::from_secs(30), || {
        let (api, token) = (&api, &token);
        async move {
            let r = api.post_order(token, "during-the-outage", 2000).await;
            (r.status == 201).then(|| r.body["order_id"].as_str().unwrap().to_owned())
        }
    })
    .await;
    eventually(
        "the second order confirmed",
        Duration::from_secs(60),
        || {
            let (api, token, second) = (&api, &token, &second);
            async move { (order_status(api, token, second).await? == "CONFIRMED").then_some(()) }
        },
    )
    .await;
    let list = api
        .send("GET", "/api/v1/orders?limit=100", None, Some(&token))
        .await;
    let mut ids: Vec<&str> = list.body["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["order_id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    let mut expected = [first.as_str(), second.as_str()];
    expected.sort_unstable();
    assert_eq!(
        ids, expected,
        "exactly the two orders, nothing half-written"
    );
    assert_eq!(balance(&api, &token).await, 100_000 - 1000 - 2000);
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_orders_are_accepted_and_completed_once_it_is_back() {
    let scratch = Scratch::new("degraded");
    let mut broker = Daemon::start(Kind::Broker, &scratch.0).unwrap();
    let mut sys = System::start(Options {
        brokers: Some(broker.url()),
        ..Options::default()
    })
    .await;
    let api = Api::new(&sys.base);
    let token = api.signup(&email(), "password-123").await;
    assert_eq!(balance(&api, &token).await, 100_000);

    broker.kill();
    let r = api
        .post_order(&token, "while-the-broker-is-down", 3000)
        .await;
    assert_eq!(r.status, 201, "accepted into the outbox: {r:?}");
    assert_eq!(r.body["status"], "PENDING");
    let id = r.body["order_id"].as_str().unwrap().to_owned();

    // A memory-storage broker comes back empty: provision the topics again, as an
    // operator's job would.
    broker.restart().unwrap();
    let p = &sys.topic_prefix;
    let topics = [
        format!("{p}saga.commands"),
        format!("{p}saga.replies"),
        format!("{p}dlq.saga"),
    ];
    outbox::kafka::ensure_topics(
        &broker.url(),
        &[(&topics[0], 3), (&topics[1], 3), (&topics[2], 1)],
    )
    .await
    .unwrap();
    let mut restarts = 0;
    eventually("the order confirmed", Duration::from_secs(90), || {
        // librdkafka can crash a consumer when a broker comes back empty (see
        // docs/RELIABILITY.md, known limits): restart it, as a supervisor would.
        for s in [&mut sys.order, &mut sys.payment] {
            if s.exited() {
                restarts += 1;
                s.respawn();
            }
        }
        let (api, token, id) = (&api, &token, &id);
        async move { (order_status(api, token, id).await? == "CONFIRMED").then_some(()) }
    })
    .await;
    eprintln!("supervisor restarts after the broker came back: {restarts}");
    assert_eq!(balance(&api, &token).await, 100_000 - 3000);
    sys.stop().await;
}
