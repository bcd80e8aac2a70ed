//! Typed configuration (defaults → `CONFIG_FILE` → environment).

use ordersys_kit::config::{Kafka, Listen, Secret, Stores};
use serde::{Deserialize, Serialize};

/// Order service settings. Environment variables are the upper-case field names.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// `GRPC_ADDR` (default 0.0.0.0:50052), `ADMIN_ADDR` (default 0.0.0.0:8082).
    #[serde(flatten)]
    pub listen: Listen,
    /// `DATABASE_URL` (default the local `ordersys_order`), `REDIS_URL`: the order
    /// cache and the idempotency keys.
    #[serde(flatten)]
    pub stores: Stores,
    /// `KAFKA_BROKERS`, `KAFKA_TOPIC_PREFIX`, `INBOX_RETENTION_HOURS` and the Kafka
    /// client settings (`KAFKA_FETCH_WAIT_MAX_MS`, `KAFKA_LINGER_MS`, …).
    #[serde(flatten)]
    pub kafka: Kafka,
    /// How long the payment step may take before the saga compensates
    /// (`PAYMENT_DEADLINE_SECS`, default 30).
    pub payment_deadline_secs: u64,
    /// Currencies orders may be placed in: those the payment service's wallets hold
    /// (`ACCEPTED_CURRENCIES`, comma-separated, default `USD` = the payment service's
    /// default `ACCOUNT_CURRENCY`; empty: any known currency).
    pub accepted_currencies: String,
    /// The bearer token of the operator tools (`ADMIN_TOKEN`; empty, the default: the
    /// tools are off). See [`crate::operator`].
    pub admin_token: Secret,
    /// Where the operator tools listen (`OPERATOR_ADDR`, default 127.0.0.1:8085: this
    /// host only — `ordersys-admin` runs beside the service, e.g. `docker compose exec
    /// order ordersys-admin …`); empty: on the admin port, with `/metrics`.
    pub operator_addr: String,
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
            listen: Listen::on_ports(50052, 8082),
            stores: Stores::local("ordersys_order"),
            kafka: Kafka::default(),
            payment_deadline_secs: 30,
            accepted_currencies: "USD".into(),
            admin_token: Secret::default(),
            operator_addr: "127.0.0.1:8085".into(),
            jwt: Default::default(),
            tls: Default::default(),
        }
    }
}
