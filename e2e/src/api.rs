//! A JSON client for the gateway's REST API.

use std::time::Duration;

use crate::eventually;

/// A JSON API client for the gateway.
#[derive(Debug, Clone)]
pub struct Api {
    client: reqwest::Client,
    base: String,
}

/// A response: status, headers, JSON body (`Null` if none).
#[derive(Debug)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: reqwest::header::HeaderMap,
    /// Body as JSON, or `Value::String` when not JSON.
    pub body: serde_json::Value,
}

impl Reply {
    /// `body.error.code`.
    pub fn error_code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

impl Api {
    /// A client for the gateway at `base`.
    pub fn new(base: &str) -> Self {
        Self {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .expect("client"),
            base: base.to_owned(),
        }
    }

    /// Send a request with an optional JSON body and bearer token.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
        token: Option<&str>,
    ) -> Reply {
        let mut rb = self.client.request(
            method.parse().expect("method"),
            format!("{}{path}", self.base),
        );
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        Self::reply(rb).await
    }

    /// Send a raw request (for malformed bodies and custom headers).
    pub async fn raw(&self, rb: reqwest::RequestBuilder) -> Reply {
        Self::reply(rb).await
    }

    /// Poll `GET /api/v1/orders/{id}` (each answer must be 200) until `done` holds for
    /// the order, for at most 60 s; returns the order.
    pub async fn wait_order(
        &self,
        token: &str,
        id: &str,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let done = &done;
        eventually(
            &format!("order {id} to reach the expected state"),
            Duration::from_secs(60),
            || async move {
                let r = self
                    .send("GET", &format!("/api/v1/orders/{id}"), None, Some(token))
                    .await;
                assert_eq!(r.status, 200, "{r:?}");
                done(&r.body).then_some(r.body)
            },
        )
        .await
    }

    /// The underlying client, for [`raw`](Self::raw).
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// The gateway's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    async fn reply(rb: reqwest::RequestBuilder) -> Reply {
        let r = rb.send().await.expect("request sent");
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(if text.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::Value::String(text)
        });
        Reply {
            status,
            headers,
            body,
        }
    }

    /// `POST /api/v1/orders` of one item at `unit_price` (USD) with `Idempotency-Key: key`.
    pub async fn post_order(&self, token: &str, key: &str, unit_price: i64) -> Reply {
        let rb = self
            .client
            .post(format!("{}/api/v1/orders", self.base))
            .bearer_auth(token)
            .header("Idempotency-Key", key)
            .json(&serde_json::json!({
                "items": [{ "product_id": "sku-1", "quantity": 1, "unit_price": unit_price }],
                "currency": "USD",
            }));
        self.raw(rb).await
    }

    /// Place an order ([`Api::post_order`]) and wait until its saga confirms it; its id.
    pub async fn confirmed_order(&self, token: &str, key: &str, unit_price: i64) -> String {
        let r = self.post_order(token, key, unit_price).await;
        assert_eq!(r.status, 201, "{r:?}");
        let id = r.body["order_id"].as_str().expect("order_id").to_owned();
        let done = self
            .wait_order(token, &id, |o| o["status"] != "PENDING")
            .await;
        assert_eq!(done["status"], "CONFIRMED", "{done:?}");
        id
    }

    /// The status `GET /api/v1/auth/me` answers with `token`.
    pub async fn me(&self, token: &str) -> u16 {
        self.send("GET", "/api/v1/auth/me", None, Some(token))
            .await
            .status
    }

    /// Log in; the access token.
    pub async fn login(&self, email: &str, password: &str) -> String {
        let creds = serde_json::json!({ "email": email, "password": password });
        let r = self
            .send("POST", "/api/v1/auth/login", Some(creds), None)
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        r.body["access_token"].as_str().expect("token").to_owned()
    }

    /// A token of a new session of `email`, already logged out (revoked).
    pub async fn revoked_token(&self, email: &str, password: &str) -> String {
        let token = self.login(email, password).await;
        let r = self
            .send("POST", "/api/v1/auth/logout", None, Some(&token))
            .await;
        assert_eq!(r.status, 204, "{r:?}");
        token
    }

    /// Register, then log in; returns the access token.
    pub async fn signup(&self, email: &str, password: &str) -> String {
        let creds = serde_json::json!({ "email": email, "password": password });
        let r = self
            .send("POST", "/api/v1/auth/register", Some(creds.clone()), None)
            .await;
        assert_eq!(r.status, 201, "{r:?}");
        let r = self
            .send("POST", "/api/v1/auth/login", Some(creds), None)
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        r.body["access_token"].as_str().expect("token").to_owned()
    }
}

/// The `jti` claim of a compact JWT (the key of its revocation, `jwt:blacklist:{jti}`).
pub fn jti(token: &str) -> String {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url");
    let claims: serde_json::Value = serde_json::from_slice(&bytes).expect("JSON claims");
    claims["jti"].as_str().expect("jti").to_owned()
}

/// A unique e-mail address.
pub fn email() -> String {
    format!("user-{}@example.com", uuid::Uuid::new_v4().simple())
}
