//! Token keys made where no one provides them: the embedded binary's and the test
//! harness's Ed25519 pair.

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _};
use rand::TryRngCore as _;

/// A new Ed25519 key pair from the operating system's random source, as PEM: the
/// private key (PKCS#8 — what `JWT_PRIVATE_KEY` names) and the public key (SPKI —
/// `JWT_PUBLIC_KEY`).
///
/// ```
/// let (private, public) = ordersys_kit::keys::ed25519_pem().unwrap();
/// assert!(private.starts_with("-----BEGIN PRIVATE KEY-----"));
/// assert!(public.starts_with("-----BEGIN PUBLIC KEY-----"));
/// assert!(authz::SigningKey::ed25519_from_pem(private.as_bytes(), public.as_bytes()).is_ok());
/// ```
pub fn ed25519_pem() -> anyhow::Result<(String, String)> {
    let mut seed = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut seed)
        .map_err(|e| anyhow::anyhow!("no randomness for a key: {e}"))?;
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    seed.fill(0);
    let private = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| anyhow::anyhow!("encoding the private key: {e}"))?;
    let public = key
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| anyhow::anyhow!("encoding the public key: {e}"))?;
    Ok((private.to_string(), public))
}

/// The public key (SPKI PEM) of the Ed25519 private key `private_pem` (PKCS#8 PEM).
///
/// ```
/// let (private, public) = ordersys_kit::keys::ed25519_pem().unwrap();
/// assert_eq!(ordersys_kit::keys::ed25519_public_pem(&private).unwrap(), public);
/// assert!(ordersys_kit::keys::ed25519_public_pem("not a key").is_err());
/// ```
pub fn ed25519_public_pem(private_pem: &str) -> anyhow::Result<String> {
    use ed25519_dalek::pkcs8::DecodePrivateKey as _;
    let key = ed25519_dalek::SigningKey::from_pkcs8_pem(private_pem)
        .map_err(|e| anyhow::anyhow!("not a PKCS#8 PEM Ed25519 private key: {e}"))?;
    key.verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| anyhow::anyhow!("encoding the public key: {e}"))
}
