//! The crate's error type.

/// A boxed backend error (Redis, a database, ...).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong issuing, validating or revoking a token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No bearer token was presented.
    #[error("missing bearer token")]
    MissingToken,
    /// The token is not a well-formed JWT with the required claims.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The signature does not verify with the configured key.
    #[error("invalid token signature")]
    InvalidSignature,
    /// The token's `alg` is not the one the key accepts (including `none`).
    #[error("token algorithm not accepted")]
    InvalidAlgorithm,
    /// `iss` does not match.
    #[error("invalid token issuer")]
    InvalidIssuer,
    /// `aud` does not match.
    #[error("invalid token audience")]
    InvalidAudience,
    /// `exp` has passed (beyond the leeway).
    #[error("token expired")]
    Expired,
    /// `nbf` is still in the future (beyond the leeway).
    #[error("token not yet valid")]
    NotYetValid,
    /// The token's `jti` is on the blacklist.
    #[error("token revoked")]
    Revoked,
    /// The blacklist backend could not answer; with the default fail-closed policy the
    /// token is refused.
    #[error("token blacklist unavailable: {0}")]
    BlacklistUnavailable(#[source] BoxError),
    /// A key could not be loaded or is unsuitable.
    #[error("invalid key: {0}")]
    InvalidKey(String),
    /// Signing a token failed.
    #[error("could not sign token: {0}")]
    Signing(String),
    /// A claim handed to [`TokenIssuer::issue_with`](crate::TokenIssuer::issue_with) is
    /// one the issuer sets itself (`sub`, `jti`, `iat`, `nbf`, `exp`, `iss`, `aud`).
    #[error("claim `{0}` is set by the issuer")]
    ReservedClaim(String),
    /// The token is valid but does not carry a scope the route requires (HTTP 403).
    #[error("token lacks the scope `{0}`")]
    InsufficientScope(String),
}

impl Error {
    /// Wrap a blacklist backend error.
    pub fn blacklist(err: impl Into<BoxError>) -> Self {
        Self::BlacklistUnavailable(err.into())
    }

    /// Whether the client's credentials are at fault (HTTP 401), as opposed to a valid
    /// token without the required scope (403) or the server (a blacklist outage, a bad
    /// key: HTTP 503 / 500).
    pub fn is_unauthorized(&self) -> bool {
        !matches!(
            self,
            Self::BlacklistUnavailable(_)
                | Self::InvalidKey(_)
                | Self::Signing(_)
                | Self::ReservedClaim(_)
                | Self::InsufficientScope(_)
        )
    }

    /// A stable machine-readable code for the error (`token_expired`, ...).
    pub fn code(&self) -> &'static str {
        match self {
            Self::MissingToken => "missing_token",
            Self::Malformed(_) => "invalid_token",
            Self::InvalidSignature => "invalid_token",
            Self::InvalidAlgorithm => "invalid_token",
            Self::InvalidIssuer => "invalid_token",
            Self::InvalidAudience => "invalid_token",
            Self::Expired => "token_expired",
            Self::NotYetValid => "invalid_token",
            Self::Revoked => "token_revoked",
            Self::BlacklistUnavailable(_) => "service_unavailable",
            Self::InsufficientScope(_) => "insufficient_scope",
            Self::InvalidKey(_) | Self::Signing(_) | Self::ReservedClaim(_) => "internal",
        }
    }
}
