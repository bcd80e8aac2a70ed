//! Typed configuration (defaults → `CONFIG_FILE` → environment).

use serde::{Deserialize, Serialize};

/// User service settings. Environment variables are the upper-case field names.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// gRPC listen address (`GRPC_ADDR`).
    pub grpc_addr: String,
    /// Admin HTTP listen address (`ADMIN_ADDR`): /healthz, /readyz, /metrics.
    pub admin_addr: String,
    /// MySQL (`DATABASE_URL`); the database is created if missing.
    pub database_url: String,
    /// Redis (`REDIS_URL`): the JWT blacklist.
    pub redis_url: String,
    /// HS256 secret shared with the gateway (`JWT_SECRET`, at least 32 bytes; required).
    pub jwt_secret: String,
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
            jwt_secret: String::new(),
            jwt_issuer: "ordersys".into(),
            jwt_audience: "ordersys-api".into(),
            jwt_ttl_secs: 900,
            jwt_leeway_secs: 5,
            tls: Default::default(),
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("grpc_addr", &self.grpc_addr)
            .field("admin_addr", &self.admin_addr)
            .field("database_url", &"<redacted>")
            .field("redis_url", &"<redacted>")
            .field(
                "jwt_secret",
                &ordersys_kit::config::redact(&self.jwt_secret),
            )
            .field("jwt_issuer", &self.jwt_issuer)
            .field("jwt_audience", &self.jwt_audience)
            .field("jwt_ttl_secs", &self.jwt_ttl_secs)
            .field("jwt_leeway_secs", &self.jwt_leeway_secs)
            .field("tls", &self.tls)
            .finish()
    }
}

impl Config {
    /// The environment variables of this service's own settings (the shared ones —
    /// TLS — come from their structs; see [`Config::env`]).
    pub const ENV: &'static [&'static str] = &[
        "GRPC_ADDR",
        "ADMIN_ADDR",
        "DATABASE_URL",
        "REDIS_URL",
        "JWT_SECRET",
        "JWT_ISSUER",
        "JWT_AUDIENCE",
        "JWT_TTL_SECS",
        "JWT_LEEWAY_SECS",
    ];

    /// Every environment variable read.
    pub fn env() -> Vec<&'static str> {
        [Self::ENV, ordersys_kit::tls::GrpcTls::ENV].concat()
    }

    /// Load from defaults, `CONFIG_FILE` and the environment.
    pub fn load() -> anyhow::Result<Self> {
        ordersys_kit::config::load(&Self::env())
    }
}
