//! Typed configuration (defaults → `CONFIG_FILE` → environment).

use ordersys_kit::config::Secret;
use serde::{Deserialize, Serialize};

/// User service settings. Environment variables are the upper-case field names.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// gRPC listen address (`GRPC_ADDR`).
    pub grpc_addr: String,
    /// Admin HTTP listen address (`ADMIN_ADDR`): /healthz, /readyz, /metrics.
    pub admin_addr: String,
    /// MySQL (`DATABASE_URL`); the database is created if missing.
    pub database_url: Secret,
    /// Redis (`REDIS_URL`): the JWT blacklist.
    pub redis_url: Secret,
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
            grpc_addr: "0.0.0.0:50051".into(),
            admin_addr: "0.0.0.0:8081".into(),
            database_url: "mysql://root@127.0.0.1:3306/ordersys_user".into(),
            redis_url: "redis://127.0.0.1:6379/".into(),
            jwt: Default::default(),
            jwt_ttl_secs: 900,
            tls: Default::default(),
        }
    }
}

impl Config {
    /// Load from defaults, `CONFIG_FILE` and the environment.
    pub fn load() -> anyhow::Result<Self> {
        ordersys_kit::config::load()
    }
}
