//! `ordersys-authz` on a bare axum app: `POST /login` issues a token, `GET /me` is
//! behind the [`AuthLayer`] and reads the claims, `POST /logout` revokes the token
//! (every later use of it is 401). The program serves the app on a free port, walks
//! through it with an HTTP client, prints what it saw and exits — no server needed.
//!
//! ```sh
//! cargo run -p example-axum-jwt
//! ```

use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;

use authz::layer::{AuthLayer, BearerToken};
use authz::{Authenticator, Claims, MemoryBlacklist, SigningKey, TokenIssuer, TokenValidator};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde_json::{json, Value};

#[derive(Clone)]
struct AppState {
    issuer: Arc<TokenIssuer>,
    auth: Arc<Authenticator>,
}

/// Issues a token for any user name (a real app checks a password first).
async fn login(
    State(s): State<AppState>,
    Json(body): Json<Value>,
) -> Result<Json<Value>, StatusCode> {
    let user = body["user"]
        .as_str()
        .ok_or(StatusCode::UNPROCESSABLE_ENTITY)?;
    let issued = s
        .issuer
        .issue(user)
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    Ok(Json(
        json!({ "access_token": issued.token, "token_type": "Bearer" }),
    ))
}

/// Behind the layer: the claims are in the request's extensions.
async fn me(Extension(claims): Extension<Claims>) -> Json<Value> {
    Json(json!({ "user": claims.sub, "expires_at": claims.exp }))
}

/// Revokes the presented token until it would have expired anyway.
async fn logout(State(s): State<AppState>, Extension(claims): Extension<Claims>) -> StatusCode {
    match s.auth.revoke(&claims).await {
        Ok(()) => StatusCode::NO_CONTENT,
        Err(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

fn app() -> Result<Router, authz::Error> {
    let key = SigningKey::hs256(b"an-example-secret-of-at-least-32-bytes!")?;
    let auth = Arc::new(Authenticator::new(
        TokenValidator::new(key.verifying_key(), "example", "example-api"),
        Arc::new(MemoryBlacklist::new()),
    ));
    let state = AppState {
        issuer: Arc::new(
            TokenIssuer::new(key, "example", "example-api").with_ttl(Duration::from_secs(900)),
        ),
        auth: auth.clone(),
    };
    let protected = Router::new()
        .route("/me", get(me))
        .route("/logout", post(logout))
        .layer(AuthLayer::from_arc(auth));
    Ok(Router::new()
        .route("/login", post(login))
        .merge(protected)
        .with_state(state))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(axum::serve(listener, app()?).into_future());

    let http = reqwest::Client::new();
    let anonymous = http.get(format!("{base}/me")).send().await?;
    println!("GET /me without a token      → {}", anonymous.status());
    assert_eq!(anonymous.status(), 401);

    let token: Value = http
        .post(format!("{base}/login"))
        .json(&json!({ "user": "ada" }))
        .send()
        .await?
        .json()
        .await?;
    let token = BearerToken(
        token["access_token"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    );

    let me = http
        .get(format!("{base}/me"))
        .bearer_auth(&token.0)
        .send()
        .await?;
    let status = me.status();
    println!(
        "GET /me with the token       → {status} {}",
        me.text().await?
    );
    assert_eq!(status, 200);

    let out = http
        .post(format!("{base}/logout"))
        .bearer_auth(&token.0)
        .send()
        .await?;
    println!("POST /logout                 → {}", out.status());
    assert_eq!(out.status(), 204);

    let revoked = http
        .get(format!("{base}/me"))
        .bearer_auth(&token.0)
        .send()
        .await?;
    let status = revoked.status();
    println!(
        "GET /me with the revoked one → {status} {}",
        revoked.text().await?
    );
    assert_eq!(status, 401);

    server.abort();
    Ok(())
}
