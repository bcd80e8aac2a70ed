//! The end user a gRPC call acts for, proven rather than asserted. The gateway forwards
//! the user's own access token in the call's `authorization` metadata ([`forward`]);
//! the service verifies it ([`EndUsers::user`]: signature, issuer, audience, expiry)
//! and acts for the token's subject only. A `user_id` written in the request is no
//! longer a credential: it must name the same user, or the call is refused. So the
//! gateway — or anyone holding its certificate — can act only for users whose valid
//! tokens it holds, not for any user id it makes up.
//!
//! Revocation (logout) is checked at the gateway, which holds the blacklist; a service
//! accepts a revoked token until it expires (at most its 15-minute lifetime).
//!
//! ```
//! use authz::{Claims, SigningKey, TokenIssuer, TokenValidator};
//! use ordersys_kit::end_user::{forward, EndUsers};
//!
//! let key = SigningKey::hs256(b"an example secret of 32 bytes!!!").unwrap();
//! let issuer = TokenIssuer::new(key.clone(), "ordersys", "ordersys-api");
//! let token = issuer.issue("alice").unwrap().token;
//! let users = EndUsers::new(TokenValidator::new(key.verifying_key(), "ordersys", "ordersys-api"));
//!
//! let mut req = tonic::Request::new(());
//! forward(&mut req, &token);
//! assert_eq!(users.user(&req, "").unwrap(), "alice");
//! assert_eq!(users.user(&req, "alice").unwrap(), "alice");
//! assert_eq!(users.user(&req, "mallory").unwrap_err().code(), tonic::Code::PermissionDenied);
//! assert_eq!(users.user(&tonic::Request::new(()), "alice").unwrap_err().code(), tonic::Code::Unauthenticated);
//! ```

use std::sync::Arc;

use authz::TokenValidator;
use tonic::Status;

/// The metadata key carrying the end user's token.
pub const AUTHORIZATION: &str = "authorization";

/// Put the end user's access `token` into `req`'s metadata (`authorization: Bearer …`).
pub fn forward<T>(req: &mut tonic::Request<T>, token: &str) {
    if let Ok(v) = format!("Bearer {token}").parse() {
        req.metadata_mut().insert(AUTHORIZATION, v);
    }
}

/// Verifies the end user's token of incoming calls.
#[derive(Clone)]
pub struct EndUsers {
    validator: Arc<TokenValidator>,
}

impl std::fmt::Debug for EndUsers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndUsers").finish_non_exhaustive()
    }
}

impl EndUsers {
    /// Check tokens with `validator` (the same settings the gateway validates with).
    pub fn new(validator: TokenValidator) -> Self {
        Self {
            validator: Arc::new(validator),
        }
    }

    /// The user `req` acts for: the subject of the verified token in its metadata.
    /// `claimed` (the request's own `user_id` field) must be that user or empty.
    /// `UNAUTHENTICATED` without a valid token, `PERMISSION_DENIED` for another user.
    pub fn user<T>(&self, req: &tonic::Request<T>, claimed: &str) -> Result<String, Status> {
        let token = req
            .metadata()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("no end-user token (authorization)"))?;
        let claims = self.validator.validate(token).map_err(|e| {
            tracing::warn!(error = %e, "gRPC: токен пользователя отклонён");
            Status::unauthenticated(format!("end-user token: {e}"))
        })?;
        if !claimed.is_empty() && claimed != claims.sub {
            tracing::warn!(
                subject = %claims.sub,
                "gRPC: user_id запроса не совпадает с владельцем токена"
            );
            return Err(Status::permission_denied(
                "user_id is not the user of the forwarded token",
            ));
        }
        Ok(claims.sub)
    }
}
