//! `TokenValidator::with_verified_cache`: what a remembered token still has to pass,
//! and what is never remembered.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use authz::{Clock, Error, SigningKey, TokenIssuer, TokenValidator};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

const NOW: i64 = 1_800_000_000;
const ISS: &str = "ordersys";
const AUD: &str = "ordersys-api";

fn key() -> SigningKey {
    SigningKey::hs256(b"0123456789abcdef0123456789abcdef-test").unwrap()
}

fn issuer(now: i64, ttl: u64) -> TokenIssuer {
    TokenIssuer::new(key(), ISS, AUD)
        .with_ttl(Duration::from_secs(ttl))
        .with_clock(Clock::fixed(now))
}

/// A validator with a memo of `capacity` and a clock the test moves.
fn validator(capacity: usize) -> (TokenValidator, Arc<AtomicI64>) {
    let now = Arc::new(AtomicI64::new(NOW));
    let reading = now.clone();
    let v = TokenValidator::new(key().verifying_key(), ISS, AUD)
        .with_leeway(Duration::from_secs(5))
        .with_clock(Clock::from_fn(move || reading.load(Ordering::SeqCst)))
        .with_verified_cache(capacity);
    (v, now)
}

#[test]
fn a_remembered_token_still_expires_and_is_not_valid_before_its_time() {
    let (v, now) = validator(100);
    let t = issuer(NOW, 60).issue("u1").unwrap();
    assert_eq!(v.validate(&t.token).unwrap(), t.claims);
    assert_eq!(v.verified_tokens(), 1);
    assert_eq!(v.validate(&t.token).unwrap(), t.claims, "remembered");
    now.store(NOW + 60 + 5, Ordering::SeqCst);
    assert_eq!(v.validate(&t.token).unwrap().sub, "u1", "within the leeway");
    now.store(NOW + 60 + 6, Ordering::SeqCst);
    assert!(matches!(v.validate(&t.token), Err(Error::Expired)));
    // Back before its nbf (a clock that jumped back): refused though remembered.
    now.store(NOW - 6, Ordering::SeqCst);
    assert!(matches!(v.validate(&t.token), Err(Error::NotYetValid)));
}

#[test]
fn only_tokens_that_pass_are_remembered() {
    let (v, _) = validator(100);
    let t = issuer(NOW, 60).issue("u1").unwrap();
    v.validate(&t.token).unwrap();
    // The remembered token with another payload (same signature): verified afresh.
    let parts: Vec<&str> = t.token.split('.').collect();
    let mut claims = t.claims.clone();
    claims.sub = "admin".into();
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap()),
        parts[2]
    );
    for _ in 0..2 {
        assert!(matches!(v.validate(&forged), Err(Error::InvalidSignature)));
    }
    let foreign = TokenIssuer::new(key(), ISS, "another-api")
        .with_clock(Clock::fixed(NOW))
        .issue("u1")
        .unwrap();
    for _ in 0..2 {
        assert!(matches!(
            v.validate(&foreign.token),
            Err(Error::InvalidAudience)
        ));
    }
    let early = issuer(NOW + 600, 60).issue("u1").unwrap();
    for _ in 0..2 {
        assert!(matches!(v.validate(&early.token), Err(Error::NotYetValid)));
    }
    assert_eq!(v.verified_tokens(), 1, "only the genuine token");
}

#[test]
fn a_full_memo_forgets_the_expired_first_then_everything() {
    let (v, now) = validator(2);
    let short = issuer(NOW, 10).issue("short").unwrap();
    let long = issuer(NOW, 600).issue("long").unwrap();
    v.validate(&short.token).unwrap();
    v.validate(&long.token).unwrap();
    assert_eq!(v.verified_tokens(), 2);
    // `short` has expired (leeway included): it makes room, `long` stays.
    now.store(NOW + 16, Ordering::SeqCst);
    let third = issuer(NOW + 16, 600).issue("third").unwrap();
    v.validate(&third.token).unwrap();
    assert_eq!(v.verified_tokens(), 2);
    // Nothing has expired: the memo starts over.
    let fourth = issuer(NOW + 16, 600).issue("fourth").unwrap();
    v.validate(&fourth.token).unwrap();
    assert_eq!(v.verified_tokens(), 1);
    for t in [&long, &third, &fourth] {
        assert_eq!(v.validate(&t.token).unwrap(), t.claims);
    }
}

#[test]
fn clones_share_the_memo_and_zero_turns_it_off() {
    let (v, _) = validator(100);
    let copy = v.clone();
    let t = issuer(NOW, 60).issue("u1").unwrap();
    copy.validate(&t.token).unwrap();
    assert_eq!(v.verified_tokens(), 1);
    let (off, _) = validator(0);
    off.validate(&t.token).unwrap();
    assert_eq!(off.verified_tokens(), 0);
    let plain = TokenValidator::new(key().verifying_key(), ISS, AUD).with_clock(Clock::fixed(NOW));
    plain.validate(&t.token).unwrap();
    assert_eq!(plain.verified_tokens(), 0);
}
