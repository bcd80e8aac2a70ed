//! Token validation as the gateway does it (signature, claims, our clock and leeway,
//! then the blacklist) beside a bare `jsonwebtoken::decode` of the same token.
//! Run: `cargo bench -p ordersys-authz --bench tokens`.

use std::hint::black_box;
use std::time::Duration;

use std::sync::Arc;

use authz::{Authenticator, Blacklist, MemoryBlacklist, SigningKey, TokenIssuer, TokenValidator};
use criterion::{criterion_group, criterion_main, Criterion};
use futures::FutureExt;

fn tokens(c: &mut Criterion) {
    let secret = b"a benchmark secret of enough length";
    let key = SigningKey::hs256(secret).unwrap();
    let validator = TokenValidator::new(key.verifying_key(), "ordersys", "ordersys-api");
    let issuer = TokenIssuer::new(key, "ordersys", "ordersys-api");
    let token = issuer.issue("user-1").unwrap().token;
    let blacklist = Arc::new(MemoryBlacklist::new());
    // A blacklist with entries in it, as in a running gateway.
    for i in 0..1000 {
        blacklist
            .revoke(&format!("revoked-{i}"), Duration::from_secs(600))
            .now_or_never()
            .unwrap()
            .unwrap();
    }

    c.bench_function(
        "jsonwebtoken::decode into Claims (HS256, iss/aud checked)",
        |b| {
            let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
            v.set_issuer(&["ordersys"]);
            v.set_audience(&["ordersys-api"]);
            let k = jsonwebtoken::DecodingKey::from_secret(secret);
            b.iter(|| {
                black_box(jsonwebtoken::decode::<authz::Claims>(black_box(&token), &k, &v).unwrap())
            })
        },
    );
    let auth = Authenticator::new(validator, blacklist);
    c.bench_function(
        "Authenticator::authenticate (validate + MemoryBlacklist)",
        |b| {
            b.iter(|| {
                black_box(
                    auth.authenticate(black_box(&token))
                        .now_or_never()
                        .unwrap()
                        .unwrap(),
                )
            })
        },
    );
}

criterion_group!(benches, tokens);
criterion_main!(benches);
