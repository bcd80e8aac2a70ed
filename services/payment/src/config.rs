//! Typed configuration (defaults → `CONFIG_FILE` → environment).

use ordersys_kit::config::Secret;
use serde::{Deserialize, Serialize};

/// Payment service settings. Environment variables are the upper-case field names.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// gRPC listen address (`GRPC_ADDR`, default 0.0.0.0:50053).
    pub grpc_addr: String,
    /// Admin HTTP listen address (`ADMIN_ADDR`, default 0.0.0.0:8083).
    pub admin_addr: String,
    /// MySQL (`DATABASE_URL`); the database is created if missing.
    pub database_url: Secret,
    /// Redis (`REDIS_URL`): the idempotency fast path.
    pub redis_url: Secret,
    /// Kafka (`KAFKA_BROKERS`).
    pub kafka_brokers: String,
    /// Prefix of topic names and consumer groups (`KAFKA_TOPIC_PREFIX`, default none).
    pub kafka_topic_prefix: String,
    /// Balance of a new account in minor units (`INITIAL_BALANCE`, default 100000).
    pub initial_balance: i64,
    /// Currency of accounts (`ACCOUNT_CURRENCY`, default USD).
    pub account_currency: String,
    /// How long a processed message's inbox record is kept, so a redelivery is still
    /// recognised (`INBOX_RETENTION_HOURS`, default 168 = Kafka's default log
    /// retention). Purged hourly.
    pub inbox_retention_hours: u64,
    /// Kafka client settings (`KAFKA_FETCH_WAIT_MAX_MS`, `KAFKA_LINGER_MS`,
    /// `KAFKA_MAX_IN_FLIGHT`, `KAFKA_PROPERTIES`).
    #[serde(flatten)]
    pub kafka: ordersys_kit::messaging::KafkaTuning,
    /// Mutual TLS of the internal gRPC (`TLS_CERT`, `TLS_KEY`, `TLS_CA`;
    /// `GRPC_INSECURE=true` for plain text in development).
    #[serde(flatten)]
    pub tls: ordersys_kit::tls::GrpcTls,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            grpc_addr: "0.0.0.0:50053".into(),
            admin_addr: "0.0.0.0:8083".into(),
            database_url: "mysql://root@127.0.0.1:3306/ordersys_payment".into(),
            redis_url: "redis://127.0.0.1:6379/".into(),
            kafka_brokers: "127.0.0.1:9092".into(),
            kafka_topic_prefix: String::new(),
            initial_balance: 100_000,
            account_currency: "USD".into(),
            inbox_retention_hours: 168,
            kafka: Default::default(),
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
