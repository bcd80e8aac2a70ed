//! `/api/v1/auth/*`.

use authz::layer::BearerToken;
use authz::Claims;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use ordersys_kit::context::RequestContext;
use ordersys_proto::user::v1 as pb;
use ordersys_proto::user::v1::user_service_client::UserServiceClient;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::balance::Effect;
use crate::contract::TokenType;
use crate::error::{ApiError, JsonBody};
use crate::AppState;

/// Body of register and login.
#[derive(Debug, Deserialize, ToSchema)]
pub struct Credentials {
    /// An e-mail address (at most 254 characters; compared case-insensitively).
    #[schema(
        example = "ada@example.com",
        max_length = 254,
        pattern = r"^[\x21-\x3f\x41-\x7e]{1,64}@([A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?$"
    )]
    email: String,
    /// 8 to 128 characters.
    #[schema(example = "correct horse battery", min_length = 8, max_length = 128)]
    password: String,
}

/// `201` body of register; the body of `GET /api/v1/auth/me`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Registered {
    /// The account's id (a UUID).
    user_id: String,
    email: String,
}

/// `200` body of login.
#[derive(Debug, Serialize, ToSchema)]
pub struct Token {
    /// A JWT (HS256) for `Authorization: Bearer …`.
    access_token: String,
    token_type: TokenType,
    /// Seconds until the token expires.
    expires_in: i64,
}

/// `POST /api/v1/auth/register`.
#[utoipa::path(post, path = "/api/v1/auth/register", tag = "auth",
    summary = "Create an account",
    request_body = Credentials,
    responses(
        (status = 201, description = "The account was created", body = Registered),
        (status = 409, description = "The e-mail is taken", body = crate::error::ErrorBody),
    ))]
pub async fn register(
    State(s): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    JsonBody(c): JsonBody<Credentials>,
) -> Result<Response, ApiError> {
    let msg = pb::RegisterRequest {
        email: c.email,
        password: c.password,
    };
    let r = s
        .users
        .request(Effect::Once, &ctx, None, msg, |t, req| async move {
            UserServiceClient::new(t).register(req).await
        })
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
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth",
    summary = "Exchange credentials for a token",
    request_body = Credentials,
    responses(
        (status = 200, description = "A bearer token", body = Token),
        (status = 401, description = "Wrong e-mail or password", body = crate::error::ErrorBody),
    ))]
pub async fn login(
    State(s): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    JsonBody(c): JsonBody<Credentials>,
) -> Result<Json<Token>, ApiError> {
    let email = c.email.clone();
    let msg = pb::LoginRequest {
        email: c.email,
        password: c.password,
    };
    let answer = s
        .users
        .request(Effect::Read, &ctx, None, msg, |t, req| async move {
            UserServiceClient::new(t).login(req).await
        })
        .await;
    // Every verdict on the password counts against the account — not an attempt the
    // user service never judged (it was down): past the limit even the right password
    // is held back until the window ends.
    let r = match answer {
        Ok(r) => {
            s.login_attempt(&email).await?;
            r
        }
        Err(e) if e.status == StatusCode::UNAUTHORIZED => {
            s.login_attempt(&email).await?;
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    Ok(Json(Token {
        access_token: r.access_token,
        // The gateway takes the token as a bearer token, whatever else the user service
        // may call it.
        token_type: TokenType::Bearer,
        expires_in: r.expires_in,
    }))
}

/// `POST /api/v1/auth/logout`: the token is revoked; `204`.
#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth",
    summary = "Revoke the token (every later use of it is 401)",
    security(("bearer" = [])),
    responses((status = 204, description = "The token is revoked")))]
pub async fn logout(
    State(s): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    Extension(token): Extension<BearerToken>,
    Extension(claims): Extension<Claims>,
) -> Result<StatusCode, ApiError> {
    let msg = pb::LogoutRequest {
        access_token: token.0,
    };
    s.users
        .request(Effect::Idempotent, &ctx, None, msg, |t, req| async move {
            UserServiceClient::new(t).logout(req).await
        })
        .await?;
    // The user service revoked it (and announced it to every gateway); this gateway's
    // own blacklist takes it at once, so the very next request here is refused even if
    // the announcement is still on its way. (Revoking again never shortens the entry.)
    if let Some(auth) = &s.auth {
        if let Err(e) = auth.revoke(&claims).await {
            tracing::warn!(error = %e, "не удалось отметить отозванный токен в шлюзе");
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/v1/auth/me`: the authenticated account.
#[utoipa::path(get, path = "/api/v1/auth/me", tag = "auth",
    summary = "The authenticated account",
    security(("bearer" = [])),
    responses((status = 200, description = "The account", body = Registered)))]
pub async fn me(
    State(s): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    Extension(claims): Extension<Claims>,
    Extension(token): Extension<BearerToken>,
) -> Result<Json<Registered>, ApiError> {
    let msg = pb::GetUserRequest {
        user_id: claims.sub,
    };
    let u = s
        .users
        .request(Effect::Read, &ctx, Some(&token), msg, |t, req| async move {
            UserServiceClient::new(t).get_user(req).await
        })
        .await?;
    Ok(Json(Registered {
        user_id: u.user_id,
        email: u.email,
    }))
}
