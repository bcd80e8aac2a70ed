//! Signing and verifying keys; each fixes the one algorithm it accepts.

use std::fmt;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};

use crate::{Error, Result};

/// Minimum HS256 secret length in bytes (RFC 7518 §3.2: at least the hash size).
const MIN_HMAC_SECRET: usize = 32;

/// A key that signs tokens (and can verify them).
#[derive(Clone)]
pub struct SigningKey {
    alg: Algorithm,
    encoding: EncodingKey,
    verifying: VerifyingKey,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        f.debug_struct("SigningKey")
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// An HMAC-SHA256 key from a shared secret of at least 32 bytes.
    pub fn hs256(secret: &[u8]) -> Result<Self> {
        if secret.len() < MIN_HMAC_SECRET {
            return Err(Error::InvalidKey(format!(
                "HS256 secret must be at least {MIN_HMAC_SECRET} bytes"
            )));
        }
        Ok(Self {
            alg: Algorithm::HS256,
            encoding: EncodingKey::from_secret(secret),
            verifying: VerifyingKey::hs256(secret)?,
        })
    }

    /// An Ed25519 (EdDSA) key pair from PKCS#8 PEM private and SPKI PEM public keys.
    pub fn ed25519_from_pem(private_pem: &[u8], public_pem: &[u8]) -> Result<Self> {
        Ok(Self {
            alg: Algorithm::EdDSA,
            encoding: EncodingKey::from_ed_pem(private_pem)?,
            verifying: VerifyingKey::ed25519_from_pem(public_pem)?,
        })
    }

    /// The algorithm this key signs with.
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// The matching verifying key.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.verifying.clone()
    }

    pub(crate) fn encoding(&self) -> &EncodingKey {
        &self.encoding
    }
}

/// A key that verifies tokens; only its own algorithm is accepted.
#[derive(Clone)]
pub struct VerifyingKey {
    alg: Algorithm,
    decoding: DecodingKey,
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl VerifyingKey {
    /// HS256 with a shared secret of at least 32 bytes.
    pub fn hs256(secret: &[u8]) -> Result<Self> {
        if secret.len() < MIN_HMAC_SECRET {
            return Err(Error::InvalidKey(format!(
                "HS256 secret must be at least {MIN_HMAC_SECRET} bytes"
            )));
        }
        Ok(Self {
            alg: Algorithm::HS256,
            decoding: DecodingKey::from_secret(secret),
        })
    }

    /// EdDSA (Ed25519) from an SPKI PEM public key.
    pub fn ed25519_from_pem(public_pem: &[u8]) -> Result<Self> {
        Ok(Self {
            alg: Algorithm::EdDSA,
            decoding: DecodingKey::from_ed_pem(public_pem)?,
        })
    }

    /// The one algorithm this key accepts.
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    pub(crate) fn decoding(&self) -> &DecodingKey {
        &self.decoding
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_hmac_secret_needs_32_bytes() {
        assert!(matches!(
            SigningKey::hs256(&[7; 31]),
            Err(Error::InvalidKey(_))
        ));
        assert!(matches!(
            VerifyingKey::hs256(&[7; 31]),
            Err(Error::InvalidKey(_))
        ));
        assert!(SigningKey::hs256(&[7; 32]).is_ok());
        assert!(VerifyingKey::hs256(&[7; 32]).is_ok());
    }
}
