//! The ordersys API gateway: the public REST API (SPEC §8) in front of the gRPC
//! services, with JWT + blacklist authentication, per-IP rate limiting, a circuit
//! breaker per downstream endpoint with health-driven recovery, correlation ids and W3C trace context, a body limit, and
//! every error as `{"error":{"code","message","correlation_id"}}`.

#![warn(missing_docs)]

mod backends;
pub mod balance;
pub mod client_ip;
pub mod config;
pub mod contract;
pub mod downstream;
pub mod error;
mod middleware;
pub mod openapi;
pub mod routes;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use authz::layer::AuthLayer;
use authz::Authenticator;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::middleware::{from_fn, from_fn_with_state};
use axum::routing::{get, post};
use axum::Router;
use ordersys_kit::admin::Admin;
use ordersys_kit::context::ContextLayer;
use ordersys_kit::local_grpc::Transport;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts};
use resilience::RateLimiter;

pub use backends::{Backends, InProcess};
use balance::{Downstream, Settings};
pub use config::Config;
use error::ApiError;
pub use middleware::HEADER_LIMIT_BYTES;
use middleware::{
    observe, rate_limit, refuse_large_headers, refuse_oversized, request_timeout, security_headers,
};

/// Shared state of the handlers: cheap to clone (axum clones it for every extractor and
/// middleware of every request — cloning the clients, breakers and validator each time
/// was a third of the gateway's CPU per request).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] shares.
pub struct Shared {
    /// The user service.
    pub users: Downstream,
    /// The order service.
    pub orders: Downstream,
    /// The payment service.
    pub payments: Downstream,
    /// Revokes on logout in this gateway's own blacklist too (`None` without the
    /// security layers): a mirrored blacklist knows at once, before the announcement
    /// comes back from Redis.
    pub auth: Option<Authenticator>,
    limiter: Arc<dyn RateLimiter>,
    /// Login attempts per account.
    pub(crate) login_limiter: Arc<dyn RateLimiter>,
    proxies: client_ip::TrustedProxies,
    pub(crate) metrics: Metrics,
    /// The longest one call of a waiting `GET /api/v1/orders/{id}?wait=` is held by the
    /// order service: well within the downstream deadline.
    pub(crate) wait_slice: Duration,
    /// The longest `?wait=` honoured: 30 s, and 2 s short of the request timeout (a wait
    /// answers 200 with the order as it is, never 408).
    pub(crate) longest_wait: Duration,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

#[derive(Clone)]
struct Metrics {
    requests: IntCounterVec,
    latency: HistogramVec,
    rate_limited: IntCounterVec,
}

/// The gateway's two routers: the public one and the admin one.
#[derive(Debug)]
pub struct Routers {
    /// For `HTTP_ADDR`: the REST API, `/openapi.json`, `/docs` and `/healthz`, every
    /// route rate limited per client.
    pub public: Router,
    /// For `ADMIN_ADDR`: `/healthz`, `/readyz` and `/metrics`.
    pub admin: Router,
}

/// Build the public router (the REST API) with Redis backends.
pub async fn app(config: &Config) -> anyhow::Result<Router> {
    let backends = Backends::redis(config).await?;
    app_with(config, backends)
}

/// Build the public router (the REST API) over `backends`.
pub fn app_with(config: &Config, backends: Backends) -> anyhow::Result<Router> {
    Ok(routers(config, backends)?.public)
}

/// Build the public and the admin router over `backends`.
pub fn routers(config: &Config, backends: Backends) -> anyhow::Result<Routers> {
    let auth = Authenticator::new(config.jwt.verifier()?, backends.blacklist.clone());
    build(config, backends, Security::On(Box::new(auth)))
}

/// **For benchmarks only** (feature `bench`, never enabled by the gateway binary): the
/// router of [`app_with`] without its security layers — no token check, no blacklist,
/// no rate limit — every request acting as `claims`, forwarding `token` (theirs) to
/// the services. It exists to measure what those layers cost (`gateway-bench`,
/// docs/BENCHMARKS.md); serving it exposes that user's orders to anyone.
#[cfg(feature = "bench")]
#[doc(hidden)]
pub fn app_without_security(
    config: &Config,
    backends: Backends,
    claims: authz::Claims,
    token: String,
) -> anyhow::Result<Router> {
    Ok(build(config, backends, Security::Off(claims, token))?.public)
}

enum Security {
    On(Box<Authenticator>),
    #[cfg_attr(not(feature = "bench"), allow(dead_code))]
    Off(authz::Claims, String),
}

/// A readiness check of an in-process service: its gRPC health service answers.
fn grpc_health(
    channel: Transport,
) -> impl Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>
       + Send
       + Sync
       + 'static {
    move || {
        let mut client = tonic_health::pb::health_client::HealthClient::new(channel.clone());
        Box::pin(async move {
            client
                .check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .map(drop)
                .map_err(|s| s.message().to_owned())
        })
    }
}

fn build(config: &Config, backends: Backends, security: Security) -> anyhow::Result<Routers> {
    let limiter = backends.limiter;
    let login_limiter = backends.login_limiter;
    let timeout = Duration::from_millis(config.downstream_timeout_ms);
    // One breaker per endpoint of each downstream; its state is the SDK's
    // `resilience_breaker_state` gauge (0 closed, 1 open, 2 half-open) and
    // `resilience_breaker_transitions_total` (with the reason of each change).
    let settings = Settings {
        failure_threshold: config.breaker_failure_threshold,
        open_timeout: Duration::from_secs(config.breaker_open_secs),
        probe_every: Duration::from_millis(config.breaker_probe_ms.max(10)),
        timeout,
    };
    let (users, orders, payments) = match &backends.in_process {
        Some(local) => (
            Downstream::single("user", local.user.transport(timeout), settings.clone()),
            Downstream::single("order", local.order.transport(timeout), settings.clone()),
            Downstream::single("payment", local.payment.transport(timeout), settings),
        ),
        None => (
            Downstream::at(
                "user",
                &config.tls,
                &config.user_service_url,
                settings.clone(),
            )?,
            Downstream::at(
                "order",
                &config.tls,
                &config.order_service_url,
                settings.clone(),
            )?,
            Downstream::at(
                "payment",
                &config.tls,
                &config.payment_service_url,
                settings,
            )?,
        ),
    };

    // On the admin port; readiness without backend error text all the same (an admin
    // port is sometimes published by mistake). Readiness is the gateway's own (its
    // Redis), not the services': with one service down the gateway stays in the load
    // balancer and answers that service's routes with 503 (its breaker), every other
    // route as usual — a downstream check here would take every gateway replica out at
    // once.
    let mut admin = Admin::new("gateway").public();
    if let Some(conn) = backends.redis {
        admin = admin.redis(conn);
    }
    // In one process (`ordersys`) the services are parts of the gateway's own process:
    // it is ready when they are.
    if let Some(local) = &backends.in_process {
        admin = admin
            .check("user-service", grpc_health(local.user.transport(timeout)))
            .check("order-service", grpc_health(local.order.transport(timeout)))
            .check(
                "payment-service",
                grpc_health(local.payment.transport(timeout)),
            );
    }
    let registry = admin.registry().clone();
    let metrics = Metrics {
        requests: IntCounterVec::new(
            Opts::new("http_requests_total", "REST requests by route and status"),
            &["method", "route", "status"],
        )?,
        latency: HistogramVec::new(
            HistogramOpts::new("http_request_duration_seconds", "REST request latency"),
            &["method", "route"],
        )?,
        rate_limited: IntCounterVec::new(
            Opts::new("rate_limited_total", "requests refused with 429"),
            &["route"],
        )?,
    };
    registry.register(Box::new(metrics.requests.clone()))?;
    registry.register(Box::new(metrics.latency.clone()))?;
    registry.register(Box::new(metrics.rate_limited.clone()))?;

    let state = AppState(Arc::new(Shared {
        users,
        orders,
        payments,
        auth: match &security {
            Security::On(auth) => Some((**auth).clone()),
            Security::Off(..) => None,
        },
        limiter,
        login_limiter,
        proxies: client_ip::TrustedProxies::parse(&config.trusted_proxies)?,
        metrics: metrics.clone(),
        wait_slice: (timeout * 2 / 3).min(Duration::from_secs(2)),
        longest_wait: Duration::from_secs(config.request_timeout_secs.max(1))
            .saturating_sub(Duration::from_secs(2))
            .min(routes::orders::MAX_WAIT),
    }));

    let protected = Router::new()
        .route("/api/v1/auth/logout", post(routes::auth::logout))
        .route("/api/v1/auth/me", get(routes::auth::me))
        .route(
            "/api/v1/orders",
            post(routes::orders::create).get(routes::orders::list),
        )
        .route("/api/v1/orders/{id}", get(routes::orders::get))
        .route("/api/v1/orders/{id}/cancel", post(routes::orders::cancel))
        .route("/api/v1/wallet", get(routes::orders::wallet));
    let protected = match &security {
        Security::On(auth) => protected.route_layer(AuthLayer::new((**auth).clone())),
        Security::Off(claims, token) => protected
            .route_layer(axum::Extension(claims.clone()))
            .route_layer(axum::Extension(authz::layer::BearerToken(token.clone()))),
    };
    let api = Router::new()
        .route("/api/v1/auth/register", post(routes::auth::register))
        .route("/api/v1/auth/login", post(routes::auth::login))
        .merge(protected);
    let api = Router::new()
        .merge(api)
        .route("/openapi.json", get(openapi::document))
        .route("/docs", get(openapi::rendered))
        .route("/docs/scalar.js", get(openapi::renderer))
        .merge(admin.liveness().with_state(()))
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                crate::contract::ErrorCode::MethodNotAllowed,
                "method not allowed",
            )
        })
        .with_state(state.clone());
    // Every answer of the public port counts against the client's limit: the API, the
    // documents, the liveness probe, an unknown route or method alike.
    let api = match security {
        Security::On(_) => api.layer(from_fn_with_state(state.clone(), rate_limit)),
        Security::Off(..) => api,
    };

    let public = api
        .layer(DefaultBodyLimit::max(config.body_limit_bytes))
        .layer(from_fn_with_state(
            config.body_limit_bytes,
            refuse_oversized,
        ))
        .layer(from_fn_with_state(
            Duration::from_secs(config.request_timeout_secs.max(1)),
            request_timeout,
        ))
        .layer(from_fn(refuse_large_headers))
        .layer(from_fn(error::with_correlation_id))
        .layer(from_fn(security_headers))
        .layer(from_fn_with_state(state, observe))
        .layer(ContextLayer);
    Ok(Routers {
        public,
        admin: admin.router(),
    })
}

/// Where the gateway listens: the public port (`HTTP_ADDR`) and the admin port
/// (`ADMIN_ADDR`).
#[derive(Debug)]
pub struct Listeners {
    /// The REST API.
    pub http: tokio::net::TcpListener,
    /// `/healthz`, `/readyz`, `/metrics`.
    pub admin: tokio::net::TcpListener,
}

impl Listeners {
    /// Bind `config.http_addr` and `config.admin_addr`.
    pub async fn bind(config: &Config) -> std::io::Result<Self> {
        Ok(Self {
            http: tokio::net::TcpListener::bind(&config.http_addr).await?,
            admin: tokio::net::TcpListener::bind(&config.admin_addr).await?,
        })
    }
}

/// Serve on `listeners` until `shutdown` resolves (in-flight requests finish).
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let backends = Backends::redis(&config).await?;
    run_with(config, listeners, shutdown, backends).await
}

/// Serve on `listeners` with `backends` until `shutdown` resolves.
pub async fn run_with(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
    backends: Backends,
) -> anyhow::Result<()> {
    let Routers { public, admin } = routers(&config, backends)?;
    let (http, admin_addr) = (listeners.http.local_addr()?, listeners.admin.local_addr()?);
    let mut launcher = ordersys_kit::launch::Launcher::without_messaging("gateway");
    for (listener, router) in [(listeners.http, public), (listeners.admin, admin)] {
        let stop = launcher.stop();
        launcher.spawn(async move {
            ordersys_kit::admin::serve(listener, router, stop.wait())
                .await
                .map_err(Into::into)
        });
    }
    tracing::info!(http = %http, admin = %admin_addr, "шлюз запущен");
    launcher.run(shutdown, "шлюз остановлен").await
}
