//! The ordersys payment service: an account per user (opened with `INITIAL_BALANCE`),
//! saga commands from `saga.commands` applied exactly once (inbox + `payments.order_id`
//! unique key, Redis `idempotency:{key}` as the fast path), replies through its own
//! outbox to `saga.replies`, undecodable or failing commands to `dlq.saga`.
//!
//! Layers: [`domain`] (rules, no I/O) ← [`repository`] (MySQL) ← [`service`] (use
//! cases) ← [`grpc`] (tonic). `main.rs` is one call to `ordersys_kit::cli::main::<`[`Service`]`>()` (serve = [`run_with`] over Kafka).

#![warn(missing_docs)]

pub mod config;
pub mod domain;
pub mod grpc;
pub mod repository;
pub mod service;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ordersys_kit::admin::Admin;
use ordersys_kit::callers::Callers;
use ordersys_kit::launch::{GrpcApi, Launcher};
use ordersys_kit::messaging::Messaging;
use ordersys_kit::outbox_store::MySqlServiceOutbox;
use ordersys_proto::payment::v1::payment_service_server::PaymentServiceServer;
use outbox::idempotency::{IdempotencyStore, RedisIdempotencyStore};
use outbox::mysql::MySqlInbox;
use outbox::sqlite::{SqliteInbox, SqliteOutbox};
use outbox::{Inbox, OutboxStore};

pub use config::Config;
pub use ordersys_kit::Listeners;

/// The payment service as its binary starts it: `ordersys-payment [serve | migrate | topics]`
/// ([`ordersys_kit::cli`]).
#[derive(Debug)]
pub struct Service;

impl ordersys_kit::cli::Service for Service {
    const NAME: &'static str = "payment";
    const ABOUT: &'static str = "the ordersys payment service: wallets, debits and refunds (gRPC)";
    const HAS_TOPICS: bool = true;
    type Config = Config;
    fn listen(config: &Config) -> &ordersys_kit::config::Listen {
        &config.listen
    }
    fn kafka(config: &Config) -> Option<&ordersys_kit::config::Kafka> {
        Some(&config.kafka)
    }
    /// Create the database if missing and apply every migration (accounts, payments,
    /// outbox, inbox; with SQLite and no Redis, the idempotency file too), then return:
    /// `ordersys-payment migrate`, `make migrate`.
    async fn migrate(config: &Config) -> anyhow::Result<()> {
        let sqlite = async |pool| repository::SqlitePayments::new(pool).migrate().await;
        let mysql = async |pool| repository::MySqlPayments::new(pool).migrate().await;
        config.stores.migrate(sqlite, mysql).await?;
        config.stores.idempotency_keys_file().await
    }
    async fn run(
        config: Config,
        listeners: Listeners,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let messaging = config.kafka.messaging();
        run_with(config, listeners, shutdown, messaging).await
    }
}

/// Run until `shutdown` resolves: the message in progress is finished, the relay
/// finishes its round, in-flight gRPC calls complete.
pub async fn run_with(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
    messaging: Messaging,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        config.initial_balance >= 0,
        "INITIAL_BALANCE must not be negative"
    );
    anyhow::ensure!(
        config.account_currency.len() == 3
            && config
                .account_currency
                .bytes()
                .all(|b| b.is_ascii_uppercase()),
        "ACCOUNT_CURRENCY must be a 3-letter ISO 4217 code"
    );
    // Backends by configuration: MySQL or SQLite (DATABASE_URL); Redis for the
    // idempotency fast path, or the SQLite database itself when REDIS_URL is empty.
    if ordersys_kit::db::is_sqlite(&config.stores.database_url) {
        let pool = ordersys_kit::db::connect_sqlite(&config.stores.database_url).await?;
        let repo = repository::SqlitePayments::new(pool.clone());
        repo.migrate().await?;
        let mut admin = Admin::new("payment").sqlite(pool.clone());
        let idempotency: Arc<dyn IdempotencyStore> = if config.stores.redis_url.is_empty() {
            // A file of its own: the handler reads it while its unit of work holds the
            // payment database's write lock — on reading connections, never queued
            // behind the keys' writes. A fast path in front of the payments' unique
            // key, so a cache: its commits wait for no disk.
            Arc::new(ordersys_kit::db::sqlite_idempotency_store(&config.stores.database_url).await?)
        } else {
            let conn = ordersys_kit::redis_client::client(&config.stores.redis_url)?
                .get_connection_manager()
                .await?;
            admin = admin.redis(conn.clone());
            Arc::new(RedisIdempotencyStore::new(conn))
        };
        if let Some(shelves) = messaging.local_dead_letters() {
            shelves.register("payment", pool.clone());
        }
        let (outbox, inbox) = (SqliteOutbox::new(pool.clone()), SqliteInbox::new(pool));
        serve(
            config,
            listeners,
            shutdown,
            repo,
            outbox,
            inbox,
            idempotency,
            admin,
            messaging,
        )
        .await
    } else {
        let pool =
            ordersys_kit::db::connect(&config.stores.database_url, 10, Duration::from_secs(30))
                .await?;
        let repo = repository::MySqlPayments::new(pool.clone());
        repo.migrate().await?;
        anyhow::ensure!(
            !config.stores.redis_url.is_empty(),
            "REDIS_URL is required with a MySQL database"
        );
        let conn = ordersys_kit::redis_client::client(&config.stores.redis_url)?
            .get_connection_manager()
            .await?;
        let admin = Admin::new("payment")
            .mysql(pool.clone())
            .redis(conn.clone());
        let outbox = MySqlServiceOutbox::new(pool.clone(), messaging.outbox_stream());
        let inbox = MySqlInbox::new(pool);
        serve(
            config,
            listeners,
            shutdown,
            repo,
            outbox,
            inbox,
            Arc::new(RedisIdempotencyStore::new(conn)),
            admin,
            messaging,
        )
        .await
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve<R, O, I>(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
    repo: R,
    outbox: O,
    inbox: I,
    idempotency: Arc<dyn IdempotencyStore>,
    admin: Admin,
    messaging: Messaging,
) -> anyhow::Result<()>
where
    R: repository::PaymentRepo,
    O: OutboxStore<Tx = R::Tx> + Clone,
    I: Inbox<Tx = R::Tx> + Clone,
{
    let topics = config.kafka.topics();
    let mac = config.kafka.saga_mac(&messaging)?;
    let accounts = service::Accounts {
        initial_balance: config.initial_balance,
        currency: config.account_currency.clone(),
    };
    let mut launcher = Launcher::new("payment", messaging, topics.clone()).await?;
    launcher.housekeeping(
        inbox.clone(),
        idempotency.clone(),
        config.kafka.inbox_retention_hours,
    );
    let wake = launcher.relay(outbox.clone());
    let handler = service::CommandHandler::new(
        accounts.clone(),
        repo.clone(),
        outbox,
        topics.clone(),
        idempotency,
    )
    .waking(wake)
    .sealing(mac);
    launcher.consume(&topics.commands, inbox, handler)?;

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<PaymentServiceServer<grpc::PaymentGrpc<R>>>()
        .await;
    let wallets = service::Wallets::new(repo, accounts);
    let routes = tonic::service::Routes::new(health_service).add_service(
        PaymentServiceServer::new(grpc::PaymentGrpc::new(
            wallets,
            ordersys_kit::end_user::EndUsers::new(config.jwt.verifier()?),
        )),
    );
    launcher.serve(
        listeners,
        admin,
        &config.tls,
        GrpcApi::new(routes, callers()),
        "платёжный сервис запущен",
    )?;
    launcher.run(shutdown, "платёжный сервис остановлен").await
}

/// Who may call the service over gRPC, by the service name its certificate carries
/// (`ordersys_kit::callers`): the gateway, every RPC — no other service calls this one.
fn callers() -> Callers {
    use ordersys_proto::payment::v1::payment_service_server::SERVICE_NAME;
    Callers::new().allow_service(SERVICE_NAME, &["gateway"])
}
