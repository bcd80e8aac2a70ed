//! The admin HTTP endpoints every service serves: `/healthz` (alive), `/readyz`
//! (dependencies reachable) and `/metrics` (Prometheus text).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus::{Encoder, Registry, TextEncoder};

/// A readiness check: resolves to `Err(reason)` when a dependency is not usable.
pub type Check =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// What the admin endpoints report on.
#[derive(Clone)]
pub struct Admin {
    service: &'static str,
    checks: Vec<(&'static str, Check)>,
    registry: Registry,
    /// Served to the public: failed checks are named, their error text only logged.
    public: bool,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

impl Admin {
    /// Endpoints for `service` with a fresh metrics registry.
    pub fn new(service: &'static str) -> Self {
        Self {
            service,
            checks: Vec::new(),
            registry: Registry::new(),
            public: false,
        }
    }

    /// For endpoints on a public port (the gateway's): `/readyz` names the checks that
    /// failed but not why — backend error text (hosts, ports, driver messages) is for
    /// the logs, not for anyone on the internet.
    pub fn public(mut self) -> Self {
        self.public = true;
        self
    }

    /// Add a readiness check named `name`.
    pub fn check<F, Fut>(mut self, name: &'static str, f: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.checks.push((name, Arc::new(move || Box::pin(f()))));
        self
    }

    /// Readiness of a MySQL pool (`SELECT 1`).
    pub fn mysql(self, pool: sqlx::MySqlPool) -> Self {
        self.check("mysql", move || {
            let pool = pool.clone();
            async move {
                sqlx::query("SELECT 1")
                    .execute(&pool)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
        })
    }

    /// Readiness of a SQLite pool (`SELECT 1`).
    pub fn sqlite(self, pool: sqlx::SqlitePool) -> Self {
        self.check("sqlite", move || {
            let pool = pool.clone();
            async move {
                sqlx::query("SELECT 1")
                    .execute(&pool)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
        })
    }

    /// Readiness of Redis (`PING`).
    pub fn redis(self, conn: redis::aio::ConnectionManager) -> Self {
        self.check("redis", move || {
            let mut conn = conn.clone();
            async move {
                redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
        })
    }

    /// The metrics registry (register the service's collectors here).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Run every check (each bounded by 2 s); `Err` lists what failed.
    pub async fn ready(&self) -> Result<(), Vec<(String, String)>> {
        let results =
            futures::future::join_all(self.checks.iter().map(|(name, check)| async move {
                let r = match tokio::time::timeout(Duration::from_secs(2), check()).await {
                    Ok(r) => r,
                    Err(_) => Err("timed out".to_owned()),
                };
                (name.to_string(), r)
            }))
            .await;
        let failed: Vec<(String, String)> = results
            .into_iter()
            .filter_map(|(n, r)| r.err().map(|e| (n, e)))
            .collect();
        if failed.is_empty() {
            Ok(())
        } else {
            Err(failed)
        }
    }

    /// The admin routes (mount on the admin port, or merge into the gateway's router).
    pub fn router(self) -> Router {
        Router::new()
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .with_state(Arc::new(self))
    }
}

// `pid` identifies the process answering, so a supervisor (or a test harness) knows it
// reached the instance it started and not another one on a reused port.
async fn healthz(State(a): State<Arc<Admin>>) -> impl IntoResponse {
    Json(serde_json::json!({ "status": "ok", "service": a.service, "pid": std::process::id() }))
}

async fn readyz(State(a): State<Arc<Admin>>) -> Response {
    match a.ready().await {
        Ok(()) => {
            Json(serde_json::json!({ "status": "ready", "service": a.service, "pid": std::process::id() }))
                .into_response()
        }
        Err(failed) => {
            let checks: serde_json::Map<String, serde_json::Value> = failed
                .into_iter()
                .map(|(n, e)| {
                    if a.public {
                        tracing::warn!(check = %n, error = %e, "проверка готовности не прошла");
                        (n, "unavailable".into())
                    } else {
                        (n, e.into())
                    }
                })
                .collect();
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(serde_json::json!({ "status": "not_ready", "service": a.service, "pid": std::process::id(), "failed": checks })),
            )
                .into_response()
        }
    }
}

async fn metrics(State(a): State<Arc<Admin>>) -> Response {
    let mut buf = Vec::new();
    let families = a.registry.gather();
    if TextEncoder::new().encode(&families, &mut buf).is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], buf).into_response()
}

/// Serve `router` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt as _;

    async fn readyz_body(admin: Admin) -> (StatusCode, serde_json::Value) {
        let r = admin
            .router()
            .oneshot(
                axum::http::Request::get("/readyz")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = r.status();
        let bytes = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    fn failing() -> Admin {
        Admin::new("test").check("mysql", || async {
            Err("error connecting to 10.0.0.7:3306: access denied for user 'svc'".to_owned())
        })
    }

    #[tokio::test]
    async fn a_public_readyz_names_the_failed_check_without_its_error_text() {
        let (status, body) = readyz_body(failing().public()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["failed"]["mysql"], "unavailable");
        assert!(!body.to_string().contains("10.0.0.7"), "{body}");
        // The admin port (internal) keeps the detail.
        let (_, body) = readyz_body(failing()).await;
        assert!(body["failed"]["mysql"]
            .as_str()
            .unwrap()
            .contains("10.0.0.7"));
    }
}
