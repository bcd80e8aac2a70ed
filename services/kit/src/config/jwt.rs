//! The token settings ([`Jwt`]): which key signs (the user service) and which verifies
//! (everyone else).

use serde::Serialize;

use super::Secret;

/// The token settings of the user service (which issues) and of the gateway, order and
/// payment services (which verify), flattened into each one's `Config`:
/// `JWT_PRIVATE_KEY` + `JWT_PUBLIC_KEY` (EdDSA, the default of every deployment: only
/// the user service holds the private key, the others the public one) or `JWT_SECRET`
/// (HS256, one secret shared by all — each holder can mint tokens), `JWT_ISSUER`,
/// `JWT_AUDIENCE`, `JWT_LEEWAY_SECS`, `JWT_VERIFIED_TOKENS`.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Jwt {
    /// HS256 secret shared by every service (`JWT_SECRET`, at least 32 bytes), instead
    /// of the key pair.
    pub jwt_secret: Secret,
    /// The Ed25519 private key, a PKCS#8 PEM file (`JWT_PRIVATE_KEY`): the user service
    /// only — a verifier refuses to start with it.
    pub jwt_private_key: String,
    /// The Ed25519 public key, an SPKI PEM file (`JWT_PUBLIC_KEY`): every service.
    pub jwt_public_key: String,
    /// `iss` (`JWT_ISSUER`, default `ordersys`).
    pub jwt_issuer: String,
    /// `aud` (`JWT_AUDIENCE`, default `ordersys-api`).
    pub jwt_audience: String,
    /// Seconds an expired (or not yet valid) token is still accepted, for clock skew
    /// (`JWT_LEEWAY_SECS`, default 5); a logout revokes a token this much longer.
    pub jwt_leeway_secs: u64,
    /// How many tokens that validated each process remembers, so that a session's
    /// token is verified once, not at every request and again at every service it is
    /// forwarded to; expiry is still checked at each use (`JWT_VERIFIED_TOKENS`,
    /// default 10,000 — a token and its claims are ≈ 1 KiB; `0` verifies every time).
    pub jwt_verified_tokens: usize,
}

impl Default for Jwt {
    fn default() -> Self {
        Self {
            jwt_secret: Secret::default(),
            jwt_private_key: String::new(),
            jwt_public_key: String::new(),
            jwt_issuer: "ordersys".into(),
            jwt_audience: "ordersys-api".into(),
            jwt_leeway_secs: 5,
            jwt_verified_tokens: 10_000,
        }
    }
}

/// What to set when the token settings name no key.
const NO_KEY: &str = "JWT_PRIVATE_KEY and JWT_PUBLIC_KEY (EdDSA; `scripts/dev-certs` makes a \
     development pair), or JWT_SECRET (HS256), must be set";

impl Jwt {
    /// These settings with the HS256 `secret`.
    pub fn with_secret(secret: impl Into<Secret>) -> Self {
        Self {
            jwt_secret: secret.into(),
            ..Self::default()
        }
    }

    /// These settings with the Ed25519 key pair in the PEM files `private` (empty: a
    /// verifier's settings) and `public`.
    pub fn with_ed25519(private: impl Into<String>, public: impl Into<String>) -> Self {
        Self {
            jwt_private_key: private.into(),
            jwt_public_key: public.into(),
            ..Self::default()
        }
    }

    /// Refuse both a key pair and a secret: which one signs would be a guess.
    fn one_kind(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.jwt_secret.is_empty()
                || (self.jwt_private_key.is_empty() && self.jwt_public_key.is_empty()),
            "set JWT_SECRET or the key pair (JWT_PRIVATE_KEY, JWT_PUBLIC_KEY), not both"
        );
        Ok(())
    }

    /// The signing key (the user service's); an error names the variable at fault.
    pub fn signing_key(&self) -> anyhow::Result<authz::SigningKey> {
        self.one_kind()?;
        if !self.jwt_private_key.is_empty() {
            anyhow::ensure!(
                !self.jwt_public_key.is_empty(),
                "JWT_PRIVATE_KEY needs JWT_PUBLIC_KEY, its public key"
            );
            let private = read_key("JWT_PRIVATE_KEY", &self.jwt_private_key)?;
            let public = read_key("JWT_PUBLIC_KEY", &self.jwt_public_key)?;
            return authz::SigningKey::ed25519_from_pem(&private, &public)
                .map_err(|e| anyhow::anyhow!("JWT_PRIVATE_KEY / JWT_PUBLIC_KEY: {e}"));
        }
        if !self.jwt_public_key.is_empty() {
            anyhow::bail!(
                "JWT_PUBLIC_KEY alone verifies tokens; issuing them needs JWT_PRIVATE_KEY"
            );
        }
        if self.jwt_secret.is_empty() {
            anyhow::bail!("{NO_KEY}");
        }
        authz::SigningKey::hs256(self.jwt_secret.as_bytes())
            .map_err(|e| anyhow::anyhow!("JWT_SECRET: {e}"))
    }

    /// The verifying key; an error names the variable at fault.
    fn verifying_key(&self) -> anyhow::Result<authz::VerifyingKey> {
        self.one_kind()?;
        if !self.jwt_public_key.is_empty() {
            let public = read_key("JWT_PUBLIC_KEY", &self.jwt_public_key)?;
            return authz::VerifyingKey::ed25519_from_pem(&public)
                .map_err(|e| anyhow::anyhow!("JWT_PUBLIC_KEY: {e}"));
        }
        if self.jwt_secret.is_empty() {
            anyhow::bail!("{NO_KEY}");
        }
        authz::VerifyingKey::hs256(self.jwt_secret.as_bytes())
            .map_err(|e| anyhow::anyhow!("JWT_SECRET: {e}"))
    }

    /// The validator of the tokens issued under these settings, remembering up to
    /// `jwt_verified_tokens` tokens that validated (`TokenValidator::with_verified_cache`).
    pub fn validator(&self) -> anyhow::Result<authz::TokenValidator> {
        Ok(
            authz::TokenValidator::new(self.verifying_key()?, &self.jwt_issuer, &self.jwt_audience)
                .with_leeway(std::time::Duration::from_secs(self.jwt_leeway_secs))
                .with_verified_cache(self.jwt_verified_tokens),
        )
    }

    /// [`Jwt::validator`] for a service that only verifies (gateway, order, payment):
    /// with `JWT_PRIVATE_KEY` set it refuses to start — a verifier holding the key could
    /// mint tokens for any user.
    pub fn verifier(&self) -> anyhow::Result<authz::TokenValidator> {
        anyhow::ensure!(
            self.jwt_private_key.is_empty(),
            "JWT_PRIVATE_KEY is set, but this service only verifies tokens: give it \
             JWT_PUBLIC_KEY only (the private key belongs to the user service)"
        );
        self.validator()
    }
}

/// The PEM file `path` of the key variable `var`.
fn read_key(var: &str, path: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| anyhow::anyhow!("{var} {path}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::env_names;

    #[test]
    fn the_shared_token_settings_validate_what_their_key_signs() {
        assert_eq!(
            env_names::<Jwt>(),
            [
                "JWT_AUDIENCE",
                "JWT_ISSUER",
                "JWT_LEEWAY_SECS",
                "JWT_PRIVATE_KEY",
                "JWT_PUBLIC_KEY",
                "JWT_SECRET",
                "JWT_VERIFIED_TOKENS"
            ]
        );
        let jwt = Jwt::with_secret("a-secret-of-at-least-thirty-two-bytes!");
        let issuer =
            authz::TokenIssuer::new(jwt.signing_key().unwrap(), "ordersys", "ordersys-api");
        let token = issuer.issue("user-1").unwrap();
        let validator = jwt.validator().unwrap();
        assert_eq!(validator.validate(&token.token).unwrap().sub, "user-1");
        assert_eq!(validator.verified_tokens(), 1, "remembered by default");
        let every_time = Jwt {
            jwt_verified_tokens: 0,
            ..jwt.clone()
        }
        .validator()
        .unwrap();
        every_time.validate(&token.token).unwrap();
        assert_eq!(every_time.verified_tokens(), 0);
        let other = Jwt {
            jwt_audience: "elsewhere".into(),
            ..jwt.clone()
        };
        assert!(other.validator().unwrap().validate(&token.token).is_err());
        let err = Jwt::default().signing_key().unwrap_err().to_string();
        assert!(
            err.starts_with("JWT_PRIVATE_KEY and JWT_PUBLIC_KEY"),
            "{err}"
        );
        assert!(Jwt::default().validator().is_err());
    }

    #[test]
    fn an_ed25519_pair_signs_at_the_issuer_and_only_its_public_key_at_the_verifiers() {
        let dir = std::env::temp_dir().join(format!("ordersys-jwt-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let (private, public) = crate::keys::ed25519_pem().unwrap();
        let (priv_path, pub_path) = (dir.join("jwt.key"), dir.join("jwt.pub"));
        std::fs::write(&priv_path, private.as_bytes()).unwrap();
        std::fs::write(&pub_path, public.as_bytes()).unwrap();
        let path = |p: &std::path::Path| p.display().to_string();
        let issuer_side = Jwt::with_ed25519(path(&priv_path), path(&pub_path));
        let key = issuer_side.signing_key().unwrap();
        assert_eq!(key.algorithm(), authz::Algorithm::EdDSA);
        let token = authz::TokenIssuer::new(key, "ordersys", "ordersys-api")
            .issue("user-1")
            .unwrap()
            .token;
        let verifier_side = Jwt::with_ed25519("", path(&pub_path));
        assert_eq!(
            verifier_side
                .verifier()
                .unwrap()
                .validate(&token)
                .unwrap()
                .sub,
            "user-1"
        );
        // The verifier cannot sign, and refuses the private key.
        assert!(verifier_side.signing_key().is_err());
        let err = issuer_side.verifier().unwrap_err().to_string();
        assert!(err.contains("only verifies"), "{err}");
        // An HS256 token (say, signed with the public key's bytes) is refused.
        let confused = authz::TokenIssuer::new(
            authz::SigningKey::hs256(public.as_bytes()).unwrap(),
            "ordersys",
            "ordersys-api",
        )
        .issue("user-1")
        .unwrap()
        .token;
        assert!(verifier_side
            .verifier()
            .unwrap()
            .validate(&confused)
            .is_err());
        // A secret beside the pair is refused; a missing file is named.
        let both = Jwt {
            jwt_secret: "a-secret-of-at-least-thirty-two-bytes!".into(),
            ..verifier_side.clone()
        };
        assert!(both
            .validator()
            .unwrap_err()
            .to_string()
            .contains("not both"));
        let missing = Jwt::with_ed25519("", "/nonexistent/jwt.pub");
        let err = missing.validator().unwrap_err().to_string();
        assert!(
            err.starts_with("JWT_PUBLIC_KEY /nonexistent/jwt.pub"),
            "{err}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
