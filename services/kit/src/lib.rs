//! Plumbing shared by the ordersys reference services (not part of the SDK):
//! layered typed configuration, JSON logs, the admin HTTP endpoints (`/healthz`,
//! `/readyz`, `/metrics`), correlation-id / trace-context propagation for HTTP and gRPC,
//! and the shutdown signal.

#![warn(missing_docs)]

pub mod admin;
pub mod callers;
pub mod cli;
pub mod config;
pub mod context;
pub mod db;
pub mod end_user;
pub mod keys;
pub mod launch;
pub mod local_grpc;
pub mod messaging;
pub mod metrics;
pub mod outbox_store;
pub mod parked;
pub mod redis_client;
pub mod retry;
pub mod saga_mac;
pub mod shutdown;
pub mod telemetry;
#[cfg(test)]
mod test_pki;
pub mod tls;

/// The sockets a gRPC service serves on.
#[derive(Debug)]
pub struct Listeners {
    /// gRPC; `None`: in process only ([`Listeners::in_process`]).
    pub grpc: Option<tokio::net::TcpListener>,
    /// Admin HTTP (`/healthz`, `/readyz`, `/metrics`).
    pub admin: tokio::net::TcpListener,
    /// Where the service also serves its gRPC in process (the one-process system), if
    /// anywhere: see [`local_grpc`].
    pub local: Option<local_grpc::LocalGrpc>,
}

impl Listeners {
    /// Bind both addresses.
    pub async fn bind(grpc: &str, admin: &str) -> anyhow::Result<Self> {
        Ok(Self {
            grpc: Some(tokio::net::TcpListener::bind(grpc).await?),
            admin: tokio::net::TcpListener::bind(admin).await?,
            local: None,
        })
    }

    /// gRPC in process only, to the clients of `local` (no socket: nothing outside the
    /// process can call the service); admin HTTP on `admin`.
    pub async fn in_process(admin: &str, local: local_grpc::LocalGrpc) -> anyhow::Result<Self> {
        Ok(Self {
            grpc: None,
            admin: tokio::net::TcpListener::bind(admin).await?,
            local: Some(local),
        })
    }

    /// Also serve gRPC in process, to the clients of `local`.
    pub fn with_local(mut self, local: local_grpc::LocalGrpc) -> Self {
        self.local = Some(local);
        self
    }
}

/// Unix milliseconds as the services show time to people and clients: RFC 3339 in UTC
/// with milliseconds (negative clamped to the epoch).
///
/// ```
/// assert_eq!(ordersys_kit::rfc3339_millis(1_796_216_979_782), "2026-12-02T13:09:39.782Z");
/// ```
pub fn rfc3339_millis(unix_ms: i64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(unix_ms.max(0) as u64);
    humantime::format_rfc3339_millis(at).to_string()
}

/// Serve `routes` in process to the clients of `local` (a service's
/// [`Listeners::local`]), behind the layers its socket's server has: the request context
/// and `metrics`. Nothing when `local` is `None`.
pub fn serve_in_process(
    local: Option<&local_grpc::LocalGrpc>,
    routes: &tonic::service::Routes,
    metrics: &metrics::RequestMetricsLayer,
) {
    if let Some(local) = local {
        local.serve(
            tower::ServiceBuilder::new()
                .layer(context::ContextLayer)
                .layer(metrics.clone())
                .service(routes.clone()),
        );
    }
}
