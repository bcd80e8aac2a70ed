//! Plumbing shared by the ordersys reference services (not part of the SDK):
//! layered typed configuration, JSON logs, the admin HTTP endpoints (`/healthz`,
//! `/readyz`, `/metrics`), correlation-id / trace-context propagation for HTTP and gRPC,
//! and the shutdown signal.

#![warn(missing_docs)]

pub mod admin;
pub mod config;
pub mod context;
pub mod db;
pub mod messaging;
pub mod metrics;
pub mod redis_client;
pub mod shutdown;
pub mod telemetry;
#[cfg(test)]
mod test_pki;
pub mod tls;

/// The sockets a gRPC service serves on.
#[derive(Debug)]
pub struct Listeners {
    /// gRPC.
    pub grpc: tokio::net::TcpListener,
    /// Admin HTTP (`/healthz`, `/readyz`, `/metrics`).
    pub admin: tokio::net::TcpListener,
}

impl Listeners {
    /// Bind both addresses.
    pub async fn bind(grpc: &str, admin: &str) -> anyhow::Result<Self> {
        Ok(Self {
            grpc: tokio::net::TcpListener::bind(grpc).await?,
            admin: tokio::net::TcpListener::bind(admin).await?,
        })
    }
}
