//! The REST contract as a generated client sees it: the whole flow — every success and
//! every error path a client can provoke — is recorded from a running system, and each
//! response is checked against the system's own `GET /openapi.json`: the status must be
//! declared for the operation, the body must validate against the declared schema (with
//! undeclared properties refused and every closed set an `enum`), and every header the
//! API sets must be declared on that response (integers parse as integers).

use std::collections::BTreeSet;
use std::time::Duration;

use ordersys_e2e::{email, free_port, wait_ready, Api, Reply, Service};
use serde_json::{json, Value};

/// The response headers the API itself sets (the rest are HTTP's own: date,
/// content-length, content-type…).
const API_HEADERS: [&str; 6] = [
    "x-correlation-id",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "retry-after",
    "www-authenticate",
    "allow",
];

struct Contract {
    doc: Value,
    /// The document's components, every object schema closed (`additionalProperties:
    /// false` where it says nothing): a property the server sends but the document
    /// does not declare fails.
    strict: Value,
    checked: BTreeSet<String>,
}

fn close_objects(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if map.contains_key("properties") && !map.contains_key("additionalProperties") {
                map.insert("additionalProperties".into(), Value::Bool(false));
            }
            map.values_mut().for_each(close_objects);
        }
        Value::Array(items) => items.iter_mut().for_each(close_objects),
        _ => {}
    }
}

impl Contract {
    fn new(doc: Value) -> Self {
        let mut strict = doc["components"].clone();
        close_objects(&mut strict);
        Self {
            doc,
            strict,
            checked: BTreeSet::new(),
        }
    }

    /// `reply` to `method path` (the path as the document writes it) is what the
    /// document declares.
    fn check(&mut self, method: &str, path: &str, reply: &Reply) {
        let what = format!("{method} {path} → {}", reply.status);
        let op = &self.doc["paths"][path][method.to_lowercase()];
        assert!(op.is_object(), "{what}: no such operation in the document");
        let declared = &op["responses"][reply.status.to_string()];
        assert!(
            declared.is_object(),
            "{what}: status not declared for the operation: {reply:?}"
        );
        self.check_body(&what, declared, reply);
        self.check_headers(&what, &declared["headers"], reply);
        self.checked.insert(what);
    }

    /// What is wrong with `body` as the response `declared`.
    fn body_errors(&self, what: &str, declared: &Value, body: &Value) -> Vec<String> {
        let schema = &declared["content"]["application/json"]["schema"];
        let mut root = schema.clone();
        root["components"] = self.strict.clone();
        let validator = jsonschema::draft202012::new(&root)
            .unwrap_or_else(|e| panic!("{what}: the document's schema does not compile: {e}"));
        validator
            .iter_errors(body)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect()
    }

    fn check_body(&self, what: &str, declared: &Value, reply: &Reply) {
        let schema = &declared["content"]["application/json"]["schema"];
        if schema.is_null() {
            assert_eq!(
                reply.body,
                Value::Null,
                "{what}: a body the document does not declare"
            );
            return;
        }
        let content_type = reply.headers["content-type"].to_str().unwrap();
        assert!(
            content_type.starts_with("application/json"),
            "{what}: {content_type}"
        );
        let errors = self.body_errors(what, declared, &reply.body);
        assert!(
            errors.is_empty(),
            "{what}: the body is not what the document declares: {errors:#?}\n{:#}",
            reply.body
        );
    }

    /// The check itself refuses what a server must not send: a value outside a closed
    /// set, an undeclared property, a timestamp of the wrong type.
    fn refuses_what_is_not_declared(&self, order: &Value) {
        let declared = &self.doc["paths"]["/api/v1/orders/{id}"]["get"]["responses"]["200"];
        assert!(self.body_errors("order", declared, order).is_empty());
        for (field, wrong) in [
            ("status", json!("CONFIRMD")),
            ("saga_state", json!("COMPENSATED")),
            ("created_at", json!(1_796_216_979_782_i64)),
            ("surprise", json!(1)),
        ] {
            let mut bad = order.clone();
            bad[field] = wrong;
            assert!(
                !self.body_errors("order", declared, &bad).is_empty(),
                "{field} = {} passed",
                bad[field]
            );
        }
        let declared = &self.doc["paths"]["/api/v1/orders/{id}"]["get"]["responses"]["404"];
        let error =
            json!({ "error": { "code": "no_such_code", "message": "m", "correlation_id": null } });
        assert!(!self.body_errors("error", declared, &error).is_empty());
    }

    fn check_headers(&self, what: &str, declared: &Value, reply: &Reply) {
        let declared_names: Vec<String> = declared
            .as_object()
            .map(|h| h.keys().map(|k| k.to_lowercase()).collect())
            .unwrap_or_default();
        assert!(
            reply.headers.contains_key("x-correlation-id"),
            "{what}: every response carries x-correlation-id"
        );
        for name in API_HEADERS {
            let Some(value) = reply.headers.get(name) else {
                continue;
            };
            assert!(
                declared_names.iter().any(|d| d == name),
                "{what}: header {name} is sent but not declared"
            );
            let (_, spec) = declared
                .as_object()
                .unwrap()
                .iter()
                .find(|(k, _)| k.to_lowercase() == name)
                .unwrap();
            if spec["schema"]["type"] == "integer" {
                let v = value.to_str().unwrap();
                assert!(
                    v.parse::<i64>().is_ok(),
                    "{what}: {name}: {v:?} is no integer"
                );
            }
        }
    }
}

fn order(price: i64, quantity: i64) -> Value {
    json!({ "items": [{ "product_id": "book", "quantity": quantity, "unit_price": price }], "currency": "USD" })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_of_the_whole_flow_is_what_the_document_declares() {
    let dir = std::env::temp_dir().join(format!(
        "ordersys-contract-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut env = ordersys_e2e::embedded_env(&dir, port);
    env.insert("RATE_LIMIT_PER_MINUTE".into(), "150".into());
    let mut sys = Service::start("ordersys", env);
    wait_ready(
        &ordersys_e2e::embedded_ready_url(&sys),
        &mut sys,
        Duration::from_secs(60),
    )
    .await;
    let api = Api::new(&base);
    let doc = api.send("GET", "/openapi.json", None, None).await;
    assert_eq!(doc.status, 200);
    let mut c = Contract::new(doc.body);

    // Accounts.
    let (register, login, me, logout) = (
        "/api/v1/auth/register",
        "/api/v1/auth/login",
        "/api/v1/auth/me",
        "/api/v1/auth/logout",
    );
    let e = email();
    let creds = json!({ "email": e, "password": "password-123" });
    let r = api.send("POST", register, Some(creds.clone()), None).await;
    assert_eq!(r.status, 201);
    c.check("POST", register, &r);
    let r = api.send("POST", register, Some(creds.clone()), None).await;
    assert_eq!(r.status, 409);
    c.check("POST", register, &r);
    let r = api
        .send(
            "POST",
            register,
            Some(json!({ "email": "nope", "password": "x" })),
            None,
        )
        .await;
    assert_eq!(r.status, 422);
    c.check("POST", register, &r);
    let malformed = api
        .raw(
            api.client()
                .post(format!("{base}{register}"))
                .header("content-type", "application/json")
                .body("{\"email\":"),
        )
        .await;
    assert_eq!(malformed.status, 400);
    c.check("POST", register, &malformed);
    let r = api
        .send(
            "POST",
            login,
            Some(json!({ "email": e, "password": "wrong-password" })),
            None,
        )
        .await;
    assert_eq!(r.status, 401);
    c.check("POST", login, &r);
    let r = api.send("POST", login, Some(creds.clone()), None).await;
    assert_eq!(r.status, 200);
    c.check("POST", login, &r);
    let token = r.body["access_token"].as_str().unwrap().to_owned();
    let r = api.send("GET", me, None, Some(&token)).await;
    assert_eq!(r.status, 200);
    c.check("GET", me, &r);
    let r = api.send("GET", me, None, None).await;
    assert_eq!(r.status, 401);
    c.check("GET", me, &r);
    let r = api.send("GET", me, None, Some("not.a.token")).await;
    assert_eq!(r.status, 401);
    c.check("GET", me, &r);

    // Orders.
    let (orders, one, cancel, wallet) = (
        "/api/v1/orders",
        "/api/v1/orders/{id}",
        "/api/v1/orders/{id}/cancel",
        "/api/v1/wallet",
    );
    let keyed = |body: Value, key: &str| {
        api.client()
            .post(format!("{base}{orders}"))
            .bearer_auth(&token)
            .header("idempotency-key", key)
            .json(&body)
    };
    let r = api.raw(keyed(order(1250, 2), "contract-1")).await;
    assert_eq!(r.status, 201, "{r:?}");
    c.check("POST", orders, &r);
    let paid = r.body["order_id"].as_str().unwrap().to_owned();
    let again = api.raw(keyed(order(1250, 2), "contract-1")).await;
    assert_eq!((again.status, &again.body["order_id"]), (201, &json!(paid)));
    c.check("POST", orders, &again);
    let reused = api.raw(keyed(order(99, 1), "contract-1")).await;
    assert_eq!(reused.status, 422);
    c.check("POST", orders, &reused);
    let r = api
        .send("POST", orders, Some(order(0, 1)), Some(&token))
        .await;
    assert_eq!(r.status, 422);
    c.check("POST", orders, &r);
    let huge = api
        .raw(
            api.client()
                .post(format!("{base}{orders}"))
                .bearer_auth(&token)
                .header("content-type", "application/json")
                .body(vec![b' '; 128 * 1024]),
        )
        .await;
    assert_eq!(huge.status, 413);
    c.check("POST", orders, &huge);
    let declined = api
        .send("POST", orders, Some(order(1_000_000, 1)), Some(&token))
        .await;
    assert_eq!(declined.status, 201);
    let declined = declined.body["order_id"].as_str().unwrap().to_owned();

    let confirmed = api
        .wait_order(&token, &paid, |o| o["status"] == "CONFIRMED")
        .await;
    assert_eq!(confirmed["saga_state"], "COMPLETED");
    let at = confirmed["created_at"].as_str().unwrap();
    assert!(
        at.len() == 24 && at.ends_with('Z') && at.as_bytes()[10] == b'T',
        "RFC 3339, UTC, milliseconds: {at}"
    );
    let cancelled = api
        .wait_order(&token, &declined, |o| o["status"] == "CANCELLED")
        .await;
    assert_eq!(cancelled["saga_state"], "FAILED");
    for id in [&paid, &declined] {
        let r = api
            .send("GET", &format!("/api/v1/orders/{id}"), None, Some(&token))
            .await;
        assert_eq!(r.status, 200);
        c.check("GET", one, &r);
        c.refuses_what_is_not_declared(&r.body);
    }
    let r = api
        .send(
            "GET",
            "/api/v1/orders/00000000-0000-0000-0000-000000000000",
            None,
            Some(&token),
        )
        .await;
    assert_eq!(r.status, 404);
    c.check("GET", one, &r);

    let r = api
        .send("GET", "/api/v1/orders?limit=1", None, Some(&token))
        .await;
    assert_eq!(r.status, 200);
    c.check("GET", orders, &r);
    let cursor = r.body["next_cursor"]
        .as_str()
        .expect("a second page")
        .to_owned();
    let r = api
        .send(
            "GET",
            &format!("/api/v1/orders?limit=1&cursor={cursor}"),
            None,
            Some(&token),
        )
        .await;
    assert_eq!(r.status, 200);
    c.check("GET", orders, &r);
    let r = api
        .send("GET", "/api/v1/orders?limit=0", None, Some(&token))
        .await;
    assert_eq!(r.status, 422);
    c.check("GET", orders, &r);

    let r = api.send("GET", wallet, None, Some(&token)).await;
    assert_eq!(
        (r.status, &r.body["balance"]),
        (200, &json!(100_000 - 2500))
    );
    c.check("GET", wallet, &r);

    let path = format!("/api/v1/orders/{paid}/cancel");
    let r = api.send("POST", &path, None, Some(&token)).await;
    assert_eq!(r.status, 202, "{r:?}");
    c.check("POST", cancel, &r);
    api.wait_order(&token, &paid, |o| o["status"] == "CANCELLED")
        .await;
    let r = api.send("POST", &path, None, Some(&token)).await;
    assert_eq!(r.status, 409);
    c.check("POST", cancel, &r);

    // A method the path does not have: 405 with `Allow`, in the error shape.
    let r = api.send("DELETE", wallet, None, Some(&token)).await;
    assert_eq!(r.status, 405);
    assert!(r.headers.contains_key("allow"), "{r:?}");
    assert_eq!(r.error_code(), "method_not_allowed");
    // No CORS: a browser's preflight is a method the path does not have.
    let preflight = api
        .raw(
            api.client()
                .request(reqwest::Method::OPTIONS, format!("{base}{orders}"))
                .header("origin", "https://elsewhere.example")
                .header("access-control-request-method", "POST"),
        )
        .await;
    assert_eq!(preflight.status, 405, "{preflight:?}");
    assert!(!preflight
        .headers
        .contains_key("access-control-allow-origin"));
    // The rendered document needs nothing from the internet.
    let page = api.raw(api.client().get(format!("{base}/docs"))).await;
    assert_eq!(page.status, 200);
    let html = page.body.as_str().unwrap();
    assert!(
        html.contains("/docs/scalar.js") && !html.contains("https://"),
        "{html}"
    );
    let renderer = api
        .raw(api.client().get(format!("{base}/docs/scalar.js")))
        .await;
    assert_eq!(renderer.status, 200);

    // Logged out: the same token is refused, with the challenge naming the error.
    let r = api.send("POST", logout, None, Some(&token)).await;
    assert_eq!(r.status, 204);
    c.check("POST", logout, &r);
    let r = api.send("GET", me, None, Some(&token)).await;
    assert_eq!((r.status, r.error_code()), (401, "token_revoked"));
    c.check("GET", me, &r);

    // Past the rate limit: 429 with Retry-After.
    let limited = loop {
        let r = api.send("GET", me, None, Some(&token)).await;
        if r.status == 429 {
            break r;
        }
        assert_eq!(r.status, 401);
    };
    assert!(limited.headers.contains_key("retry-after"), "{limited:?}");
    c.check("GET", me, &limited);

    // Every operation, with its success and error answers (distinct operation and
    // status pairs).
    assert_eq!(c.checked.len(), 20, "{:#?}", c.checked);
    drop(sys);
    let _ = std::fs::remove_dir_all(&dir);
}
