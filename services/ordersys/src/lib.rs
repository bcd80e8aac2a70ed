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
    /// Where the SQLite files and the generated JWT secret live (`DATA_DIR`).
    pub data_dir: String,
    /// The REST API (`HTTP_ADDR`, default 0.0.0.0:8080).
    pub http_addr: String,
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
    /// HS256 secret; empty: generated once and kept in `DATA_DIR` (`JWT_SECRET`).
    pub jwt_secret: Secret,
    /// Token lifetime (`JWT_TTL_SECS`, default 900).
    pub jwt_ttl_secs: u64,
    /// Seconds an expired token is still accepted, for clock skew (`JWT_LEEWAY_SECS`,
    /// default 5).
    pub jwt_leeway_secs: u64,
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
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: "data".into(),
            http_addr: "0.0.0.0:8080".into(),
            internal_ports: "spec".into(),
            database_url: Secret::default(),
            kafka_brokers: String::new(),
            redis_url: Secret::default(),
            jwt_secret: Secret::default(),
            jwt_ttl_secs: 900,
            jwt_leeway_secs: 5,
            rate_limit_per_minute: 100,
            trusted_proxies: String::new(),
            body_limit_bytes: 64 * 1024,
            initial_balance: 100_000,
            payment_deadline_secs: 30,
            admin_token: Secret::default(),
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

async fn jwt_secret(config: &Config) -> anyhow::Result<Secret> {
    if !config.jwt_secret.is_empty() {
        return Ok(config.jwt_secret.clone());
    }
    let path = std::path::Path::new(&config.data_dir).join("jwt_secret");
    if let Ok(s) = tokio::fs::read_to_string(&path).await {
        if s.trim().len() >= 32 {
            return Ok(s.trim().into());
        }
    }
    let secret = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    write_secret(&path, &secret)?;
    // Another process may have won the race: everyone uses what is on disk.
    let on_disk = tokio::fs::read_to_string(&path).await?;
    Ok(on_disk.trim().into())
}

/// Write a generated secret readable by its owner only (0600, its directory 0700): to a
/// temporary file created exclusively, then linked into place only if no secret is
/// there yet — a reader never sees a half-written file, and an existing one is kept.
fn write_secret(path: &std::path::Path, secret: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    #[cfg(unix)]
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    #[cfg(unix)]
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    let tmp = dir.join(format!(".jwt_secret.{}", uuid::Uuid::new_v4().simple()));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts.open(&tmp)?;
    f.write_all(secret.as_bytes())?;
    f.sync_all()?;
    drop(f);
    // `hard_link` fails if the target exists: a secret already there is never replaced
    // (an empty or short one left by an older version is replaced).
    let short = std::fs::read_to_string(path).is_ok_and(|s| s.trim().len() < 32);
    if short {
        std::fs::remove_file(path)?;
    }
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e.into()),
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
    let secret = jwt_secret(&config).await?;
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
    let http = tokio::net::TcpListener::bind(&config.http_addr).await?;
    let http_addr = http.local_addr()?;

    let stores = |service: &str| Stores {
        database_url: config.database(service).into(),
        redis_url: config.redis_url.clone(),
    };
    let kafka = Kafka {
        kafka_brokers: config.kafka_brokers.clone(),
        ..Kafka::default()
    };
    let user = ordersys_user::Config {
        listen: Listen::on_ports(0, 0),
        stores: stores("user"),
        jwt: Jwt {
            jwt_leeway_secs: config.jwt_leeway_secs,
            ..Jwt::with_secret(secret.clone())
        },
        jwt_ttl_secs: config.jwt_ttl_secs,
        tls: GrpcTls::loopback_plaintext(),
    };
    let order = ordersys_order::Config {
        stores: stores("order"),
        kafka: kafka.clone(),
        payment_deadline_secs: config.payment_deadline_secs,
        admin_token: config.admin_token.clone(),
        tls: GrpcTls::loopback_plaintext(),
        ..ordersys_order::Config::default()
    };
    let payment = ordersys_payment::Config {
        stores: stores("payment"),
        kafka,
        initial_balance: config.initial_balance,
        tls: GrpcTls::loopback_plaintext(),
        ..ordersys_payment::Config::default()
    };
    let gateway = ordersys_gateway::Config {
        // Not dialled: the gateway's backends are in process (below).
        user_service_url: "http://in-process.user".into(),
        order_service_url: "http://in-process.order".into(),
        payment_service_url: "http://in-process.payment".into(),
        redis_url: config.redis_url.clone(),
        jwt: Jwt {
            jwt_leeway_secs: config.jwt_leeway_secs,
            ..Jwt::with_secret(secret)
        },
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
    if !config.admin_token.is_empty() {
        println!("  operator tools (ADMIN_TOKEN): ordersys-admin --url http://{operator_tools} sagas list");
    }
    tracing::info!(http = %http_addr, mode = %mode, "система ordersys запущена");
    launcher.run(shutdown, "система ordersys остановлена").await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_in(dir: &std::path::Path) -> Config {
        Config {
            data_dir: dir.display().to_string(),
            ..Config::default()
        }
    }

    #[tokio::test]
    async fn the_generated_jwt_secret_is_private_kept_and_never_replaced() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir =
            std::env::temp_dir().join(format!("ordersys-secret-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = config_in(&dir);
        let first = jwt_secret(&config).await.unwrap();
        assert!(first.len() >= 32);
        let file = dir.join("jwt_secret");
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&file), 0o600, "the secret file is the owner's only");
        assert_eq!(mode(&dir), 0o700, "so is its directory");
        // Started again: the same secret (tokens issued before stay valid).
        assert_eq!(jwt_secret(&config).await.unwrap(), first);
        // A second writer racing the first never replaces what is there.
        write_secret(&file, "x".repeat(64).as_str()).unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), first.expose());
        // No temporary files left behind.
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["jwt_secret"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_too_short_secret_left_on_disk_is_replaced() {
        let dir =
            std::env::temp_dir().join(format!("ordersys-secret-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("jwt_secret"), "short").unwrap();
        let secret = jwt_secret(&config_in(&dir)).await.unwrap();
        assert!(secret.len() >= 32);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
