//! The ordersys user service: register (argon2id), login (JWT with a unique `jti`),
//! logout (the `jti` goes on the Redis blacklist for the token's remaining life).
//!
//! Layers: [`domain`] (rules, no I/O) ← [`repository`] (MySQL) ← [`service`] (use cases)
//! ← [`grpc`] (tonic). `main.rs` is one call to `ordersys_kit::cli::main::<`[`Service`]`>()`, which serves with [`run`].

#![warn(missing_docs)]

pub mod config;
pub mod domain;
pub mod grpc;
pub mod passwords;
pub mod repository;
pub mod service;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use authz::redis::RedisBlacklist;
use authz::{Authenticator, Blacklist, TokenIssuer};
use ordersys_kit::admin::Admin;
use ordersys_kit::callers::Callers;
use ordersys_kit::launch::{GrpcApi, Launcher};
use ordersys_proto::user::v1::user_service_server::UserServiceServer;

pub use config::Config;
pub use ordersys_kit::Listeners;

/// The user service as its binary starts it: `ordersys-user [serve | migrate]`
/// ([`ordersys_kit::cli`]).
#[derive(Debug)]
pub struct Service;

impl ordersys_kit::cli::Service for Service {
    const NAME: &'static str = "user";
    const ABOUT: &'static str = "the ordersys user service: accounts and tokens (gRPC)";
    type Config = Config;
    fn listen(config: &Config) -> &ordersys_kit::config::Listen {
        &config.listen
    }
    /// Create the database if missing and apply every migration (users; with SQLite and no
    /// Redis, the revoked tokens too), then return: `ordersys-user migrate`, `make migrate`.
    async fn migrate(config: &Config) -> anyhow::Result<()> {
        let stores = &config.stores;
        let sqlite = async |pool: sqlx::SqlitePool| {
            repository::SqliteUsers::new(pool.clone()).migrate().await?;
            if stores.without_redis() {
                authz::sqlite::migrate(&pool).await?;
            }
            Ok(())
        };
        let mysql = async |pool| repository::MySqlUsers::new(pool).migrate().await;
        stores.migrate(sqlite, mysql).await
    }
    async fn run(
        config: Config,
        listeners: Listeners,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        run(config, listeners, shutdown).await
    }
}

/// Run the service until `shutdown` resolves; in-flight requests are finished first.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let key = config.jwt.signing_key()?;
    // Backends by configuration: MySQL or SQLite for users; Redis or (with SQLite) the
    // same database for revoked tokens.
    let mut admin = Admin::new("user");
    let (repo, blacklist): (Arc<dyn repository::UserRepository>, Arc<dyn Blacklist>) =
        if ordersys_kit::db::is_sqlite(&config.stores.database_url) {
            let pool = ordersys_kit::db::connect_sqlite(&config.stores.database_url).await?;
            let repo = repository::SqliteUsers::new(pool.clone());
            repo.migrate().await?;
            admin = admin.sqlite(pool.clone());
            let blacklist: Arc<dyn Blacklist> = if config.stores.redis_url.is_empty() {
                authz::sqlite::migrate(&pool).await?;
                Arc::new(authz::sqlite::SqliteBlacklist::new(pool))
            } else {
                let conn = ordersys_kit::redis_client::client(&config.stores.redis_url)?
                    .get_connection_manager()
                    .await?;
                admin = admin.redis(conn.clone());
                Arc::new(RedisBlacklist::new(conn))
            };
            (Arc::new(repo), blacklist)
        } else {
            let pool =
                ordersys_kit::db::connect(&config.stores.database_url, 10, Duration::from_secs(30))
                    .await?;
            let repo = repository::MySqlUsers::new(pool.clone());
            repo.migrate().await?;
            admin = admin.mysql(pool);
            anyhow::ensure!(
                !config.stores.redis_url.is_empty(),
                "REDIS_URL is required with a MySQL database"
            );
            let conn = ordersys_kit::redis_client::client(&config.stores.redis_url)?
                .get_connection_manager()
                .await?;
            admin = admin.redis(conn.clone());
            (Arc::new(repo), Arc::new(RedisBlacklist::new(conn)))
        };

    let ttl = Duration::from_secs(config.jwt_ttl_secs);
    let issuer =
        TokenIssuer::new(key, &config.jwt.jwt_issuer, &config.jwt.jwt_audience).with_ttl(ttl);
    let auth = Authenticator::new(config.jwt.validator()?, blacklist);
    let users = ordersys_kit::end_user::EndUsers::new(config.jwt.validator()?);
    let service = service::UserService::new(repo, issuer, auth).await?;

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<UserServiceServer<grpc::UserGrpc>>()
        .await;

    let routes = tonic::service::Routes::new(health_service)
        .add_service(UserServiceServer::new(grpc::UserGrpc::new(service, users)));
    let mut launcher = Launcher::without_messaging("user");
    launcher.serve(
        listeners,
        admin,
        &config.tls,
        GrpcApi::new(routes, callers()),
        "сервис пользователей запущен",
    )?;
    launcher
        .run(shutdown, "сервис пользователей остановлен")
        .await
}

/// Who may call the service over gRPC, by the service name its certificate carries
/// (`ordersys_kit::callers`): the gateway, every RPC — no other service calls this one.
fn callers() -> Callers {
    use ordersys_proto::user::v1::user_service_server::SERVICE_NAME;
    Callers::new().allow_service(SERVICE_NAME, &["gateway"])
}
