//! `/api/v1/orders*` and `/api/v1/wallet`.

use std::collections::HashMap;

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
    /// `PENDING`, then `CONFIRMED` or `CANCELLED`.
    #[schema(example = "PENDING")]
    status: String,
    /// Where the saga is: `PAYMENT_PENDING`, `COMPLETED`, `COMPENSATING`, `COMPENSATED`…
    #[schema(example = "PAYMENT_PENDING")]
    saga_state: String,
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
    /// Unix seconds.
    created_at: i64,
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

impl From<pb::Order> for OrderBody {
    fn from(o: pb::Order) -> Self {
        let total = o.total.unwrap_or_default();
        Self {
            order_id: o.order_id,
            status: o.status,
            saga_state: o.saga_state,
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
            created_at: o.created_at,
        }
    }
}

/// `POST /api/v1/orders` → `201` with the order (PENDING); an `Idempotency-Key` header
/// makes a retry return the same order.
#[utoipa::path(post, path = "/api/v1/orders", tag = "orders",
    summary = "Place an order (starts its saga; answers at once with PENDING)",
    security(("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header, max_length = 128, pattern = "^[\\x21-\\x7e]+$",
        description = "The same key with the same body returns the same order; with another body it is 422 `idempotency_key_reused`; empty is 422. Case-sensitive.")),
    request_body = CreateBody,
    responses(
        (status = 201, description = "The order, PENDING", body = OrderBody),
        (status = 409, description = "A request with this Idempotency-Key is still being processed", body = crate::error::ErrorBody),
        (status = 504, description = "`outcome_unknown`: the order service took the request but did not answer in time; the order may have been placed. Retry with the same Idempotency-Key (it returns the order if it was); without a key, look at the order list first", body = crate::error::ErrorBody),
    ))]
pub async fn create(
    State(s): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    Extension(claims): Extension<Claims>,
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
        .request(effect, &ctx, msg, |t, req| async move {
            OrderServiceClient::new(t).create_order(req).await
        })
        .await?;
    Ok((StatusCode::CREATED, Json(OrderBody::from(o))).into_response())
}

/// `GET /api/v1/orders/{id}`; `404` for an unknown id or another user's order.
#[utoipa::path(get, path = "/api/v1/orders/{id}", tag = "orders",
    summary = "One of the caller's orders",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The order id")),
    responses(
        (status = 200, description = "The order", body = OrderBody),
        (status = 404, description = "No such order of the caller's", body = crate::error::ErrorBody),
    ))]
pub async fn get(
    State(s): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    Extension(claims): Extension<Claims>,
    PathParam(id): PathParam<String>,
) -> Result<Json<OrderBody>, ApiError> {
    let msg = pb::GetOrderRequest {
        user_id: claims.sub,
        order_id: id,
    };
    let o = s
        .orders
        .request(Effect::Read, &ctx, msg, |t, req| async move {
            OrderServiceClient::new(t).get_order(req).await
        })
        .await?;
    Ok(Json(o.into()))
}

/// Page of orders.
#[derive(Debug, Serialize, ToSchema)]
pub struct Page {
    orders: Vec<OrderBody>,
    /// Pass as `cursor` for the next page; null on the last.
    next_cursor: Option<String>,
}

/// `GET /api/v1/orders?limit=&cursor=`: own orders, newest first.
#[utoipa::path(get, path = "/api/v1/orders", tag = "orders",
    summary = "The caller's orders, newest first",
    security(("bearer" = [])),
    params(
        ("limit" = Option<String>, Query, pattern = "^(100|[1-9][0-9]?)?$",
            description = "Page size, an integer from 1 to 100; absent or empty: 20"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
    ),
    responses((status = 200, description = "A page of orders", body = Page)))]
pub async fn list(
    State(s): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    Extension(claims): Extension<Claims>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Page>, ApiError> {
    let limit = match q.get("limit").map(String::as_str) {
        // `?limit=` (empty) is no limit given: the default.
        None | Some("") => 20,
        Some(l) => l
            .parse::<u32>()
            .ok()
            .filter(|l| (1..=100).contains(l))
            .ok_or_else(|| ApiError::validation("limit must be an integer between 1 and 100"))?,
    };
    let cursor = q.get("cursor").cloned().unwrap_or_default();
    let msg = pb::ListOrdersRequest {
        user_id: claims.sub,
        limit,
        cursor,
    };
    let r = s
        .orders
        .request(Effect::Read, &ctx, msg, |t, req| async move {
            OrderServiceClient::new(t).list_orders(req).await
        })
        .await?;
    Ok(Json(Page {
        orders: r.orders.into_iter().map(Into::into).collect(),
        next_cursor: non_empty(r.next_cursor),
    }))
}

/// `POST /api/v1/orders/{id}/cancel` → `202`; `409` if already cancelled.
#[utoipa::path(post, path = "/api/v1/orders/{id}/cancel", tag = "orders",
    summary = "Cancel an order (a debit is refunded)",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The order id")),
    responses(
        (status = 202, description = "Cancellation accepted; the order ends CANCELLED", body = OrderBody),
        (status = 404, description = "No such order of the caller's", body = crate::error::ErrorBody),
        (status = 409, description = "Already cancelled", body = crate::error::ErrorBody),
        (status = 504, description = "`outcome_unknown`: the order service took the cancellation but did not answer in time; it may have been applied. Look at the order before retrying (a retry of an applied cancel is 409)", body = crate::error::ErrorBody),
    ))]
pub async fn cancel(
    State(s): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    Extension(claims): Extension<Claims>,
    PathParam(id): PathParam<String>,
) -> Result<Response, ApiError> {
    let msg = pb::CancelOrderRequest {
        user_id: claims.sub,
        order_id: id,
    };
    let o = s
        .orders
        .request(Effect::Once, &ctx, msg, |t, req| async move {
            OrderServiceClient::new(t).cancel_order(req).await
        })
        .await?;
    Ok((StatusCode::ACCEPTED, Json(OrderBody::from(o))).into_response())
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
) -> Result<Json<WalletBody>, ApiError> {
    let msg = pay::GetWalletRequest {
        user_id: claims.sub,
    };
    let w = s
        .payments
        .request(Effect::Read, &ctx, msg, |t, req| async move {
            PaymentServiceClient::new(t).get_wallet(req).await
        })
        .await?;
    let b = w.balance.unwrap_or_default();
    Ok(Json(WalletBody {
        balance: b.amount_minor,
        currency: b.currency,
    }))
}
