//! A tower layer (works with axum) that authenticates `Authorization: Bearer <jwt>`.
//!
//! On success the request gets the [`Claims`](crate::Claims) and the raw [`BearerToken`] in its
//! extensions (axum: `Extension<Claims>`). On failure the inner service is not called
//! and the response is `401` (or `503` when the blacklist is down and the policy is
//! fail-closed) with a JSON body
//! `{"error":{"code","message","correlation_id"}}` and `WWW-Authenticate: Bearer`.
//!
//! ```
//! use std::sync::Arc;
//! use authz::{layer::AuthLayer, Authenticator, Claims, MemoryBlacklist, SigningKey, TokenValidator};
//! use axum::{routing::get, Extension, Router};
//!
//! let key = SigningKey::hs256(b"an-example-secret-of-at-least-32-bytes!").unwrap();
//! let auth = Authenticator::new(
//!     TokenValidator::new(key.verifying_key(), "ordersys", "ordersys-api"),
//!     Arc::new(MemoryBlacklist::new()),
//! );
//! let app: Router = Router::new()
//!     .route("/me", get(|Extension(claims): Extension<Claims>| async move { claims.sub }))
//!     .layer(AuthLayer::new(auth));
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{header, HeaderValue, Request, Response, StatusCode};
use tower::{Layer, Service};

use crate::{Authenticator, Error};

/// The header that carries the correlation id echoed in error bodies.
pub const CORRELATION_HEADER: &str = "x-correlation-id";

/// The raw bearer token of an authenticated request (for logout or forwarding).
#[derive(Clone, PartialEq, Eq)]
pub struct BearerToken(pub String);

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

/// Layer that authenticates requests with an [`Authenticator`].
#[derive(Debug, Clone)]
pub struct AuthLayer {
    auth: Arc<Authenticator>,
}

impl AuthLayer {
    /// Authenticate every request with `auth`.
    pub fn new(auth: Authenticator) -> Self {
        Self {
            auth: Arc::new(auth),
        }
    }

    /// Share an existing authenticator.
    pub fn from_arc(auth: Arc<Authenticator>) -> Self {
        Self { auth }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            auth: self.auth.clone(),
        }
    }
}

/// Service made by [`AuthLayer`].
#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Arc<Authenticator>,
}

/// Extract the token from an `Authorization: Bearer <token>` header value.
pub fn bearer_token(value: Option<&HeaderValue>) -> Result<&str, Error> {
    let value = value.ok_or(Error::MissingToken)?;
    let s = value
        .to_str()
        .map_err(|_| Error::Malformed("authorization header is not ASCII".into()))?;
    let (scheme, token) = s.split_once(' ').ok_or(Error::MissingToken)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(Error::MissingToken);
    }
    Ok(token.trim())
}

/// Build the JSON error response for an authentication failure.
pub fn error_response<B: From<String>>(err: &Error, correlation_id: Option<&str>) -> Response<B> {
    let status = if err.is_unauthorized() {
        StatusCode::UNAUTHORIZED
    } else if matches!(err, Error::BlacklistUnavailable(_)) {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    let message = if err.is_unauthorized() {
        err.to_string()
    } else {
        // Do not leak backend details to clients.
        "authentication is temporarily unavailable".to_owned()
    };
    let body = serde_json::json!({
        "error": {
            "code": err.code(),
            "message": message,
            "correlation_id": correlation_id,
        }
    });
    let mut resp = Response::new(B::from(body.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    resp
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for AuthService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: From<String> + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let auth = self.auth.clone();
        Box::pin(async move {
            let token = bearer_token(req.headers().get(header::AUTHORIZATION)).map(str::to_owned);
            let result = match token {
                Ok(token) => auth.authenticate(&token).await.map(|c| (c, token)),
                Err(e) => Err(e),
            };
            match result {
                Ok((claims, token)) => {
                    req.extensions_mut().insert(claims);
                    req.extensions_mut().insert(BearerToken(token));
                    inner.call(req).await
                }
                Err(err) => {
                    let cid = req
                        .headers()
                        .get(CORRELATION_HEADER)
                        .and_then(|v| v.to_str().ok());
                    Ok(error_response(&err, cid))
                }
            }
        })
    }
}
