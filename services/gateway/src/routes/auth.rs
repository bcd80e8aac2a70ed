//! `/api/v1/auth/*`.

use authz::layer::BearerToken;
use authz::Claims;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use ordersys_kit::context::RequestContext;
use ordersys_proto::user::v1 as pb;
use serde::{Deserialize, Serialize};

use crate::downstream::{call, request};
use crate::error::{ApiError, JsonBody};
use crate::AppState;

/// Body of register and login.
#[derive(Debug, Deserialize)]
pub struct Credentials {
    email: String,
    password: String,
}

/// `201` body of register.
#[derive(Debug, Serialize)]
pub struct Registered {
    user_id: String,
    email: String,
}

/// `200` body of login.
#[derive(Debug, Serialize)]
pub struct Token {
    access_token: String,
    token_type: String,
    expires_in: i64,
}

/// `POST /api/v1/auth/register`.
pub async fn register(
    State(s): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    JsonBody(c): JsonBody<Credentials>,
) -> Result<Response, ApiError> {
    let mut client = s.users.clone();
    let r = call(
        "user",
        &s.users_breaker,
        client.register(request(
            &ctx,
            pb::RegisterRequest {
                email: c.email,
                password: c.password,
            },
        )),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(Registered {
            user_id: r.user_id,
            email: r.email,
        }),
    )
        .into_response())
}

/// `POST /api/v1/auth/login`.
pub async fn login(
    State(s): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    JsonBody(c): JsonBody<Credentials>,
) -> Result<Json<Token>, ApiError> {
    let mut client = s.users.clone();
    let r = call(
        "user",
        &s.users_breaker,
        client.login(request(
            &ctx,
            pb::LoginRequest {
                email: c.email,
                password: c.password,
            },
        )),
    )
    .await?;
    Ok(Json(Token {
        access_token: r.access_token,
        token_type: r.token_type,
        expires_in: r.expires_in,
    }))
}

/// `POST /api/v1/auth/logout`: the token is revoked; `204`.
pub async fn logout(
    State(s): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    Extension(token): Extension<BearerToken>,
) -> Result<StatusCode, ApiError> {
    let mut client = s.users.clone();
    call(
        "user",
        &s.users_breaker,
        client.logout(request(
            &ctx,
            pb::LogoutRequest {
                access_token: token.0,
            },
        )),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/v1/auth/me`: the authenticated account.
pub async fn me(
    State(s): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    Extension(claims): Extension<Claims>,
) -> Result<Json<Registered>, ApiError> {
    let mut client = s.users.clone();
    let u = call(
        "user",
        &s.users_breaker,
        client.get_user(request(
            &ctx,
            pb::GetUserRequest {
                user_id: claims.sub,
            },
        )),
    )
    .await?;
    Ok(Json(Registered {
        user_id: u.user_id,
        email: u.email,
    }))
}
