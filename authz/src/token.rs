//! Issuing and validating tokens.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use uuid::Uuid;

use crate::verified::VerifiedTokens;
use crate::{Claims, Error, Result, SigningKey, VerifyingKey};

/// Source of "now" in unix seconds. The system clock by default; tests pin it.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> i64 + Send + Sync>);

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Clock(now={})", self.now())
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Self(Arc::new(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0)
        }))
    }

    /// A clock that always reads `unix_secs`.
    pub fn fixed(unix_secs: i64) -> Self {
        Self(Arc::new(move || unix_secs))
    }

    /// A clock backed by any function.
    pub fn from_fn(f: impl Fn() -> i64 + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    /// Now, in unix seconds.
    pub fn now(&self) -> i64 {
        (self.0)()
    }
}

/// A freshly issued token and its claims.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedToken {
    /// The compact JWT to hand to the client.
    pub token: String,
    /// What it says.
    pub claims: Claims,
}

impl fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The token is a credential: never print it.
        f.debug_struct("IssuedToken")
            .field("token", &"<redacted>")
            .field("claims", &self.claims)
            .finish()
    }
}

/// Issues signed access tokens, each with a fresh random `jti`.
#[derive(Debug, Clone)]
pub struct TokenIssuer {
    key: SigningKey,
    issuer: String,
    audience: String,
    ttl: Duration,
    clock: Clock,
}

impl TokenIssuer {
    /// An issuer with a 15-minute TTL and the system clock.
    pub fn new(key: SigningKey, issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        Self {
            key,
            issuer: issuer.into(),
            audience: audience.into(),
            ttl: Duration::from_secs(900),
            clock: Clock::system(),
        }
    }

    /// Token lifetime (`exp - iat`).
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Use another clock (tests).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The configured lifetime.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Issue a token for `subject`.
    pub fn issue(&self, subject: impl Into<String>) -> Result<IssuedToken> {
        self.issue_with(subject, std::iter::empty::<(String, serde_json::Value)>())
    }

    /// Issue a token for `subject` that also carries the application's own claims —
    /// `scope` (space-separated), `roles` (an array), anything else — read back with
    /// [`Claims::claim`], [`Claims::has_scope`], [`Claims::has_role`]. A registered claim
    /// name among them is [`Error::ReservedClaim`]: those the issuer sets.
    ///
    /// ```
    /// # use authz::{SigningKey, TokenIssuer};
    /// # let key = SigningKey::hs256(b"an-example-secret-of-at-least-32-bytes!").unwrap();
    /// let issuer = TokenIssuer::new(key, "ordersys", "ordersys-api");
    /// let issued = issuer.issue_with("user-42", [("scope", "orders:read".into())]).unwrap();
    /// assert!(issued.claims.has_scope("orders:read"));
    /// assert!(issuer.issue_with("user-42", [("exp", 0.into())]).is_err());
    /// ```
    pub fn issue_with<K: Into<String>>(
        &self,
        subject: impl Into<String>,
        claims: impl IntoIterator<Item = (K, serde_json::Value)>,
    ) -> Result<IssuedToken> {
        let mut extra = serde_json::Map::new();
        for (name, value) in claims {
            let name = name.into();
            if crate::claims::REGISTERED.contains(&name.as_str()) {
                return Err(Error::ReservedClaim(name));
            }
            extra.insert(name, value);
        }
        let now = self.clock.now();
        let claims = Claims {
            sub: subject.into(),
            jti: Uuid::new_v4().to_string(),
            iat: now,
            nbf: now,
            exp: now.saturating_add(self.ttl.as_secs() as i64),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            extra,
        };
        self.sign(claims)
    }

    /// A validator for this issuer's tokens: the verifying half of its key, its issuer
    /// and audience, the default leeway and the issuer's clock.
    pub fn validator(&self) -> TokenValidator {
        TokenValidator::new(
            self.key.verifying_key(),
            self.issuer.clone(),
            self.audience.clone(),
        )
        .with_clock(self.clock.clone())
    }

    /// Sign arbitrary claims with this issuer's key (tests, migrations).
    pub fn sign(&self, claims: Claims) -> Result<IssuedToken> {
        let token = crate::jws::encode(self.key.signer(), &claims)?;
        Ok(IssuedToken { token, claims })
    }
}

/// The clock-skew tolerance a [`TokenValidator`] allows on `exp` and `nbf` unless told
/// otherwise: 5 seconds. An expired token stays usable this long — keep it short.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(5);

/// Validates signature, algorithm, `iss`, `aud`, `nbf` and `exp` (with leeway). It does
/// not consult a blacklist: [`Authenticator`](crate::Authenticator) does both.
#[derive(Debug, Clone)]
pub struct TokenValidator {
    key: VerifyingKey,
    issuer: String,
    audience: String,
    leeway: Duration,
    clock: Clock,
    verified: Option<Arc<VerifiedTokens>>,
}

impl TokenValidator {
    /// A validator with a 5-second leeway (see [`DEFAULT_LEEWAY`]) and the system clock,
    /// accepting tokens of `issuer` for `audience` (the same argument types as
    /// [`TokenIssuer::new`]; [`TokenIssuer::validator`] builds the matching one).
    pub fn new(key: VerifyingKey, issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        Self {
            key,
            issuer: issuer.into(),
            audience: audience.into(),
            leeway: DEFAULT_LEEWAY,
            clock: Clock::system(),
            verified: None,
        }
    }

    /// Tolerance for clock skew on `exp` and `nbf`.
    pub fn with_leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// Use another clock (tests).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Remember up to `capacity` tokens that validated, so that the same token shown
    /// again (every request of a session, and again at each service it is forwarded
    /// to) is not parsed and its signature not checked again — for Ed25519 that check
    /// is most of a validation's cost. Its time window (`nbf`, `exp`, with the leeway)
    /// is still checked at every use; a token is remembered by its whole text, so one
    /// that differs in any byte is verified afresh, and one that failed is never
    /// remembered. When full, expired tokens are forgotten first, then all. Clones of
    /// this validator share the memo; `0` turns it off (the default).
    ///
    /// ```
    /// use authz::{SigningKey, TokenIssuer};
    ///
    /// let key = SigningKey::hs256(b"an example secret of 32 bytes!!!").unwrap();
    /// let issuer = TokenIssuer::new(key, "ordersys", "ordersys-api");
    /// let validator = issuer.validator().with_verified_cache(10_000);
    /// let token = issuer.issue("alice").unwrap().token;
    /// assert_eq!(validator.validate(&token).unwrap().sub, "alice"); // verified
    /// assert_eq!(validator.validate(&token).unwrap().sub, "alice"); // remembered
    /// assert_eq!(validator.verified_tokens(), 1);
    /// ```
    pub fn with_verified_cache(mut self, capacity: usize) -> Self {
        self.verified = (capacity > 0).then(|| Arc::new(VerifiedTokens::new(capacity)));
        self
    }

    /// How many verified tokens are remembered (see
    /// [`with_verified_cache`](Self::with_verified_cache)).
    pub fn verified_tokens(&self) -> usize {
        self.verified.as_ref().map_or(0, |v| v.len())
    }

    /// The configured leeway.
    pub fn leeway(&self) -> Duration {
        self.leeway
    }

    /// The clock in use.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Check a compact JWT and return its claims: its `alg` is the key's, its
    /// signature verifies (before its payload is read), every registered claim is there
    /// once (`sub`, `jti`, `iat`, `nbf`, `exp`, `iss`, `aud`), `iss` and `aud` are this
    /// validator's, `jti` is not empty, and now is within `nbf..=exp` give or take the
    /// leeway.
    pub fn validate(&self, token: &str) -> Result<Claims> {
        let now = self.clock.now();
        if let Some(claims) = self.verified.as_ref().and_then(|v| v.get(token)) {
            self.check_window(&claims, now)?;
            return Ok(claims);
        }
        let claims: Claims = crate::jws::decode(token, self.key.verifier())?;
        if claims.iss != self.issuer {
            return Err(Error::InvalidIssuer);
        }
        if claims.aud != self.audience {
            return Err(Error::InvalidAudience);
        }
        if claims.jti.is_empty() {
            return Err(Error::Malformed("empty jti".into()));
        }
        self.check_window(&claims, now)?;
        if let Some(verified) = &self.verified {
            verified.insert(token, &claims, now.saturating_sub(self.leeway_secs()));
        }
        Ok(claims)
    }

    fn leeway_secs(&self) -> i64 {
        self.leeway.as_secs() as i64
    }

    /// `now` within `nbf..=exp`, give or take the leeway.
    fn check_window(&self, claims: &Claims, now: i64) -> Result<()> {
        let leeway = self.leeway_secs();
        if now > claims.exp.saturating_add(leeway) {
            return Err(Error::Expired);
        }
        if now < claims.nbf.saturating_sub(leeway) {
            return Err(Error::NotYetValid);
        }
        Ok(())
    }
}
