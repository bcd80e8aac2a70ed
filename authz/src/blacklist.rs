//! Revocation: the [`Blacklist`] trait, an in-memory backend, and the [`Authenticator`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::{Claims, Error, Result, TokenValidator};

/// A store of revoked token ids. Implementations: [`MemoryBlacklist`] here; Redis
/// (`SET jwt:blacklist:{jti} 1 EX ttl`) in the backends.
///
/// Backend failures are returned as [`Error::BlacklistUnavailable`] (see [`Error::blacklist`]).
///
/// Implement it with the re-exported [`async_trait`](crate::async_trait) — no extra
/// dependency:
///
/// ```
/// use std::time::Duration;
/// use authz::{async_trait, Blacklist, Result};
///
/// /// Revokes nothing (a test double).
/// struct Lenient;
///
/// #[async_trait]
/// impl Blacklist for Lenient {
///     async fn revoke(&self, _jti: &str, _ttl: Duration) -> Result<()> { Ok(()) }
///     async fn is_revoked(&self, _jti: &str) -> Result<bool> { Ok(false) }
/// }
/// ```
#[async_trait]
pub trait Blacklist: Send + Sync {
    /// Mark `jti` revoked for `ttl` (after which the token has expired anyway).
    async fn revoke(&self, jti: &str, ttl: Duration) -> Result<()>;
    /// Whether `jti` is revoked.
    async fn is_revoked(&self, jti: &str) -> Result<bool>;
}

#[async_trait]
impl<T: Blacklist + ?Sized> Blacklist for Arc<T> {
    async fn revoke(&self, jti: &str, ttl: Duration) -> Result<()> {
        (**self).revoke(jti, ttl).await
    }
    async fn is_revoked(&self, jti: &str) -> Result<bool> {
        (**self).is_revoked(jti).await
    }
}

/// In-process blacklist with expiry, for tests and embedded use. Uses tokio's clock, so
/// `tokio::time::pause()` works in tests.
#[derive(Debug, Default)]
pub struct MemoryBlacklist {
    entries: Mutex<HashMap<String, Instant>>,
}

impl MemoryBlacklist {
    /// An empty blacklist.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of entries not yet expired.
    pub fn len(&self) -> usize {
        let now = Instant::now();
        let map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        map.values().filter(|at| **at > now).count()
    }

    /// Whether no entry is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl Blacklist for MemoryBlacklist {
    async fn revoke(&self, jti: &str, ttl: Duration) -> Result<()> {
        let now = Instant::now();
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, at| *at > now);
        let until = now + ttl;
        map.entry(jti.to_owned())
            .and_modify(|at| *at = (*at).max(until))
            .or_insert(until);
        Ok(())
    }

    async fn is_revoked(&self, jti: &str) -> Result<bool> {
        let map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        Ok(map.get(jti).is_some_and(|at| *at > Instant::now()))
    }
}

/// What to do when the blacklist cannot be consulted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum BlacklistFailure {
    /// Refuse the token ([`Error::BlacklistUnavailable`]). The safe default.
    #[default]
    FailClosed,
    /// Accept a token that is otherwise valid. Availability over revocation.
    FailOpen,
}

/// Validates a token and checks its `jti` against a [`Blacklist`].
#[derive(Clone)]
pub struct Authenticator {
    validator: TokenValidator,
    blacklist: Arc<dyn Blacklist>,
    on_failure: BlacklistFailure,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("validator", &self.validator)
            .field("on_failure", &self.on_failure)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// Fail-closed authenticator.
    pub fn new(validator: TokenValidator, blacklist: Arc<dyn Blacklist>) -> Self {
        // The counters exist (at 0) from the start, for dashboards and alerts.
        metrics::counter!("authz_blacklist_hits_total").increment(0);
        for policy in ["fail_closed", "fail_open"] {
            metrics::counter!("authz_blacklist_errors_total", "policy" => policy).increment(0);
        }
        Self {
            validator,
            blacklist,
            on_failure: BlacklistFailure::FailClosed,
        }
    }

    /// Choose the policy for blacklist outages.
    pub fn on_blacklist_failure(mut self, policy: BlacklistFailure) -> Self {
        self.on_failure = policy;
        self
    }

    /// The validator in use.
    pub fn validator(&self) -> &TokenValidator {
        &self.validator
    }

    /// Validate `token` and make sure it is not revoked.
    pub async fn authenticate(&self, token: &str) -> Result<Claims> {
        let claims = self.validator.validate(token)?;
        match self.blacklist.is_revoked(&claims.jti).await {
            Ok(false) => Ok(claims),
            Ok(true) => {
                metrics::counter!("authz_blacklist_hits_total").increment(1);
                Err(Error::Revoked)
            }
            Err(e) => {
                let policy = match self.on_failure {
                    BlacklistFailure::FailClosed => "fail_closed",
                    BlacklistFailure::FailOpen => "fail_open",
                };
                metrics::counter!("authz_blacklist_errors_total", "policy" => policy).increment(1);
                match self.on_failure {
                    BlacklistFailure::FailClosed => Err(match e {
                        Error::BlacklistUnavailable(_) => e,
                        other => Error::blacklist(other),
                    }),
                    BlacklistFailure::FailOpen => Ok(claims),
                }
            }
        }
    }

    /// Revoke a token (logout) for its remaining lifetime plus the validator's leeway, so
    /// it cannot come back inside the leeway window.
    pub async fn revoke(&self, claims: &Claims) -> Result<()> {
        revoke_token(
            &*self.blacklist,
            claims,
            self.validator.leeway(),
            self.validator.clock().now(),
        )
        .await
    }
}

/// Put `claims.jti` on `blacklist` for the token's remaining life at `now` plus `leeway`
/// (plus one second to cover the rounding of `exp` to whole seconds).
pub async fn revoke_token<B: Blacklist + ?Sized>(
    blacklist: &B,
    claims: &Claims,
    leeway: Duration,
    now: i64,
) -> Result<()> {
    let ttl = claims.remaining(now) + leeway + Duration::from_secs(1);
    blacklist.revoke(&claims.jti, ttl).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An entry lives exactly its TTL: revoked up to the last instant before, gone at
    /// the instant it ends — for `is_revoked`, `len` and the sweep a revocation makes.
    #[tokio::test(start_paused = true)]
    async fn an_entry_lives_exactly_its_ttl() {
        let b = MemoryBlacklist::new();
        assert!(b.is_empty());
        b.revoke("a", Duration::from_secs(10)).await.unwrap();
        assert_eq!(b.len(), 1);
        assert!(!b.is_empty());
        tokio::time::advance(Duration::from_secs(10) - Duration::from_millis(1)).await;
        assert!(b.is_revoked("a").await.unwrap());
        assert_eq!(b.len(), 1);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!b.is_revoked("a").await.unwrap());
        assert_eq!(b.len(), 0);
        assert!(b.is_empty());
        // The next revocation sweeps the ended entry out of memory.
        b.revoke("b", Duration::from_secs(10)).await.unwrap();
        let stored: Vec<_> = b.entries.lock().unwrap().keys().cloned().collect();
        assert_eq!(stored, ["b"]);
    }

    /// Revoking again keeps the later end; a shorter TTL never shortens a revocation.
    #[tokio::test(start_paused = true)]
    async fn a_second_revocation_keeps_the_later_end() {
        let b = MemoryBlacklist::new();
        b.revoke("a", Duration::from_secs(10)).await.unwrap();
        b.revoke("a", Duration::from_secs(2)).await.unwrap();
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(b.is_revoked("a").await.unwrap());
        b.revoke("a", Duration::from_secs(20)).await.unwrap();
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(b.is_revoked("a").await.unwrap(), "extended to 25 s");
        assert!(!b.is_revoked("other").await.unwrap());
    }

    /// A blacklist behind an `Arc` (as the services share one) is the same blacklist.
    #[tokio::test(start_paused = true)]
    async fn an_arc_of_a_blacklist_is_that_blacklist() {
        let inner = Arc::new(MemoryBlacklist::new());
        let shared: Arc<dyn Blacklist> = inner.clone();
        Blacklist::revoke(&shared, "a", Duration::from_secs(5))
            .await
            .unwrap();
        assert!(inner.is_revoked("a").await.unwrap());
        assert!(Blacklist::is_revoked(&shared, "a").await.unwrap());
        assert!(!Blacklist::is_revoked(&shared, "b").await.unwrap());
    }
}
