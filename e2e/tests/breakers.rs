//! The gateway's circuit breakers end to end: one per downstream, opened by a dead
//! service, closed again by its health check within seconds of its return.

use std::time::Duration;

use ordersys_e2e::{email, Api, Options, System};

fn creds(email: &str, password: &str) -> Option<serde_json::Value> {
    Some(serde_json::json!({ "email": email, "password": password }))
}

/// Which downstream a breaker test takes down.
#[derive(Clone, Copy)]
enum Downstream {
    User,
    Order,
    Payment,
}

impl Downstream {
    fn name(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Order => "order",
            Self::Payment => "payment",
        }
    }

    fn service(self, sys: &mut System) -> &mut ordersys_e2e::Service {
        match self {
            Self::User => &mut sys.user,
            Self::Order => &mut sys.order,
            Self::Payment => &mut sys.payment,
        }
    }

    /// A request that needs this downstream (and only it, besides the gateway).
    async fn call(
        self,
        api: &Api,
        login: &Option<serde_json::Value>,
        token: &str,
    ) -> ordersys_e2e::Reply {
        match self {
            Self::User => {
                api.send("POST", "/api/v1/auth/login", login.clone(), None)
                    .await
            }
            Self::Order => api.send("GET", "/api/v1/orders", None, Some(token)).await,
            Self::Payment => api.send("GET", "/api/v1/wallet", None, Some(token)).await,
        }
    }
}

async fn breaker_state(sys: &System, downstream: &str) -> String {
    let series = format!("resilience_breaker_state{{breaker=\"{downstream}\"}}");
    (ordersys_e2e::promql::series(&sys.gateway_admin, &series).await)
        .unwrap_or_else(|| "absent".into())
}

/// Kill `down`: five failing calls open its breaker, then the gateway answers 503
/// "circuit open" with Retry-After without trying; the other downstreams' routes still
/// work (one breaker per downstream); the service comes back, its health check answers
/// and a trial call closes the breaker — within seconds, not the 30 s OPEN time.
async fn breaker_round_trip(
    sys: &mut System,
    api: &Api,
    down: Downstream,
    login: &Option<serde_json::Value>,
    token: &str,
) {
    let name = down.name();
    down.service(sys).kill();
    for i in 0..5 {
        let r = down.call(api, login, token).await;
        assert_eq!(r.status, 503, "{name} call {i}: {r:?}");
        assert!(
            !r.body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("circuit open"),
            "{name} call {i}"
        );
    }
    let r = down.call(api, login, token).await;
    assert_eq!(
        (r.status, r.error_code()),
        (503, "service_unavailable"),
        "{name}"
    );
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("circuit open"),
        "{name}: {r:?}"
    );
    assert!(r.headers.contains_key("retry-after"));
    assert_eq!(
        breaker_state(sys, name).await,
        "1",
        "{name} breaker not open"
    );
    // The gateway stays ready (in the load balancer): its readiness is its own.
    let ready = reqwest::get(format!("{}/readyz", sys.gateway_admin))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200, "gateway /readyz with {name} down");
    for other in [Downstream::User, Downstream::Order, Downstream::Payment] {
        if other.name() != name {
            let r = other.call(api, login, token).await;
            assert_eq!(
                r.status,
                200,
                "{} affected by the {name} breaker: {r:?}",
                other.name()
            );
        }
    }

    sys.restart(name).await;
    // Health-driven recovery: the breaker is open for 30 s (`BREAKER_OPEN_SECS`), but the
    // service is back, so the gateway's probe lets the trial through at once.
    ordersys_e2e::eventually(
        &format!("{name} reachable again well before the 30 s OPEN time"),
        Duration::from_secs(12),
        || async {
            let r = down.call(api, login, token).await;
            assert!(matches!(r.status, 200 | 503), "{name}: {r:?}");
            (r.status == 200).then_some(())
        },
    )
    .await;
    assert_eq!(
        breaker_state(sys, name).await,
        "0",
        "{name} breaker not closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_breaker_per_downstream_opens_when_its_service_is_down_and_recovers() {
    let mut sys = System::start(Options {
        gateway_env: vec![
            ("RATE_LIMIT_PER_MINUTE".into(), "100000".into()),
            ("BREAKER_OPEN_SECS".into(), "30".into()),
        ],
        ..Options::default()
    })
    .await;
    let api = Api::new(&sys.base);
    let e = email();
    let token = api.signup(&e, "password-123").await;
    let login = creds(&e, "password-123");
    for down in [Downstream::User, Downstream::Order, Downstream::Payment] {
        breaker_round_trip(&mut sys, &api, down, &login, &token).await;
    }
    sys.stop().await;
}
