//! Token validation, revocation and the auth layer, end to end inside the crate.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use authz::layer::{AuthLayer, BearerToken};
use authz::{
    Authenticator, Blacklist, BlacklistFailure, Claims, Clock, Error, MemoryBlacklist, SigningKey,
    TokenIssuer, TokenValidator,
};
use axum::body::Body;
use axum::routing::get;
use axum::{Extension, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-test";
const NOW: i64 = 1_800_000_000;
const ISS: &str = "ordersys";
const AUD: &str = "ordersys-api";

fn key() -> SigningKey {
    SigningKey::hs256(SECRET).unwrap()
}

fn issuer_at(now: i64) -> TokenIssuer {
    TokenIssuer::new(key(), ISS, AUD)
        .with_ttl(Duration::from_secs(900))
        .with_clock(Clock::fixed(now))
}

fn validator_at(now: i64) -> TokenValidator {
    TokenValidator::new(key().verifying_key(), ISS, AUD)
        .with_leeway(Duration::from_secs(30))
        .with_clock(Clock::fixed(now))
}

fn ed_key() -> SigningKey {
    SigningKey::ed25519_from_pem(
        include_bytes!("keys/ed25519.pem"),
        include_bytes!("keys/ed25519.pub.pem"),
    )
    .unwrap()
}

#[test]
fn valid_token_round_trips_with_unique_jti() {
    let a = issuer_at(NOW).issue("u1").unwrap();
    let b = issuer_at(NOW).issue("u1").unwrap();
    assert_ne!(a.claims.jti, b.claims.jti);
    let claims = validator_at(NOW + 10).validate(&a.token).unwrap();
    assert_eq!(claims, a.claims);
    assert_eq!(claims.exp - claims.iat, 900);
}

#[test]
fn expired_token_is_rejected_after_leeway() {
    let t = issuer_at(NOW).issue("u1").unwrap();
    // Inside the leeway it still passes...
    validator_at(NOW + 900 + 30).validate(&t.token).unwrap();
    // ...one second past, it does not.
    assert!(matches!(
        validator_at(NOW + 931).validate(&t.token),
        Err(Error::Expired)
    ));
}

#[test]
fn the_default_leeway_is_five_seconds() {
    let t = issuer_at(NOW).issue("u1").unwrap();
    let default_at =
        |now| TokenValidator::new(key().verifying_key(), ISS, AUD).with_clock(Clock::fixed(now));
    assert_eq!(default_at(NOW).leeway(), authz::DEFAULT_LEEWAY);
    default_at(NOW + 900 + 5).validate(&t.token).unwrap();
    assert!(matches!(
        default_at(NOW + 900 + 6).validate(&t.token),
        Err(Error::Expired)
    ));
    // A 2-second token with no leeway is refused 3 seconds after it was issued.
    let short = issuer_at(NOW)
        .with_ttl(Duration::from_secs(2))
        .issue("u1")
        .unwrap();
    assert!(matches!(
        default_at(NOW + 3)
            .with_leeway(Duration::ZERO)
            .validate(&short.token),
        Err(Error::Expired)
    ));
}

#[test]
fn not_yet_valid_token_is_rejected() {
    let t = issuer_at(NOW + 120).issue("u1").unwrap();
    assert!(matches!(
        validator_at(NOW).validate(&t.token),
        Err(Error::NotYetValid)
    ));
    validator_at(NOW + 100).validate(&t.token).unwrap();
    // Exactly at the leeway's edge (nbf − 30 s) it is valid; a second earlier it is not.
    validator_at(NOW + 90).validate(&t.token).unwrap();
    assert!(matches!(
        validator_at(NOW + 89).validate(&t.token),
        Err(Error::NotYetValid)
    ));
}

#[test]
fn a_clock_from_a_function_reads_it_each_time_and_the_issuer_tells_its_ttl() {
    let t = Arc::new(std::sync::atomic::AtomicI64::new(NOW));
    let reading = t.clone();
    let clock = Clock::from_fn(move || reading.load(std::sync::atomic::Ordering::SeqCst));
    assert_eq!(clock.now(), NOW);
    t.store(NOW + 5, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(clock.now(), NOW + 5);
    let issued = TokenIssuer::new(key(), ISS, AUD)
        .with_clock(clock)
        .issue("u1")
        .unwrap();
    assert_eq!(issued.claims.iat, NOW + 5);
    assert_eq!(issuer_at(NOW).ttl(), Duration::from_secs(900));
    assert_eq!(
        issuer_at(NOW).with_ttl(Duration::from_secs(60)).ttl(),
        Duration::from_secs(60)
    );
}

#[test]
fn tampered_payload_is_rejected() {
    let t = issuer_at(NOW).issue("u1").unwrap();
    let parts: Vec<&str> = t.token.split('.').collect();
    let mut claims = t.claims.clone();
    claims.sub = "admin".into();
    let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap());
    let forged = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
    assert!(matches!(
        validator_at(NOW).validate(&forged),
        Err(Error::InvalidSignature)
    ));
}

#[test]
fn wrong_key_is_rejected() {
    let other = SigningKey::hs256(b"another-secret-another-secret-another").unwrap();
    let t = TokenIssuer::new(other, ISS, AUD)
        .with_clock(Clock::fixed(NOW))
        .issue("u1")
        .unwrap();
    assert!(matches!(
        validator_at(NOW).validate(&t.token),
        Err(Error::InvalidSignature)
    ));
}

#[test]
fn alg_none_is_rejected() {
    let claims = issuer_at(NOW).issue("u1").unwrap().claims;
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap());
    for token in [
        format!("{header}.{payload}."),
        format!("{header}.{payload}"),
    ] {
        let err = validator_at(NOW).validate(&token).unwrap_err();
        assert!(err.is_unauthorized(), "{err:?}");
    }
}

#[test]
fn algorithm_is_fixed_by_the_key() {
    // An HS256 token is refused by an EdDSA validator and the other way round.
    let hs = issuer_at(NOW).issue("u1").unwrap();
    let ed_validator =
        TokenValidator::new(ed_key().verifying_key(), ISS, AUD).with_clock(Clock::fixed(NOW));
    assert!(matches!(
        ed_validator.validate(&hs.token),
        Err(Error::InvalidAlgorithm)
    ));

    let ed = TokenIssuer::new(ed_key(), ISS, AUD)
        .with_clock(Clock::fixed(NOW))
        .issue("u1")
        .unwrap();
    ed_validator.validate(&ed.token).unwrap();
    assert!(matches!(
        validator_at(NOW).validate(&ed.token),
        Err(Error::InvalidAlgorithm)
    ));
}

#[test]
fn wrong_issuer_and_audience_are_rejected() {
    let wrong_iss = TokenIssuer::new(key(), "someone-else", AUD)
        .with_clock(Clock::fixed(NOW))
        .issue("u1")
        .unwrap();
    assert!(matches!(
        validator_at(NOW).validate(&wrong_iss.token),
        Err(Error::InvalidIssuer)
    ));
    let wrong_aud = TokenIssuer::new(key(), ISS, "other-api")
        .with_clock(Clock::fixed(NOW))
        .issue("u1")
        .unwrap();
    assert!(matches!(
        validator_at(NOW).validate(&wrong_aud.token),
        Err(Error::InvalidAudience)
    ));
}

#[test]
fn short_hmac_secret_is_refused() {
    assert!(matches!(
        SigningKey::hs256(b"short"),
        Err(Error::InvalidKey(_))
    ));
}

#[test]
fn garbage_is_malformed() {
    for t in ["", "abc", "a.b.c", "....."] {
        let err = validator_at(NOW).validate(t).unwrap_err();
        assert!(matches!(err, Error::Malformed(_)), "{t:?}: {err:?}");
        assert!(err.is_unauthorized());
    }
}

fn authenticator(now: i64, blacklist: Arc<dyn Blacklist>) -> Authenticator {
    Authenticator::new(validator_at(now), blacklist)
}

#[tokio::test(start_paused = true)]
async fn revoked_token_is_rejected_and_others_are_not() {
    let bl = Arc::new(MemoryBlacklist::new());
    let auth = authenticator(NOW, bl.clone());
    let a = issuer_at(NOW).issue("u1").unwrap();
    let b = issuer_at(NOW).issue("u1").unwrap();
    auth.revoke(&a.claims).await.unwrap();
    assert!(matches!(
        auth.authenticate(&a.token).await,
        Err(Error::Revoked)
    ));
    auth.authenticate(&b.token).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn revocation_outlives_the_token_including_leeway() {
    let bl = Arc::new(MemoryBlacklist::new());
    let t = issuer_at(NOW).issue("u1").unwrap();
    // Logout 100 s after issue: 800 s of life left, +30 s leeway, +1 s rounding.
    authenticator(NOW + 100, bl.clone())
        .revoke(&t.claims)
        .await
        .unwrap();
    tokio::time::advance(Duration::from_secs(830)).await;
    // Token clock: NOW + 930, still inside the leeway: the blacklist must still say no.
    assert!(matches!(
        authenticator(NOW + 930, bl.clone())
            .authenticate(&t.token)
            .await,
        Err(Error::Revoked)
    ));
    tokio::time::advance(Duration::from_secs(2)).await;
    // Now both the entry and the token have expired: the answer is "expired".
    assert!(bl.is_empty());
    assert!(matches!(
        authenticator(NOW + 932, bl.clone())
            .authenticate(&t.token)
            .await,
        Err(Error::Expired)
    ));
}

struct BrokenBlacklist;

#[async_trait]
impl Blacklist for BrokenBlacklist {
    async fn revoke(&self, _: &str, _: Duration) -> authz::Result<()> {
        Err(Error::blacklist("connection refused"))
    }
    async fn is_revoked(&self, _: &str) -> authz::Result<bool> {
        Err(Error::blacklist("connection refused"))
    }
}

#[tokio::test]
async fn blacklist_outage_fails_closed_by_default_and_open_on_request() {
    let t = issuer_at(NOW).issue("u1").unwrap();
    let closed = authenticator(NOW, Arc::new(BrokenBlacklist));
    let err = closed.authenticate(&t.token).await.unwrap_err();
    assert!(matches!(err, Error::BlacklistUnavailable(_)));
    assert!(!err.is_unauthorized());
    let open = authenticator(NOW, Arc::new(BrokenBlacklist))
        .on_blacklist_failure(BlacklistFailure::FailOpen);
    assert_eq!(open.authenticate(&t.token).await.unwrap().sub, "u1");
    // An invalid token is still invalid when failing open.
    assert!(matches!(
        open.authenticate("x.y.z").await,
        Err(Error::Malformed(_))
    ));
}

fn app(auth: Authenticator) -> Router {
    Router::new()
        .route(
            "/me",
            get(
                |Extension(c): Extension<Claims>, Extension(t): Extension<BearerToken>| async move {
                    format!("{}:{}", c.sub, t.0.len())
                },
            ),
        )
        .layer(AuthLayer::new(auth))
}

async fn send(app: &Router, auth: Option<&str>) -> (StatusCode, http::HeaderMap, String) {
    let mut req = Request::get("/me").header("x-correlation-id", "cid-1");
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn layer_passes_claims_and_rejects_with_json_401() {
    let t = issuer_at(NOW).issue("u7").unwrap();
    let app = app(authenticator(NOW, Arc::new(MemoryBlacklist::new())));

    let (status, _, body) = send(&app, Some(&format!("Bearer {}", t.token))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, format!("u7:{}", t.token.len()));

    // RFC 6750 §3: no error code when no token was sent; `invalid_token` otherwise.
    let invalid = r#"Bearer error="invalid_token", error_description="the token is malformed""#;
    for (header, challenge) in [
        (None, "Bearer"),
        (Some("Bearer"), "Bearer"),
        (Some("Basic abc"), "Bearer"),
        (Some("Bearer not.a.jwt"), invalid),
    ] {
        let (status, headers, body) = send(&app, header).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{header:?}");
        assert_eq!(headers["www-authenticate"], challenge, "{header:?}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(json["error"]["code"].is_string());
        assert!(json["error"]["message"].is_string());
        assert_eq!(json["error"]["correlation_id"], "cid-1");
    }
}

#[tokio::test]
async fn layer_answers_503_when_blacklist_is_down() {
    let t = issuer_at(NOW).issue("u7").unwrap();
    let app = app(authenticator(NOW, Arc::new(BrokenBlacklist)));
    let (status, _, body) = send(&app, Some(&format!("Bearer {}", t.token))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        !body.contains("connection refused"),
        "backend detail leaked: {body}"
    );
}

#[test]
fn custom_claims_survive_signing_and_validation() {
    use serde_json::json;
    let issuer = issuer_at(NOW);
    let t = issuer
        .issue_with(
            "u7",
            [
                ("scope", json!("orders:read orders:write")),
                ("roles", json!(["admin"])),
                ("tenant", json!({ "id": 42 })),
            ],
        )
        .unwrap();
    // The matching validator comes from the issuer (same key, iss, aud and clock).
    let claims = issuer.validator().validate(&t.token).unwrap();
    assert_eq!(claims, t.claims);
    assert!(claims.has_scope("orders:write") && claims.has_role("admin"));
    assert_eq!(claims.extra["tenant"]["id"], 42);
    // A token forged by a client cannot set the registered claims through `extra`.
    for reserved in ["sub", "jti", "exp", "aud"] {
        let err = issuer
            .issue_with("u7", [(reserved, json!("x"))])
            .unwrap_err();
        assert!(
            matches!(err, Error::ReservedClaim(ref n) if n == reserved),
            "{err}"
        );
    }
    // Tokens without custom claims decode to an empty `extra`.
    let plain = validator_at(NOW).validate(&issuer.issue("u7").unwrap().token);
    assert!(plain.unwrap().extra.is_empty());
}

fn scoped_app(auth: Authenticator, layer: impl FnOnce(AuthLayer) -> AuthLayer) -> Router {
    Router::new()
        .route(
            "/me",
            get(|Extension(c): Extension<Claims>| async move { c.sub }),
        )
        .layer(layer(AuthLayer::new(auth)))
}

#[tokio::test]
async fn a_required_scope_is_403_with_the_scope_named_and_passes_when_present() {
    use serde_json::json;
    let app = scoped_app(authenticator(NOW, Arc::new(MemoryBlacklist::new())), |l| {
        l.require_scope("orders:write").require_scope("orders:read")
    });
    let issuer = issuer_at(NOW);
    let both = issuer
        .issue_with("u7", [("scope", json!("orders:read orders:write"))])
        .unwrap();
    let (status, _, body) = send(&app, Some(&format!("Bearer {}", both.token))).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "u7"));

    let one = issuer
        .issue_with("u7", [("scope", json!("orders:write"))])
        .unwrap();
    let (status, headers, body) = send(&app, Some(&format!("Bearer {}", one.token))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        headers["www-authenticate"],
        r#"Bearer error="insufficient_scope", scope="orders:read""#
    );
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["error"]["code"], "insufficient_scope");
    assert_eq!(json["error"]["correlation_id"], "cid-1");
    // No scopes at all: 403 too; a bad token is still 401.
    let none = issuer.issue("u7").unwrap();
    let (status, _, _) = send(&app, Some(&format!("Bearer {}", none.token))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _) = send(&app, Some("Bearer not.a.jwt")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_error_response_can_be_replaced() {
    let app = scoped_app(authenticator(NOW, Arc::new(BrokenBlacklist)), |l| {
        l.with_error_response(|err, headers| {
            let mut resp = http::Response::new(format!(
                "{}|{}",
                err.code(),
                headers.get("x-correlation-id").unwrap().to_str().unwrap()
            ));
            *resp.status_mut() = StatusCode::IM_A_TEAPOT;
            resp
        })
    });
    let (status, _, body) = send(&app, None).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::IM_A_TEAPOT, "missing_token|cid-1")
    );
    let t = issuer_at(NOW).issue("u7").unwrap();
    let (status, _, body) = send(&app, Some(&format!("Bearer {}", t.token))).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::IM_A_TEAPOT, "service_unavailable|cid-1")
    );
}

#[test]
fn the_bearer_token_is_read_strictly() {
    use authz::layer::bearer_token;
    let h = |s: &'static str| http::HeaderValue::from_static(s);
    assert_eq!(bearer_token(Some(&h("Bearer abc"))).unwrap(), "abc");
    assert_eq!(bearer_token(Some(&h("bearer  abc "))).unwrap(), "abc");
    for refused in ["Basic abc", "Bearer    ", "Bearer", "Basic  "] {
        assert!(
            matches!(bearer_token(Some(&h(refused))), Err(Error::MissingToken)),
            "{refused:?}"
        );
    }
    assert!(matches!(bearer_token(None), Err(Error::MissingToken)));
}

#[tokio::test]
async fn each_failure_has_its_status_and_only_client_errors_say_why() {
    use authz::layer::error_response;
    let cases = [
        (Error::Expired, 401, true),
        (Error::InsufficientScope("orders:write".into()), 403, true),
        (Error::blacklist("redis: connection refused"), 503, false),
        (Error::InvalidKey("bad pem".into()), 500, false),
    ];
    for (err, status, says_why) in cases {
        let resp = error_response::<String>(&err, Some("c-1"));
        assert_eq!(resp.status().as_u16(), status, "{err:?}");
        let body: serde_json::Value = serde_json::from_str(resp.body()).unwrap();
        let message = body["error"]["message"].as_str().unwrap();
        assert_eq!(body["error"]["code"], err.code());
        assert_eq!(body["error"]["correlation_id"], "c-1");
        if says_why {
            assert_eq!(message, err.to_string());
        } else {
            assert_eq!(message, "authentication is temporarily unavailable");
        }
    }
}

/// A service that is never ready: the auth layer must pass its back-pressure on.
#[derive(Clone)]
struct NeverReady;

impl tower::Service<Request<Body>> for NeverReady {
    type Response = http::Response<String>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<http::Response<String>, std::convert::Infallible>>;
    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Pending
    }
    fn call(&mut self, _: Request<Body>) -> Self::Future {
        std::future::ready(Ok(http::Response::new(String::new())))
    }
}

#[test]
fn the_auth_layer_is_ready_when_the_service_is() {
    use tower::{Layer, Service};
    let auth = authenticator(NOW, Arc::new(MemoryBlacklist::new()));
    let mut svc = AuthLayer::new(auth).layer(NeverReady);
    let waker = futures::task::noop_waker();
    let mut cx = std::task::Context::from_waker(&waker);
    assert!(svc.poll_ready(&mut cx).is_pending());
}

/// RFC 6750 §3 challenges: no error code without a token; `invalid_token` with a
/// description that tells the failures apart otherwise.
#[test]
fn each_failure_has_its_challenge() {
    use authz::layer::www_authenticate;
    let invalid = |d: &str| format!(r#"Bearer error="invalid_token", error_description="{d}""#);
    let cases = [
        (authz::Error::MissingToken, "Bearer".to_owned()),
        (authz::Error::Expired, invalid("the token has expired")),
        (authz::Error::Revoked, invalid("the token has been revoked")),
        (
            authz::Error::NotYetValid,
            invalid("the token is not valid yet"),
        ),
        (
            authz::Error::Malformed("x".into()),
            invalid("the token is malformed"),
        ),
        (
            authz::Error::InvalidSignature,
            invalid("the token is invalid"),
        ),
        (
            authz::Error::InvalidAudience,
            invalid("the token is invalid"),
        ),
    ];
    for (err, challenge) in cases {
        assert_eq!(www_authenticate(&err), challenge.as_str(), "{err:?}");
    }
}
