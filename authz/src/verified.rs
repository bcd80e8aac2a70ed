//! A bounded memo of the tokens a [`TokenValidator`](crate::TokenValidator) has verified.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::Claims;

/// Tokens whose signature, algorithm, `iss`, `aud` and `jti` checked out, by their full
/// text. Only what cannot change for a given text is remembered: the time window
/// (`nbf`, `exp`) is checked on every use.
pub(crate) struct VerifiedTokens {
    capacity: usize,
    tokens: Mutex<HashMap<Box<str>, Claims>>,
}

impl VerifiedTokens {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            tokens: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, Claims>> {
        self.tokens.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The claims of `token` if it was verified before.
    pub(crate) fn get(&self, token: &str) -> Option<Claims> {
        self.lock().get(token).cloned()
    }

    /// Remember `token` as verified. When full, the entries expired by `expired_before`
    /// (unix seconds) go first; if that frees nothing, everything does.
    pub(crate) fn insert(&self, token: &str, claims: &Claims, expired_before: i64) {
        let mut tokens = self.lock();
        if tokens.len() >= self.capacity {
            tokens.retain(|_, c| c.exp >= expired_before);
            if tokens.len() >= self.capacity {
                tokens.clear();
            }
        }
        tokens.insert(token.into(), claims.clone());
    }

    /// How many tokens are remembered.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

impl std::fmt::Debug for VerifiedTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedTokens")
            .field("capacity", &self.capacity)
            .field("len", &self.len())
            .finish()
    }
}
