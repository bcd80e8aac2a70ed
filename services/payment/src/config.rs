//! Typed configuration (defaults → `CONFIG_FILE` → environment).

use ordersys_kit::config::{Kafka, Listen, Stores};
use serde::{Deserialize, Serialize};

/// Payment service settings. Environment variables are the upper-case field names.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// `GRPC_ADDR` (default 0.0.0.0:50053), `ADMIN_ADDR` (default 0.0.0.0:8083).
    #[serde(flatten)]
    pub listen: Listen,
    /// `DATABASE_URL` (default the local `ordersys_payment`), `REDIS_URL`: the
    /// idempotency fast path.
    #[serde(flatten)]
    pub stores: Stores,
    /// `KAFKA_BROKERS`, `KAFKA_TOPIC_PREFIX`, `INBOX_RETENTION_HOURS` and the Kafka
    /// client settings (`KAFKA_FETCH_WAIT_MAX_MS`, `KAFKA_LINGER_MS`, …).
    #[serde(flatten)]
    pub kafka: Kafka,
    /// Balance of a new account in minor units (`INITIAL_BALANCE`, default 100000).
    pub initial_balance: i64,
    /// Currency of accounts (`ACCOUNT_CURRENCY`, default USD).
    pub account_currency: String,
    /// How the end user's token the gateway forwards is verified (`JWT_SECRET`,
    /// `JWT_ISSUER`, `JWT_AUDIENCE`, `JWT_LEEWAY_SECS`: the gateway's settings).
    #[serde(flatten)]
    pub jwt: ordersys_kit::config::Jwt,
    /// Mutual TLS of the internal gRPC (`TLS_CERT`, `TLS_KEY`, `TLS_CA`;
    /// `GRPC_INSECURE=true` for plain text in development).
    #[serde(flatten)]
    pub tls: ordersys_kit::tls::GrpcTls,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: Listen::on_ports(50053, 8083),
            stores: Stores::local("ordersys_payment"),
            kafka: Kafka::default(),
            initial_balance: 100_000,
            account_currency: "USD".into(),
            jwt: Default::default(),
            tls: Default::default(),
        }
    }
}
