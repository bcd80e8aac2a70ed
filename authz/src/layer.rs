//! A tower layer (works with axum) that authenticates `Authorization: Bearer <jwt>`.
//!
//! On success the request gets the [`Claims`](crate::Claims) and the raw [`BearerToken`] in its
//! extensions (axum: `Extension<Claims>`). On failure the inner service is not called
//! and the response is `401` (`403` for a valid token without a scope the layer
//! requires, `503` when the blacklist is down and the policy is fail-closed) with a JSON
//! body `{"error":{"code","message","correlation_id"}}` and an RFC 6750
//! `WWW-Authenticate` challenge ([`www_authenticate`]) — or whatever [`AuthLayer::with_error_response`] makes instead.
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

/// Turns an authentication failure into the response the client gets: the error and
/// the request's headers in, a response with a `String` body out (converted into the
/// service's body type). See [`AuthLayer::with_error_response`].
pub type ErrorResponder = Arc<dyn Fn(&Error, &http::HeaderMap) -> Response<String> + Send + Sync>;

/// Layer that authenticates requests with an [`Authenticator`] and, optionally,
/// requires scopes ([`require_scope`](Self::require_scope)).
///
/// The failure response is [`error_response`]'s JSON shape unless replaced:
///
/// ```
/// use std::sync::Arc;
/// use authz::{layer::AuthLayer, Authenticator, MemoryBlacklist, SigningKey, TokenValidator};
/// use http::{Response, StatusCode};
///
/// let key = SigningKey::hs256(b"an-example-secret-of-at-least-32-bytes!").unwrap();
/// let auth = Authenticator::new(
///     TokenValidator::new(key.verifying_key(), "ordersys", "ordersys-api"),
///     Arc::new(MemoryBlacklist::new()),
/// );
/// let layer = AuthLayer::new(auth)
///     .require_scope("orders:write")
///     .with_error_response(|err, _headers| {
///         // RFC 9457 problem details instead of the default shape.
///         let status = match err {
///             authz::Error::InsufficientScope(_) => StatusCode::FORBIDDEN,
///             e if e.is_unauthorized() => StatusCode::UNAUTHORIZED,
///             _ => StatusCode::SERVICE_UNAVAILABLE,
///         };
///         let body = format!(r#"{{"type":"about:blank","title":"{}","status":{}}}"#, err.code(), status.as_u16());
///         let mut resp = Response::new(body);
///         *resp.status_mut() = status;
///         resp.headers_mut().insert("content-type", "application/problem+json".parse().unwrap());
///         resp
///     });
/// # let _ = layer;
/// ```
#[derive(Clone)]
pub struct AuthLayer {
    auth: Arc<Authenticator>,
    scopes: Arc<[String]>,
    on_error: ErrorResponder,
}

impl fmt::Debug for AuthLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthLayer")
            .field("auth", &self.auth)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

fn default_responder() -> ErrorResponder {
    Arc::new(|err, headers| {
        let cid = headers
            .get(CORRELATION_HEADER)
            .and_then(|v| v.to_str().ok());
        error_response(err, cid)
    })
}

impl AuthLayer {
    /// Authenticate every request with `auth`.
    pub fn new(auth: Authenticator) -> Self {
        Self::from_arc(Arc::new(auth))
    }

    /// Share an existing authenticator.
    pub fn from_arc(auth: Arc<Authenticator>) -> Self {
        Self {
            auth,
            scopes: Arc::from([]),
            on_error: default_responder(),
        }
    }

    /// Also require `scope` among the token's [`scopes`](crate::Claims::scopes): a valid
    /// token without it gets `403` ([`Error::InsufficientScope`], `WWW-Authenticate:
    /// Bearer error="insufficient_scope"`). Call again to require several.
    pub fn require_scope(mut self, scope: impl Into<String>) -> Self {
        let mut scopes = self.scopes.to_vec();
        scopes.push(scope.into());
        self.scopes = scopes.into();
        self
    }

    /// Answer failures with `responder` instead of [`error_response`] (another error
    /// shape, a redirect to a login page, ...).
    pub fn with_error_response(
        mut self,
        responder: impl Fn(&Error, &http::HeaderMap) -> Response<String> + Send + Sync + 'static,
    ) -> Self {
        self.on_error = Arc::new(responder);
        self
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            auth: self.auth.clone(),
            scopes: self.scopes.clone(),
            on_error: self.on_error.clone(),
        }
    }
}

/// Service made by [`AuthLayer`].
#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Arc<Authenticator>,
    scopes: Arc<[String]>,
    on_error: ErrorResponder,
}

impl<S: fmt::Debug> fmt::Debug for AuthService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthService")
            .field("inner", &self.inner)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
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

/// The RFC 6750 §3 challenge for a 401: a bare `Bearer` when no token was sent (the
/// RFC asks for no error code then); otherwise `error="invalid_token"` with an
/// `error_description` that tells malformed, expired and revoked apart.
///
/// ```
/// use authz::layer::www_authenticate;
/// assert_eq!(www_authenticate(&authz::Error::MissingToken), "Bearer");
/// assert_eq!(
///     www_authenticate(&authz::Error::Expired),
///     r#"Bearer error="invalid_token", error_description="the token has expired""#
/// );
/// ```
pub fn www_authenticate(err: &Error) -> HeaderValue {
    let description = match err {
        Error::MissingToken => return HeaderValue::from_static("Bearer"),
        Error::Expired => "the token has expired",
        Error::Revoked => "the token has been revoked",
        Error::NotYetValid => "the token is not valid yet",
        Error::Malformed(_) => "the token is malformed",
        _ => "the token is invalid",
    };
    HeaderValue::from_str(&format!(
        r#"Bearer error="invalid_token", error_description="{description}""#
    ))
    .expect("a fixed ASCII challenge")
}

/// Build the JSON error response for an authentication failure.
pub fn error_response<B: From<String>>(err: &Error, correlation_id: Option<&str>) -> Response<B> {
    let status = if err.is_unauthorized() {
        StatusCode::UNAUTHORIZED
    } else if matches!(err, Error::InsufficientScope(_)) {
        StatusCode::FORBIDDEN
    } else if matches!(err, Error::BlacklistUnavailable(_)) {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    let message = if err.is_unauthorized() || status == StatusCode::FORBIDDEN {
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
            .insert(header::WWW_AUTHENTICATE, www_authenticate(err));
    }
    if let Error::InsufficientScope(scope) = err {
        // RFC 6750 §3: the scope the resource needs.
        let value = format!(r#"Bearer error="insufficient_scope", scope="{scope}""#);
        if let Ok(value) = HeaderValue::from_str(&value) {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, value);
        }
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
        let scopes = self.scopes.clone();
        let on_error = self.on_error.clone();
        Box::pin(async move {
            let token = bearer_token(req.headers().get(header::AUTHORIZATION)).map(str::to_owned);
            let result = match token {
                Ok(token) => auth.authenticate(&token).await.map(|c| (c, token)),
                Err(e) => Err(e),
            };
            let result = result.and_then(|(claims, token)| {
                match scopes.iter().find(|s| !claims.has_scope(s)) {
                    Some(missing) => Err(Error::InsufficientScope(missing.clone())),
                    None => Ok((claims, token)),
                }
            });
            match result {
                Ok((claims, token)) => {
                    req.extensions_mut().insert(claims);
                    req.extensions_mut().insert(BearerToken(token));
                    inner.call(req).await
                }
                Err(err) => Ok(on_error(&err, req.headers()).map(ResBody::from)),
            }
        })
    }
}
