//! The admin HTTP endpoints every service serves: `/healthz` (alive), `/readyz`
//! (dependencies reachable) and `/metrics` (Prometheus text: the service's registry and
//! the SDK crates' metrics).

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

    /// `/healthz` alone, for a public port (the gateway's): alive, and nothing about the
    /// dependencies or the metrics.
    pub fn liveness(&self) -> Router {
        Router::new()
            .route("/healthz", get(healthz))
            .with_state(Arc::new(Self::new(self.service)))
    }

    /// The admin routes (`/healthz`, `/readyz`, `/metrics`), for the admin port.
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
    // The SDK crates' metrics (the `metrics` facade).
    buf.extend_from_slice(crate::telemetry::render_metrics().as_bytes());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], buf).into_response()
}

/// Limits of an HTTP server: what a slow or greedy client can hold.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// A request's headers must arrive within this, counted from the connection's first
    /// byte or the end of the previous response (default 10 s): a client trickling its
    /// headers (slowloris) or holding an idle keep-alive connection is cut off.
    pub header_read_timeout: Duration,
    /// Connections served at once (default 4096); more wait, unaccepted, in the listen
    /// backlog until one closes.
    pub max_connections: usize,
    /// How long a graceful stop waits for requests in flight (default 30 s).
    pub drain_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 4096,
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// Serve `router` on `listener` until `shutdown` resolves, with the default
/// [`HttpLimits`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, router, HttpLimits::default(), shutdown).await
}

/// Serve `router` on `listener` until `shutdown` resolves (then finish the requests in
/// flight, for at most `limits.drain_timeout`). HTTP/1.1 and HTTP/2; handlers see the
/// peer address as `ConnectInfo<SocketAddr>`.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto::Builder;

    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.header_read_timeout);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            () = &mut shutdown => break,
            s = slots.clone().acquire_owned() => s.expect("the semaphore is never closed"),
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // E.g. out of file descriptors: do not spin.
                    tracing::warn!(error = %e, "не удалось принять соединение");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let router = router.clone();
        let service =
            hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                tower::ServiceExt::oneshot(router.clone(), req.map(axum::body::Body::new))
            });
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
        let conn = graceful.watch(conn.into_owned());
        tokio::spawn(async move {
            // Errors here are the client's (reset, timed out headers): nothing to do.
            let _ = conn.await;
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("не все запросы завершились за отведённое время остановки");
    }
    Ok(())
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

    /// A server on a free port with `limits`; its address and the stop switch.
    async fn server(
        limits: HttpLimits,
    ) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve_with(
            listener,
            Admin::new("test").router(),
            limits,
            async move {
                let _ = stopped.await;
            },
        ));
        (addr, stop)
    }

    /// Read until the server closes the connection; what it sent.
    async fn read_to_close(s: &mut tokio::net::TcpStream) -> String {
        use tokio::io::AsyncReadExt as _;
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf).await;
        String::from_utf8_lossy(&buf).into_owned()
    }

    #[tokio::test]
    async fn a_client_trickling_its_headers_is_cut_off() {
        use tokio::io::AsyncWriteExt as _;
        let (addr, _stop) = server(HttpLimits {
            header_read_timeout: Duration::from_millis(300),
            ..HttpLimits::default()
        })
        .await;
        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        // …and never the blank line. The server closes the connection (a 408 at most);
        // without the timeout this read would wait forever (the test would time out).
        let got = tokio::time::timeout(Duration::from_secs(10), read_to_close(&mut slow))
            .await
            .expect("the server held a slowloris connection open");
        assert!(!got.contains("200 OK"), "{got}");
        // A well-behaved client on another connection is served meanwhile.
        let mut ok = tokio::net::TcpStream::connect(addr).await.unwrap();
        ok.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        assert!(read_to_close(&mut ok).await.starts_with("HTTP/1.1 200 OK"));
    }

    #[tokio::test]
    async fn connections_beyond_the_limit_wait_until_one_closes() {
        use tokio::io::AsyncWriteExt as _;
        let (addr, _stop) = server(HttpLimits {
            max_connections: 1,
            ..HttpLimits::default()
        })
        .await;
        let held = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut next = tokio::net::TcpStream::connect(addr).await.unwrap();
        next.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        // Not served while the first connection holds the only slot…
        let mut read = Box::pin(read_to_close(&mut next));
        assert!(
            tokio::time::timeout(Duration::from_millis(300), &mut read)
                .await
                .is_err(),
            "a second connection was served beyond the limit"
        );
        // …and served once it closes.
        drop(held);
        let got = tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .unwrap();
        assert!(got.starts_with("HTTP/1.1 200 OK"), "{got}");
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
