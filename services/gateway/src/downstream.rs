//! Requests to the gRPC services (with the request's correlation id and trace context
//! in the metadata) and what their statuses mean for the REST API. How the calls are
//! made — endpoints, breakers, sending again — is [`crate::balance`].

use axum::http::StatusCode;
use ordersys_kit::context::RequestContext;
use tonic::{Code, Status};

use crate::error::ApiError;

/// A gRPC request carrying `x-correlation-id` and `traceparent`, and the end user's
/// access `token` if it acts for one (`authorization`, [`ordersys_kit::end_user`]).
pub fn request<T>(
    ctx: &RequestContext,
    token: Option<&authz::layer::BearerToken>,
    msg: T,
) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Some(token) = token {
        ordersys_kit::end_user::forward(&mut r, &token.0);
    }
    if let Ok(v) = ctx.correlation_id.parse() {
        r.metadata_mut().insert("x-correlation-id", v);
    }
    if let Ok(v) = ctx.traceparent.parse() {
        r.metadata_mut().insert("traceparent", v);
    }
    r
}

/// Whether a status means "the downstream is in trouble" (counts against its breaker),
/// as opposed to a refusal of this particular request. `RESOURCE_EXHAUSTED` is a healthy
/// service shedding load (e.g. more logins than it hashes at once): it does not open the
/// breaker, which would turn away everything else the service still answers.
pub fn is_outage(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Unknown
            | Code::Internal
            | Code::Cancelled
    )
}

/// Map a downstream status to the REST error.
pub fn to_api_error(service: &str, s: &Status) -> ApiError {
    // A precise code named by the service wins over the status code's default.
    if let Some(code) = s
        .metadata()
        .get(ordersys_kit::context::ERROR_CODE)
        .and_then(|v| v.to_str().ok())
    {
        if code == "idempotency_key_reused" {
            return ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                crate::contract::ErrorCode::IdempotencyKeyReused,
                s.message(),
            );
        }
    }
    match s.code() {
        Code::InvalidArgument | Code::OutOfRange => ApiError::validation(s.message()),
        // A state conflict: e.g. cancelling a cancelled order.
        Code::AlreadyExists | Code::FailedPrecondition => ApiError::conflict(s.message()),
        Code::Aborted => ApiError::conflict(s.message()),
        Code::Unauthenticated => ApiError::unauthorized(s.message()),
        Code::PermissionDenied => ApiError::new(
            StatusCode::FORBIDDEN,
            crate::contract::ErrorCode::Forbidden,
            s.message(),
        ),
        Code::NotFound => ApiError::not_found(s.message()),
        Code::ResourceExhausted => {
            tracing::warn!(service, "нижестоящий сервис перегружен");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                crate::contract::ErrorCode::Overloaded,
                format!("{service} service is busy; retry shortly"),
            )
            .retry_after(1)
        }
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => {
            tracing::warn!(service, code = ?s.code(), "нижестоящий сервис недоступен");
            ApiError::unavailable(format!("{service} service is unavailable"))
        }
        _ => {
            tracing::error!(service, code = ?s.code(), detail = s.message(), "ошибка нижестоящего сервиса");
            ApiError::internal()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_shedding_load_is_a_503_with_retry_after_and_not_an_outage() {
        let busy = Status::resource_exhausted("too many logins at once");
        assert!(!is_outage(&busy), "load shedding must not open the breaker");
        let e = to_api_error("user", &busy);
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.code, "overloaded");
        assert_eq!(e.retry_after, Some(1));
        assert!(is_outage(&Status::unavailable("down")));
    }

    #[test]
    fn a_reused_idempotency_key_is_a_422_with_its_own_code() {
        let mut st = Status::failed_precondition("used for a different order");
        st.metadata_mut().insert(
            ordersys_kit::context::ERROR_CODE,
            "idempotency_key_reused".parse().unwrap(),
        );
        let e = to_api_error("order", &st);
        assert_eq!(
            (e.status, e.code.as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused")
        );
        assert!(!is_outage(&st));
        // Without the metadata, the status code's default.
        let plain = to_api_error("order", &Status::failed_precondition("x"));
        assert_eq!(plain.status, StatusCode::CONFLICT);
    }
}
