//! `/api/v1/orders*` and `/api/v1/wallet`.

use std::collections::HashMap;

use authz::Claims;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use ordersys_kit::context::RequestContext;
use ordersys_proto::order::v1 as pb;
use ordersys_proto::payment::v1 as pay;
use serde::{Deserialize, Serialize};

use crate::downstream::{call, request};
use crate::error::{ApiError, JsonBody, PathParam};
use crate::AppState;

/// One line of an order, in and out.
#[derive(Debug, Serialize, Deserialize)]
pub struct ItemBody {
    product_id: String,
    quantity: i32,
    unit_price: i64,
}

/// `POST /api/v1/orders` body.
#[derive(Debug, Deserialize)]
pub struct CreateBody {
    items: Vec<ItemBody>,
    currency: String,
}

/// An order as the REST API shows it.
#[derive(Debug, Serialize)]
pub struct OrderBody {
    order_id: String,
    status: String,
    saga_state: String,
    total_amount: i64,
    currency: String,
    items: Vec<ItemBody>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payment_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    failure_reason: Option<String>,
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
    let mut client = s.orders.clone();
    let o = call(
        "order",
        &s.orders_breaker,
        client.create_order(request(&ctx, msg)),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(OrderBody::from(o))).into_response())
}

/// `GET /api/v1/orders/{id}`; `404` for an unknown id or another user's order.
pub async fn get(
    State(s): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    Extension(claims): Extension<Claims>,
    PathParam(id): PathParam<String>,
) -> Result<Json<OrderBody>, ApiError> {
    let mut client = s.orders.clone();
    let o = call(
        "order",
        &s.orders_breaker,
        client.get_order(request(
            &ctx,
            pb::GetOrderRequest {
                user_id: claims.sub,
                order_id: id,
            },
        )),
    )
    .await?;
    Ok(Json(o.into()))
}

/// Page of orders.
#[derive(Debug, Serialize)]
pub struct Page {
    orders: Vec<OrderBody>,
    next_cursor: Option<String>,
}

/// `GET /api/v1/orders?limit=&cursor=`: own orders, newest first.
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
    let mut client = s.orders.clone();
    let r = call(
        "order",
        &s.orders_breaker,
        client.list_orders(request(
            &ctx,
            pb::ListOrdersRequest {
                user_id: claims.sub,
                limit,
                cursor,
            },
        )),
    )
    .await?;
    Ok(Json(Page {
        orders: r.orders.into_iter().map(Into::into).collect(),
        next_cursor: non_empty(r.next_cursor),
    }))
}

/// `POST /api/v1/orders/{id}/cancel` → `202`; `409` if already cancelled.
pub async fn cancel(
    State(s): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    Extension(claims): Extension<Claims>,
    PathParam(id): PathParam<String>,
) -> Result<Response, ApiError> {
    let mut client = s.orders.clone();
    let o = call(
        "order",
        &s.orders_breaker,
        client.cancel_order(request(
            &ctx,
            pb::CancelOrderRequest {
                user_id: claims.sub,
                order_id: id,
            },
        )),
    )
    .await?;
    Ok((StatusCode::ACCEPTED, Json(OrderBody::from(o))).into_response())
}

/// Wallet body.
#[derive(Debug, Serialize)]
pub struct WalletBody {
    balance: i64,
    currency: String,
}

/// `GET /api/v1/wallet`: the user's payment account.
pub async fn wallet(
    State(s): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    Extension(claims): Extension<Claims>,
) -> Result<Json<WalletBody>, ApiError> {
    let mut client = s.payments.clone();
    let w = call(
        "payment",
        &s.payments_breaker,
        client.get_wallet(request(
            &ctx,
            pay::GetWalletRequest {
                user_id: claims.sub,
            },
        )),
    )
    .await?;
    let b = w.balance.unwrap_or_default();
    Ok(Json(WalletBody {
        balance: b.amount_minor,
        currency: b.currency,
    }))
}
