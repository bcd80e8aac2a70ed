//! Operator tools on a port of their own (`OPERATOR_ADDR`, loopback by default; never on
//! the public gateway), behind `Authorization: Bearer $ADMIN_TOKEN` — off when
//! `ADMIN_TOKEN` is unset:
//!
//! | route | what |
//! |---|---|
//! | `GET /admin/sagas?status=&older_than_secs=&overdue=&limit=` | sagas by status and age, least recently moved first; `overdue=true`: a step deadline has passed (e.g. `PAYMENT_PENDING` past the payment deadline) |
//! | `GET /admin/sagas/{id}` | one saga, its orders and its history: every event, state change and command, with timestamps and trace ids |
//! | `POST /admin/sagas/{id}/compensate` `{"reason": "…"}` | force compensation: a running saga gives up its awaited step and compensates; a compensating one sends its pending compensations again |
//! | `GET /admin/dlq?limit=` | what `dlq.saga` holds (embedded: the services' SQLite files): id, original topic, key, reason, headers |
//! | `POST /admin/dlq/replay` `{"offset": 7}` (`"partition"`, embedded `"service"`, needed only when several have that offset) | publish a dead letter to its original topic again, after a fix (a derived id: replaying the same one twice is processed once; embedded, through the service's outbox in one transaction with its removal) |
//!
//! Every action is logged (warn level, with the operator's reason) and counted in
//! `ordersys_operator_actions_total{action,result}`. The CLI `ordersys-admin` calls
//! these routes.

mod dlq;

use ordersys_kit::rfc3339_millis;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use outbox::idempotency::Cache;
use outbox::{RelayHandle, Transactional};
use saga_core::{SagaEvent, SagaId, SagaInstance, SagaQuery, SagaStatus, SagaStore, StepStatus};
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

pub use self::dlq::Dlq;
use crate::repository::OrderRepo;
use crate::saga::{invalidate, Backend, OrderOrchestrator};

/// The operator tools of one order service.
pub struct Operator<B: Backend> {
    orchestrator: Arc<OrderOrchestrator<B>>,
    repo: B::Repo,
    cache: Arc<dyn Cache>,
    relay: RelayHandle,
    dlq: Option<Dlq>,
    saga_topics: [String; 2],
    token: String,
}

/// The shortest `ADMIN_TOKEN` the service starts with.
pub const MIN_TOKEN_LEN: usize = 32;

impl<B: Backend> std::fmt::Debug for Operator<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Operator")
            .field("dlq", &self.dlq)
            .finish_non_exhaustive()
    }
}

impl<B: Backend> Operator<B> {
    /// Tools over the service's parts, for `token` (`ADMIN_TOKEN`). Dead letters are
    /// replayed only to `saga_topics` (commands, replies), whatever topic a parked
    /// record names.
    pub fn new(
        orchestrator: Arc<OrderOrchestrator<B>>,
        repo: B::Repo,
        cache: Arc<dyn Cache>,
        relay: RelayHandle,
        dlq: Option<Dlq>,
        saga_topics: [String; 2],
        token: String,
    ) -> Self {
        Self {
            orchestrator,
            repo,
            cache,
            relay,
            dlq,
            saga_topics,
            token,
        }
    }

    /// The routes, behind the token check.
    pub fn router(self) -> Router {
        let op = Arc::new(self);
        Router::new()
            .route("/admin/sagas", get(list::<B>))
            .route("/admin/sagas/{id}", get(show::<B>))
            .route("/admin/sagas/{id}/compensate", post(compensate::<B>))
            .route("/admin/dlq", get(dlq::list::<B>))
            .route("/admin/dlq/replay", post(dlq::replay::<B>))
            .route("/admin/dlq/{offset}", get(dlq::show::<B>))
            .route_layer(axum::middleware::from_fn_with_state(
                op.clone(),
                authorize::<B>,
            ))
            .with_state(op)
    }
}

fn error(status: StatusCode, code: &str, message: impl std::fmt::Display) -> Response {
    (
        status,
        Json(json!({ "error": { "code": code, "message": message.to_string() } })),
    )
        .into_response()
}

fn counted(action: &'static str, result: &'static str) {
    metrics::counter!("ordersys_operator_actions_total", "action" => action, "result" => result)
        .increment(1);
}

/// Equal in time independent of where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn authorize<B: Backend>(
    State(op): State<Arc<Operator<B>>>,
    req: Request,
    next: Next,
) -> Response {
    let given = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !same(given.as_bytes(), op.token.as_bytes()) {
        tracing::warn!(path = %req.uri().path(), "запрос к инструментам оператора без верного токена");
        counted("authenticate", "refused");
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "an operator token is required (Authorization: Bearer $ADMIN_TOKEN)",
        );
    }
    next.run(req).await
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn saga_json<B: Backend>(op: &Operator<B>, s: &SagaInstance, now: i64) -> Value {
    let label = op
        .orchestrator
        .definition_of(s)
        .map(|d| s.state.label(d))
        .unwrap_or_else(|_| s.state.status.as_str().to_owned());
    let steps: Vec<Value> = s
        .state
        .steps
        .iter()
        .map(|st| json!(format!("{st:?}").to_uppercase()))
        .collect();
    json!({
        "id": s.id.0.to_string(),
        "saga_type": s.saga_type,
        "definition_version": s.definition_version,
        "status": s.state.status.as_str(),
        "state": label,
        "steps": steps,
        "failure_reason": s.state.failure_reason,
        "version": s.version,
        "created_at": rfc3339_millis(s.created_at),
        "updated_at": rfc3339_millis(s.updated_at),
        "idle_secs": (now - s.updated_at).max(0) / 1000,
        "next_deadline": s.next_deadline().map(rfc3339_millis),
        "overdue": s.next_deadline().is_some_and(|d| d <= now),
    })
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    status: Option<String>,
    older_than_secs: Option<u64>,
    overdue: Option<bool>,
    limit: Option<usize>,
}

async fn list<B: Backend>(
    State(op): State<Arc<Operator<B>>>,
    Query(q): Query<ListQuery>,
) -> Response {
    let status = match q.status.as_deref().map(str::to_ascii_uppercase) {
        None => None,
        Some(s) => match SagaStatus::parse(&s) {
            Some(s) => Some(s),
            None => {
                return error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "validation_failed",
                    format!(
                        "status {s:?}: one of STARTED, RUNNING, COMPENSATING, COMPLETED, FAILED"
                    ),
                )
            }
        },
    };
    let now = now_ms();
    let query = SagaQuery {
        status,
        updated_before_ms: q.older_than_secs.map(|s| now - (s as i64) * 1000),
        deadline_before_ms: q.overdue.unwrap_or(false).then_some(now),
        limit: q.limit.unwrap_or(100),
    };
    match op.orchestrator.store().find(&query).await {
        Ok(Some(sagas)) => {
            counted("list_sagas", "ok");
            let items: Vec<Value> = sagas.iter().map(|s| saga_json(&op, s, now)).collect();
            Json(json!({ "sagas": items })).into_response()
        }
        Ok(None) => error(
            StatusCode::NOT_IMPLEMENTED,
            "unsupported",
            "the saga store cannot list",
        ),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e),
    }
}

/// A handler's early answer (boxed: a `Response` is large).
type Early = Box<Response>;

fn saga_id(id: &str) -> Result<SagaId, Early> {
    Uuid::parse_str(id).map(SagaId).map_err(|_| {
        Box::new(error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            format!("{id:?} is not a saga id (UUID)"),
        ))
    })
}

fn unavailable(e: impl std::fmt::Display) -> Early {
    Box::new(error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e))
}

async fn load<B: Backend>(op: &Operator<B>, id: SagaId) -> Result<SagaInstance, Early> {
    let store = op.orchestrator.store();
    let mut tx = store.begin().await.map_err(unavailable)?;
    let saga = store.load(&mut tx, id).await.map_err(unavailable)?;
    drop(tx); // read only: rolled back
    saga.ok_or_else(|| {
        Box::new(error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no saga {}", id.0),
        ))
    })
}

async fn show<B: Backend>(State(op): State<Arc<Operator<B>>>, Path(id): Path<String>) -> Response {
    let id = match saga_id(&id) {
        Ok(id) => id,
        Err(r) => return *r,
    };
    let saga = match load(&op, id).await {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let history = match op.orchestrator.store().history(id).await {
        Ok(h) => h.unwrap_or_default(),
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e),
    };
    let orders: Vec<String> = op
        .repo
        .orders_of_saga(id.0)
        .await
        .unwrap_or_default()
        .iter()
        .map(Uuid::to_string)
        .collect();
    counted("show_saga", "ok");
    let history: Vec<Value> = history
        .iter()
        .map(|h| {
            json!({ "version": h.version, "at": rfc3339_millis(h.at_ms), "kind": h.kind,
                "name": h.name, "detail": h.detail, "trace_id": h.trace_id })
        })
        .collect();
    // The definition drawn with this instance's place in it (Mermaid).
    let diagram = op
        .orchestrator
        .definition_of(&saga)
        .ok()
        .map(|d| d.to_mermaid_at(&saga.state));
    Json(
        json!({ "saga": saga_json(&op, &saga, now_ms()), "orders": orders,
        "history": history, "diagram": diagram }),
    )
    .into_response()
}

#[derive(Debug, Default, Deserialize)]
struct CompensateBody {
    #[serde(default)]
    reason: String,
}

async fn compensate<B: Backend>(
    State(op): State<Arc<Operator<B>>>,
    Path(id): Path<String>,
    body: Option<Json<CompensateBody>>,
) -> Response {
    let id = match saga_id(&id) {
        Ok(id) => id,
        Err(r) => return *r,
    };
    let reason = body.map(|b| b.0.reason).unwrap_or_default();
    let reason = if reason.trim().is_empty() {
        "forced by an operator".to_owned()
    } else {
        format!("forced by an operator: {}", reason.trim())
    };
    let saga = match load(&op, id).await {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let events: Vec<SagaEvent> = match saga.state.status {
        SagaStatus::Started | SagaStatus::Running => vec![SagaEvent::Abort {
            reason: reason.clone(),
        }],
        // Send the pending compensations again (as their deadline would).
        SagaStatus::Compensating => saga
            .state
            .steps
            .iter()
            .enumerate()
            .filter(|(_, s)| **s == StepStatus::Compensating)
            .map(|(step, _)| SagaEvent::DeadlineExpired { step })
            .collect(),
        SagaStatus::Completed | SagaStatus::Failed => Vec::new(),
    };
    if events.is_empty() {
        counted("compensate", "refused");
        return error(
            StatusCode::CONFLICT,
            "saga_ended",
            format!(
                "saga {} is {}: nothing to compensate",
                id.0, saga.state.status
            ),
        );
    }
    let mut after = saga;
    for event in events {
        match op.orchestrator.handle_and_commit(id, event).await {
            Ok(applied) => after = applied.saga,
            Err(e) => {
                counted("compensate", "failed");
                return error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e);
            }
        }
    }
    op.relay.wake();
    for order in op.repo.orders_of_saga(id.0).await.unwrap_or_default() {
        invalidate(&*op.cache, order).await;
    }
    tracing::warn!(saga_id = %id, reason = %reason, status = %after.state.status,
        "оператор принудительно запустил компенсацию саги");
    counted("compensate", "ok");
    (
        StatusCode::ACCEPTED,
        Json(json!({ "saga": saga_json(&op, &after, now_ms()) })),
    )
        .into_response()
}
