//! The whole ordersys system in one process.
//!
//! With no `DATABASE_URL`, `KAFKA_BROKERS` or `REDIS_URL` it runs **embedded**: every
//! store in SQLite files under `DATA_DIR` (default `./data`), saga commands and replies
//! on an in-process [`LocalBus`](outbox::local::LocalBus) (durable through the SQLite
//! outboxes: a message counts as sent only once its consumer committed it), the rate
//! limiter and the order cache in memory, revoked tokens and idempotency keys in SQLite.
//! Each variable switches its part to the server: `DATABASE_URL` (a MySQL server URL,
//! `mysql://user@host:3306`; each service gets its own database on it), `KAFKA_BROKERS`,
//! `REDIS_URL`. Same services, same REST contract, same saga — only the backends differ.

#![warn(missing_docs)]

mod keys;

use std::future::Future;
use std::sync::Arc;

use authz::Blacklist;
use ordersys_kit::config::{Jwt, Kafka, Listen, Secret, Stores};
use ordersys_kit::launch::Launcher;
use ordersys_kit::local_grpc::LocalGrpc;
use ordersys_kit::messaging::Messaging;
use ordersys_kit::tls::GrpcTls;
use ordersys_kit::Listeners;
use serde::{Deserialize, Serialize};

/// Settings of the one-process system. Environment variables are the upper-case names.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Where the SQLite files and the generated token key pair live (`DATA_DIR`).
    pub data_dir: String,
    /// The REST API (`HTTP_ADDR`, default 0.0.0.0:8080).
    pub http_addr: String,
    /// The system's `/readyz` and `/metrics` (every service's metrics: one process),
    /// off the public port (`ADMIN_ADDR`, default 127.0.0.1:8084: this machine only).
    pub admin_addr: String,
    /// `spec` (the SPEC admin ports 8081-8083 on 127.0.0.1) or `ephemeral` (free ports;
    /// for tests) for the internal services' admin endpoints (`INTERNAL_PORTS`). Their
    /// gRPC has no port here: the gateway calls them in process, nothing else can.
    pub internal_ports: String,
    /// A MySQL server URL; empty: SQLite (`DATABASE_URL`).
    pub database_url: Secret,
    /// Kafka brokers; empty: the in-process bus (`KAFKA_BROKERS`).
    pub kafka_brokers: String,
    /// Redis; empty: memory + SQLite (`REDIS_URL`).
    pub redis_url: Secret,
    /// HS256 secret (`JWT_SECRET`); empty, the default: tokens are signed EdDSA with an
    /// Ed25519 key pair generated once and kept in `DATA_DIR` (`jwt-ed25519.key`, 0600).
    pub jwt_secret: Secret,
    /// Token lifetime (`JWT_TTL_SECS`, default 900).
    pub jwt_ttl_secs: u64,
    /// Seconds an expired token is still accepted, for clock skew (`JWT_LEEWAY_SECS`,
    /// default 5).
    pub jwt_leeway_secs: u64,
    /// Tokens that validated, remembered so that a session's token is verified once
    /// (`JWT_VERIFIED_TOKENS`, default 10,000; `0` verifies every time).
    pub jwt_verified_tokens: usize,
    /// Requests per minute per client IP (`RATE_LIMIT_PER_MINUTE`, default 100).
    pub rate_limit_per_minute: u32,
    /// Proxies whose `X-Forwarded-For` is believed (`TRUSTED_PROXIES`, comma-separated
    /// IPs or CIDRs; default none).
    pub trusted_proxies: String,
    /// Largest accepted request body in bytes (`BODY_LIMIT_BYTES`, default 64 KiB).
    pub body_limit_bytes: usize,
    /// A new account's balance (`INITIAL_BALANCE`, default 100000).
    pub initial_balance: i64,
    /// Payment step deadline (`PAYMENT_DEADLINE_SECS`, default 30).
    pub payment_deadline_secs: u64,
    /// The bearer token of the operator tools on the order service's admin port
    /// (`ADMIN_TOKEN`; empty, the default: the tools are off).
    pub admin_token: Secret,
    /// With `KAFKA_BROKERS`: the key the saga messages are sealed with (`SAGA_KEY`;
    /// empty, the default: made once and kept in `DATA_DIR/saga.key`).
    pub saga_key: Secret,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: "data".into(),
            http_addr: "0.0.0.0:8080".into(),
            admin_addr: "127.0.0.1:8084".into(),
            internal_ports: "spec".into(),
            database_url: Secret::default(),
            kafka_brokers: String::new(),
            redis_url: Secret::default(),
            jwt_secret: Secret::default(),
            jwt_ttl_secs: 900,
            jwt_leeway_secs: 5,
            jwt_verified_tokens: 10_000,
            rate_limit_per_minute: 100,
            trusted_proxies: String::new(),
            body_limit_bytes: 64 * 1024,
            initial_balance: 100_000,
            payment_deadline_secs: 30,
            admin_token: Secret::default(),
            saga_key: Secret::default(),
        }
    }
}

impl Config {
    /// Load from defaults, `CONFIG_FILE` and the environment.
    pub fn load() -> anyhow::Result<Self> {
        ordersys_kit::config::load()
    }

    fn database(&self, service: &str) -> String {
        if self.database_url.is_empty() {
            format!("sqlite://{}/{service}.db", self.data_dir)
        } else {
            format!(
                "{}/ordersys_{service}",
                self.database_url.trim_end_matches('/')
            )
        }
    }
}

/// A service's listeners: its admin port, and its gRPC in process only — the services
/// have no gRPC socket in this binary, so no other process can call them.
async fn bind(config: &Config, admin: u16, local: &LocalGrpc) -> anyhow::Result<Listeners> {
    let addr = if config.internal_ports == "ephemeral" {
        "127.0.0.1:0".to_owned()
    } else {
        format!("127.0.0.1:{admin}")
    };
    Listeners::in_process(&addr, local.clone()).await
}

/// Run the four services until `shutdown` resolves.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    tokio::fs::create_dir_all(&config.data_dir).await?;
    // The owner's only, whoever else is on the machine (its files are 0600: see
    // `ordersys_kit::db`).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let owner_only = std::fs::Permissions::from_mode(0o700);
        tokio::fs::set_permissions(&config.data_dir, owner_only).await?;
    }
    let (issuing, verifying) = keys::token_settings(&config)?;
    let messaging = if config.kafka_brokers.is_empty() {
        Messaging::local()
    } else {
        Messaging::Kafka {
            brokers: config.kafka_brokers.clone(),
            tuning: Default::default(),
        }
    };
    // The gateway calls the services in process, and nothing else can.
    let in_process = ordersys_gateway::InProcess::default();
    let (user_l, order_l, payment_l) = (
        bind(&config, 8081, &in_process.user).await?,
        bind(&config, 8082, &in_process.order).await?,
        bind(&config, 8083, &in_process.payment).await?,
    );
    let operator_tools = order_l.admin.local_addr()?;
    let http = ordersys_gateway::Listeners {
        http: tokio::net::TcpListener::bind(&config.http_addr).await?,
        admin: tokio::net::TcpListener::bind(&config.admin_addr).await?,
    };
    let http_addr = http.http.local_addr()?;
    let gateway_admin = http.admin.local_addr()?;

    let stores = |service: &str| Stores {
        database_url: config.database(service).into(),
        redis_url: config.redis_url.clone(),
    };
    let kafka = Kafka {
        kafka_brokers: config.kafka_brokers.clone(),
        // Over Kafka the saga messages leave the process: sealed.
        saga_key: if config.kafka_brokers.is_empty() {
            Secret::default()
        } else {
            keys::saga_key(&config)?
        },
        ..Kafka::default()
    };
    let leeway = |jwt: Jwt| Jwt {
        jwt_leeway_secs: config.jwt_leeway_secs,
        jwt_verified_tokens: config.jwt_verified_tokens,
        ..jwt
    };
    // Only the user service signs; the others are given what verifies.
    let (issuing, verifying) = (leeway(issuing), leeway(verifying));
    let user = ordersys_user::Config {
        listen: Listen::on_ports(0, 0),
        stores: stores("user"),
        jwt: issuing,
        jwt_ttl_secs: config.jwt_ttl_secs,
        tls: GrpcTls::loopback_plaintext(),
    };
    let order = ordersys_order::Config {
        stores: stores("order"),
        kafka: kafka.clone(),
        payment_deadline_secs: config.payment_deadline_secs,
        admin_token: config.admin_token.clone(),
        // On the order service's admin port, which is on loopback here.
        operator_addr: String::new(),
        jwt: verifying.clone(),
        tls: GrpcTls::loopback_plaintext(),
        ..ordersys_order::Config::default()
    };
    let payment = ordersys_payment::Config {
        stores: stores("payment"),
        kafka,
        initial_balance: config.initial_balance,
        jwt: verifying.clone(),
        tls: GrpcTls::loopback_plaintext(),
        ..ordersys_payment::Config::default()
    };
    let gateway = ordersys_gateway::Config {
        // Not dialled: the gateway's backends are in process (below).
        user_service_url: "http://in-process.user".into(),
        order_service_url: "http://in-process.order".into(),
        payment_service_url: "http://in-process.payment".into(),
        redis_url: config.redis_url.clone(),
        jwt: verifying,
        rate_limit_per_minute: config.rate_limit_per_minute,
        trusted_proxies: config.trusted_proxies.clone(),
        body_limit_bytes: config.body_limit_bytes,
        // In process: no socket, nothing to encrypt.
        tls: GrpcTls::loopback_plaintext(),
        ..ordersys_gateway::Config::default()
    };
    // The gateway reads revocations where the user service writes them.
    let backends = if config.redis_url.is_empty() {
        anyhow::ensure!(
            config.database_url.is_empty(),
            "a MySQL database needs REDIS_URL for revoked tokens"
        );
        let pool = ordersys_kit::db::connect_sqlite(&user.stores.database_url).await?;
        authz::sqlite::migrate(&pool).await?;
        let blacklist: Arc<dyn Blacklist> = Arc::new(authz::sqlite::SqliteBlacklist::new(pool));
        ordersys_gateway::Backends::local(&gateway, blacklist)
    } else {
        ordersys_gateway::Backends::redis(&gateway).await?
    }
    .in_process(in_process);

    // Each service is one task of the system's launcher: one that ends stops the others.
    let mut launcher = Launcher::without_messaging("ordersys");
    let s = launcher.stop();
    launcher.spawn(async move { ordersys_user::run(user, user_l, s.wait()).await });
    let (s, m) = (launcher.stop(), messaging.clone());
    launcher
        .spawn(async move { ordersys_payment::run_with(payment, payment_l, s.wait(), m).await });
    let (s, m) = (launcher.stop(), messaging.clone());
    launcher.spawn(async move { ordersys_order::run_with(order, order_l, s.wait(), m).await });
    let s = launcher.stop();
    launcher
        .spawn(async move { ordersys_gateway::run_with(gateway, http, s.wait(), backends).await });

    let mode = if config.database_url.is_empty()
        && config.kafka_brokers.is_empty()
        && config.redis_url.is_empty()
    {
        format!("embedded: SQLite in {}/, in-process bus", config.data_dir)
    } else {
        "with external servers".to_owned()
    };
    let shown = if http_addr.ip().is_unspecified() {
        format!("127.0.0.1:{}", http_addr.port())
    } else {
        http_addr.to_string()
    };
    if http_addr.ip().is_unspecified() {
        println!("ordersys listening on {http_addr}, every interface ({mode}); from this machine: http://{shown}");
    } else {
        println!("ordersys listening on http://{shown} ({mode})");
    }
    println!("  curl -s -X POST http://{shown}/api/v1/auth/register -H 'content-type: application/json' -d '{{\"email\":\"me@example.com\",\"password\":\"correct-horse\"}}'");
    println!("  curl -s -X POST http://{shown}/api/v1/auth/login    -H 'content-type: application/json' -d '{{\"email\":\"me@example.com\",\"password\":\"correct-horse\"}}'");
    println!(
        "  readiness and metrics: http://{gateway_admin}/readyz, http://{gateway_admin}/metrics"
    );
    if !config.admin_token.is_empty() {
        println!("  operator tools (ADMIN_TOKEN): ordersys-admin --url http://{operator_tools} sagas list");
    }
    tracing::info!(http = %http_addr, mode = %mode, "система ordersys запущена");
    launcher.run(shutdown, "система ordersys остановлена").await
}
