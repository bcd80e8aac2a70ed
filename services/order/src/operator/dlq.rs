//! `GET /admin/dlq` and `POST /admin/dlq/replay`: the dead letters of the Kafka topic
//! `dlq.saga`, or — embedded, on the in-process bus — of every service's SQLite file.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use ordersys_kit::parked::{LocalDeadLetters, Shelf};
use ordersys_kit::rfc3339_millis;
use outbox::sqlite::ParkedMessage;
use outbox::Delivery;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{counted, error, unavailable, Early, Operator};
use crate::saga::Backend;

/// Where the dead letters are.
#[derive(Clone, Debug)]
pub enum Dlq {
    /// The dead-letter topic.
    Kafka {
        /// Client settings (brokers, TLS/SASL).
        client: rdkafka::ClientConfig,
        /// The dead-letter topic.
        topic: String,
        /// Publishes replays.
        publisher: outbox::kafka::KafkaPublisher,
    },
    /// The SQLite shelves of the services of this process (embedded).
    Local(LocalDeadLetters),
}

/// The most dead letters read to list or find one.
const READ_AT_MOST: usize = 10_000;

/// One dead letter, wherever it is parked.
enum Record {
    Kafka(outbox::kafka::DeadLetterRecord),
    Local(Shelf, ParkedMessage),
}

impl Record {
    fn offset(&self) -> i64 {
        match self {
            Self::Kafka(r) => r.offset,
            Self::Local(_, p) => p.seq,
        }
    }

    fn delivery(&self) -> &Delivery {
        match self {
            Self::Kafka(r) => &r.delivery,
            Self::Local(_, p) => &p.delivery,
        }
    }

    fn reason(&self) -> &str {
        match self {
            Self::Kafka(r) => &r.reason,
            Self::Local(_, p) => &p.reason,
        }
    }

    fn original_topic(&self) -> &str {
        match self {
            Self::Kafka(r) => &r.original_topic,
            Self::Local(_, p) => &p.delivery.topic,
        }
    }

    /// Whether it is at `offset` (and in `partition` / of `service`, when named).
    fn at(&self, body: &ReplayBody) -> bool {
        let place = match self {
            Self::Kafka(r) => body.partition.is_none_or(|p| r.partition == p),
            Self::Local(shelf, _) => body.service.as_deref().is_none_or(|s| shelf.service == s),
        };
        place && self.offset() == body.offset
    }

    fn json(&self) -> Value {
        let d = self.delivery();
        let headers: serde_json::Map<String, Value> = d
            .headers
            .iter()
            .map(|(k, v)| (k.to_owned(), json!(v)))
            .collect();
        let (service, partition, parked_at) = match self {
            Self::Kafka(r) => (None, Some(r.partition), r.timestamp_ms),
            Self::Local(shelf, p) => (
                Some(shelf.service),
                None,
                p.parked_at
                    .duration_since(UNIX_EPOCH)
                    .ok()
                    .map(|t| t.as_millis() as i64),
            ),
        };
        json!({
            "service": service,
            "partition": partition,
            "offset": self.offset(),
            "parked_at": parked_at.map(rfc3339_millis),
            "message_id": d.id.to_string(),
            "original_topic": self.original_topic(),
            "key": d.key,
            "reason": self.reason(),
            "payload_bytes": d.payload.len(),
            "headers": headers,
        })
    }
}

fn dlq_of<B: Backend>(op: &Operator<B>) -> Result<&Dlq, Early> {
    op.dlq.as_ref().ok_or_else(|| {
        Box::new(error(
            StatusCode::NOT_IMPLEMENTED,
            "unsupported",
            "no dead letters here to read: no Kafka client, and no service of this process parks in SQLite",
        ))
    })
}

/// Every dead letter, oldest first (Kafka: partition by partition).
async fn read<B: Backend>(op: &Operator<B>) -> Result<Vec<Record>, Early> {
    match dlq_of(op)? {
        Dlq::Kafka { client, topic, .. } => {
            outbox::kafka::read_dead_letters(client, topic, READ_AT_MOST, Duration::from_secs(15))
                .await
                .map(|records| records.into_iter().map(Record::Kafka).collect())
                .map_err(unavailable)
        }
        Dlq::Local(shelves) => {
            let mut records = Vec::new();
            for shelf in shelves.all() {
                let parked = shelf
                    .dead_letters
                    .list(READ_AT_MOST)
                    .await
                    .map_err(unavailable)?;
                records.extend(parked.into_iter().map(|p| Record::Local(shelf.clone(), p)));
            }
            Ok(records)
        }
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct DlqQuery {
    limit: Option<usize>,
}

pub(super) async fn list<B: Backend>(
    State(op): State<Arc<Operator<B>>>,
    Query(q): Query<DlqQuery>,
) -> Response {
    match read(&op).await {
        Ok(records) => {
            counted("list_dlq", "ok");
            let skip = records.len().saturating_sub(q.limit.unwrap_or(100));
            let items: Vec<Value> = records[skip..].iter().map(Record::json).collect();
            Json(json!({ "dead_letters": items, "total": records.len() })).into_response()
        }
        Err(r) => *r,
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct ReplayBody {
    /// Kafka: absent means the one dead letter at `offset` in any partition (409 if
    /// several).
    #[serde(default)]
    partition: Option<i32>,
    /// Embedded: absent means the one dead letter at `offset` of any service (409 if
    /// several).
    #[serde(default)]
    service: Option<String>,
    offset: i64,
}

/// The one dead letter `place` names: 404 when none, 409 when several.
fn find<'a>(records: &'a [Record], place: &ReplayBody) -> Result<&'a Record, Early> {
    let at: Vec<_> = records.iter().filter(|r| r.at(place)).collect();
    match at[..] {
        [record] => Ok(record),
        [] => {
            let mut named = format!("offset {}", place.offset);
            if let Some(p) = place.partition {
                named = format!("partition {p} {named}");
            }
            if let Some(s) = &place.service {
                named = format!("{named} of {s}");
            }
            Err(Box::new(error(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no dead letter at {named}"),
            )))
        }
        _ => {
            let name = match at[0] {
                Record::Local(..) => "service",
                Record::Kafka(_) => "partition",
            };
            Err(Box::new(error(
                StatusCode::CONFLICT,
                "ambiguous",
                format!(
                    "dead letters at offset {} in several places: name one ({name})",
                    place.offset
                ),
            )))
        }
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct ShowQuery {
    #[serde(default)]
    partition: Option<i32>,
    #[serde(default)]
    service: Option<String>,
}

/// `GET /admin/dlq/{offset}`: one dead letter with its payload — as text when it is
/// UTF-8 (`payload`, the saga messages' JSON), always as `payload_base64`.
pub(super) async fn show<B: Backend>(
    State(op): State<Arc<Operator<B>>>,
    Path(offset): Path<i64>,
    Query(q): Query<ShowQuery>,
) -> Response {
    let records = match read(&op).await {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let place = ReplayBody {
        partition: q.partition,
        service: q.service,
        offset,
    };
    match find(&records, &place) {
        Ok(record) => {
            counted("show_dlq", "ok");
            let payload = &record.delivery().payload;
            let mut body = record.json();
            body["payload"] = std::str::from_utf8(payload).map_or(Value::Null, |t| json!(t));
            body["payload_base64"] =
                json!(base64::engine::general_purpose::STANDARD.encode(payload));
            Json(body).into_response()
        }
        Err(r) => *r,
    }
}

pub(super) async fn replay<B: Backend>(
    State(op): State<Arc<Operator<B>>>,
    Json(body): Json<ReplayBody>,
) -> Response {
    let records = match read(&op).await {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let record = match find(&records, &body) {
        Ok(record) => record,
        Err(r) => return *r,
    };
    if record.original_topic().is_empty() {
        counted("replay_dlq", "refused");
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "no_original_topic",
            "the dead letter does not name its original topic",
        );
    }
    // A dead letter says where it came from, and anyone who could write to the
    // dead-letter topic could say anything: replays go to the saga topics only.
    if !op.saga_topics.iter().any(|t| t == record.original_topic()) {
        counted("replay_dlq", "refused");
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "not_a_saga_topic",
            format!(
                "the dead letter names {:?}: only {} and {} are replayed",
                record.original_topic(),
                op.saga_topics[0],
                op.saga_topics[1]
            ),
        );
    }
    let sent = match (record, &op.dlq) {
        (Record::Kafka(r), Some(Dlq::Kafka { publisher, .. })) => {
            let message = r.replay_message();
            outbox::Publisher::publish(publisher, &message)
                .await
                .map(|()| Some((message.id, message.topic)))
        }
        // Through the service's outbox, in one transaction with the removal.
        (Record::Local(shelf, p), _) => shelf
            .dead_letters
            .replay(&shelf.outbox, p.seq)
            .await
            .map(|id| id.map(|id| (id, p.delivery.topic.clone()))),
        // A Kafka record is read only with a Kafka publisher at hand.
        (Record::Kafka(_), _) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "no publisher",
            )
        }
    };
    let (id, topic) = match sent {
        Ok(Some(sent)) => sent,
        Ok(None) => {
            return error(
                StatusCode::NOT_FOUND,
                "not_found",
                "the dead letter was replayed or removed meanwhile",
            )
        }
        Err(e) => {
            counted("replay_dlq", "failed");
            return error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e);
        }
    };
    tracing::warn!(message_id = %record.delivery().id, replay_id = %id,
        topic = %topic, reason = %record.reason(),
        "оператор повторно отправил сообщение из очереди недоставленных");
    counted("replay_dlq", "ok");
    (
        StatusCode::ACCEPTED,
        Json(json!({ "replayed": record.json(), "message_id": id.to_string(), "topic": topic })),
    )
        .into_response()
}
