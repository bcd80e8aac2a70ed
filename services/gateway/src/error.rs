//! The public error shape, `{"error":{"code","message","correlation_id"}}`, and the
//! JSON body extractor that turns malformed input into 400/413/422 in that shape.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ordersys_kit::context::RequestContext;
use serde::de::DeserializeOwned;
use serde::Serialize;
use utoipa::ToSchema;

pub use crate::contract::ErrorCode;

/// An error answered to a REST client.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: ErrorCode,
    /// Human-readable message.
    pub message: String,
    /// `Retry-After` seconds, for 429 and 503.
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error with a status, code and message.
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// Add `Retry-After`.
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs.max(1));
        self
    }

    /// 400.
    pub fn bad_request(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, msg)
    }
    /// 401.
    pub fn unauthorized(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, msg)
    }
    /// 404.
    pub fn not_found(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, msg)
    }
    /// 409.
    pub fn conflict(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, ErrorCode::Conflict, msg)
    }
    /// 422.
    pub fn validation(msg: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::ValidationFailed,
            msg,
        )
    }
    /// 503.
    pub fn unavailable(msg: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::ServiceUnavailable,
            msg,
        )
    }
    /// 500.
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            "internal error",
        )
    }

    fn body(&self, correlation_id: Option<&str>) -> String {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message.clone(),
                correlation_id: correlation_id.map(str::to_owned),
            },
        };
        serde_json::to_string(&body).expect("an error body always serialises")
    }
}

/// Every error: `{"error":{"code","message","correlation_id"}}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The inside of [`ErrorBody`].
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable and machine-readable; one of a closed set.
    pub code: ErrorCode,
    /// For people; may change.
    pub message: String,
    /// The request's correlation id (also the `x-correlation-id` response header); null
    /// only where none could be established.
    #[schema(required = true)]
    pub correlation_id: Option<String>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (
            self.status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            self.body(None),
        )
            .into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        // The correlation id is filled in by `with_correlation_id`, which sees the request.
        resp.extensions_mut().insert(self);
        resp
    }
}

/// Middleware: rewrite [`ApiError`] bodies to carry the request's correlation id.
pub async fn with_correlation_id(req: Request, next: Next) -> Response {
    let cid = req
        .extensions()
        .get::<RequestContext>()
        .map(|c| c.correlation_id.clone());
    let mut resp = next.run(req).await;
    if let Some(err) = resp.extensions_mut().remove::<ApiError>() {
        let (mut parts, _) = resp.into_parts();
        parts.headers.remove(header::CONTENT_LENGTH);
        return Response::from_parts(parts, axum::body::Body::from(err.body(cid.as_deref())));
    }
    resp
}

/// `Json<T>` whose rejections are [`ApiError`]s: 400 for malformed JSON or a wrong
/// content type, 413 for a body over the limit, 422 for well-formed JSON of the wrong
/// shape (missing fields, wrong types).
#[derive(Debug, Clone)]
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Self(v)),
            Err(rejection) => Err(match &rejection {
                _ if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    ErrorCode::PayloadTooLarge,
                    "request body is too large",
                ),
                JsonRejection::JsonDataError(e) => ApiError::validation(e.body_text()),
                JsonRejection::JsonSyntaxError(_) => ApiError::bad_request("malformed JSON body"),
                JsonRejection::MissingJsonContentType(_) => {
                    ApiError::bad_request("expected Content-Type: application/json")
                }
                _ => ApiError::bad_request("could not read the request body"),
            }),
        }
    }
}

/// `axum::extract::Path`, whose rejections (a segment that is not valid percent-encoded
/// UTF-8, like `%FF`) are the JSON error shape instead of text.
#[derive(Debug)]
pub struct PathParam<T>(pub T);

impl<S, T> axum::extract::FromRequestParts<S> for PathParam<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Self(v)),
            Err(rejection) => Err(ApiError::bad_request(format!(
                "malformed path: {}",
                rejection.body_text()
            ))),
        }
    }
}
