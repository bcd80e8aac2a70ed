//! Our compact JWS against the `jsonwebtoken` crate's, both ways, for both algorithms:
//! the tokens are standard JWTs, whoever issues or checks them.

use std::time::Duration;

use authz::{Algorithm, Claims, Clock, Error, SigningKey, TokenIssuer, TokenValidator};
use ed25519_dalek::pkcs8::{
    spki::der::pem::LineEnding, EncodePrivateKey as _, EncodePublicKey as _,
};
use jsonwebtoken::{DecodingKey, EncodingKey, Header, Validation};

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-test";
const ISS: &str = "ordersys";
const AUD: &str = "ordersys-api";
const PRIVATE: &[u8] = include_bytes!("keys/ed25519.pem");
const PUBLIC: &[u8] = include_bytes!("keys/ed25519.pub.pem");

fn now() -> i64 {
    Clock::system().now()
}

fn theirs(alg: jsonwebtoken::Algorithm) -> Validation {
    let mut v = Validation::new(alg);
    v.set_issuer(&[ISS]);
    v.set_audience(&[AUD]);
    v
}

fn claims() -> Claims {
    let now = now();
    Claims {
        sub: "user-1".into(),
        jti: uuid::Uuid::new_v4().to_string(),
        iat: now,
        nbf: now,
        exp: now + 900,
        iss: ISS.into(),
        aud: AUD.into(),
        extra: [("scope".to_owned(), "orders:read".into())]
            .into_iter()
            .collect(),
    }
}

#[test]
fn our_tokens_verify_with_jsonwebtoken_and_theirs_with_ours() {
    let cases = [
        (
            SigningKey::hs256(SECRET).unwrap(),
            jsonwebtoken::Algorithm::HS256,
            EncodingKey::from_secret(SECRET),
            DecodingKey::from_secret(SECRET),
        ),
        (
            SigningKey::ed25519_from_pem(PRIVATE, PUBLIC).unwrap(),
            jsonwebtoken::Algorithm::EdDSA,
            EncodingKey::from_ed_pem(PRIVATE).unwrap(),
            DecodingKey::from_ed_pem(PUBLIC).unwrap(),
        ),
    ];
    for (key, alg, encoding, decoding) in cases {
        assert_eq!(key.algorithm().as_str(), format!("{alg:?}"));
        let ours = TokenIssuer::new(key.clone(), ISS, AUD)
            .issue("user-1")
            .unwrap();
        let read = jsonwebtoken::decode::<Claims>(&ours.token, &decoding, &theirs(alg)).unwrap();
        assert_eq!(read.claims, ours.claims);
        assert_eq!(read.header.alg, alg);

        let claims = claims();
        let token = jsonwebtoken::encode(&Header::new(alg), &claims, &encoding).unwrap();
        let validator = TokenValidator::new(key.verifying_key(), ISS, AUD);
        assert_eq!(validator.validate(&token).unwrap(), claims);
        // Their token with a kid and no typ: extra header fields are fine.
        let mut header = Header::new(alg);
        header.kid = Some("key-1".into());
        header.typ = None;
        let token = jsonwebtoken::encode(&header, &claims, &encoding).unwrap();
        assert_eq!(validator.validate(&token).unwrap(), claims);
    }
}

#[test]
fn a_token_of_the_other_algorithm_is_refused_even_with_the_same_claims() {
    let ed = SigningKey::ed25519_from_pem(PRIVATE, PUBLIC).unwrap();
    let hs = SigningKey::hs256(SECRET).unwrap();
    let token = TokenIssuer::new(ed, ISS, AUD).issue("u").unwrap().token;
    let hs_validator = TokenValidator::new(hs.verifying_key(), ISS, AUD);
    assert!(matches!(
        hs_validator.validate(&token),
        Err(Error::InvalidAlgorithm)
    ));
    // HS256 signed with the Ed25519 *public* key as the secret (the classic key
    // confusion): refused by the EdDSA validator, whose algorithm is fixed.
    let confused = jsonwebtoken::encode(
        &Header::new(jsonwebtoken::Algorithm::HS256),
        &claims(),
        &EncodingKey::from_secret(PUBLIC),
    )
    .unwrap();
    let ed_validator = TokenValidator::new(
        authz::VerifyingKey::ed25519_from_pem(PUBLIC).unwrap(),
        ISS,
        AUD,
    );
    assert!(matches!(
        ed_validator.validate(&confused),
        Err(Error::InvalidAlgorithm)
    ));
    assert_eq!(ed_validator.clone().leeway(), Duration::from_secs(5));
    assert_eq!(Algorithm::HS256.to_string(), "HS256");
}

#[test]
fn keys_that_are_not_what_they_claim_are_refused() {
    let other = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let other_private = other.to_pkcs8_pem(LineEnding::LF).unwrap();
    let other_public = other
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    // Each half alone is a good key...
    assert!(
        SigningKey::ed25519_from_pem(other_private.as_bytes(), other_public.as_bytes()).is_ok()
    );
    // ...but not mixed with another pair's.
    for (private, public) in [
        (other_private.as_bytes(), PUBLIC),
        (PRIVATE, other_public.as_bytes()),
    ] {
        let e = SigningKey::ed25519_from_pem(private, public).unwrap_err();
        assert!(
            matches!(&e, Error::InvalidKey(m) if m.contains("not the private key's")),
            "{e}"
        );
    }
    // Not PEM, or the halves swapped: refused as keys, never panicking.
    for (private, public) in [
        (&b"garbage"[..], PUBLIC),
        (PRIVATE, &b"garbage"[..]),
        (PUBLIC, PRIVATE),
        (&[0xff, 0xfe][..], PUBLIC),
    ] {
        assert!(matches!(
            SigningKey::ed25519_from_pem(private, public),
            Err(Error::InvalidKey(_))
        ));
    }
    // A small-order public key (the identity point) cannot be trusted to verify anything.
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let weak = ed25519_dalek::VerifyingKey::from_bytes(&identity).unwrap();
    let pem = weak.to_public_key_pem(LineEnding::LF).unwrap();
    assert!(matches!(
        authz::VerifyingKey::ed25519_from_pem(pem.as_bytes()),
        Err(Error::InvalidKey(m)) if m.contains("weak")
    ));
}
