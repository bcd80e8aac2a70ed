//! Typed configuration (defaults → `CONFIG_FILE` → environment).

use ordersys_kit::config::{Listen, Stores};
use serde::{Deserialize, Serialize};

/// User service settings. Environment variables are the upper-case field names.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// `GRPC_ADDR` (default 0.0.0.0:50051), `ADMIN_ADDR` (default 0.0.0.0:8081):
    /// /healthz, /readyz, /metrics.
    #[serde(flatten)]
    pub listen: Listen,
    /// `DATABASE_URL` (default the local `ordersys_user`), `REDIS_URL`: the JWT
    /// blacklist.
    #[serde(flatten)]
    pub stores: Stores,
    /// The token settings shared with the gateway (`JWT_SECRET`, `JWT_ISSUER`,
    /// `JWT_AUDIENCE`, `JWT_LEEWAY_SECS`).
    #[serde(flatten)]
    pub jwt: ordersys_kit::config::Jwt,
    /// Token lifetime in seconds (`JWT_TTL_SECS`, default 900).
    pub jwt_ttl_secs: u64,
    /// Mutual TLS of the internal gRPC (`TLS_CERT`, `TLS_KEY`, `TLS_CA`;
    /// `GRPC_INSECURE=true` for plain text in development).
    #[serde(flatten)]
    pub tls: ordersys_kit::tls::GrpcTls,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: Listen::on_ports(50051, 8081),
            stores: Stores::local("ordersys_user"),
            jwt: Default::default(),
            jwt_ttl_secs: 900,
            tls: Default::default(),
        }
    }
}
