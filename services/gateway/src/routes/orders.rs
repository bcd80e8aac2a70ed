//! `/api/v1/orders*` and `/api/v1/wallet`.

use authz::layer::BearerToken;
use authz::Claims;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use ordersys_kit::context::RequestContext;
use ordersys_proto::order::v1 as pb;
use ordersys_proto::order::v1::order_service_client::OrderServiceClient;
use ordersys_proto::payment::v1 as pay;
use ordersys_proto::payment::v1::payment_service_client::PaymentServiceClient;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::balance::Effect;
use crate::contract::{timestamp, OrderStatus, SagaState};
use crate::error::{ApiError, JsonBody, PathParam};
use crate::AppState;

/// One line of an order, in and out.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ItemBody {
    /// 1 to 64 characters.
    #[schema(example = "sku-1", min_length = 1, max_length = 64)]
    product_id: String,
    /// At least 1.
    #[schema(example = 2, minimum = 1)]
    quantity: i32,
    /// Minor units of the order's currency (cents), at least 1; the order's total must
    /// fit in 64 bits.
    #[schema(example = 1250, minimum = 1)]
    unit_price: i64,
}

/// `POST /api/v1/orders` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateBody {
    /// 1 to 100 lines.
    #[schema(min_items = 1, max_items = 100)]
    items: Vec<ItemBody>,
    /// An ISO 4217 code the wallets hold (`ACCEPTED_CURRENCIES`, default `USD`);
    /// another is 422.
    #[schema(example = "USD", pattern = "^[A-Z]{3}$")]
    currency: String,
}

/// An order as the REST API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrderBody {
    /// A UUID.
    order_id: String,
    status: OrderStatus,
    saga_state: SagaState,
    /// The sum of the lines, in minor units.
    total_amount: i64,
    currency: String,
    items: Vec<ItemBody>,
    /// Set once the payment went through.
    #[serde(skip_serializing_if = "Option::is_none")]
    payment_id: Option<String>,
    /// Why the order was cancelled, when it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    failure_reason: Option<String>,
    /// When the order was placed: RFC 3339, UTC, milliseconds
    /// (`2026-12-04T18:40:35.123Z`).
    #[schema(format = DateTime, example = "2026-12-04T18:40:35.123Z")]
    created_at: String,
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

impl TryFrom<pb::Order> for OrderBody {
    type Error = ApiError;

    /// An order status outside the closed set is the order service's bug: 500, logged
    /// (a saga state this gateway does not know is shown as `UNKNOWN`).
    fn try_from(o: pb::Order) -> Result<Self, ApiError> {
        let Some(status) = OrderStatus::parse(&o.status) else {
            tracing::error!(order_id = %o.order_id, status = %o.status, "неизвестный статус заказа");
            return Err(ApiError::internal());
        };
        let saga_state = SagaState::parse(&o.saga_state).unwrap_or(SagaState::Unknown);
        let total = o.total.unwrap_or_default();
        Ok(Self {
            order_id: o.order_id,
            status,
            saga_state,
            total_amount: total.amount_minor,
            currency: total.currency,
            items: o
                .items
                .into_iter()
                .map(|i| ItemBody {
                    product_id: i.product_id,
                    quantity: i.quantity,
                    unit_price: i.unit_price,
                })
                .collect(),
            payment_id: non_empty(o.payment_id),
            failure_reason: non_empty(o.failure_reason),
            created_at: timestamp(o.created_at),
        })
    }
}

/// `POST /api/v1/orders` → `201` with the order (PENDING); an `Idempotency-Key` header
/// makes a retry return the same order.
#[utoipa::path(post, path = "/api/v1/orders", tag = "orders",
    summary = "Place an order (starts its saga; answers at once with PENDING)",
    security(("bearer" = [])),
    params(("Idempotency-Key" = String, Header, max_length = 128, min_length = 1, pattern = "^[\\x21-\\x7e]+$",
        description = "The same key with the same body returns the same order; with another body it is 422 `idempotency_key_reused`; empty is 422. Case-sensitive.")),
    request_body = CreateBody,
    responses(
        (status = 201, description = "The order, PENDING", body = OrderBody),
        (status = 409, description = "The order service refused the order as conflicting. Concurrent requests with one Idempotency-Key are not a conflict: they wait for the first and all answer 201 with the same order", body = crate::error::ErrorBody),
        (status = 504, description = "`outcome_unknown`: the order service took the request but did not answer in time; the order may have been placed. Retry with the same Idempotency-Key (it returns the order if it was); without a key, look at the order list first", body = crate::error::ErrorBody),
    ))]
pub async fn create(
    State(s): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    Extension(claims): Extension<Claims>,
    Extension(token): Extension<BearerToken>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<CreateBody>,
) -> Result<Response, ApiError> {
    let key = match headers.get("idempotency-key") {
        Some(v) => {
            let k = v
                .to_str()
                .map_err(|_| ApiError::validation("Idempotency-Key must be printable ASCII"))?;
            if k.is_empty() {
                // Sent but empty is a client bug, not "no key": it would silently turn
                // off the protection against placing an order twice.
                return Err(ApiError::validation("Idempotency-Key must not be empty"));
            }
            k.to_owned()
        }
        None => String::new(),
    };
    let msg = pb::CreateOrderRequest {
        user_id: claims.sub,
        items: body
            .items
            .into_iter()
            .map(|i| pb::OrderItem {
                product_id: i.product_id,
                quantity: i.quantity,
                unit_price: i.unit_price,
            })
            .collect(),
        currency: body.currency,
        idempotency_key: key,
    };
    let effect = if msg.idempotency_key.is_empty() {
        Effect::Once
    } else {
        Effect::Idempotent
    };
    let o = s
        .orders
        .request(effect, &ctx, Some(&token), msg, |t, req| async move {
            OrderServiceClient::new(t).create_order(req).await
        })
        .await?;
    Ok((StatusCode::CREATED, Json(OrderBody::try_from(o)?)).into_response())
}

/// `GET /api/v1/orders/{id}?wait=`; `404` for an unknown id or another user's order.
#[utoipa::path(get, path = "/api/v1/orders/{id}", tag = "orders",
    summary = "One of the caller's orders — at once, or once it is no longer PENDING",
    security(("bearer" = [])),
    params(
        ("id" = String, Path, description = "The order id"),
        ("wait" = Option<String>, Query, pattern = "^[0-9]{1,5}(ms|s)?$", example = "5s",
            description = "Wait up to this long (`5s`, `1500ms`, or seconds: `5`; at most 30 s — with a request timeout of 30 s, the gateway's default, 28 s are waited) for the order to leave PENDING, and answer as soon as it does — instead of polling. Absent or 0: answer at once. The answer after the wait is the order as it then is (perhaps still PENDING). At most once"),
    ),
    responses(
        (status = 200, description = "The order", body = OrderBody),
        (status = 404, description = "No such order of the caller's", body = crate::error::ErrorBody),
        (status = 422, description = "`wait` is not a duration of at most 30 s, or given twice", body = crate::error::ErrorBody),
    ))]
pub async fn get(
    State(s): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    Extension(claims): Extension<Claims>,
    Extension(token): Extension<BearerToken>,
    PathParam(id): PathParam<String>,
    Query(q): Query<Vec<(String, String)>>,
) -> Result<Json<OrderBody>, ApiError> {
    let deadline = tokio::time::Instant::now() + wait_param(&q)?.min(s.longest_wait);
    loop {
        // The order service holds each call until the order changes or the slice ends:
        // a long wait is a few such calls, each within the downstream deadline.
        let started = tokio::time::Instant::now();
        let slice = deadline
            .saturating_duration_since(started)
            .min(s.wait_slice);
        let msg = pb::GetOrderRequest {
            user_id: claims.sub.clone(),
            order_id: id.clone(),
            wait_ms: u32::try_from(slice.as_millis()).unwrap_or(u32::MAX),
        };
        let o = s
            .orders
            .request(Effect::Read, &ctx, Some(&token), msg, |t, req| async move {
                OrderServiceClient::new(t).get_order(req).await
            })
            .await?;
        if o.status != "PENDING" || tokio::time::Instant::now() >= deadline {
            return Ok(Json(o.try_into()?));
        }
        // Still PENDING before the slice ended: a service that does not wait (an older
        // version, mid-rollout) — ask again when the slice is over, not at once.
        tokio::time::sleep_until(started + slice).await;
    }
}

/// The longest `wait` of `GET /api/v1/orders/{id}`.
pub const MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// `wait` of `GET /api/v1/orders/{id}`: `5s`, `1500ms` or `5` (seconds), at most
/// [`MAX_WAIT`], at most once; absent: zero.
fn wait_param(q: &[(String, String)]) -> Result<std::time::Duration, ApiError> {
    use std::time::Duration;
    let mut values = q
        .iter()
        .filter(|(k, _)| k == "wait")
        .map(|(_, v)| v.as_str());
    let (Some(v), None) = (values.next(), values.next()) else {
        return if q.iter().any(|(k, _)| k == "wait") {
            Err(ApiError::validation("wait given more than once"))
        } else {
            Ok(Duration::ZERO)
        };
    };
    let (digits, unit) = match v.strip_suffix("ms") {
        Some(d) => (d, Duration::from_millis(1)),
        None => (v.strip_suffix('s').unwrap_or(v), Duration::from_secs(1)),
    };
    digits
        .parse::<u32>()
        .ok()
        .filter(|_| {
            !digits.is_empty() && digits.len() <= 5 && digits.bytes().all(|b| b.is_ascii_digit())
        })
        .map(|n| unit * n)
        .filter(|d| *d <= MAX_WAIT)
        .ok_or_else(|| {
            ApiError::validation("wait must be a duration of at most 30s, e.g. 5s or 1500ms")
        })
}

/// Page of orders.
#[derive(Debug, Serialize, ToSchema)]
pub struct Page {
    orders: Vec<OrderBody>,
    /// Pass as `cursor` for the next page; null on the last (always sent).
    #[schema(required = true)]
    next_cursor: Option<String>,
}

/// `GET /api/v1/orders?limit=&cursor=`: own orders, newest first.
#[utoipa::path(get, path = "/api/v1/orders", tag = "orders",
    summary = "The caller's orders, newest first",
    security(("bearer" = [])),
    params(
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100,
            description = "Page size, from 1 to 100; absent: 20. Each parameter at most once"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
    ),
    responses((status = 200, description = "A page of orders", body = Page)))]
pub async fn list(
    State(s): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    Extension(claims): Extension<Claims>,
    Extension(token): Extension<BearerToken>,
    Query(q): Query<Vec<(String, String)>>,
) -> Result<Json<Page>, ApiError> {
    let (limit, cursor) = page_params(&q)?;
    let msg = pb::ListOrdersRequest {
        user_id: claims.sub,
        limit,
        cursor,
    };
    let r = s
        .orders
        .request(Effect::Read, &ctx, Some(&token), msg, |t, req| async move {
            OrderServiceClient::new(t).list_orders(req).await
        })
        .await?;
    Ok(Json(Page {
        orders: r
            .orders
            .into_iter()
            .map(OrderBody::try_from)
            .collect::<Result<_, _>>()?,
        next_cursor: non_empty(r.next_cursor),
    }))
}

/// `limit` (1–100, default 20) and `cursor` of a list request, each at most once; a
/// parameter given twice, an empty or non-integer `limit` is 422 (the document types
/// `limit` as an integer: what it declares invalid is refused, never guessed at).
fn page_params(q: &[(String, String)]) -> Result<(u32, String), ApiError> {
    let one = |name: &str| -> Result<Option<&str>, ApiError> {
        let mut values = q.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str());
        let first = values.next();
        if values.next().is_some() {
            return Err(ApiError::validation(format!("{name} given more than once")));
        }
        Ok(first)
    };
    let limit = match one("limit")? {
        None => 20,
        Some(l) => l
            .parse::<u32>()
            .ok()
            .filter(|l| (1..=100).contains(l))
            .ok_or_else(|| ApiError::validation("limit must be an integer between 1 and 100"))?,
    };
    Ok((limit, one("cursor")?.unwrap_or_default().to_owned()))
}

/// `POST /api/v1/orders/{id}/cancel` → `202`; `409` if already cancelled.
#[utoipa::path(post, path = "/api/v1/orders/{id}/cancel", tag = "orders",
    summary = "Cancel an order (a debit is refunded)",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The order id")),
    responses(
        (status = 202, description = "Cancellation accepted; the order ends CANCELLED (refunded if it was paid). The body is the order as it was when the cancellation was accepted — still CONFIRMED/COMPLETED, or PENDING/COMPENSATING — not after it: GET the order to see it CANCELLED", body = OrderBody),
        (status = 404, description = "No such order of the caller's", body = crate::error::ErrorBody),
        (status = 409, description = "Already cancelled", body = crate::error::ErrorBody),
        (status = 504, description = "`outcome_unknown`: the order service took the cancellation but did not answer in time; it may have been applied. Look at the order before retrying (a retry of an applied cancel is 409)", body = crate::error::ErrorBody),
    ))]
pub async fn cancel(
    State(s): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    Extension(claims): Extension<Claims>,
    Extension(token): Extension<BearerToken>,
    PathParam(id): PathParam<String>,
) -> Result<Response, ApiError> {
    let msg = pb::CancelOrderRequest {
        user_id: claims.sub,
        order_id: id,
    };
    let o = s
        .orders
        .request(Effect::Once, &ctx, Some(&token), msg, |t, req| async move {
            OrderServiceClient::new(t).cancel_order(req).await
        })
        .await?;
    Ok((StatusCode::ACCEPTED, Json(OrderBody::try_from(o)?)).into_response())
}

/// Wallet body.
#[derive(Debug, Serialize, ToSchema)]
pub struct WalletBody {
    /// Minor units.
    balance: i64,
    currency: String,
}

/// `GET /api/v1/wallet`: the user's payment account.
#[utoipa::path(get, path = "/api/v1/wallet", tag = "orders",
    summary = "The caller's payment account",
    security(("bearer" = [])),
    responses((status = 200, description = "The wallet", body = WalletBody)))]
pub async fn wallet(
    State(s): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    Extension(claims): Extension<Claims>,
    Extension(token): Extension<BearerToken>,
) -> Result<Json<WalletBody>, ApiError> {
    let msg = pay::GetWalletRequest {
        user_id: claims.sub,
    };
    let w = s
        .payments
        .request(Effect::Read, &ctx, Some(&token), msg, |t, req| async move {
            PaymentServiceClient::new(t).get_wallet(req).await
        })
        .await?;
    let b = w.balance.unwrap_or_default();
    Ok(Json(WalletBody {
        balance: b.amount_minor,
        currency: b.currency,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn wait(q: &[(&str, &str)]) -> Result<Duration, u16> {
        let q: Vec<(String, String)> = q
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        wait_param(&q).map_err(|e| e.into_response().status().as_u16())
    }

    #[test]
    fn a_wait_is_seconds_or_milliseconds_up_to_thirty_seconds() {
        assert_eq!(wait(&[]), Ok(Duration::ZERO));
        assert_eq!(wait(&[("wait", "5s")]), Ok(Duration::from_secs(5)));
        assert_eq!(wait(&[("wait", "5")]), Ok(Duration::from_secs(5)));
        assert_eq!(wait(&[("wait", "1500ms")]), Ok(Duration::from_millis(1500)));
        assert_eq!(wait(&[("wait", "30s")]), Ok(MAX_WAIT));
        assert_eq!(wait(&[("wait", "0")]), Ok(Duration::ZERO));
        for bad in [
            "31s",
            "30001ms",
            "",
            "s",
            "ms",
            "-1",
            "+5",
            "5m",
            "1.5s",
            "999999999s",
        ] {
            assert_eq!(wait(&[("wait", bad)]), Err(422), "{bad:?}");
        }
        assert_eq!(wait(&[("wait", "1s"), ("wait", "1s")]), Err(422));
    }
}
