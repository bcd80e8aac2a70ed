//! The ordersys order service: orders and the SPEC §4 create-order saga. The order row,
//! the saga and the debit command commit in one transaction; a relay publishes commands
//! to `saga.commands`; `saga.replies` are applied idempotently; a deadline sweep keeps
//! sagas from getting stuck; a confirmed order is cancelled by a refund saga.
//!
//! Layers: [`domain`] ← [`repository`] ← [`service`] / [`saga`] ← [`grpc`].

#![warn(missing_docs)]

pub mod changes;
pub mod config;
pub mod domain;
pub mod grpc;
pub mod operator;
pub mod repository;
pub mod saga;
pub mod service;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use changes::Changes;
use ordersys_kit::admin::Admin;
use ordersys_kit::callers::Callers;
use ordersys_kit::launch::{GrpcApi, Launcher};
use ordersys_kit::messaging::Messaging;
use ordersys_kit::outbox_store::MySqlServiceOutbox;
use ordersys_proto::order::v1::order_service_server::OrderServiceServer;
use outbox::idempotency::{
    Cache, IdempotencyStore, MemoryCache, RedisCache, RedisIdempotencyStore,
};
use outbox::mysql::MySqlInbox;
use outbox::sqlite::{SqliteInbox, SqliteOutbox};
use outbox::Inbox;
use saga_core::mysql::MySqlSagaStore;
use saga_core::sqlite::SqliteSagaStore;
use saga_core::Orchestrator;

pub use config::Config;
pub use ordersys_kit::Listeners;

/// The order service as its binary starts it: `ordersys-order [serve | migrate | topics]`
/// ([`ordersys_kit::cli`]).
#[derive(Debug)]
pub struct Service;

impl ordersys_kit::cli::Service for Service {
    const NAME: &'static str = "order";
    const ABOUT: &'static str = "the ordersys order service: orders and their sagas (gRPC)";
    const HAS_TOPICS: bool = true;
    type Config = Config;
    fn listen(config: &Config) -> &ordersys_kit::config::Listen {
        &config.listen
    }
    fn kafka(config: &Config) -> Option<&ordersys_kit::config::Kafka> {
        Some(&config.kafka)
    }
    /// Create the database if missing and apply every migration (orders, sagas, outbox,
    /// inbox; with SQLite and no Redis, the idempotency file too), then return:
    /// `ordersys-order migrate`, `make migrate`. Serving applies them too; this runs them as
    /// a step of their own (before a rollout, say).
    async fn migrate(config: &Config) -> anyhow::Result<()> {
        let sqlite = async |pool| repository::SqliteOrders::new(pool).migrate().await;
        let mysql = async |pool| repository::MySqlOrders::new(pool).migrate().await;
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

/// Run until `shutdown` resolves, with `messaging` for the saga messages (the binary
/// runs it with Kafka, `KAFKA_BROKERS`; the one-process system with its bus).
pub async fn run_with(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
    messaging: Messaging,
) -> anyhow::Result<()> {
    // Backends by configuration: MySQL or SQLite (DATABASE_URL); Redis for the cache and
    // idempotency keys, or memory cache + SQLite keys when REDIS_URL is empty (SQLite only).
    if ordersys_kit::db::is_sqlite(&config.stores.database_url) {
        let pool = ordersys_kit::db::connect_sqlite(&config.stores.database_url).await?;
        let repo = repository::SqliteOrders::new(pool.clone());
        repo.migrate().await?;
        let repo = repo.with_readers(
            ordersys_kit::db::connect_sqlite_readers(&config.stores.database_url).await?,
        );
        let mut admin = Admin::new("order").sqlite(pool.clone());
        let mut changes = Changes::local();
        let (cache, idempotency): (Arc<dyn Cache>, Arc<dyn IdempotencyStore>) =
            if config.stores.redis_url.is_empty() {
                // The keys are a fast path in front of the orders' unique
                // (user, Idempotency-Key): a cache in a file of its own, whose commits
                // wait for no disk and never queue behind the orders' writes, read
                // (once per order) on connections of its own.
                let keys =
                    ordersys_kit::db::sqlite_idempotency_store(&config.stores.database_url).await?;
                (Arc::new(MemoryCache::new()), Arc::new(keys))
            } else {
                let conn = ordersys_kit::redis_client::client(&config.stores.redis_url)?
                    .get_connection_manager()
                    .await?;
                admin = admin.redis(conn.clone());
                changes = Changes::redis(conn.clone());
                (
                    Arc::new(RedisCache::new(conn.clone(), "order:")),
                    Arc::new(RedisIdempotencyStore::new(conn)),
                )
            };
        if let Some(shelves) = messaging.local_dead_letters() {
            shelves.register("order", pool.clone());
        }
        let parts = Parts::<saga::Sqlite> {
            repo,
            sagas: SqliteSagaStore::new(pool.clone()),
            outbox: SqliteOutbox::new(pool.clone()),
            changes,
        };
        serve(
            config,
            listeners,
            shutdown,
            parts,
            SqliteInbox::new(pool),
            cache,
            idempotency,
            admin,
            messaging,
        )
        .await
    } else {
        let pool =
            ordersys_kit::db::connect(&config.stores.database_url, 20, Duration::from_secs(30))
                .await?;
        let repo = repository::MySqlOrders::new(pool.clone());
        repo.migrate().await?;
        anyhow::ensure!(
            !config.stores.redis_url.is_empty(),
            "REDIS_URL is required with a MySQL database"
        );
        let conn = ordersys_kit::redis_client::client(&config.stores.redis_url)?
            .get_connection_manager()
            .await?;
        let admin = Admin::new("order").mysql(pool.clone()).redis(conn.clone());
        let parts = Parts::<saga::MySql> {
            repo,
            sagas: MySqlSagaStore::new(pool.clone()),
            outbox: MySqlServiceOutbox::new(pool.clone(), messaging.outbox_stream()),
            changes: Changes::redis(conn.clone()),
        };
        let cache: Arc<dyn Cache> = Arc::new(RedisCache::new(conn.clone(), "order:"));
        serve(
            config,
            listeners,
            shutdown,
            parts,
            MySqlInbox::new(pool),
            cache,
            Arc::new(RedisIdempotencyStore::new(conn)),
            admin,
            messaging,
        )
        .await
    }
}

/// The stores of one backend, and where orders' changes are told.
struct Parts<B: saga::Backend> {
    repo: B::Repo,
    sagas: B::Sagas,
    outbox: B::Outbox,
    changes: Changes,
}

#[allow(clippy::too_many_arguments)]
async fn serve<B: saga::Backend, I: Inbox<Tx = B::Tx> + Clone>(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
    parts: Parts<B>,
    inbox: I,
    cache: Arc<dyn Cache>,
    idempotency: Arc<dyn IdempotencyStore>,
    admin: Admin,
    messaging: Messaging,
) -> anyhow::Result<()> {
    let topics = config.kafka.topics();
    let mac = config.kafka.saga_mac(&messaging)?;
    let Parts {
        repo,
        sagas,
        outbox,
        changes,
    } = parts;
    let mut launcher = Launcher::new("order", messaging, topics.clone()).await?;
    // Every invalidation of an order's entry is news for the readers waiting on it —
    // here, and with Redis in the other replicas too.
    let cache: Arc<dyn Cache> = Arc::new(changes.watching(cache));
    if !config.stores.redis_url.is_empty() {
        let client = ordersys_kit::redis_client::client(&config.stores.redis_url)?;
        let stop = launcher.stop();
        launcher.spawn(changes.clone().follow(client, stop.wait()));
    }
    let wake = launcher.relay(outbox.clone());
    let deadline = Duration::from_secs(config.payment_deadline_secs);
    let orchestrator = Arc::new(
        Orchestrator::new(
            sagas,
            saga::OrderSink::<B>::new(repo.clone(), outbox, topics.clone()).sealing(mac.clone()),
        )
        .register(saga::create_order(deadline))
        .register(saga::cancel_order(deadline)),
    );
    launcher.housekeeping(
        inbox.clone(),
        idempotency.clone(),
        config.kafka.inbox_retention_hours,
    );
    let service = service::OrderService::<B>::new(
        repo.clone(),
        orchestrator.clone(),
        cache.clone(),
        idempotency,
        wake.clone(),
    )
    .with_changes(changes)
    .accepting(
        config
            .accepted_currencies
            .split(',')
            .map(|c| c.trim().to_owned())
            .filter(|c| !c.is_empty())
            .collect(),
    );
    anyhow::ensure!(
        config.admin_token.is_empty() || config.admin_token.len() >= operator::MIN_TOKEN_LEN,
        "ADMIN_TOKEN is shorter than {} characters: too easy to guess for the key to \
         every saga and dead letter (e.g. `head -c 32 /dev/urandom | base64`)",
        operator::MIN_TOKEN_LEN
    );
    let operator = (!config.admin_token.is_empty()).then(|| {
        let dlq = match launcher.local_dead_letters() {
            Some(shelves) => Some(operator::Dlq::Local(shelves)),
            None => launcher.kafka_access().map(|kafka| operator::Dlq::Kafka {
                client: kafka.client,
                topic: topics.dlq.clone(),
                publisher: kafka.publisher,
            }),
        };
        operator::Operator::<B>::new(
            orchestrator.clone(),
            repo.clone(),
            cache.clone(),
            wake.clone(),
            dlq,
            [topics.commands.clone(), topics.replies.clone()],
            config.admin_token.expose().to_owned(),
        )
    });
    if operator.is_none() {
        tracing::info!("инструменты оператора выключены (ADMIN_TOKEN не задан)");
    }
    let replies = saga::ReplyHandler::<B>::new(
        orchestrator.clone(),
        repo.clone(),
        cache.clone(),
        wake.clone(),
    )
    .sealing(mac);
    launcher.consume(&topics.replies, inbox, replies)?;
    launcher.spawn(saga::sweep_deadlines(
        orchestrator,
        repo,
        cache,
        wake,
        launcher.stop(),
    ));

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<OrderServiceServer<grpc::OrderGrpc<B>>>()
        .await;
    let grpc_metrics = ordersys_kit::metrics::RequestMetricsLayer::new(admin.registry())?;
    let admin_router = match operator {
        Some(op) if config.operator_addr.is_empty() => admin.router().merge(op.router()),
        Some(op) => {
            // A port of their own, on loopback by default: the key to every saga and
            // dead letter is not offered to the network the metrics are scraped from.
            let listener = tokio::net::TcpListener::bind(&config.operator_addr).await?;
            tracing::info!(operator = %listener.local_addr()?, "инструменты оператора доступны");
            let stop = launcher.stop();
            launcher.spawn(async move {
                ordersys_kit::admin::serve(listener, op.router(), stop.wait())
                    .await
                    .map_err(Into::into)
            });
            admin.router()
        }
        None => admin.router(),
    };
    let routes = tonic::service::Routes::new(health_service).add_service(OrderServiceServer::new(
        grpc::OrderGrpc::new(
            service,
            ordersys_kit::end_user::EndUsers::new(config.jwt.verifier()?),
        ),
    ));
    launcher.serve_with_admin_router(
        listeners,
        admin_router,
        grpc_metrics,
        &config.tls,
        GrpcApi::new(routes, callers()),
        "сервис заказов запущен",
    )?;
    launcher.run(shutdown, "сервис заказов остановлен").await
}

/// Who may call the service over gRPC, by the service name its certificate carries
/// (`ordersys_kit::callers`): the gateway, every RPC — no other service calls this one.
fn callers() -> Callers {
    use ordersys_proto::order::v1::order_service_server::SERVICE_NAME;
    Callers::new().allow_service(SERVICE_NAME, &["gateway"])
}
