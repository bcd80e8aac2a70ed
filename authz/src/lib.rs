//! JWT with revocation: tokens that carry a unique `jti`, a [`Blacklist`] of revoked
//! `jti`s, an [`Authenticator`] that checks both, and (feature `tower`, default) an
//! `layer::AuthLayer` for axum/tower that authenticates `Authorization: Bearer`.
//!
//! The accepted algorithm is fixed by the key, never by the token: an HS256 validator
//! rejects an EdDSA token and vice versa, and `alg: none` is always rejected. Only
//! those two algorithms ([`Algorithm`]) are implemented — compact JWS on RustCrypto's
//! `hmac`/`sha2` and `ed25519-dalek` (constant-time HMAC comparison, strict Ed25519
//! verification, the signature checked before the payload is read) — so no RSA or ECDSA
//! code is linked; the tokens are standard JWTs any library reads.
//!
//! ```
//! use std::{sync::Arc, time::Duration};
//! use authz::{Authenticator, Error, MemoryBlacklist, SigningKey, TokenIssuer, TokenValidator};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Error> {
//! let key = SigningKey::hs256(b"an-example-secret-of-at-least-32-bytes!")?;
//! let issuer = TokenIssuer::new(key.clone(), "ordersys", "ordersys-api")
//!     .with_ttl(Duration::from_secs(900));
//! let auth = Authenticator::new(
//!     TokenValidator::new(key.verifying_key(), "ordersys", "ordersys-api"),
//!     Arc::new(MemoryBlacklist::new()),
//! );
//!
//! let issued = issuer.issue("user-42")?;
//! let claims = auth.authenticate(&issued.token).await?;
//! assert_eq!(claims.sub, "user-42");
//!
//! auth.revoke(&claims).await?; // logout
//! assert!(matches!(auth.authenticate(&issued.token).await, Err(Error::Revoked)));
//! # Ok(())
//! # }
//! ```
//!
//! # Metrics
//!
//! Through the [`metrics`](https://docs.rs/metrics) facade (a no-op until the
//! application installs a recorder), from [`Authenticator`]:
//! `authz_blacklist_hits_total` (valid tokens refused because revoked) and
//! `authz_blacklist_errors_total{policy}` (blacklist lookups that failed — an outage —,
//! with the policy applied: `fail_closed` refused the token, `fail_open` let it pass);
//! from `redis::MirroredBlacklist` (feature `redis`): `authz_blacklist_mirror_live`
//! (1 while lookups are answered from memory, 0 while Redis is asked).
//!
//! # Semver
//!
//! `Error` and `BlacklistFailure` are `#[non_exhaustive]`. `Claims` is open on purpose
//! (tests and migrations build it to [`TokenIssuer::sign`]); claims beyond the seven
//! registered ones live in its `extra` map, so new claims never change the struct.
//!
//! # Cargo features
//!
#![doc = document_features::document_features!()]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]

mod blacklist;
mod claims;
#[cfg(feature = "conformance")]
pub mod conformance;
mod error;
mod jws;
mod keys;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "sqlite")]
pub mod sqlite;
mod token;
mod verified;

#[cfg(feature = "tower")]
pub mod layer;

/// The Redis client (`redis` 1.x) behind the [`redis`] module: build the
/// `ConnectionManager` that [`RedisBlacklist`](crate::redis::RedisBlacklist) takes with
/// this one.
#[cfg(feature = "redis")]
pub use ::redis as redis_client;
/// The attribute [`Blacklist`] implementations need (re-exported from `async-trait`).
pub use async_trait::async_trait;
pub use blacklist::{revoke_token, Authenticator, Blacklist, BlacklistFailure, MemoryBlacklist};
pub use claims::Claims;
pub use error::{BoxError, Error, Result};
pub use jws::Algorithm;
pub use keys::{SigningKey, VerifyingKey};
/// The JSON values of custom claims ([`Claims::extra`]), re-exported so the version
/// always matches.
pub use serde_json;
/// `sqlx` 0.8, behind [`sqlite`]: open the pool with this one.
#[cfg(feature = "sqlite")]
pub use sqlx;
pub use token::{Clock, IssuedToken, TokenIssuer, TokenValidator, DEFAULT_LEEWAY};

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
