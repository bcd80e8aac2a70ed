//! SPEC §8 auth routes end to end: real user service and gateway processes, real
//! MariaDB and Redis, through REST.

use std::time::Duration;

use authz::{Claims, Clock, SigningKey, TokenIssuer};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ordersys_e2e::{email, Api, Options, System};
use serde_json::json;

fn creds(email: &str, password: &str) -> Option<serde_json::Value> {
    Some(json!({ "email": email, "password": password }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_flow_and_contract() {
    let sys = System::start(Options::default()).await;
    let api = Api::new(&sys.base);

    // register → login → protected call
    let e = email();
    let r = api
        .send(
            "POST",
            "/api/v1/auth/register",
            creds(&e, "password-123"),
            None,
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.body["email"], e.as_str());
    let user_id = r.body["user_id"].as_str().unwrap().to_owned();
    let r = api
        .send(
            "POST",
            "/api/v1/auth/login",
            creds(&e, "password-123"),
            None,
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["token_type"], "Bearer");
    assert_eq!(r.body["expires_in"], 900);
    let token = r.body["access_token"].as_str().unwrap().to_owned();
    let me = api.send("GET", "/api/v1/auth/me", None, Some(&token)).await;
    assert_eq!(me.status, 200);
    assert_eq!(me.body["user_id"], user_id.as_str());

    // duplicate email → 409 (case-insensitive)
    let r = api
        .send(
            "POST",
            "/api/v1/auth/register",
            creds(&e.to_uppercase(), "password-456"),
            None,
        )
        .await;
    assert_eq!(r.status, 409);
    assert_eq!(r.error_code(), "conflict");

    // wrong password and unknown email → the same 401
    let wrong = api
        .send(
            "POST",
            "/api/v1/auth/login",
            creds(&e, "password-999"),
            None,
        )
        .await;
    let unknown = api
        .send(
            "POST",
            "/api/v1/auth/login",
            creds(&email(), "password-123"),
            None,
        )
        .await;
    assert_eq!((wrong.status, unknown.status), (401, 401));
    assert_eq!(
        wrong.body["error"]["message"],
        unknown.body["error"]["message"]
    );

    // validation → 422, malformed JSON → 400, missing field → 422, oversize → 413
    let r = api
        .send(
            "POST",
            "/api/v1/auth/register",
            creds("not-an-email", "password-123"),
            None,
        )
        .await;
    assert_eq!((r.status, r.error_code()), (422, "validation_failed"));
    let r = api
        .send(
            "POST",
            "/api/v1/auth/register",
            creds(&email(), "short"),
            None,
        )
        .await;
    assert_eq!(r.status, 422);
    let r = api
        .raw(
            api.client()
                .post(sys.url("/api/v1/auth/login"))
                .header("content-type", "application/json")
                .body("{\"email\":"),
        )
        .await;
    assert_eq!((r.status, r.error_code()), (400, "bad_request"));
    let r = api
        .send(
            "POST",
            "/api/v1/auth/login",
            Some(json!({ "email": e })),
            None,
        )
        .await;
    assert_eq!(r.status, 422);
    let big = "x".repeat(70 * 1024);
    let r = api
        .send("POST", "/api/v1/auth/register", creds(&email(), &big), None)
        .await;
    assert_eq!((r.status, r.error_code()), (413, "payload_too_large"));

    // every error has the SPEC shape, and the correlation id is echoed
    let r = api
        .raw(
            api.client()
                .post(sys.url("/api/v1/auth/login"))
                .header("x-correlation-id", "e2e-corr-42")
                .json(&json!({ "email": e, "password": "nope-nope-nope" })),
        )
        .await;
    assert_eq!(r.headers["x-correlation-id"], "e2e-corr-42");
    assert_eq!(r.body["error"]["correlation_id"], "e2e-corr-42");
    assert!(r.body["error"]["message"].is_string());
    let r = api.send("GET", "/api/v1/nowhere", None, None).await;
    assert_eq!((r.status, r.error_code()), (404, "not_found"));
    assert!(r.headers.contains_key("x-correlation-id"));

    // the correlation id reached the user service's logs
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(sys
        .user
        .logs()
        .contains("\"correlation_id\":\"e2e-corr-42\""));

    // health, readiness and metrics on the admin ports (the gateway's too); the public
    // port answers liveness and nothing else about the system
    let client = reqwest::Client::new();
    for url in [
        sys.url("/healthz"),
        format!("{}/healthz", sys.gateway_admin),
        format!("{}/readyz", sys.gateway_admin),
        format!("{}/healthz", sys.user_admin),
        format!("{}/readyz", sys.user_admin),
    ] {
        assert_eq!(
            client.get(&url).send().await.unwrap().status(),
            200,
            "{url}"
        );
    }
    for path in ["/readyz", "/metrics"] {
        let r = api.send("GET", path, None, None).await;
        assert_eq!((r.status, r.error_code()), (404, "not_found"), "{path}");
    }
    // Security headers on every answer: nothing of the API runs, frames or sniffs in a
    // browser; the docs page loads from this origin only.
    for (path, csp) in [
        ("/api/v1/orders", "default-src 'none'"),
        ("/no-such-route", "default-src 'none'"),
        ("/docs", "script-src 'self';"),
    ] {
        let r = client.get(sys.url(path)).send().await.unwrap();
        let h = r.headers();
        let policy = h["content-security-policy"].to_str().unwrap();
        assert!(
            policy.contains(csp) && policy.contains("frame-ancestors 'none'"),
            "{path}: {policy}"
        );
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["x-frame-options"], "DENY", "{path}");
        assert_eq!(h["referrer-policy"], "no-referrer", "{path}");
    }

    // Any token is an HTTP method: made-up ones share one series, never add their own.
    for bogus in ["BOGUS1", "BOGUS2"] {
        let method = reqwest::Method::from_bytes(bogus.as_bytes()).unwrap();
        client
            .request(method, sys.url("/no-such-route"))
            .send()
            .await
            .unwrap();
    }
    let metrics = client
        .get(format!("{}/metrics", sys.gateway_admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains(
        "http_requests_total{method=\"POST\",route=\"/api/v1/auth/login\",status=\"401\"}"
    ));
    assert!(!metrics.contains("BOGUS"), "{metrics}");
    assert!(
        metrics.contains("http_requests_total{method=\"other\",route=\"unmatched\""),
        "{metrics}"
    );
    assert!(metrics.contains("resilience_breaker_state{breaker=\"user\"} 0"));
    let user_metrics = client
        .get(format!("{}/metrics", sys.user_admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        user_metrics.contains("grpc_server_requests_total{code=\"16\",method=\"/ordersys.user.v1.UserService/Login\"}"),
        "{user_metrics}"
    );

    // no password or token in the logs
    let logs = sys.user.logs() + &sys.gateway.logs();
    assert!(!logs.contains("password-123"));
    assert!(!logs.contains(&token));
    let key_line = sys.jwt_private_pem.lines().nth(1).unwrap();
    assert!(!logs.contains(key_line));
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_revokes_only_that_token() {
    let sys = System::start(Options::default()).await;
    let api = Api::new(&sys.base);
    let e = email();
    let first = api.signup(&e, "password-123").await;
    let r = api
        .send(
            "POST",
            "/api/v1/auth/login",
            creds(&e, "password-123"),
            None,
        )
        .await;
    let second = r.body["access_token"].as_str().unwrap().to_owned();

    let r = api
        .send("POST", "/api/v1/auth/logout", None, Some(&first))
        .await;
    assert_eq!(r.status, 204);
    for (method, path) in [("GET", "/api/v1/auth/me"), ("POST", "/api/v1/auth/logout")] {
        let r = api.send(method, path, None, Some(&first)).await;
        assert_eq!(r.status, 401, "{method} {path}");
        assert_eq!(r.error_code(), "token_revoked");
    }
    // Another session of the same user is unaffected.
    assert_eq!(
        api.send("GET", "/api/v1/auth/me", None, Some(&second))
            .await
            .status,
        200
    );
    // No token at all.
    let r = api.send("GET", "/api/v1/auth/me", None, None).await;
    assert_eq!((r.status, r.error_code()), (401, "missing_token"));
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_tokens_are_refused() {
    let sys = System::start(Options::default()).await;
    let api = Api::new(&sys.base);
    let address = email();
    let token = api.signup(&address, "password-123").await;
    let me = api.send("GET", "/api/v1/auth/me", None, Some(&token)).await;
    let user_id = me.body["user_id"].as_str().unwrap().to_owned();

    // tampered: another subject, old signature
    let parts: Vec<&str> = token.split('.').collect();
    let mut claims: Claims =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    claims.sub = "00000000-0000-0000-0000-000000000001".into();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap()),
        parts[2]
    );

    // expired: properly signed, but an hour old
    let key = sys.jwt_key.clone();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let expired = TokenIssuer::new(key.clone(), "ordersys", "ordersys-api")
        .with_clock(Clock::fixed(now - 3600))
        .issue(user_id.clone())
        .unwrap()
        .token;

    // alg: none
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let mut c = claims.clone();
    c.sub = user_id.clone();
    let none = format!(
        "{header}.{}.",
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&c).unwrap())
    );

    // signed with another key
    let other = TokenIssuer::new(
        SigningKey::ed25519_from_pem(
            include_bytes!("../../authz/tests/keys/ed25519.pem"),
            include_bytes!("../../authz/tests/keys/ed25519.pub.pem"),
        )
        .unwrap(),
        "ordersys",
        "ordersys-api",
    )
    .issue(user_id.clone())
    .unwrap()
    .token;

    // Right key, wrong claims.
    let issued = |iss: &str, aud: &str, at: i64| {
        TokenIssuer::new(key.clone(), iss, aud)
            .with_clock(Clock::fixed(at))
            .issue(user_id.clone())
            .unwrap()
    };
    let not_yet_valid = issued("ordersys", "ordersys-api", now + 3600).token;
    let wrong_issuer = issued("someone-else", "ordersys-api", now).token;
    let wrong_audience = issued("ordersys", "another-api", now).token;
    let mut no_jti = issued("ordersys", "ordersys-api", now).claims;
    no_jti.jti = String::new();
    let no_jti = TokenIssuer::new(key.clone(), "ordersys", "ordersys-api")
        .sign(no_jti)
        .unwrap()
        .token;
    // Key confusion: valid claims, signed HS256 with the gateway's own public key (its
    // PEM bytes) as the secret, for a verifier that would take the key for a secret.
    let public_pem = std::fs::read(&sys.jwt_public_key).unwrap();
    let hs256 = TokenIssuer::new(
        SigningKey::hs256(&public_pem).unwrap(),
        "ordersys",
        "ordersys-api",
    )
    .issue(user_id.clone())
    .unwrap()
    .token;
    let truncated = token[..token.len() - 8].to_owned();
    // Oversized, yet under the 16 KiB header limit (past it the answer is 431, tested in
    // orders.rs): some 25 times a real token.
    let oversized = format!("{token}{}", "A".repeat(8 * 1024));
    // Revoked: logged out, then used again.
    let revoked = api.revoked_token(&address, "password-123").await;

    for (name, t) in [
        ("tampered", &tampered),
        ("expired", &expired),
        ("alg none", &none),
        ("other key", &other),
        ("not yet valid", &not_yet_valid),
        ("wrong issuer", &wrong_issuer),
        ("wrong audience", &wrong_audience),
        ("missing jti", &no_jti),
        ("HS256 with the public key", &hs256),
        ("truncated", &truncated),
        ("oversized", &oversized),
        ("revoked", &revoked),
    ] {
        let r = api.send("GET", "/api/v1/auth/me", None, Some(t)).await;
        assert_eq!(r.status, 401, "{name}: {r:?}");
        // RFC 6750 §3: a token was sent, so the challenge names the error, and its
        // description tells expired and revoked apart (the body's code too).
        let challenge = r.headers["www-authenticate"].to_str().unwrap();
        assert!(
            challenge.starts_with(r#"Bearer error="invalid_token", error_description=""#),
            "{name}: {challenge}"
        );
        let (code, description) = match name {
            "expired" => ("token_expired", "the token has expired"),
            "revoked" => ("token_revoked", "the token has been revoked"),
            _ => ("invalid_token", ""),
        };
        assert_eq!(r.body["error"]["code"], code, "{name}: {r:?}");
        assert!(challenge.contains(description), "{name}: {challenge}");
    }
    let none = api.send("GET", "/api/v1/auth/me", None, None).await;
    assert_eq!(none.status, 401);
    assert_eq!(none.headers["www-authenticate"], "Bearer");
    assert_eq!(none.body["error"]["code"], "missing_token");
    assert_eq!(
        api.send("GET", "/api/v1/auth/me", None, Some(&token))
            .await
            .status,
        200
    );
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_answers_429_with_retry_after() {
    let sys = System::start(Options {
        gateway_env: vec![("RATE_LIMIT_PER_MINUTE".into(), "5".into())],
        ..Options::default()
    })
    .await;
    let api = Api::new(&sys.base);
    let body = creds(&email(), "password-123");
    let mut statuses = Vec::new();
    let mut last = None;
    for _ in 0..7 {
        let r = api
            .send("POST", "/api/v1/auth/login", body.clone(), None)
            .await;
        statuses.push(r.status);
        last = Some(r);
    }
    assert_eq!(statuses, [401, 401, 401, 401, 401, 429, 429]);
    let r = last.unwrap();
    assert_eq!(r.error_code(), "rate_limited");
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    // Every route of the public port counts — the documents, liveness, a route or a
    // method that does not exist (each would otherwise be free to hammer) …
    for (method, path) in [
        ("GET", "/healthz"),
        ("GET", "/openapi.json"),
        ("GET", "/docs"),
        ("GET", "/no-such-route"),
        ("DELETE", "/api/v1/auth/login"),
    ] {
        let r = api.send(method, path, None, None).await;
        assert_eq!(
            (r.status, r.error_code()),
            (429, "rate_limited"),
            "{method} {path}"
        );
    }
    // … and nothing of the admin port, where the probes and Prometheus are.
    for path in ["/healthz", "/readyz", "/metrics"] {
        let url = format!("{}{path}", sys.gateway_admin);
        assert_eq!(reqwest::get(&url).await.unwrap().status(), 200, "{url}");
    }
    let refused = ordersys_e2e::promql::series(
        &sys.gateway_admin,
        "rate_limited_total{route=\"unmatched\"}",
    )
    .await;
    assert_eq!(refused.as_deref(), Some("1"), "the unknown route's 429");
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guesser_spread_over_many_addresses_is_throttled_per_account() {
    let sys = System::start(Options {
        gateway_env: vec![
            ("RATE_LIMIT_PER_MINUTE".into(), "100000".into()),
            ("TRUSTED_PROXIES".into(), "127.0.0.1".into()),
            ("LOGIN_ATTEMPTS_PER_ACCOUNT".into(), "5".into()),
        ],
        ..Options::default()
    })
    .await;
    let api = Api::new(&sys.base);
    let (victim, bystander) = (email(), email());
    api.signup(&victim, "password-123").await;
    api.signup(&bystander, "password-123").await;
    let login = |who: &str, password: &str, from: String| {
        let rb = api
            .client()
            .post(format!("{}/api/v1/auth/login", api.base()))
            .header("X-Forwarded-For", from)
            .json(&creds(who, password));
        api.raw(rb)
    };
    // The signup's own login counted one: four wrong guesses, each from another address.
    for i in 0..4 {
        let r = login(&victim, "password-999", format!("10.1.0.{i}")).await;
        assert_eq!(r.status, 401, "{r:?}");
    }
    // Then the right password — from yet another address — is held back too.
    let r = login(&victim, "password-123", "10.2.0.1".into()).await;
    assert_eq!((r.status, r.error_code()), (429, "rate_limited"), "{r:?}");
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(
        (1..=300).contains(&retry),
        "for at most the window: {retry}"
    );
    // The account only: another user logs in as usual (case and spaces are one account).
    let r = login(&bystander, "password-123", "10.1.0.1".into()).await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = login(&victim.to_uppercase(), "password-123", "10.3.0.1".into()).await;
    assert_eq!(r.status, 429, "{r:?}");
    sys.stop().await;
}

/// Five failed logins from "one client", then a sixth: 429 or not.
async fn sixth_login_status(api: &Api, forwarded_for: [&str; 6]) -> Vec<u16> {
    let body = creds(&email(), "password-123");
    let mut statuses = Vec::new();
    for xff in forwarded_for {
        let rb = api
            .client()
            .post(format!("{}/api/v1/auth/login", api.base()))
            .header("X-Forwarded-For", xff)
            .json(&body);
        statuses.push(api.raw(rb).await.status);
    }
    statuses
}

/// `X-Forwarded-For` names the client only when the peer is a trusted proxy: without
/// `TRUSTED_PROXIES` a client cannot dodge the limit by inventing addresses; with the
/// gateway's peer (127.0.0.1) trusted, each forwarded client has its own limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_for_counts_only_behind_a_trusted_proxy() {
    let spoofed = [
        "10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6",
    ];

    let untrusted = System::start(Options {
        gateway_env: vec![("RATE_LIMIT_PER_MINUTE".into(), "5".into())],
        ..Options::default()
    })
    .await;
    let statuses = sixth_login_status(&Api::new(&untrusted.base), spoofed).await;
    assert_eq!(
        statuses,
        [401, 401, 401, 401, 401, 429],
        "XFF believed from anyone"
    );
    untrusted.stop().await;

    let behind_proxy = System::start(Options {
        gateway_env: vec![
            ("RATE_LIMIT_PER_MINUTE".into(), "5".into()),
            ("TRUSTED_PROXIES".into(), "127.0.0.1".into()),
        ],
        ..Options::default()
    })
    .await;
    let api = Api::new(&behind_proxy.base);
    let statuses = sixth_login_status(&api, spoofed).await;
    assert_eq!(statuses, [401; 6], "forwarded clients share one limit");
    // One forwarded client, six times: limited like any client.
    let statuses = sixth_login_status(&api, ["10.9.9.9"; 6]).await;
    assert_eq!(statuses, [401, 401, 401, 401, 401, 429]);
    behind_proxy.stop().await;
}
