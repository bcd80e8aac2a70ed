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
    /// HS256 secret shared with the gateway (`JWT_SECRET`, at least 32 bytes; required).
    pub jwt_secret: Secret,
    /// `iss` (`JWT_ISSUER`).
    pub jwt_issuer: String,
    /// `aud` (`JWT_AUDIENCE`).
    pub jwt_audience: String,
    /// Token lifetime in seconds (`JWT_TTL_SECS`, default 900).
    pub jwt_ttl_secs: u64,
    /// Seconds an expired (or not yet valid) token is still accepted, for clock skew
    /// (`JWT_LEEWAY_SECS`, default 5); a logout revokes a token this much longer.
    pub jwt_leeway_secs: u64,
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
            jwt_secret: Secret::default(),
            jwt_issuer: "ordersys".into(),
            jwt_audience: "ordersys-api".into(),
            jwt_ttl_secs: 900,
            jwt_leeway_secs: 5,
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
