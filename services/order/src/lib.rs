//! The ordersys order service: orders and the SPEC §4 create-order saga. The order row,
//! the saga and the debit command commit in one transaction; a relay publishes commands
//! to `saga.commands`; `saga.replies` are applied idempotently; a deadline sweep keeps
//! sagas from getting stuck; a confirmed order is cancelled by a refund saga.
//!
//! Layers: [`domain`] ← [`repository`] ← [`service`] / [`saga`] ← [`grpc`].

#![warn(missing_docs)]

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

use ordersys_kit::admin::{self, Admin};
use ordersys_kit::context::ContextLayer;
use ordersys_kit::messaging::{relay, Messaging, Topics};
use ordersys_kit::outbox_store::MySqlServiceOutbox;
use ordersys_kit::shutdown::Shutdown;
use ordersys_proto::order::v1::order_service_server::OrderServiceServer;
use outbox::idempotency::{
    Cache, IdempotencyStore, MemoryCache, RedisCache, RedisIdempotencyStore,
};
use outbox::kafka::{run_consumer, ConsumerConfig, KafkaDeadLetter};
use outbox::mysql::MySqlInbox;
use outbox::sqlite::{SqliteIdempotencyStore, SqliteInbox, SqliteOutbox};
use outbox::{IdempotentConsumer, Inbox};
use saga_core::mysql::MySqlSagaStore;
use saga_core::sqlite::SqliteSagaStore;
use saga_core::Orchestrator;
use tokio_stream::wrappers::TcpListenerStream;

pub use config::Config;
pub use ordersys_kit::Listeners;

/// Run until `shutdown` resolves, exchanging saga messages through Kafka
/// (`KAFKA_BROKERS`). See [`run_with`] for other messaging.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let messaging = Messaging::Kafka {
        brokers: config.kafka_brokers.clone(),
        tuning: config.kafka.clone(),
    };
    run_with(config, listeners, shutdown, messaging).await
}

/// Create the database if missing and apply every migration (orders, sagas, outbox,
/// inbox; with SQLite and no Redis, the idempotency file too), then return:
/// `ordersys-order migrate`, `make migrate`. Serving applies them too; this runs them as
/// a step of their own (before a rollout, say).
pub async fn migrate(config: &Config) -> anyhow::Result<()> {
    if ordersys_kit::db::is_sqlite(&config.database_url) {
        let pool = ordersys_kit::db::connect_sqlite(&config.database_url).await?;
        repository::SqliteOrders::new(pool).migrate().await?;
        if config.redis_url.is_empty() {
            ordersys_kit::db::sqlite_idempotency_keys(&config.database_url).await?;
        }
        Ok(())
    } else {
        let pool =
            ordersys_kit::db::connect(&config.database_url, 2, Duration::from_secs(30)).await?;
        repository::MySqlOrders::new(pool).migrate().await
    }
}

/// Run until `shutdown` resolves, with `messaging` for the saga messages.
pub async fn run_with(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
    messaging: Messaging,
) -> anyhow::Result<()> {
    // Backends by configuration: MySQL or SQLite (DATABASE_URL); Redis for the cache and
    // idempotency keys, or memory cache + SQLite keys when REDIS_URL is empty (SQLite only).
    if ordersys_kit::db::is_sqlite(&config.database_url) {
        let pool = ordersys_kit::db::connect_sqlite(&config.database_url).await?;
        let repo = repository::SqliteOrders::new(pool.clone());
        repo.migrate().await?;
        let repo = repo
            .with_readers(ordersys_kit::db::connect_sqlite_readers(&config.database_url).await?);
        let mut admin = Admin::new("order").sqlite(pool.clone());
        let (cache, idempotency): (Arc<dyn Cache>, Arc<dyn IdempotencyStore>) =
            if config.redis_url.is_empty() {
                // The keys are a fast path in front of the orders' unique
                // (user, Idempotency-Key): a cache in a file of its own, whose commits
                // wait for no disk and never queue behind the orders' writes.
                let keys = ordersys_kit::db::sqlite_idempotency_keys(&config.database_url).await?;
                (
                    Arc::new(MemoryCache::new()),
                    Arc::new(SqliteIdempotencyStore::new(keys)),
                )
            } else {
                let conn = ordersys_kit::redis_client::client(&config.redis_url)?
                    .get_connection_manager()
                    .await?;
                admin = admin.redis(conn.clone());
                (
                    Arc::new(RedisCache::new(conn.clone(), "order:")),
                    Arc::new(RedisIdempotencyStore::new(conn)),
                )
            };
        let parts = Parts::<saga::Sqlite> {
            repo,
            sagas: SqliteSagaStore::new(pool.clone()),
            outbox: SqliteOutbox::new(pool.clone()),
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
            ordersys_kit::db::connect(&config.database_url, 20, Duration::from_secs(30)).await?;
        let repo = repository::MySqlOrders::new(pool.clone());
        repo.migrate().await?;
        anyhow::ensure!(
            !config.redis_url.is_empty(),
            "REDIS_URL is required with a MySQL database"
        );
        let conn = ordersys_kit::redis_client::client(&config.redis_url)?
            .get_connection_manager()
            .await?;
        let admin = Admin::new("order").mysql(pool.clone()).redis(conn.clone());
        let parts = Parts::<saga::MySql> {
            repo,
            sagas: MySqlSagaStore::new(pool.clone()),
            outbox: MySqlServiceOutbox::new(pool.clone(), messaging.outbox_stream()),
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

/// The stores of one backend.
struct Parts<B: saga::Backend> {
    repo: B::Repo,
    sagas: B::Sagas,
    outbox: B::Outbox,
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
    let topics = Topics::new(&config.kafka_topic_prefix);
    let Parts {
        repo,
        sagas,
        outbox,
    } = parts;
    let (trigger, stop) = Shutdown::new();
    let mut tasks = tokio::task::JoinSet::new();
    // The relay: to Kafka, or onto the in-process bus.
    let (relay_handle, kafka) = match &messaging {
        Messaging::Kafka { brokers, tuning } => {
            topics
                .ensure(brokers, tuning, Duration::from_secs(30))
                .await?;
            let publisher = tuning.publisher(brokers)?;
            let (relay, handle) = relay(
                outbox.clone(),
                publisher.clone(),
                "order",
                messaging.outbox_stream(),
            );
            let s = stop.clone();
            tasks.spawn(async move { relay.run(s.wait()).await.map_err(anyhow::Error::from) });
            (handle, Some((brokers.clone(), tuning.clone(), publisher)))
        }
        Messaging::Local(bus) => {
            let (relay, handle) = relay(outbox.clone(), bus.clone(), "order", false);
            let s = stop.clone();
            tasks.spawn(async move { relay.run(s.wait()).await.map_err(anyhow::Error::from) });
            (handle, None)
        }
    };
    let deadline = Duration::from_secs(config.payment_deadline_secs);
    let orchestrator = Arc::new(
        Orchestrator::new(
            sagas,
            saga::OrderSink::<B>::new(repo.clone(), outbox, topics.clone()),
        )
        .register(saga::create_order(deadline))
        .register(saga::cancel_order(deadline)),
    );
    ordersys_kit::messaging::spawn_housekeeping(
        &mut tasks,
        inbox.clone(),
        idempotency.clone(),
        config.inbox_retention_hours,
        stop.clone(),
    );
    let service = service::OrderService::<B>::new(
        repo.clone(),
        orchestrator.clone(),
        cache.clone(),
        idempotency,
        relay_handle.clone(),
    )
    .accepting(
        config
            .accepted_currencies
            .split(',')
            .map(|c| c.trim().to_owned())
            .filter(|c| !c.is_empty())
            .collect(),
    );
    let operator = (!config.admin_token.is_empty()).then(|| {
        let dlq = match (&messaging, &kafka) {
            (Messaging::Kafka { .. }, Some((brokers, tuning, publisher))) => tuning
                .client_config(brokers)
                .ok()
                .map(|client| operator::Dlq {
                    client,
                    topic: topics.dlq.clone(),
                    publisher: publisher.clone(),
                }),
            _ => None,
        };
        operator::Operator::<B>::new(
            orchestrator.clone(),
            repo.clone(),
            cache.clone(),
            relay_handle.clone(),
            dlq,
            config.admin_token.clone(),
        )
    });
    if operator.is_none() {
        tracing::info!("инструменты оператора выключены (ADMIN_TOKEN не задан)");
    }
    let replies = saga::ReplyHandler::<B>::new(
        orchestrator.clone(),
        repo.clone(),
        cache.clone(),
        relay_handle.clone(),
    );
    // Replies: from Kafka, or delivered by the in-process bus.
    match (messaging, kafka) {
        (Messaging::Kafka { .. }, Some((brokers, tuning, publisher))) => {
            let consumer = IdempotentConsumer::new(
                "order",
                inbox,
                KafkaDeadLetter::new(publisher).with_topic(topics.dlq.clone()),
            );
            let mut consumer_config = tuning.consumer(ConsumerConfig::new(
                &brokers,
                topics.group("order"),
                &[&topics.replies],
            ))?;
            consumer_config.instance_id = tuning.instance_id("order");
            let s = stop.clone();
            tasks.spawn(async move {
                run_consumer(&consumer_config, &consumer, &replies, s.wait())
                    .await
                    .map(drop)
                    .map_err(anyhow::Error::from)
            });
        }
        (Messaging::Local(bus), _) => {
            let dead_letters = bus.clone().with_dead_letter_topic(topics.dlq.clone());
            bus.subscribe(
                &topics.replies,
                IdempotentConsumer::new("order", inbox, dead_letters),
                replies,
            );
        }
        (Messaging::Kafka { .. }, None) => {
            unreachable!("the Kafka branch above sets the publisher")
        }
    }

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<OrderServiceServer<grpc::OrderGrpc<B>>>()
        .await;
    let grpc_metrics = ordersys_kit::metrics::RequestMetricsLayer::new(admin.registry())?;

    let grpc_addr = listeners.grpc.local_addr()?;
    let admin_addr = listeners.admin.local_addr()?;
    let s = stop.clone();
    let admin_router = match operator {
        Some(op) => admin.router().merge(op.router()),
        None => admin.router(),
    };
    tasks.spawn(async move {
        admin::serve(listeners.admin, admin_router, s.wait())
            .await
            .map_err(anyhow::Error::from)
    });
    tasks.spawn(saga::sweep_deadlines(
        orchestrator,
        repo,
        cache,
        relay_handle,
        stop.clone(),
    ));
    let s = stop.clone();
    let grpc_server = config.tls.server(tonic::transport::Server::builder())?;
    let routes = tonic::service::Routes::new(health_service)
        .add_service(OrderServiceServer::new(grpc::OrderGrpc::new(service)));
    ordersys_kit::serve_in_process(listeners.local.as_ref(), &routes, &grpc_metrics);
    tasks.spawn(async move {
        grpc_server
            .layer(ContextLayer)
            .layer(grpc_metrics)
            .add_routes(routes)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listeners.grpc), s.wait())
            .await
            .map_err(anyhow::Error::from)
    });
    tracing::info!(grpc = %grpc_addr, admin = %admin_addr, "сервис заказов запущен");
    let result = ordersys_kit::shutdown::supervise(tasks, shutdown, trigger).await;
    tracing::info!("сервис заказов остановлен");
    result
}
