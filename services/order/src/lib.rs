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
pub mod repository;
pub mod saga;
pub mod service;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ordersys_kit::admin::{self, Admin};
use ordersys_kit::context::ContextLayer;
use ordersys_kit::messaging::{relay, Topics};
use ordersys_kit::shutdown::Shutdown;
use ordersys_proto::order::v1::order_service_server::OrderServiceServer;
use outbox::idempotency::{Cache, RedisCache, RedisIdempotencyStore};
use outbox::kafka::{run_consumer, ConsumerConfig, KafkaDeadLetter, KafkaPublisher};
use outbox::mysql::{MySqlInbox, MySqlOutbox};
use outbox::IdempotentConsumer;
use saga_core::mysql::MySqlSagaStore;
use saga_core::Orchestrator;
use tokio_stream::wrappers::TcpListenerStream;

pub use config::Config;
pub use ordersys_kit::Listeners;

/// Run until `shutdown` resolves.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let pool = ordersys_kit::db::connect(&config.database_url, 20, Duration::from_secs(30)).await?;
    repository::migrate(&pool).await?;
    let redis_conn = redis::Client::open(config.redis_url.as_str())?
        .get_connection_manager()
        .await?;
    let cache: Arc<dyn Cache> = Arc::new(RedisCache::new(redis_conn.clone(), "order:"));
    let idempotency = Arc::new(RedisIdempotencyStore::new(redis_conn.clone()));
    let topics = Topics::new(&config.kafka_topic_prefix);
    topics
        .ensure(&config.kafka_brokers, Duration::from_secs(30))
        .await?;
    let publisher = KafkaPublisher::new(&config.kafka_brokers)?;

    let outbox = MySqlOutbox::new(pool.clone());
    let (relay, relay_handle) = relay(outbox.clone(), publisher.clone(), "order");
    let deadline = Duration::from_secs(config.payment_deadline_secs);
    let orchestrator = Arc::new(
        Orchestrator::new(
            MySqlSagaStore::new(pool.clone()),
            saga::OrderSink::new(outbox, topics.clone()),
        )
        .register(saga::create_order(deadline))
        .register(saga::cancel_order(deadline)),
    );
    let service = service::OrderService::new(
        pool.clone(),
        orchestrator.clone(),
        cache.clone(),
        idempotency,
        relay_handle.clone(),
    );
    let replies =
        saga::ReplyHandler::new(orchestrator.clone(), cache.clone(), relay_handle.clone());
    let consumer = IdempotentConsumer::new(
        "order",
        MySqlInbox::new(pool.clone()),
        KafkaDeadLetter::new(publisher.clone()).with_topic(topics.dlq.clone()),
    );
    let consumer_config = ConsumerConfig::new(
        &config.kafka_brokers,
        topics.group("order"),
        &[&topics.replies],
    );

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<OrderServiceServer<grpc::OrderGrpc>>()
        .await;
    let admin = Admin::new("order").mysql(pool.clone()).redis(redis_conn);
    let grpc_metrics = ordersys_kit::metrics::RequestMetricsLayer::new(admin.registry())?;

    let (trigger, stop) = Shutdown::new();
    let grpc_addr = listeners.grpc.local_addr()?;
    let admin_addr = listeners.admin.local_addr()?;
    let mut tasks = tokio::task::JoinSet::new();
    let s = stop.clone();
    tasks.spawn(async move {
        admin::serve(listeners.admin, admin.router(), s.wait())
            .await
            .map_err(anyhow::Error::from)
    });
    let s = stop.clone();
    tasks.spawn(async move { relay.run(s.wait()).await.map_err(anyhow::Error::from) });
    let s = stop.clone();
    tasks.spawn(async move {
        run_consumer(&consumer_config, &consumer, &replies, s.wait())
            .await
            .map(drop)
            .map_err(anyhow::Error::from)
    });
    tasks.spawn(saga::sweep_deadlines(
        orchestrator,
        pool.clone(),
        cache,
        relay_handle,
        stop.clone(),
    ));
    let s = stop.clone();
    tasks.spawn(async move {
        tonic::transport::Server::builder()
            .layer(ContextLayer)
            .layer(grpc_metrics)
            .add_service(health_service)
            .add_service(OrderServiceServer::new(grpc::OrderGrpc::new(service)))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listeners.grpc), s.wait())
            .await
            .map_err(anyhow::Error::from)
    });
    tracing::info!(grpc = %grpc_addr, admin = %admin_addr, "сервис заказов запущен");
    let result = ordersys_kit::shutdown::supervise(tasks, shutdown, trigger).await;
    pool.close().await;
    tracing::info!("сервис заказов остановлен");
    result
}
