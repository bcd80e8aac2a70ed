//! Saga messages nobody else can write: the order service seals every command and the
//! payment service every reply with an HMAC-SHA256 under the key the two share
//! (`SAGA_KEY`), and each checks the other's seal before the message has any effect. A
//! message without a valid seal — written to the topic by anyone else, or altered on the
//! way — is dead-lettered with the reason and counted in
//! `saga_messages_rejected_total{service}`.
//!
//! The seal covers the message key, the payload and every `saga-*` header (the saga's
//! wire fields), not the message id or the delivery headers (trace context, correlation
//! id): a dead letter replayed by the operator — a new id, the same content — still
//! verifies.
//!
//! ```
//! use ordersys_kit::saga_mac::SagaMac;
//!
//! let mac = SagaMac::new(b"a saga key of at least 32 bytes!!").unwrap();
//! let mut msg = outbox::OutboxMessage::new("saga.commands", "order-1", b"debit 10".to_vec())
//!     .with_header("saga-id", "s-1");
//! mac.seal(&mut msg);
//! assert!(mac.check(&msg.to_delivery()).is_ok());
//!
//! let mut forged = msg.to_delivery();
//! forged.payload = bytes::Bytes::from_static(b"debit 1000");
//! assert!(mac.check(&forged).is_err());
//! ```

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac as _};
use outbox::{Delivery, Headers, OutboxMessage};
use sha2::Sha256;

/// The header carrying the seal.
pub const HEADER: &str = "saga-mac";

/// The shortest key accepted, in bytes.
pub const MIN_KEY_LEN: usize = 32;

/// Seals and checks saga messages with one shared key.
#[derive(Clone)]
pub struct SagaMac {
    key: Hmac<Sha256>,
}

impl std::fmt::Debug for SagaMac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SagaMac(<redacted>)")
    }
}

impl SagaMac {
    /// A sealer with `key` (`SAGA_KEY`, at least 32 bytes).
    pub fn new(key: &[u8]) -> anyhow::Result<Self> {
        anyhow::ensure!(
            key.len() >= MIN_KEY_LEN,
            "SAGA_KEY must be at least {MIN_KEY_LEN} bytes"
        );
        Ok(Self {
            key: Hmac::new_from_slice(key).map_err(|e| anyhow::anyhow!("SAGA_KEY: {e}"))?,
        })
    }

    /// The MAC of a message's key, payload and `saga-*` headers (the seal excepted),
    /// each length-prefixed, the headers in name order.
    fn mac(&self, key: &str, payload: &[u8], headers: &Headers) -> Hmac<Sha256> {
        let mut mac = self.key.clone();
        let mut field = |bytes: &[u8]| {
            mac.update(&(bytes.len() as u64).to_be_bytes());
            mac.update(bytes);
        };
        field(b"ordersys saga message v1");
        field(key.as_bytes());
        field(payload);
        let mut saga: Vec<(&str, &str)> = headers
            .iter()
            .filter(|(n, _)| n.starts_with("saga-") && *n != HEADER)
            .collect();
        saga.sort_unstable();
        for (name, value) in saga {
            field(name.as_bytes());
            field(value.as_bytes());
        }
        mac
    }

    /// Put the seal on `msg` (replacing one it carries).
    pub fn seal(&self, msg: &mut OutboxMessage) {
        let tag = self
            .mac(&msg.key, &msg.payload, &msg.headers)
            .finalize()
            .into_bytes();
        msg.headers.insert(HEADER, URL_SAFE_NO_PAD.encode(tag));
    }

    /// Whether `delivery` carries a valid seal (checked in constant time); the reason
    /// if not.
    pub fn check(&self, delivery: &Delivery) -> Result<(), &'static str> {
        let tag = delivery
            .headers
            .get(HEADER)
            .ok_or("unsealed saga message (no saga-mac header)")?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| "malformed saga-mac header")?;
        self.mac(&delivery.key, &delivery.payload, &delivery.headers)
            .verify_slice(&tag)
            .map_err(|_| "saga message with a wrong seal (forged or altered)")
    }
}

/// The check of a consumer, if it has a key: refuse (and count for `service`) what
/// `mac` does not verify. `None`: every message is taken (the in-process bus, whose
/// messages never leave the process).
pub fn check(
    mac: Option<&SagaMac>,
    service: &'static str,
    delivery: &Delivery,
) -> Result<(), outbox::HandlerError> {
    let Some(mac) = mac else { return Ok(()) };
    mac.check(delivery).map_err(|reason| {
        metrics::counter!("saga_messages_rejected_total", "service" => service).increment(1);
        tracing::warn!(
            topic = %delivery.topic,
            message_id = %delivery.id,
            reason,
            "сообщение саги отклонено: подпись не сходится"
        );
        outbox::HandlerError::permanent(reason)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed(mac: &SagaMac) -> OutboxMessage {
        let mut msg = OutboxMessage::new("saga.replies", "order-1", b"ok".to_vec())
            .with_header("saga-id", "s-1")
            .with_header("saga-outcome", "succeeded")
            .with_header("traceparent", "00-abc-def-01");
        mac.seal(&mut msg);
        msg
    }

    #[test]
    fn whatever_the_seal_covers_cannot_change() {
        let mac = SagaMac::new(&[7; 32]).unwrap();
        let msg = sealed(&mac);
        assert_eq!(mac.check(&msg.to_delivery()), Ok(()));

        let mut d = msg.to_delivery();
        d.key = "order-2".into();
        assert!(mac.check(&d).is_err(), "key");
        let mut d = msg.to_delivery();
        d.headers.insert("saga-outcome", "failed");
        assert!(mac.check(&d).is_err(), "a saga header");
        let mut d = msg.to_delivery();
        d.headers.insert("saga-extra", "1");
        assert!(mac.check(&d).is_err(), "an added saga header");
        let other = SagaMac::new(&[8; 32]).unwrap();
        assert!(other.check(&msg.to_delivery()).is_err(), "another key");
        let unsealed = OutboxMessage::new("saga.replies", "order-1", b"ok".to_vec());
        assert!(mac.check(&unsealed.to_delivery()).is_err());
        let mut d = msg.to_delivery();
        d.headers.insert(HEADER, "%%%");
        assert!(mac.check(&d).is_err(), "malformed");

        // What it does not cover: the id (a replayed dead letter), other headers.
        let mut d = msg.to_delivery();
        d.id = outbox::MessageId::new();
        d.headers.insert("traceparent", "00-xyz-uvw-01");
        d.headers.insert("dlq-replay-of", "someone");
        assert_eq!(mac.check(&d), Ok(()));
    }

    #[test]
    fn a_short_key_is_refused_and_no_key_takes_everything() {
        assert!(SagaMac::new(&[1; 31]).is_err());
        let unsealed = OutboxMessage::new("t", "k", b"p".to_vec()).to_delivery();
        assert!(check(None, "payment", &unsealed).is_ok());
        let mac = SagaMac::new(&[1; 32]).unwrap();
        assert!(check(Some(&mac), "payment", &unsealed).is_err());
    }
}
