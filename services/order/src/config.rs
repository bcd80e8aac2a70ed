//! Typed configuration (defaults → `CONFIG_FILE` → environment).

use ordersys_kit::config::Secret;
use serde::{Deserialize, Serialize};

/// Order service settings. Environment variables are the upper-case field names.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// gRPC listen address (`GRPC_ADDR`, default 0.0.0.0:50052).
    pub grpc_addr: String,
    /// Admin HTTP listen address (`ADMIN_ADDR`, default 0.0.0.0:8082).
    pub admin_addr: String,
    /// MySQL (`DATABASE_URL`); the database is created if missing.
    pub database_url: Secret,
    /// Redis (`REDIS_URL`): order cache and idempotency keys.
    pub redis_url: Secret,
    /// Kafka (`KAFKA_BROKERS`).
    pub kafka_brokers: String,
    /// Prefix of topic names and consumer groups (`KAFKA_TOPIC_PREFIX`).
    pub kafka_topic_prefix: String,
    /// How long the payment step may take before the saga compensates
    /// (`PAYMENT_DEADLINE_SECS`, default 30).
    pub payment_deadline_secs: u64,
    /// How long a processed message's inbox record is kept, so a redelivery is still
    /// recognised (`INBOX_RETENTION_HOURS`, default 168 = Kafka's default log
    /// retention). Purged hourly.
    pub inbox_retention_hours: u64,
    /// Currencies orders may be placed in: those the payment service's wallets hold
    /// (`ACCEPTED_CURRENCIES`, comma-separated, default `USD` = the payment service's
    /// default `ACCOUNT_CURRENCY`; empty: any known currency).
    pub accepted_currencies: String,
    /// The bearer token of the operator tools on the admin port (`ADMIN_TOKEN`; empty,
    /// the default: the tools are off). See [`crate::operator`].
    pub admin_token: Secret,
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
            grpc_addr: "0.0.0.0:50052".into(),
            admin_addr: "0.0.0.0:8082".into(),
            database_url: "mysql://root@127.0.0.1:3306/ordersys_order".into(),
            redis_url: "redis://127.0.0.1:6379/".into(),
            kafka_brokers: "127.0.0.1:9092".into(),
            kafka_topic_prefix: String::new(),
            payment_deadline_secs: 30,
            inbox_retention_hours: 168,
            accepted_currencies: "USD".into(),
            admin_token: Secret::default(),
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
