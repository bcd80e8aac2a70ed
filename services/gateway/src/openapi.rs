//! The OpenAPI 3.1 document of the REST API, generated from the route handlers'
//! annotations (`utoipa`), served at `GET /openapi.json` with a rendered view at
//! `GET /docs`. Errors every route can answer (malformed input, rate limit, timeouts,
//! outages) are added to each operation here rather than repeated on every handler.

use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::Operation;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{ObjectBuilder, Ref, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::Required;
use utoipa::openapi::{OpenApi as Document, RefOr};
use utoipa::{Modify, OpenApi};

use crate::contract::{ErrorCode, OrderStatus, SagaState, TokenType};
use crate::error::{ErrorBody, ErrorDetail};
use crate::routes;

/// The document's root.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "ordersys REST API",
        description = "The gateway of the ordersys reference system: accounts, orders (each \
            placed order runs a saga: payment, then confirmation or compensation) and wallets. \
            Errors share one JSON shape; every response carries `x-correlation-id`. \
            A method a path does not have is 405 `method_not_allowed` with `Allow` listing \
            those it has. No CORS: the API is for servers and same-origin pages, so a \
            browser's cross-origin preflight (`OPTIONS`) is answered 405 and the browser \
            does not send the request. Timestamps are RFC 3339 strings in UTC with \
            milliseconds; money is an integer in minor units with its currency.",
        license(name = "MIT OR Apache-2.0", identifier = "MIT OR Apache-2.0"),
    ),
    servers((url = "http://127.0.0.1:8080", description = "The one-command start (`make up`, or the `ordersys` binary)")),
    paths(
        routes::auth::register,
        routes::auth::login,
        routes::auth::logout,
        routes::auth::me,
        routes::orders::create,
        routes::orders::list,
        routes::orders::get,
        routes::orders::cancel,
        routes::orders::wallet,
    ),
    components(schemas(ErrorBody, ErrorDetail, ErrorCode, OrderStatus, SagaState, TokenType)),
    modifiers(&Common),
    tags(
        (name = "auth", description = "Accounts and tokens"),
        (name = "orders", description = "Orders and the wallet that pays them"),
    )
)]
pub struct ApiDoc;

/// The bearer scheme, the errors every operation can answer, the headers every
/// response carries, and `security: []` on the public operations.
struct Common;

impl Modify for Common {
    fn modify(&self, doc: &mut Document) {
        if let Some(c) = doc.components.as_mut() {
            c.add_security_scheme(
                "bearer",
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .bearer_format("JWT")
                        .build(),
                ),
            );
        }
        for item in doc.paths.paths.values_mut() {
            for op in [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                if op.security.is_none() {
                    // Public: say so (`security: []`) rather than leave it unsaid.
                    op.security = Some(Vec::new());
                }
                let protected = op.security.as_ref().is_some_and(|s| !s.is_empty());
                add_common_errors(op);
                add_response_headers(op, protected);
                for p in op.parameters.iter_mut().flatten() {
                    if p.name == "Idempotency-Key" {
                        // A string when sent; sending none is allowed (no protection).
                        p.required = Required::False;
                    }
                }
            }
        }
    }
}

/// Headers on the responses: `x-correlation-id` on every one, the rate limit's on every
/// response of a rate-limited operation, RFC 6750's `WWW-Authenticate` on the 401 of a
/// protected one (a failed login is a 401 without a challenge: it takes no token).
fn add_response_headers(op: &mut Operation, protected: bool) {
    let header = |description: &str, schema_type: Type| {
        HeaderBuilder::new()
            .schema(ObjectBuilder::new().schema_type(schema_type))
            .description(Some(description))
            .build()
    };
    for (code, response) in op.responses.responses.iter_mut() {
        let RefOr::T(response) = response else {
            continue;
        };
        response.headers.insert(
            "x-correlation-id".to_owned(),
            header(
                "The request's correlation id: the client's `X-Correlation-ID` when it sent a \
                 valid one (1–128 of `[A-Za-z0-9._:-]`), else a new random one; also in error bodies",
                Type::String,
            ),
        );
        response.headers.insert(
            "x-ratelimit-limit".to_owned(),
            header(
                "Requests allowed per minute per client IP (`RATE_LIMIT_PER_MINUTE`); absent \
                 when the limiter could not be asked (the request is let through)",
                Type::Integer,
            ),
        );
        response.headers.insert(
            "x-ratelimit-remaining".to_owned(),
            header(
                "Requests left in the current minute; absent when the limiter could not be asked",
                Type::Integer,
            ),
        );
        if protected && code == "401" {
            response.headers.insert(
                "WWW-Authenticate".to_owned(),
                header(
                    "RFC 6750: `Bearer` when no token was sent; `Bearer error=\"invalid_token\", \
                     error_description=\"…\"` when it was malformed, expired or revoked (the \
                     description says which; the body's `error.code` too)",
                    Type::String,
                ),
            );
        }
    }
}

fn add_common_errors(op: &mut Operation) {
    let protected = op.security.as_ref().is_some_and(|s| !s.is_empty());
    let has_body = op.request_body.is_some();
    let has_params = op.parameters.as_ref().is_some_and(|p| !p.is_empty());
    let mut errors: Vec<(&str, &str, bool)> = vec![
        ("408", "The request took longer than `REQUEST_TIMEOUT_SECS`", false),
        ("431", "The request's headers are over 16 KiB", false),
        ("429", "Rate limited (per client IP; login also per account); retry after `Retry-After` seconds", true),
        ("500", "An unexpected error (logged with the correlation id)", false),
        ("503", "A service behind the gateway is unavailable or busy (circuit open, overloaded, unreachable): the request reached no service and changed nothing; retry after `Retry-After` seconds", true),
        ("504", "A service behind the gateway took the request but did not answer within `DOWNSTREAM_TIMEOUT_MS`: `upstream_timeout` for a read (retry); `outcome_unknown` for a change, which may have been applied (retry with the same `Idempotency-Key` where the operation takes one, else check first)", false),
    ];
    if protected {
        errors.push((
            "401",
            "No, malformed, expired or revoked bearer token (`WWW-Authenticate` says which)",
            false,
        ));
    }
    if has_body || has_params {
        errors.push((
            "400",
            "Malformed request: JSON syntax, missing `Content-Type: application/json`, undecodable path",
            false,
        ));
        errors.push((
            "422",
            "Well-formed but invalid: missing or mistyped fields, values out of range",
            false,
        ));
    }
    if has_body {
        errors.push(("413", "The body is over `BODY_LIMIT_BYTES`", false));
    }
    for (code, description, retry_after) in errors {
        op.responses
            .responses
            .entry(code.to_owned())
            .or_insert_with(|| RefOr::T(error_response(description, retry_after)));
    }
}

fn error_response(description: &str, retry_after: bool) -> utoipa::openapi::Response {
    let mut r = ResponseBuilder::new().description(description).content(
        "application/json",
        ContentBuilder::new()
            .schema(Some(Ref::from_schema_name("ErrorBody")))
            .build(),
    );
    if retry_after {
        r = r.header(
            "Retry-After",
            HeaderBuilder::new()
                .schema(ObjectBuilder::new().schema_type(Type::Integer))
                .description(Some("Seconds to wait before retrying"))
                .build(),
        );
    }
    r.build()
}

/// `GET /openapi.json`.
pub async fn document() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        ApiDoc::openapi().to_json().unwrap_or_default(),
    )
        .into_response()
}

/// The renderer `GET /docs` loads: Scalar's standalone bundle, vendored and gzipped
/// (`assets/README.md` says which version and how to update it).
const SCALAR: &[u8] = include_bytes!("../assets/scalar-api-reference-1.76.4.standalone.js.gz");

/// `GET /docs`: the document rendered by Scalar, served by the gateway itself (works
/// without internet access).
pub async fn rendered() -> Html<&'static str> {
    Html(
        r#"<!doctype html>
<html>
  <head>
    <title>ordersys REST API</title>
    <meta charset="utf-8" />
    <meta name="viewport" content="width=device-width, initial-scale=1" />
  </head>
  <body>
    <script id="api-reference" data-url="/openapi.json"></script>
    <script src="/docs/scalar.js"></script>
  </body>
</html>
"#,
    )
}

/// `GET /docs/scalar.js`: the renderer, gzip-encoded for a client that accepts it
/// (every browser), decompressed once for one that does not; cached for a day.
pub async fn renderer(headers: axum::http::HeaderMap) -> Response {
    static PLAIN: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let gzip = headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|e| {
            let mut parts = e.split(';');
            let name = parts.next().unwrap_or("").trim();
            let refused = parts.any(|q| matches!(q.trim(), "q=0" | "q=0.0" | "q=0.00" | "q=0.000"));
            (name.eq_ignore_ascii_case("gzip") || name == "*") && !refused
        });
    let common = [
        (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
        (header::CACHE_CONTROL, "public, max-age=86400"),
        (header::VARY, "accept-encoding"),
    ];
    if gzip {
        (common, [(header::CONTENT_ENCODING, "gzip")], SCALAR).into_response()
    } else {
        let plain = PLAIN.get_or_init(|| {
            let mut out = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(SCALAR), &mut out)
                .expect("the vendored renderer is valid gzip");
            out
        });
        (common, plain.as_slice()).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> serde_json::Value {
        serde_json::from_str(&ApiDoc::openapi().to_json().unwrap()).unwrap()
    }

    #[test]
    fn covers_every_route_of_the_rest_contract() {
        let d = doc();
        assert_eq!(d["openapi"], "3.1.0");
        let mut ops: Vec<String> = Vec::new();
        for (path, item) in d["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                ops.push(format!("{} {path}", method.to_uppercase()));
            }
        }
        ops.sort();
        assert_eq!(
            ops,
            [
                "GET /api/v1/auth/me",
                "GET /api/v1/orders",
                "GET /api/v1/orders/{id}",
                "GET /api/v1/wallet",
                "POST /api/v1/auth/login",
                "POST /api/v1/auth/logout",
                "POST /api/v1/auth/register",
                "POST /api/v1/orders",
                "POST /api/v1/orders/{id}/cancel",
            ]
        );
    }

    #[test]
    fn every_operation_documents_the_errors_it_can_answer() {
        let d = doc();
        for (path, item) in d["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let r = op["responses"].as_object().unwrap();
                for code in ["408", "429", "500", "503", "504"] {
                    assert!(r.contains_key(code), "{method} {path} lacks {code}");
                    assert_eq!(
                        r[code]["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/ErrorBody"
                    );
                }
                let public = op["security"] == serde_json::json!([]);
                if !public {
                    assert!(r.contains_key("401"), "{method} {path} lacks 401");
                    assert!(
                        r["401"]["headers"]["WWW-Authenticate"].is_object(),
                        "{method} {path}"
                    );
                }
                for (code, response) in r {
                    let headers = &response["headers"];
                    for h in [
                        "x-correlation-id",
                        "x-ratelimit-limit",
                        "x-ratelimit-remaining",
                    ] {
                        assert!(headers[h].is_object(), "{method} {path} {code} lacks {h}");
                    }
                }
                if op.get("requestBody").is_some() {
                    for code in ["400", "413", "422"] {
                        assert!(r.contains_key(code), "{method} {path} lacks {code}");
                    }
                }
            }
        }
        assert_eq!(
            d["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
    }

    /// The closed sets, types and parameters a generated client relies on.
    #[test]
    fn the_document_types_every_value_as_the_server_sends_it() {
        let d = doc();
        let schemas = &d["components"]["schemas"];
        let values = |name: &str| -> Vec<String> {
            schemas[name]["enum"]
                .as_array()
                .unwrap_or_else(|| panic!("{name} is not an enum"))
                .iter()
                .map(|v| v.as_str().unwrap().to_owned())
                .collect()
        };
        let all = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            values("ErrorCode"),
            all(&ErrorCode::ALL
                .iter()
                .map(|c| c.as_str())
                .collect::<Vec<_>>())
        );
        assert_eq!(
            values("OrderStatus"),
            all(&["PENDING", "CONFIRMED", "CANCELLED"])
        );
        assert!(values("SagaState").contains(&"FAILED".to_owned()));
        let order = &schemas["OrderBody"]["properties"];
        assert_eq!(order["status"]["$ref"], "#/components/schemas/OrderStatus");
        assert_eq!(
            order["saga_state"]["$ref"],
            "#/components/schemas/SagaState"
        );
        assert_eq!(order["created_at"]["type"], "string");
        assert_eq!(order["created_at"]["format"], "date-time");
        assert_eq!(
            schemas["ErrorDetail"]["properties"]["code"]["$ref"],
            "#/components/schemas/ErrorCode"
        );

        let paths = &d["paths"];
        let create = &paths["/api/v1/orders"]["post"];
        let key = &create["parameters"][0];
        assert_eq!(key["name"], "Idempotency-Key");
        assert_eq!(key["required"], false);
        assert_eq!(key["schema"]["type"], "string", "never null: {key}");
        let limit = &paths["/api/v1/orders"]["get"]["parameters"][0];
        assert_eq!(limit["name"], "limit");
        assert_eq!(limit["schema"]["minimum"], 1);
        assert_eq!(limit["schema"]["maximum"], 100);
        assert!(
            limit["schema"]["type"] == "integer"
                || limit["schema"]["type"] == serde_json::json!(["integer", "null"]),
            "{limit}"
        );
        for public in ["/api/v1/auth/register", "/api/v1/auth/login"] {
            assert_eq!(paths[public]["post"]["security"], serde_json::json!([]));
        }
        assert_eq!(d["servers"][0]["url"], "http://127.0.0.1:8080");
        assert_eq!(d["info"]["license"]["identifier"], "MIT OR Apache-2.0");
    }

    /// `/docs` needs no internet: the renderer is the gateway's own, gzip or plain.
    #[tokio::test]
    async fn the_docs_page_loads_its_renderer_from_the_gateway() {
        let Html(page) = rendered().await;
        assert!(page.contains(r#"<script src="/docs/scalar.js">"#));
        assert!(!page.contains("https://"), "nothing from elsewhere: {page}");
        let mut accepts = axum::http::HeaderMap::new();
        accepts.insert(header::ACCEPT_ENCODING, "br, gzip".parse().unwrap());
        let gz = renderer(accepts).await;
        assert_eq!(gz.headers()[header::CONTENT_ENCODING], "gzip");
        let body = axum::body::to_bytes(gz.into_body(), usize::MAX)
            .await
            .unwrap();
        assert_eq!(&body[..], SCALAR);
        let mut refuses = axum::http::HeaderMap::new();
        refuses.insert(header::ACCEPT_ENCODING, "gzip;q=0".parse().unwrap());
        for headers in [axum::http::HeaderMap::new(), refuses] {
            let plain = renderer(headers).await;
            assert!(plain.headers().get(header::CONTENT_ENCODING).is_none());
            assert!(plain.headers()[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/javascript"));
            let body = axum::body::to_bytes(plain.into_body(), usize::MAX)
                .await
                .unwrap();
            assert!(
                body.len() > 4 * SCALAR.len() / 2,
                "decompressed: {}",
                body.len()
            );
            assert!(body.starts_with(b"(function(){"));
        }
    }
}
