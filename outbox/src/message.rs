//! Messages as stored in the outbox and as delivered to consumers.

use std::fmt;
use std::time::SystemTime;

use bytes::Bytes;
use uuid::Uuid;

/// Unique id of a message, carried to consumers (Kafka header `message-id`) and used by
/// their inbox to drop redeliveries. Time-ordered (UUID v7).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub Uuid);

impl MessageId {
    /// A new time-ordered id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    /// Parse from the hyphenated text form.
    pub fn parse(s: &str) -> Option<Self> {
        Uuid::parse_str(s).ok().map(Self)
    }
}

impl Default for MessageId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({})", self.0)
    }
}

/// Message headers: ordered text key/value pairs (e.g. `traceparent`, `correlation-id`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, String)>);

impl Headers {
    /// No headers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Set `name` (replacing an existing value).
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let name = name.into();
        let value = value.into();
        match self.0.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => self.0.push((name, value)),
        }
    }

    /// The value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Iterate over `(name, value)` pairs in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// Number of headers.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(any(feature = "mysql", feature = "sqlite"))]
impl Headers {
    /// The stored form in SQL backends: a JSON array of `[name, value]` pairs.
    pub(crate) fn to_json(&self) -> String {
        let pairs: Vec<(&str, &str)> = self.iter().collect();
        serde_json::to_string(&pairs).expect("string pairs always serialise")
    }

    /// Parse [`to_json`](Self::to_json)'s output.
    pub(crate) fn from_json(s: &str) -> crate::Result<Self> {
        let pairs: Vec<(String, String)> =
            serde_json::from_str(s).map_err(crate::Error::storage)?;
        Ok(pairs.into_iter().collect())
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut h = Headers::new();
        for (k, v) in iter {
            h.insert(k, v);
        }
        h
    }
}

/// Header under which a publisher carries the [`MessageId`].
pub const MESSAGE_ID_HEADER: &str = "message-id";

/// Header on a replayed dead letter: the id of the parked message it replays.
#[cfg_attr(not(any(feature = "kafka", feature = "sqlite")), allow(dead_code))]
pub(crate) const REPLAY_OF_HEADER: &str = "dlq-replay-of";

/// The message that replays the dead letter `parked` (which came from
/// `original_topic`): the original key, payload and headers (without the `dlq-*` ones
/// and the parked id), a `dlq-replay-of` header naming the parked message, and a new id
/// derived from the parked one (UUID v5) — the consumer's inbox recorded the parked id
/// when it dead-lettered it, and replaying the same dead letter twice yields one id.
#[cfg_attr(not(any(feature = "kafka", feature = "sqlite")), allow(dead_code))]
pub(crate) fn replay_of(parked: &Delivery, original_topic: &str) -> OutboxMessage {
    let original = parked.id;
    let id = MessageId(Uuid::new_v5(
        &Uuid::NAMESPACE_OID,
        format!("ordersys-dlq-replay:{original}").as_bytes(),
    ));
    let mut headers: Headers = parked
        .headers
        .iter()
        .filter(|(k, _)| !k.starts_with("dlq-") && *k != MESSAGE_ID_HEADER)
        .collect();
    headers.insert(REPLAY_OF_HEADER, original.to_string());
    OutboxMessage {
        id,
        topic: original_topic.to_owned(),
        key: parked.key.clone(),
        payload: parked.payload.clone(),
        headers,
        created_at: SystemTime::now(),
        attempts: 0,
    }
}

/// A message in the outbox.
///
/// ```
/// use outbox::OutboxMessage;
///
/// let msg = OutboxMessage::new("saga.commands", "order-17", b"payload".to_vec())
///     .with_header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
/// assert_eq!(msg.headers.get("traceparent").unwrap().len(), 55);
/// assert_eq!(msg.attempts, 0);
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct OutboxMessage {
    /// Unique id (also the consumer-side deduplication key).
    pub id: MessageId,
    /// Destination topic.
    pub topic: String,
    /// Partition key: the aggregate id. Messages with the same key are published in
    /// enqueue order.
    pub key: String,
    /// Opaque payload (protobuf in ordersys).
    pub payload: Bytes,
    /// Headers, e.g. `traceparent`.
    pub headers: Headers,
    /// When it was enqueued.
    pub created_at: SystemTime,
    /// Failed publish attempts so far.
    pub attempts: u32,
}

impl fmt::Debug for OutboxMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboxMessage")
            .field("id", &self.id)
            .field("topic", &self.topic)
            .field("key", &self.key)
            .field("payload_len", &self.payload.len())
            .field("headers", &self.headers)
            .field("attempts", &self.attempts)
            .finish()
    }
}

impl OutboxMessage {
    /// A new message with a fresh id. With the `opentelemetry` feature its headers start
    /// with the current span's trace context (see [`trace`](crate::trace)), so the
    /// message's journey joins the trace of the operation that enqueued it.
    pub fn new(
        topic: impl Into<String>,
        key: impl Into<String>,
        payload: impl Into<Bytes>,
    ) -> Self {
        let mut headers = Headers::new();
        crate::trace::inject_current(&mut headers);
        Self {
            id: MessageId::new(),
            topic: topic.into(),
            key: key.into(),
            payload: payload.into(),
            headers,
            created_at: SystemTime::now(),
            attempts: 0,
        }
    }

    /// Use a chosen id (e.g. derived deterministically from the business operation).
    pub fn with_id(mut self, id: MessageId) -> Self {
        self.id = id;
        self
    }

    /// Add a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name, value);
        self
    }

    /// What a consumer will see of this message.
    pub fn to_delivery(&self) -> Delivery {
        Delivery {
            id: self.id,
            topic: self.topic.clone(),
            key: self.key.clone(),
            payload: self.payload.clone(),
            headers: self.headers.clone(),
        }
    }
}

/// A message as a consumer receives it from the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The producer's message id (from the `message-id` header).
    pub id: MessageId,
    /// Topic it came from.
    pub topic: String,
    /// Partition key.
    pub key: String,
    /// Payload.
    pub payload: Bytes,
    /// Headers.
    pub headers: Headers,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A replay keeps the message's own headers and drops the dead-letter ones and the
    /// parked id; its id is derived from the parked one, the same every time.
    #[test]
    fn a_replay_keeps_the_headers_but_the_parking_ones_under_a_derived_id() {
        let parked = OutboxMessage::new("dlq.saga", "k", "p")
            .with_header("correlation-id", "c-1")
            .with_header("dlq-reason", "broken")
            .with_header("dlq-original-topic", "saga.commands")
            .with_header(MESSAGE_ID_HEADER, "old")
            .to_delivery();
        let replay = replay_of(&parked, "saga.commands");
        let names: Vec<&str> = replay.headers.iter().map(|(k, _)| k).collect();
        assert!(names.contains(&"correlation-id"), "{names:?}");
        assert_eq!(replay.headers.get("correlation-id"), Some("c-1"));
        for gone in ["dlq-reason", "dlq-original-topic", MESSAGE_ID_HEADER] {
            assert!(replay.headers.get(gone).is_none(), "{gone} kept: {names:?}");
        }
        let parked_id = parked.id.to_string();
        assert_eq!(
            replay.headers.get(REPLAY_OF_HEADER),
            Some(parked_id.as_str())
        );
        assert_eq!(
            (replay.topic.as_str(), replay.key.as_str()),
            ("saga.commands", "k")
        );
        assert_eq!((&replay.payload[..], replay.attempts), (&b"p"[..], 0));
        assert_ne!(replay.id, parked.id);
        assert_eq!(replay.id, replay_of(&parked, "saga.commands").id);
    }

    #[test]
    fn a_message_id_prints_and_parses_back() {
        let id = MessageId::new();
        assert_eq!(id.to_string(), id.0.to_string());
        assert_eq!(MessageId::parse(&id.to_string()), Some(id));
        assert_eq!(MessageId::parse("not-an-id"), None);
        assert_eq!(format!("{id:?}"), format!("MessageId({})", id.0));
    }

    #[test]
    fn headers_keep_one_value_per_name_in_insertion_order() {
        let mut h = Headers::new();
        assert!(h.is_empty());
        assert_eq!(h.len(), 0);
        h.insert("a", "1");
        h.insert("b", "2");
        h.insert("a", "3");
        assert_eq!(h.len(), 2);
        assert!(!h.is_empty());
        assert_eq!(h.get("a"), Some("3"));
        assert_eq!(h.get("c"), None);
        assert_eq!(h.iter().collect::<Vec<_>>(), [("a", "3"), ("b", "2")]);
        let collected: Headers = [("x", "1"), ("x", "2")].into_iter().collect();
        assert_eq!(collected.iter().collect::<Vec<_>>(), [("x", "2")]);
    }
}
