//! The one way a service starts: its long-running tasks (relay, consumers, sweeps,
//! housekeeping, the admin endpoints, the gRPC server) go into one [`Launcher`], which
//! wires the saga messaging for Kafka or the in-process bus alike and supervises the
//! tasks until shutdown ([`crate::shutdown::supervise`]).
//!
//! A service's `lib.rs` then reads as composition:
//!
//! ```no_run
//! # async fn example(
//! #     outbox: outbox::memory::MemoryOutbox,
//! #     inbox: outbox::memory::MemoryInbox,
//! #     handler: impl outbox::MessageHandler<outbox::memory::MemoryTx> + 'static,
//! #     listeners: ordersys_kit::Listeners,
//! #     tls: ordersys_kit::tls::GrpcTls,
//! #     routes: tonic::service::Routes,
//! # ) -> anyhow::Result<()> {
//! use ordersys_kit::admin::Admin;
//! use ordersys_kit::callers::Callers;
//! use ordersys_kit::launch::{GrpcApi, Launcher};
//! use ordersys_kit::messaging::{Messaging, Topics};
//!
//! let topics = Topics::new("");
//! let mut launcher = Launcher::new("payment", Messaging::local(), topics.clone()).await?;
//! let _wake = launcher.relay(outbox);
//! launcher.consume(&topics.commands, inbox, handler)?;
//! let callers = Callers::new().allow("/ordersys.payment.v1.PaymentService/", &["gateway"]);
//! let api = GrpcApi::new(routes, callers);
//! launcher.serve(listeners, Admin::new("payment"), &tls, api, "платёжный сервис запущен")?;
//! launcher.run(ordersys_kit::shutdown::signal(), "платёжный сервис остановлен").await
//! # }
//! ```

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use outbox::idempotency::IdempotencyStore;
use outbox::kafka::{run_consumer, ConsumerConfig, KafkaDeadLetter, KafkaPublisher};
use outbox::local::LocalBus;
use outbox::{IdempotentConsumer, Inbox, MessageHandler, OutboxStore, RelayHandle};
use tokio::task::JoinSet;
use tokio_stream::wrappers::TcpListenerStream;

use crate::callers::Callers;
use crate::context::ContextLayer;
use crate::messaging::{relay, KafkaTuning, Messaging, Topics};
use crate::metrics::RequestMetricsLayer;
use crate::parked::LocalDeadLetters;
use crate::shutdown::{Shutdown, Trigger};
use crate::tls::GrpcTls;
use crate::Listeners;

/// How long a service waits at start for the broker to create its topics.
const TOPICS_WAIT: Duration = Duration::from_secs(30);

/// What a service serves over gRPC: its routes, and who may call them.
pub struct GrpcApi {
    routes: tonic::service::Routes,
    callers: Callers,
}

impl GrpcApi {
    /// `routes`, callable by the services `callers` names (over mutual TLS).
    pub fn new(routes: tonic::service::Routes, callers: Callers) -> Self {
        Self { routes, callers }
    }
}

impl std::fmt::Debug for GrpcApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcApi")
            .field("callers", &self.callers)
            .finish_non_exhaustive()
    }
}

/// A service's tasks and its messaging, started one by one and then supervised by
/// [`Launcher::run`]: the first task to end (or fail) stops the rest, and so does the
/// shutdown signal; `run` returns once every task has finished.
pub struct Launcher {
    service: &'static str,
    topics: Topics,
    transport: Transport,
    trigger: Trigger,
    stop: Shutdown,
    tasks: JoinSet<anyhow::Result<()>>,
}

/// Where the saga messages go and come from.
enum Transport {
    Kafka {
        brokers: String,
        tuning: KafkaTuning,
        publisher: KafkaPublisher,
        outbox_stream: bool,
    },
    Local {
        bus: LocalBus,
        dead_letters: LocalDeadLetters,
    },
}

/// What the operator tools need to read and replay the dead-letter topic (Kafka only).
#[derive(Clone)]
pub struct KafkaAccess {
    /// Client settings (brokers and security) for a reader.
    pub client: rdkafka::ClientConfig,
    /// The service's publisher.
    pub publisher: KafkaPublisher,
}

impl std::fmt::Debug for KafkaAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaAccess").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Launcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Launcher")
            .field("service", &self.service)
            .field("tasks", &self.tasks.len())
            .finish_non_exhaustive()
    }
}

impl Launcher {
    /// A launcher for `service` exchanging saga messages through `messaging` on
    /// `topics`. With Kafka, the topics are created if missing (waiting up to 30 s for
    /// the broker) and the publisher is made here.
    pub async fn new(
        service: &'static str,
        messaging: Messaging,
        topics: Topics,
    ) -> anyhow::Result<Self> {
        let transport = match messaging {
            Messaging::Kafka { brokers, tuning } => {
                topics.ensure(&brokers, &tuning, TOPICS_WAIT).await?;
                let publisher = tuning.publisher(&brokers)?;
                let outbox_stream = tuning.outbox_stream;
                Transport::Kafka {
                    brokers,
                    tuning,
                    publisher,
                    outbox_stream,
                }
            }
            Messaging::Local { bus, dead_letters } => Transport::Local { bus, dead_letters },
        };
        Ok(Self::with_transport(service, topics, transport))
    }

    /// A launcher for a service that exchanges no saga messages (the user service, the
    /// gateway).
    pub fn without_messaging(service: &'static str) -> Self {
        let transport = Transport::Local {
            bus: LocalBus::new(),
            dead_letters: LocalDeadLetters::new(),
        };
        Self::with_transport(service, Topics::new(""), transport)
    }

    fn with_transport(service: &'static str, topics: Topics, transport: Transport) -> Self {
        let (trigger, stop) = Shutdown::new();
        Self {
            service,
            topics,
            transport,
            trigger,
            stop,
            tasks: JoinSet::new(),
        }
    }

    /// The topics.
    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    /// The stop signal every task is given: fired by [`Launcher::run`] on shutdown or
    /// when a task ends.
    pub fn stop(&self) -> Shutdown {
        self.stop.clone()
    }

    /// With Kafka, what the operator tools need for the dead-letter topic.
    pub fn kafka_access(&self) -> Option<KafkaAccess> {
        match &self.transport {
            Transport::Kafka {
                brokers,
                tuning,
                publisher,
                ..
            } => tuning
                .client_config(brokers)
                .ok()
                .map(|client| KafkaAccess {
                    client,
                    publisher: publisher.clone(),
                }),
            Transport::Local { .. } => None,
        }
    }

    /// On the in-process bus, the dead-letter shelves of the process's services (what
    /// the operator tools list and replay).
    pub fn local_dead_letters(&self) -> Option<LocalDeadLetters> {
        match &self.transport {
            Transport::Local { dead_letters, .. } => Some(dead_letters.clone()),
            Transport::Kafka { .. } => None,
        }
    }

    /// Run `task` until it ends; it should end when [`Launcher::stop`] fires.
    pub fn spawn(&mut self, task: impl Future<Output = anyhow::Result<()>> + Send + 'static) {
        self.tasks.spawn(task);
    }

    /// Start the relay of `outbox` (to Kafka, or onto the in-process bus); the handle
    /// wakes it after a commit.
    pub fn relay<O: OutboxStore + 'static>(&mut self, outbox: O) -> RelayHandle {
        let stop = self.stop.clone();
        match &self.transport {
            Transport::Kafka {
                publisher,
                outbox_stream,
                ..
            } => {
                let (relay, handle) =
                    relay(outbox, publisher.clone(), self.service, *outbox_stream);
                self.tasks
                    .spawn(async move { relay.run(stop.wait()).await.map_err(Into::into) });
                handle
            }
            Transport::Local { bus, .. } => {
                let (relay, handle) = relay(outbox, bus.clone(), self.service, false);
                self.tasks
                    .spawn(async move { relay.run(stop.wait()).await.map_err(Into::into) });
                handle
            }
        }
    }

    /// Consume `topic` through an idempotent consumer named after the service (its
    /// records in `inbox`; what cannot be handled goes to the dead-letter topic, or on
    /// the in-process bus to the service's SQLite shelf if it registered one in
    /// [`Messaging::local_dead_letters`]). With Kafka: in the group
    /// `{prefix}{service}`, with the tuning's settings.
    pub fn consume<I, H>(&mut self, topic: &str, inbox: I, handler: H) -> anyhow::Result<()>
    where
        I: Inbox,
        H: MessageHandler<I::Tx> + 'static,
    {
        let dlq = self.topics.dlq.clone();
        match &self.transport {
            Transport::Kafka {
                brokers,
                tuning,
                publisher,
                ..
            } => {
                let consumer = IdempotentConsumer::new(
                    self.service,
                    inbox,
                    KafkaDeadLetter::new(publisher.clone()).with_topic(dlq),
                );
                let mut config = tuning.consumer(ConsumerConfig::new(
                    brokers,
                    self.topics.group(self.service),
                    &[topic],
                ))?;
                config.instance_id = tuning.instance_id(self.service);
                let stop = self.stop.clone();
                self.tasks.spawn(async move {
                    run_consumer(&config, &consumer, &handler, stop.wait())
                        .await
                        .map(drop)
                        .map_err(Into::into)
                });
            }
            Transport::Local { bus, dead_letters } => match dead_letters.of(self.service) {
                Some(shelf) => bus.subscribe(
                    topic,
                    IdempotentConsumer::new(self.service, inbox, shelf.dead_letters),
                    handler,
                ),
                // A service not on SQLite registered no shelf: the bus's dead-letter
                // topic, in memory.
                None => bus.subscribe(
                    topic,
                    IdempotentConsumer::new(
                        self.service,
                        inbox,
                        bus.clone().with_dead_letter_topic(dlq),
                    ),
                    handler,
                ),
            },
        }
        Ok(())
    }

    /// Purge old inbox records and expired idempotency keys every
    /// [`HOUSEKEEPING_EVERY`](crate::messaging::HOUSEKEEPING_EVERY).
    pub fn housekeeping<I: Inbox>(
        &mut self,
        inbox: I,
        idempotency: Arc<dyn IdempotencyStore>,
        inbox_retention_hours: u64,
    ) {
        crate::messaging::spawn_housekeeping(
            &mut self.tasks,
            inbox,
            idempotency,
            inbox_retention_hours,
            self.stop.clone(),
        );
    }

    /// Serve the admin endpoints (`admin_router`) and the gRPC `api` (with the tracing
    /// context and request metrics layers, over `tls`, to the callers its allow-list
    /// names — [`crate::callers`]) on `listeners`, and in process too when
    /// the listeners say so. Logs `started` (in the service's language) with both
    /// addresses.
    pub fn serve(
        &mut self,
        listeners: Listeners,
        admin: crate::admin::Admin,
        tls: &GrpcTls,
        api: GrpcApi,
        started: &'static str,
    ) -> anyhow::Result<()> {
        let metrics = RequestMetricsLayer::new(admin.registry())?;
        self.serve_with_admin_router(listeners, admin.router(), metrics, tls, api, started)
    }

    /// [`Launcher::serve`] with an admin router of the caller's (the admin endpoints
    /// merged with more, such as the operator tools) and its request metrics layer.
    pub fn serve_with_admin_router(
        &mut self,
        listeners: Listeners,
        admin_router: axum::Router,
        metrics: RequestMetricsLayer,
        tls: &GrpcTls,
        api: GrpcApi,
        started: &'static str,
    ) -> anyhow::Result<()> {
        let GrpcApi { routes, callers } = api;
        let admin_addr = listeners.admin.local_addr()?;
        let stop = self.stop.clone();
        self.tasks.spawn(async move {
            crate::admin::serve(listeners.admin, admin_router, stop.wait())
                .await
                .map_err(Into::into)
        });
        // In process: the callers are this process's own code.
        crate::serve_in_process(listeners.local.as_ref(), &routes, &metrics);
        let Some(grpc) = listeners.grpc else {
            tracing::info!(grpc = "in-process", admin = %admin_addr, "{started}");
            return Ok(());
        };
        let grpc_addr = grpc.local_addr()?;
        let server = tls.server(tonic::transport::Server::builder())?;
        // With mutual TLS every call is checked against the callers' certificates; in
        // plain text there is no identity to check (the development switch's warning).
        let checked = callers
            .layer(self.service, metrics.denied())
            .enforced(tls.enabled());
        let stop = self.stop.clone();
        self.tasks.spawn(async move {
            server
                .layer(ContextLayer)
                .layer(checked)
                .layer(metrics)
                .add_routes(routes)
                .serve_with_incoming_shutdown(TcpListenerStream::new(grpc), stop.wait())
                .await
                .map_err(Into::into)
        });
        tracing::info!(grpc = %grpc_addr, admin = %admin_addr, "{started}");
        Ok(())
    }

    /// Supervise the tasks until `shutdown` resolves or one of them ends; then stop
    /// them all and wait for them. Logs `stopped` once everything has finished. An
    /// early end of a task is an error (the process should exit and be restarted).
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()>,
        stopped: &'static str,
    ) -> anyhow::Result<()> {
        let result = crate::shutdown::supervise(self.tasks, shutdown, self.trigger).await;
        tracing::info!("{stopped}");
        result
    }
}
