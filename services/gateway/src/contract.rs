//! The closed sets of values the REST API sends — order status, saga state, error code.
//! Each is one enum here: the server serialises it and the OpenAPI document's `enum`
//! is generated from it, so the two cannot disagree.

use serde::Serialize;
use utoipa::ToSchema;

/// Declares a closed set: the enum (serialised as the given strings, and so documented),
/// `ALL`, `as_str` and `parse`.
macro_rules! closed_set {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:tt,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, ToSchema)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant,)+
        }

        impl $name {
            /// Every value, in the document's order.
            pub const ALL: &'static [Self] = &[$(Self::$variant,)+];

            /// The value as sent.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)+
                }
            }

            /// The value sent as `s`, if it is one.
            pub fn parse(s: &str) -> Option<Self> {
                match s {
                    $($text => Some(Self::$variant),)+
                    _ => None,
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

closed_set! {
    /// An order's status: `PENDING` until its saga ends, then `CONFIRMED` (paid) or
    /// `CANCELLED` (payment refused or timed out, or cancelled; any debit refunded).
    OrderStatus {
        /// Placed; payment in progress.
        Pending = "PENDING",
        /// Paid. Terminal unless cancelled.
        Confirmed = "CONFIRMED",
        /// Cancelled. Terminal.
        Cancelled = "CANCELLED",
    }
}

closed_set! {
    /// Where the order's saga stands. A placed order shows `PAYMENT_PENDING` until the
    /// payment answers, then `COMPLETED` (confirmed) or `COMPENSATING` → `FAILED`
    /// (cancelled, compensation done). A cancelled confirmed order keeps `COMPLETED`
    /// (the refund is a saga of its own). `UNKNOWN`: the state could not be read (or
    /// is one this gateway does not know — a newer order service).
    SagaState {
        /// Created; no step dispatched yet.
        Started = "STARTED",
        /// The order row is being written (a local step; rarely seen).
        CreateOrderPending = "CREATE_ORDER_PENDING",
        /// The debit was requested; waiting for the payment service.
        PaymentPending = "PAYMENT_PENDING",
        /// The confirmation is being written (a local step; rarely seen).
        ConfirmOrderPending = "CONFIRM_ORDER_PENDING",
        /// A step is running.
        Running = "RUNNING",
        /// Every step succeeded.
        Completed = "COMPLETED",
        /// Undoing what was done (refund, cancellation).
        Compensating = "COMPENSATING",
        /// Compensated: the order is cancelled and nothing is left charged.
        Failed = "FAILED",
        /// Not readable, or not known to this gateway.
        Unknown = "UNKNOWN",
    }
}

closed_set! {
    /// How to send the token: always `Bearer` (`Authorization: Bearer <token>`).
    TokenType {
        /// RFC 6750.
        Bearer = "Bearer",
    }
}

closed_set! {
    /// The machine-readable `error.code` of every error response.
    ErrorCode {
        /// 400: malformed JSON, wrong content type, undecodable path.
        BadRequest = "bad_request",
        /// 401: wrong e-mail or password (login), or a service refused the caller.
        Unauthorized = "unauthorized",
        /// 401: no `Authorization: Bearer` token.
        MissingToken = "missing_token",
        /// 401: the token is malformed, wrongly signed, or not yet valid.
        InvalidToken = "invalid_token",
        /// 401: the token has expired.
        TokenExpired = "token_expired",
        /// 401: the token was revoked (logged out).
        TokenRevoked = "token_revoked",
        /// 403: the token lacks a scope the operation needs.
        InsufficientScope = "insufficient_scope",
        /// 403: not allowed.
        Forbidden = "forbidden",
        /// 404: no such resource (or not the caller's).
        NotFound = "not_found",
        /// 405: the path exists, the method does not (`Allow` lists those that do).
        MethodNotAllowed = "method_not_allowed",
        /// 409: the request conflicts with the resource's state.
        Conflict = "conflict",
        /// 413: the body is too large.
        PayloadTooLarge = "payload_too_large",
        /// 422: well-formed but invalid input.
        ValidationFailed = "validation_failed",
        /// 422: the `Idempotency-Key` was used with another body.
        IdempotencyKeyReused = "idempotency_key_reused",
        /// 429: rate limited (`Retry-After`).
        RateLimited = "rate_limited",
        /// 431: the request's headers are too large.
        RequestHeaderFieldsTooLarge = "request_header_fields_too_large",
        /// 408: the request took too long.
        RequestTimeout = "request_timeout",
        /// 500: an unexpected error (logged with the correlation id).
        Internal = "internal",
        /// 503: a service behind the gateway is busy (`Retry-After`).
        Overloaded = "overloaded",
        /// 503: a service behind the gateway is unavailable (`Retry-After`).
        ServiceUnavailable = "service_unavailable",
        /// 504: a read got no answer in time (retry).
        UpstreamTimeout = "upstream_timeout",
        /// 504: a change got no answer in time and may have been applied.
        OutcomeUnknown = "outcome_unknown",
    }
}

impl PartialEq<&str> for ErrorCode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// A timestamp as the API sends it: RFC 3339 in UTC with milliseconds
/// (`2026-12-04T18:40:35.123Z`), from Unix milliseconds.
pub fn timestamp(unix_ms: i64) -> String {
    ordersys_kit::rfc3339_millis(unix_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every code the SDK's bearer-token layer answers with is one of ours.
    #[test]
    fn every_authentication_error_code_is_declared() {
        use authz::Error as E;
        let errors = [
            E::MissingToken,
            E::Malformed("x".into()),
            E::InvalidSignature,
            E::InvalidAlgorithm,
            E::InvalidIssuer,
            E::InvalidAudience,
            E::Expired,
            E::NotYetValid,
            E::Revoked,
            E::blacklist("down"),
            E::InsufficientScope("admin".into()),
            E::InvalidKey("k".into()),
        ];
        for e in errors {
            assert!(ErrorCode::parse(e.code()).is_some(), "{}", e.code());
        }
    }

    #[test]
    fn values_round_trip_and_serialise_as_documented() {
        for s in SagaState::ALL {
            assert_eq!(SagaState::parse(s.as_str()), Some(*s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        for s in OrderStatus::ALL {
            assert_eq!(OrderStatus::parse(s.as_str()), Some(*s));
        }
        for c in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(c.as_str()), Some(*c));
            assert_eq!(serde_json::to_value(c).unwrap(), c.as_str());
        }
        assert_eq!(OrderStatus::parse("CONFIRMD"), None);
        assert_eq!(ErrorCode::OutcomeUnknown, "outcome_unknown");
    }

    /// The order service's own labels (its saga definition's step names) are all known.
    #[test]
    fn the_order_sagas_labels_are_declared() {
        for status in ["STARTED", "RUNNING", "COMPLETED", "COMPENSATING", "FAILED"] {
            assert!(SagaState::parse(status).is_some(), "{status}");
        }
        for step in ["create_order", "payment", "confirm_order"] {
            let label = format!("{}_PENDING", step.to_uppercase());
            assert!(SagaState::parse(&label).is_some(), "{label}");
        }
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_milliseconds() {
        assert_eq!(timestamp(1_796_216_979_782), "2026-12-02T13:09:39.782Z");
        assert_eq!(timestamp(0), "1970-01-01T00:00:00.000Z");
    }
}
