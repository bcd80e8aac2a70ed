//! Token claims.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The claims of an ordersys access token. All are required when validating.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Subject: the user id.
    pub sub: String,
    /// Unique token id, the key of the revocation blacklist.
    pub jti: String,
    /// Issued at (unix seconds).
    pub iat: i64,
    /// Not before (unix seconds).
    pub nbf: i64,
    /// Expires at (unix seconds).
    pub exp: i64,
    /// Issuer.
    pub iss: String,
    /// Audience.
    pub aud: String,
}

impl Claims {
    /// Lifetime left at `now` (unix seconds), zero once expired.
    pub fn remaining(&self, now: i64) -> Duration {
        Duration::from_secs(self.exp.saturating_sub(now).max(0) as u64)
    }
}
