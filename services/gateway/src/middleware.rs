//! The gateway's own middlewares: header and body limits, the request timeout, request
//! metrics and the per-client rate limit. Each answers in the JSON error shape.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::{client_ip, AppState};

/// The most header bytes (names, values and separators) a request may carry.
pub const HEADER_LIMIT_BYTES: usize = 16 * 1024;

/// Headers over [`HEADER_LIMIT_BYTES`]: 431 in the JSON shape, and the connection is
/// closed. (Past 100 header fields or about 400 KB, hyper refuses the request itself
/// while parsing it, with a bare 431.)
pub(crate) async fn refuse_large_headers(req: Request, next: Next) -> Response {
    let size: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if size <= HEADER_LIMIT_BYTES {
        return next.run(req).await;
    }
    let mut response = ApiError::new(
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        crate::contract::ErrorCode::RequestHeaderFieldsTooLarge,
        format!("request headers are too large (limit {HEADER_LIMIT_BYTES} bytes)"),
    )
    .into_response();
    response.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    response
}

/// Bodies larger than this are not read through: the connection is closed after the 413
/// (the client may then see a reset instead of the answer).
const DRAIN_MAX_BYTES: u64 = 16 * 1024 * 1024;

/// A body over the limit: 413 in the JSON shape, after reading and dropping what the
/// client sends — a server that answers and closes while the client is still writing
/// makes the client's kernel see a reset, and the client never reads the answer.
/// Declared (`Content-Length`) too large: refused before the handler. Sent without a
/// length (`Transfer-Encoding: chunked`): read up to the limit here — a body within it
/// goes on to the handler — and refused as soon as it passes the limit. Draining is
/// bounded by [`DRAIN_MAX_BYTES`] and the request timeout.
pub(crate) async fn refuse_oversized(
    State(limit): State<usize>,
    req: Request,
    next: Next,
) -> Response {
    use http_body_util::BodyExt as _;
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let chunked = declared.is_none()
        && req
            .headers()
            .contains_key(axum::http::header::TRANSFER_ENCODING);
    let mut read: u64 = 0;
    let body = if chunked {
        let (parts, mut body) = req.into_parts();
        let mut buf = bytes::BytesMut::new();
        loop {
            match body.frame().await {
                None => break,
                Some(Err(_)) => {
                    return ApiError::new(
                        StatusCode::BAD_REQUEST,
                        crate::contract::ErrorCode::BadRequest,
                        "the request body could not be read",
                    )
                    .into_response()
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        buf.extend_from_slice(&data);
                    }
                }
            }
            if buf.len() > limit {
                break;
            }
        }
        if buf.len() <= limit {
            let req = Request::from_parts(parts, axum::body::Body::from(buf.freeze()));
            return next.run(req).await;
        }
        read = buf.len() as u64;
        body
    } else {
        match declared.filter(|n| *n > limit as u64) {
            None => return next.run(req).await,
            Some(n) if n > DRAIN_MAX_BYTES => {
                read = DRAIN_MAX_BYTES; // too much to read through: answer and close
                req.into_body()
            }
            Some(_) => req.into_body(),
        }
    };
    let mut response = ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        crate::contract::ErrorCode::PayloadTooLarge,
        format!("request body is too large (limit {limit} bytes)"),
    )
    .into_response();
    let mut body = body;
    while read < DRAIN_MAX_BYTES {
        match body.frame().await {
            Some(Ok(frame)) => {
                read += frame.data_ref().map_or(0, |d| d.len() as u64);
            }
            _ => break,
        }
    }
    response.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    response
}

/// A request not answered within `limit` (a client dripping its body, a handler stuck
/// on a dependency beyond its own deadline) is answered 408 and its handling dropped.
pub(crate) async fn request_timeout(
    State(limit): State<Duration>,
    req: Request,
    next: Next,
) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            crate::contract::ErrorCode::RequestTimeout,
            "the request took too long",
        )
        .into_response(),
    }
}

/// What the API's answers may do in a browser: nothing — JSON is data, never a page,
/// a frame or a script.
const API_CSP: &str =
    "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// `/docs`: the vendored renderer from this origin only (its inline styles, images and
/// blob downloads allowed; no script but `/docs/scalar.js`, nothing from elsewhere).
const DOCS_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
    img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self'; \
    frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// Security headers on every answer: `Content-Security-Policy` (the API's or the
/// docs page's), `X-Content-Type-Options: nosniff`, `X-Frame-Options: DENY`,
/// `Referrer-Policy: no-referrer`.
pub(crate) async fn security_headers(req: Request, next: Next) -> Response {
    let docs = req.uri().path() == "/docs";
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    let csp = if docs { DOCS_CSP } else { API_CSP };
    for (name, value) in [
        (http::header::CONTENT_SECURITY_POLICY, csp),
        (http::header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (http::header::X_FRAME_OPTIONS, "DENY"),
        (http::header::REFERRER_POLICY, "no-referrer"),
    ] {
        h.insert(name, http::HeaderValue::from_static(value));
    }
    resp
}

/// The `method` label of a request: a standard method by its name, anything else
/// `other` — a label taken from the request as sent would let anyone add series to
/// `/metrics` without bound (any token is a valid HTTP method).
fn method_label(method: &http::Method) -> &'static str {
    use http::Method as M;
    match *method {
        M::GET => "GET",
        M::POST => "POST",
        M::PUT => "PUT",
        M::DELETE => "DELETE",
        M::PATCH => "PATCH",
        M::HEAD => "HEAD",
        M::OPTIONS => "OPTIONS",
        M::CONNECT => "CONNECT",
        M::TRACE => "TRACE",
        _ => "other",
    }
}

/// Count and time every request by its route template (bounded labels: the method as
/// [`method_label`], the matched route or `unmatched`, the status).
pub(crate) async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let method = method_label(req.method());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let started = std::time::Instant::now();
    let resp = next.run(req).await;
    state
        .metrics
        .latency
        .with_label_values(&[method, route.as_str()])
        .observe(started.elapsed().as_secs_f64());
    state
        .metrics
        .requests
        .with_label_values(&[method, route.as_str(), resp.status().as_str()])
        .inc();
    resp
}

/// Per-client-IP fixed window (`RATE_LIMIT_PER_MINUTE`) over every route of the public
/// port, unknown ones included; 429 with `Retry-After`.
pub(crate) async fn rate_limit(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]));
    let ip = state.proxies.client_ip(peer, req.headers());
    match state.limiter.check(&client_ip::rate_limit_key(ip)).await {
        Ok(d) if !d.allowed => {
            let route = req
                .extensions()
                .get::<MatchedPath>()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_else(|| "unmatched".into());
            state
                .metrics
                .rate_limited
                .with_label_values(&[route.as_str()])
                .inc();
            tracing::warn!(client_ip = %ip, "превышен лимит запросов");
            let mut resp = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                crate::contract::ErrorCode::RateLimited,
                "too many requests",
            )
            .retry_after(d.retry_after_secs())
            .into_response();
            resp.headers_mut()
                .insert("x-ratelimit-limit", HeaderValue::from(d.limit));
            resp.headers_mut()
                .insert("x-ratelimit-remaining", HeaderValue::from(0));
            resp
        }
        Ok(d) => {
            let mut resp = next.run(req).await;
            resp.headers_mut()
                .insert("x-ratelimit-limit", HeaderValue::from(d.limit));
            resp.headers_mut()
                .insert("x-ratelimit-remaining", HeaderValue::from(d.remaining));
            resp
        }
        Err(e) => {
            // Availability over strictness: a Redis outage must not take the API down.
            tracing::error!(error = %e, "ограничитель запросов недоступен, запрос пропущен");
            next.run(req).await
        }
    }
}

impl crate::Shared {
    /// Count a judged login attempt for the account `email` (trimmed, case-insensitive;
    /// the counter keyed by its SHA-256, so no e-mail sits in Redis): `429` with
    /// `Retry-After` past `LOGIN_ATTEMPTS_PER_ACCOUNT` in the window, from whatever
    /// address. A limiter outage lets the attempt through (the per-address limit and the
    /// password hash's cost still stand).
    pub(crate) async fn login_attempt(&self, email: &str) -> Result<(), ApiError> {
        use sha2::Digest as _;
        let digest = sha2::Sha256::digest(email.trim().to_lowercase().as_bytes());
        let key: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        match self.login_limiter.check(&key).await {
            Ok(d) if !d.allowed => {
                self.metrics
                    .rate_limited
                    .with_label_values(&["/api/v1/auth/login (account)"])
                    .inc();
                tracing::warn!("превышен лимит попыток входа для учётной записи");
                Err(ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    crate::contract::ErrorCode::RateLimited,
                    "too many login attempts for this account; retry later",
                )
                .retry_after(d.retry_after_secs()))
            }
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::error!(error = %e, "ограничитель попыток входа недоступен, попытка пропущена");
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::method_label;

    #[test]
    fn only_standard_methods_name_their_series() {
        for m in [
            "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE",
        ] {
            assert_eq!(method_label(&m.parse().unwrap()), m);
        }
        for m in ["BOGUS", "get", "X-ANYTHING-123"] {
            assert_eq!(method_label(&m.parse().unwrap()), "other", "{m}");
        }
    }
}
