//! The relay's publisher: [`KafkaPublisher`] and its producer settings.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::store::Publisher;
use crate::{Error, OutboxMessage, Result, MESSAGE_ID_HEADER};

use super::kafka_err;

/// Producer settings used by [`KafkaPublisher::new`]: idempotent, `acks=all`,
/// `linger.ms=0` (the relay publishes keys concurrently, so batches form anyway while a
/// request is in flight; a linger only delays each message).
pub fn producer_config(brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        // Well inside the relay's default 30 s lease: a message is either acknowledged
        // or failed before another relay may claim it again.
        .set("message.timeout.ms", "10000")
        .set("linger.ms", "0");
    c
}

/// After this many publishes in a row failed with a timeout, the producer is re-created.
/// One: a publish that could not be delivered within `message.timeout.ms` means the broker
/// was away long enough that an idempotent producer's state there may be gone (a
/// restarted broker answers the old producer id with errors librdkafka keeps retrying
/// until the timeout). A new producer costs a few milliseconds; waiting for three
/// timeouts cost 30 s, long enough for sagas to hit their payment deadline after a
/// broker restart of a few seconds.
const TIMEOUTS_BEFORE_RECREATE: u32 = 1;

/// Publishes outbox messages to Kafka and resolves once the broker acknowledged them
/// (so the relay marks a row sent only after delivery). Key = the message key (the
/// aggregate id, so one aggregate's messages share a partition and keep their order);
/// headers = the message headers plus `message-id`.
///
/// Recovers by itself from a broker that lost the producer's state (a restarted
/// single-node broker, or a cluster that expired the producer id): on a fatal
/// idempotence error, a producer-state error (`UnknownProducerId`,
/// `OutOfOrderSequenceNumber`, `InvalidProducerEpoch`, …) or
/// a timed-out publish, the underlying producer is replaced by a new one
/// with the same settings; the failed publishes return errors as usual and the relay
/// retries them.
#[derive(Clone)]
pub struct KafkaPublisher {
    inner: std::sync::Arc<PublisherInner>,
    queue_timeout: Duration,
}

struct PublisherInner {
    config: ClientConfig,
    producer: std::sync::RwLock<(u64, FutureProducer)>,
    timeouts_in_a_row: std::sync::atomic::AtomicU32,
}

impl std::fmt::Debug for KafkaPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaPublisher").finish_non_exhaustive()
    }
}

/// Whether a producer that failed with `code` (`fatal`: librdkafka says it is unusable;
/// `timeouts`: deliveries timed out in a row) must be replaced: its idempotence state is
/// lost or fenced, it is fatal, or deliveries keep timing out (a broker that lost its
/// state answers nothing the old producer can use).
fn needs_new_producer(code: Option<RDKafkaErrorCode>, fatal: bool, timeouts: u32) -> bool {
    let state_lost = matches!(
        code,
        Some(
            RDKafkaErrorCode::UnknownProducerId
                | RDKafkaErrorCode::OutOfOrderSequenceNumber
                | RDKafkaErrorCode::InvalidProducerEpoch
                | RDKafkaErrorCode::InvalidProducerIdMapping
                | RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::Fatal
        )
    );
    state_lost || fatal || timeouts >= TIMEOUTS_BEFORE_RECREATE
}

impl KafkaPublisher {
    /// An idempotent producer (`enable.idempotence=true`, `acks=all`) for `brokers`.
    pub fn new(brokers: &str) -> Result<Self> {
        Self::from_config(&producer_config(brokers))
    }

    /// A producer from explicit librdkafka settings.
    pub fn from_config(config: &ClientConfig) -> Result<Self> {
        Ok(Self {
            inner: std::sync::Arc::new(PublisherInner {
                config: config.clone(),
                producer: std::sync::RwLock::new((0, config.create().map_err(kafka_err)?)),
                timeouts_in_a_row: std::sync::atomic::AtomicU32::new(0),
            }),
            queue_timeout: Duration::from_secs(5),
        })
    }

    /// Wait for everything in flight (call before shutdown).
    pub fn flush(&self, timeout: Duration) -> Result<()> {
        let producer = self.current().1;
        rdkafka::producer::Producer::flush(&producer, timeout).map_err(kafka_err)
    }

    /// How many times the producer was re-created after a broker lost its state.
    pub fn recreations(&self) -> u64 {
        self.current().0
    }

    fn current(&self) -> (u64, FutureProducer) {
        let guard = self
            .inner
            .producer
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (guard.0, guard.1.clone())
    }

    /// Whether `e` (from the producer of generation `gen`) means the producer must be
    /// replaced; if so, replace it (once, whoever sees it first).
    fn recover_from(&self, gen: u64, producer: &FutureProducer, e: &KafkaError) {
        use std::sync::atomic::Ordering;
        let code = e.rdkafka_error_code();
        let fatal = rdkafka::producer::Producer::client(producer)
            .fatal_error()
            .is_some();
        let timeouts = if code == Some(RDKafkaErrorCode::MessageTimedOut) {
            self.inner.timeouts_in_a_row.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            0
        };
        if !needs_new_producer(code, fatal, timeouts) {
            return;
        }
        let fresh = match self.inner.config.create::<FutureProducer>() {
            Ok(p) => p,
            Err(err) => {
                tracing::error!(error = %err, "failed to re-create the Kafka producer");
                return;
            }
        };
        let old = {
            let mut guard = self
                .inner
                .producer
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if guard.0 != gen {
                return; // someone else replaced it already
            }
            let old = std::mem::replace(&mut *guard, (gen + 1, fresh));
            self.inner.timeouts_in_a_row.store(0, Ordering::Relaxed);
            old
        };
        tracing::warn!(error = %e, fatal, timeouts, "Kafka producer re-created: the broker lost its state");
        // Dropping a producer waits for what it still holds: not on an async thread.
        std::thread::spawn(move || drop(old));
    }
}

fn kafka_headers(msg: &OutboxMessage, extra: &[(&str, &str)]) -> OwnedHeaders {
    let id = msg.id.to_string();
    let mut h = OwnedHeaders::new_with_capacity(msg.headers.len() + 1 + extra.len());
    for (k, v) in msg.headers.iter().chain(extra.iter().copied()) {
        if k != MESSAGE_ID_HEADER {
            h = h.insert(Header {
                key: k,
                value: Some(v),
            });
        }
    }
    h.insert(Header {
        key: MESSAGE_ID_HEADER,
        value: Some(&id),
    })
}

impl KafkaPublisher {
    pub(super) async fn send(&self, msg: &OutboxMessage, extra: &[(&str, &str)]) -> Result<()> {
        let record = FutureRecord::to(&msg.topic)
            .key(msg.key.as_bytes())
            .payload(msg.payload.as_ref())
            .headers(kafka_headers(msg, extra));
        let (gen, producer) = self.current();
        match producer.send(record, self.queue_timeout).await {
            Ok(_) => {
                self.inner
                    .timeouts_in_a_row
                    .store(0, std::sync::atomic::Ordering::Relaxed);
                Ok(())
            }
            Err((e, _)) => {
                self.recover_from(gen, &producer, &e);
                Err(Error::publish(&msg.topic, e))
            }
        }
    }
}

impl Publisher for KafkaPublisher {
    async fn publish(&self, msg: &OutboxMessage) -> Result<()> {
        self.send(msg, &[]).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_producer_is_replaced_when_its_state_is_lost_it_is_fatal_or_deliveries_time_out() {
        use RDKafkaErrorCode as C;
        for lost in [
            C::UnknownProducerId,
            C::OutOfOrderSequenceNumber,
            C::InvalidProducerEpoch,
            C::InvalidProducerIdMapping,
            C::ProducerFenced,
            C::Fatal,
        ] {
            assert!(needs_new_producer(Some(lost), false, 0), "{lost:?}");
        }
        assert!(needs_new_producer(Some(C::MessageTimedOut), false, 1));
        assert!(needs_new_producer(None, true, 0), "fatal");
        for kept in [None, Some(C::MessageTimedOut), Some(C::MessageSizeTooLarge)] {
            assert!(!needs_new_producer(kept, false, 0), "{kept:?}");
        }
    }
}
