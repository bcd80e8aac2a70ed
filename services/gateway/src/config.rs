//! Typed configuration (defaults → `CONFIG_FILE` → environment).

use ordersys_kit::config::Secret;
use serde::{Deserialize, Serialize};

/// Gateway settings. Environment variables are the upper-case field names.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// REST listen address (`HTTP_ADDR`, default 0.0.0.0:8080): the public API, its
    /// OpenAPI document and `/docs`, and `/healthz` (liveness) — nothing else.
    pub http_addr: String,
    /// Admin listen address (`ADMIN_ADDR`, default 0.0.0.0:8084): `/healthz`, `/readyz`
    /// and `/metrics`, off the public port like every service's (for Prometheus and the
    /// orchestrator's probes; keep it off the internet).
    pub admin_addr: String,
    /// The user service (`USER_SERVICE_URL`). A DNS name stands for every address it
    /// resolves to (a replica each, with its own breaker); a comma-separated list of
    /// URLs with IP addresses or `localhost` is a fixed set of replicas. The same for
    /// the other two.
    pub user_service_url: String,
    /// The order service (`ORDER_SERVICE_URL`).
    pub order_service_url: String,
    /// The payment service (`PAYMENT_SERVICE_URL`).
    pub payment_service_url: String,
    /// Redis (`REDIS_URL`): JWT blacklist and rate limits.
    pub redis_url: Secret,
    /// The token settings shared with the user service (`JWT_SECRET`, `JWT_ISSUER`,
    /// `JWT_AUDIENCE`, `JWT_LEEWAY_SECS`).
    #[serde(flatten)]
    pub jwt: ordersys_kit::config::Jwt,
    /// Requests per minute per client IP (`RATE_LIMIT_PER_MINUTE`, default 100).
    pub rate_limit_per_minute: u32,
    /// Redis key prefix of the rate-limit counters (`RATE_LIMIT_KEY_PREFIX`, default `rate:`).
    pub rate_limit_key_prefix: String,
    /// Login attempts per account (e-mail) per `LOGIN_WINDOW_SECS` whose password the
    /// user service judged (right or wrong), from any number of addresses (`LOGIN_ATTEMPTS_PER_ACCOUNT`, default 10): beyond, `429` with
    /// `Retry-After` until the window ends — a distributed guesser is slowed per
    /// account, and can hold an account's logins back for at most a window at a time.
    pub login_attempts_per_account: u32,
    /// The window of `LOGIN_ATTEMPTS_PER_ACCOUNT` in seconds (`LOGIN_WINDOW_SECS`,
    /// default 300).
    pub login_window_secs: u64,
    /// Revoked tokens are mirrored in memory and the mirror's subscription proves itself
    /// every this many ms (`BLACKLIST_HEARTBEAT_MS`, default 1000): a revocation reaches
    /// every gateway through a Redis channel, and a silently broken subscription is
    /// noticed within three heartbeats (then Redis is asked per request until it works
    /// again). `0`: no mirror — ask Redis on every request.
    pub blacklist_heartbeat_ms: u64,
    /// The rate limit is decided in process and the counts settled with Redis every this
    /// many ms (`RATE_LIMIT_SETTLE_MS`, default 10): several gateways together can admit
    /// at most what each admits in one interval beyond the limit. `0`: one Redis round
    /// trip per request, exact across gateways.
    pub rate_limit_settle_ms: u64,
    /// Proxies whose `X-Forwarded-For` is believed (`TRUSTED_PROXIES`, comma-separated
    /// IPs or CIDRs; default none).
    pub trusted_proxies: String,
    /// Largest accepted request body in bytes (`BODY_LIMIT_BYTES`, default 64 KiB).
    pub body_limit_bytes: usize,
    /// Consecutive downstream failures that open a breaker (`BREAKER_FAILURE_THRESHOLD`, 5).
    pub breaker_failure_threshold: u32,
    /// Seconds a breaker stays open at most (`BREAKER_OPEN_SECS`, 30).
    pub breaker_open_secs: u64,
    /// While a breaker is open, its endpoint's gRPC health is asked every this many ms
    /// (`BREAKER_PROBE_MS`, 1000); when it answers SERVING, the next call is the trial.
    pub breaker_probe_ms: u64,
    /// Per-call deadline for downstream gRPC calls in ms (`DOWNSTREAM_TIMEOUT_MS`, 3000).
    pub downstream_timeout_ms: u64,
    /// A whole request — reading its body included — must be answered within this many
    /// seconds, else 408 (`REQUEST_TIMEOUT_SECS`, 30). Headers must arrive within 10 s.
    pub request_timeout_secs: u64,
    /// Mutual TLS of the internal gRPC (`TLS_CERT`, `TLS_KEY`, `TLS_CA`;
    /// `GRPC_INSECURE=true` for plain text in development).
    #[serde(flatten)]
    pub tls: ordersys_kit::tls::GrpcTls,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            http_addr: "0.0.0.0:8080".into(),
            admin_addr: "0.0.0.0:8084".into(),
            user_service_url: "http://127.0.0.1:50051".into(),
            order_service_url: "http://127.0.0.1:50052".into(),
            payment_service_url: "http://127.0.0.1:50053".into(),
            redis_url: "redis://127.0.0.1:6379/".into(),
            jwt: Default::default(),
            rate_limit_per_minute: 100,
            rate_limit_key_prefix: "rate:".into(),
            login_attempts_per_account: 10,
            login_window_secs: 300,
            blacklist_heartbeat_ms: 1000,
            rate_limit_settle_ms: 10,
            trusted_proxies: String::new(),
            body_limit_bytes: 64 * 1024,
            breaker_failure_threshold: 5,
            breaker_open_secs: 30,
            breaker_probe_ms: 1000,
            downstream_timeout_ms: 3000,
            request_timeout_secs: 30,
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
