//! Signing and verifying keys; each fixes the one algorithm it accepts.

use std::fmt;

use ed25519_dalek::pkcs8::{DecodePrivateKey as _, DecodePublicKey as _};

use crate::jws::{hmac, Signer, Verifier};
use crate::{Algorithm, Error, Result};

/// Minimum HS256 secret length in bytes (RFC 7518 §3.2: at least the hash size).
const MIN_HMAC_SECRET: usize = 32;

/// A key that signs tokens (and can verify them).
#[derive(Clone)]
pub struct SigningKey {
    signer: Signer,
    verifying: VerifyingKey,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        f.debug_struct("SigningKey")
            .field("alg", &self.algorithm())
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
            signer: Signer::Hs256(hmac(secret)?),
            verifying: VerifyingKey::hs256(secret)?,
        })
    }

    /// An Ed25519 (EdDSA) key pair from PKCS#8 PEM private and SPKI PEM public keys.
    /// The public key must be the private key's: a pair that does not match is
    /// [`Error::InvalidKey`] (its tokens would never verify).
    pub fn ed25519_from_pem(private_pem: &[u8], public_pem: &[u8]) -> Result<Self> {
        let private = std::str::from_utf8(private_pem)
            .ok()
            .and_then(|pem| ed25519_dalek::SigningKey::from_pkcs8_pem(pem).ok())
            .ok_or_else(|| Error::InvalidKey("not a PKCS#8 PEM Ed25519 private key".into()))?;
        let verifying = VerifyingKey::ed25519_from_pem(public_pem)?;
        if !matches!(&verifying.verifier, Verifier::Ed25519(public) if *public == private.verifying_key())
        {
            return Err(Error::InvalidKey(
                "the Ed25519 public key is not the private key's".into(),
            ));
        }
        Ok(Self {
            signer: Signer::Ed25519(Box::new(private)),
            verifying,
        })
    }

    /// The algorithm this key signs with.
    pub fn algorithm(&self) -> Algorithm {
        self.signer.algorithm()
    }

    /// The matching verifying key.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.verifying.clone()
    }

    pub(crate) fn signer(&self) -> &Signer {
        &self.signer
    }
}

/// A key that verifies tokens; only its own algorithm is accepted.
#[derive(Clone)]
pub struct VerifyingKey {
    verifier: Verifier,
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("alg", &self.algorithm())
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
            verifier: Verifier::Hs256(hmac(secret)?),
        })
    }

    /// EdDSA (Ed25519) from an SPKI PEM public key.
    pub fn ed25519_from_pem(public_pem: &[u8]) -> Result<Self> {
        let public = std::str::from_utf8(public_pem)
            .ok()
            .and_then(|pem| ed25519_dalek::VerifyingKey::from_public_key_pem(pem).ok())
            .ok_or_else(|| Error::InvalidKey("not an SPKI PEM Ed25519 public key".into()))?;
        if public.is_weak() {
            return Err(Error::InvalidKey("a weak (small-order) Ed25519 key".into()));
        }
        Ok(Self {
            verifier: Verifier::Ed25519(public),
        })
    }

    /// The one algorithm this key accepts.
    pub fn algorithm(&self) -> Algorithm {
        self.verifier.algorithm()
    }

    pub(crate) fn verifier(&self) -> &Verifier {
        &self.verifier
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
