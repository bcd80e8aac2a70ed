//! Compact JWS (RFC 7515) for the two algorithms the crate offers — HS256 (RFC 7518
//! §3.2) and EdDSA with Ed25519 (RFC 8037) — and nothing else: no RSA or ECDSA code is
//! linked, no `none`, no header-chosen keys.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ed25519_dalek::Signer as _;
use hmac::{Hmac, Mac as _};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::Sha256;

use crate::{Error, Result};

/// The signature algorithms of [`SigningKey`](crate::SigningKey) and
/// [`VerifyingKey`](crate::VerifyingKey): each key signs or accepts exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Algorithm {
    /// HMAC with SHA-256 over a shared secret of at least 32 bytes.
    HS256,
    /// Ed25519 signatures (EdDSA, RFC 8037).
    EdDSA,
}

impl Algorithm {
    /// The `alg` header value (`HS256`, `EdDSA`).
    ///
    /// ```
    /// assert_eq!(authz::Algorithm::EdDSA.as_str(), "EdDSA");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HS256 => "HS256",
            Self::EdDSA => "EdDSA",
        }
    }
}

impl std::fmt::Display for Algorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What signs.
#[derive(Clone)]
pub(crate) enum Signer {
    /// The HMAC keyed with the secret (cloned per use: the key is hashed once).
    Hs256(Hmac<Sha256>),
    Ed25519(Box<ed25519_dalek::SigningKey>),
}

/// What verifies.
#[derive(Clone)]
pub(crate) enum Verifier {
    Hs256(Hmac<Sha256>),
    Ed25519(ed25519_dalek::VerifyingKey),
}

pub(crate) fn hmac(secret: &[u8]) -> Result<Hmac<Sha256>> {
    Hmac::new_from_slice(secret).map_err(|e| Error::InvalidKey(e.to_string()))
}

impl Signer {
    pub(crate) fn algorithm(&self) -> Algorithm {
        match self {
            Self::Hs256(_) => Algorithm::HS256,
            Self::Ed25519(_) => Algorithm::EdDSA,
        }
    }

    fn sign(&self, input: &[u8]) -> Vec<u8> {
        match self {
            Self::Hs256(mac) => {
                let mut mac = mac.clone();
                mac.update(input);
                mac.finalize().into_bytes().to_vec()
            }
            Self::Ed25519(key) => key.sign(input).to_bytes().to_vec(),
        }
    }
}

impl Verifier {
    pub(crate) fn algorithm(&self) -> Algorithm {
        match self {
            Self::Hs256(_) => Algorithm::HS256,
            Self::Ed25519(_) => Algorithm::EdDSA,
        }
    }

    fn verify(&self, input: &[u8], signature: &[u8]) -> Result<()> {
        match self {
            Self::Hs256(mac) => {
                let mut mac = mac.clone();
                mac.update(input);
                // Constant time.
                mac.verify_slice(signature)
                    .map_err(|_| Error::InvalidSignature)
            }
            Self::Ed25519(key) => {
                let signature = ed25519_dalek::Signature::from_slice(signature)
                    .map_err(|_| Error::InvalidSignature)?;
                // Strict: no small-order keys, no malleable (non-canonical) signatures.
                key.verify_strict(input, &signature)
                    .map_err(|_| Error::InvalidSignature)
            }
        }
    }
}

/// `header.payload.signature` of `claims`, with `{"alg":…,"typ":"JWT"}`.
pub(crate) fn encode<T: Serialize>(signer: &Signer, claims: &T) -> Result<String> {
    let header = format!(r#"{{"alg":"{}","typ":"JWT"}}"#, signer.algorithm());
    let payload = serde_json::to_vec(claims).map_err(|e| Error::Signing(e.to_string()))?;
    let mut token = URL_SAFE_NO_PAD.encode(header);
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(payload, &mut token);
    let signature = signer.sign(token.as_bytes());
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(signature, &mut token);
    Ok(token)
}

fn malformed(what: impl std::fmt::Display) -> Error {
    Error::Malformed(what.to_string())
}

/// The claims of `token` if its header names `verifier`'s algorithm (and no critical
/// extension) and its signature verifies — checked before the payload is read.
pub(crate) fn decode<T: DeserializeOwned>(token: &str, verifier: &Verifier) -> Result<T> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("not three dot-separated parts"));
    };
    let signed = &token[..header.len() + 1 + payload.len()];
    let header = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|e| malformed(format!("header: {e}")))?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| malformed(format!("header: {e}")))?;
    match header.get("alg").and_then(serde_json::Value::as_str) {
        Some(alg) if alg == verifier.algorithm().as_str() => {}
        Some(_) => return Err(Error::InvalidAlgorithm),
        None => return Err(malformed("header: no alg")),
    }
    // RFC 7515 §4.1.11: extensions marked critical must be understood; we know none.
    if header.contains_key("crit") {
        return Err(malformed("header: unsupported critical extension"));
    }
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| Error::InvalidSignature)?;
    verifier.verify(signed.as_bytes(), &signature)?;
    let payload = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|e| malformed(format!("payload: {e}")))?;
    serde_json::from_slice(&payload).map_err(|e| malformed(format!("claims: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hs() -> (Signer, Verifier) {
        let mac = hmac(&[7; 32]).unwrap();
        (Signer::Hs256(mac.clone()), Verifier::Hs256(mac))
    }

    #[test]
    fn a_token_is_three_base64url_parts_and_round_trips() {
        let (signer, verifier) = hs();
        let token = encode(&signer, &serde_json::json!({"sub": "u"})).unwrap();
        let parts: Vec<_> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(
            URL_SAFE_NO_PAD.decode(parts[0]).unwrap(),
            br#"{"alg":"HS256","typ":"JWT"}"#
        );
        assert_eq!(URL_SAFE_NO_PAD.decode(parts[2]).unwrap().len(), 32);
        let back: serde_json::Value = decode(&token, &verifier).unwrap();
        assert_eq!(back["sub"], "u");
    }

    #[test]
    fn every_part_is_checked() {
        let (signer, verifier) = hs();
        let token = encode(&signer, &serde_json::json!({"sub": "u"})).unwrap();
        let decode = |t: &str| decode::<serde_json::Value>(t, &verifier);
        assert!(matches!(
            decode(&format!("{token}.x")),
            Err(Error::Malformed(_))
        ));
        assert!(matches!(decode("a.b"), Err(Error::Malformed(_))));
        let (h, rest) = token.split_once('.').unwrap();
        let (p, s) = rest.split_once('.').unwrap();
        // A padded or otherwise non-canonical signature does not verify.
        assert!(matches!(
            decode(&format!("{h}.{p}.{s}=")),
            Err(Error::InvalidSignature)
        ));
        let mut last = s.to_owned();
        let flipped = if last.ends_with('A') { 'B' } else { 'A' };
        last.pop();
        last.push(flipped);
        assert!(matches!(
            decode(&format!("{h}.{p}.{last}")),
            Err(Error::InvalidSignature)
        ));
        // The header: alg required, alg must match, no critical extensions.
        let enc = |j: &str| URL_SAFE_NO_PAD.encode(j);
        for (header, want) in [
            (r#"{"typ":"JWT"}"#, "malformed"),
            (r#"{"alg":"EdDSA"}"#, "alg"),
            (r#"{"alg":"hs256"}"#, "alg"),
            (r#"{"alg":"HS256","crit":["exp"]}"#, "malformed"),
            ("not json", "malformed"),
        ] {
            let forged = format!("{}.{p}.{s}", enc(header));
            match (decode(&forged), want) {
                (Err(Error::InvalidAlgorithm), "alg") | (Err(Error::Malformed(_)), "malformed") => {
                }
                (other, _) => panic!("{header}: {other:?}"),
            }
        }
        // A header that is valid but not the signed one: the signature covers it.
        let other = format!("{}.{p}.{s}", enc(r#"{"alg":"HS256"}"#));
        assert!(matches!(decode(&other), Err(Error::InvalidSignature)));
    }

    #[test]
    fn the_payload_is_read_only_after_the_signature_verified() {
        let (signer, verifier) = hs();
        let token = encode(&signer, &serde_json::json!({"sub": "u"})).unwrap();
        let (h, rest) = token.split_once('.').unwrap();
        let s = rest.rsplit('.').next().unwrap();
        // Garbage payload under a valid header and a signature of another payload.
        let forged = format!("{h}.!!!.{s}");
        assert!(matches!(
            decode::<serde_json::Value>(&forged, &verifier),
            Err(Error::InvalidSignature)
        ));
        // A signed payload that is not the claims type: malformed.
        let token = encode(&signer, &serde_json::json!([1, 2])).unwrap();
        assert!(matches!(
            decode::<std::collections::HashMap<String, String>>(&token, &verifier),
            Err(Error::Malformed(_))
        ));
    }
}
