//! The ordersys API gateway: the public REST API (SPEC §8) in front of the gRPC
//! services, with JWT + blacklist authentication, per-IP rate limiting, a circuit
//! breaker per downstream, correlation ids and W3C trace context, a body limit, and
//! every error as `{"error":{"code","message","correlation_id"}}`.

#![warn(missing_docs)]

pub mod client_ip;
pub mod config;
pub mod downstream;
pub mod error;
pub mod openapi;
pub mod routes;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use authz::layer::AuthLayer;
use authz::redis::RedisBlacklist;
use authz::{Authenticator, Blacklist, SigningKey, TokenValidator};
use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use ordersys_kit::admin::Admin;
use ordersys_kit::context::ContextLayer;
use ordersys_kit::local_grpc::{LocalGrpc, Transport};
use ordersys_proto::order::v1::order_service_client::OrderServiceClient;
use ordersys_proto::payment::v1::payment_service_client::PaymentServiceClient;
use ordersys_proto::user::v1::user_service_client::UserServiceClient;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts};
use resilience::rate_limit::{BatchedRedisRateLimiter, RedisRateLimiter};
use resilience::{CircuitBreaker, RateLimiter};

pub use config::Config;
use error::ApiError;

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
    /// User service client.
    pub users: UserServiceClient<Transport>,
    /// Its breaker.
    pub users_breaker: CircuitBreaker,
    /// Order service client.
    pub orders: OrderServiceClient<Transport>,
    /// Its breaker.
    pub orders_breaker: CircuitBreaker,
    /// Payment service client.
    pub payments: PaymentServiceClient<Transport>,
    /// Its breaker.
    pub payments_breaker: CircuitBreaker,
    /// Revokes on logout in this gateway's own blacklist too (`None` without the
    /// security layers): a mirrored blacklist knows at once, before the announcement
    /// comes back from Redis.
    pub auth: Option<Authenticator>,
    limiter: Arc<dyn RateLimiter>,
    proxies: client_ip::TrustedProxies,
    metrics: Metrics,
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

/// A breaker for calls to `name`; its state is the SDK's `resilience_breaker_state`
/// gauge (0 closed, 1 open, 2 half-open) and `resilience_breaker_transitions_total`.
fn breaker(name: &'static str, config: &Config) -> CircuitBreaker {
    CircuitBreaker::builder(name)
        .failure_threshold(config.breaker_failure_threshold)
        .open_timeout(Duration::from_secs(config.breaker_open_secs))
        .on_transition(move |t| {
            tracing::warn!(breaker = name, from = %t.from, to = %t.to, "автоматический выключатель сменил состояние");
        })
        .build()
}

/// A readiness check: the downstream's gRPC health service answers.
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

/// Where the gateway keeps revoked tokens and rate-limit counters.
pub struct Backends {
    /// Revoked tokens (shared with the user service).
    pub blacklist: Arc<dyn Blacklist>,
    /// Per-client counters.
    pub limiter: Arc<dyn RateLimiter>,
    /// Redis, when used (for the readiness check).
    pub redis: Option<redis::aio::ConnectionManager>,
    /// The services in this process, called without a socket (the one-process system);
    /// `None`: over gRPC at the configured URLs.
    pub in_process: Option<InProcess>,
}

/// The three services' in-process gRPC (see [`ordersys_kit::local_grpc`]).
#[derive(Debug, Clone, Default)]
pub struct InProcess {
    /// The user service.
    pub user: LocalGrpc,
    /// The order service.
    pub order: LocalGrpc,
    /// The payment service.
    pub payment: LocalGrpc,
}

impl std::fmt::Debug for Backends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backends").finish_non_exhaustive()
    }
}

impl Backends {
    /// Redis for both (`REDIS_URL`): every gateway instance shares them. The blacklist
    /// is mirrored in memory unless `BLACKLIST_HEARTBEAT_MS` is 0
    /// ([`authz::redis::MirroredBlacklist`]); the rate limit is decided in process and
    /// settled in batches unless `RATE_LIMIT_SETTLE_MS` is 0
    /// ([`BatchedRedisRateLimiter`]).
    pub async fn redis(config: &Config) -> anyhow::Result<Self> {
        let client = ordersys_kit::redis_client::client(&config.redis_url)?;
        let conn = client.get_connection_manager().await?;
        let (limit, minute) = (config.rate_limit_per_minute, Duration::from_secs(60));
        let limiter: Arc<dyn RateLimiter> = match config.rate_limit_settle_ms {
            0 => Arc::new(
                RedisRateLimiter::new(conn.clone(), limit, minute)
                    .with_prefix(config.rate_limit_key_prefix.clone()),
            ),
            ms => Arc::new(
                BatchedRedisRateLimiter::new(conn.clone(), limit, minute)
                    .with_prefix(config.rate_limit_key_prefix.clone())
                    .start(Duration::from_millis(ms)),
            ),
        };
        let blacklist: Arc<dyn Blacklist> = match config.blacklist_heartbeat_ms {
            0 => Arc::new(RedisBlacklist::new(conn.clone())),
            ms => Arc::new(
                RedisBlacklist::new(conn.clone()).mirrored(client, Duration::from_millis(ms)),
            ),
        };
        Ok(Self {
            blacklist,
            limiter,
            redis: Some(conn),
            in_process: None,
        })
    }

    /// A given blacklist and an in-process limiter (the embedded mode: one gateway).
    pub fn local(config: &Config, blacklist: Arc<dyn Blacklist>) -> Self {
        Self {
            blacklist,
            limiter: Arc::new(resilience::MemoryRateLimiter::new(
                config.rate_limit_per_minute,
                Duration::from_secs(60),
            )),
            redis: None,
            in_process: None,
        }
    }

    /// Call the services in this process instead of over the network.
    pub fn in_process(mut self, services: InProcess) -> Self {
        self.in_process = Some(services);
        self
    }
}

/// Build the router (REST API + health + metrics) with Redis backends.
pub async fn app(config: &Config) -> anyhow::Result<Router> {
    let backends = Backends::redis(config).await?;
    app_with(config, backends)
}

/// Build the router (REST API + health + metrics) over `backends`.
pub fn app_with(config: &Config, backends: Backends) -> anyhow::Result<Router> {
    let key = SigningKey::hs256(config.jwt_secret.as_bytes())
        .map_err(|e| anyhow::anyhow!("JWT_SECRET: {e}"))?;
    let auth = Authenticator::new(
        TokenValidator::new(
            key.verifying_key(),
            &config.jwt_issuer,
            &config.jwt_audience,
        )
        .with_leeway(std::time::Duration::from_secs(config.jwt_leeway_secs)),
        backends.blacklist.clone(),
    );
    build(config, backends, Security::On(Box::new(auth)))
}

/// **For benchmarks only** (feature `bench`, never enabled by the gateway binary): the
/// router of [`app_with`] without its security layers — no token check, no blacklist,
/// no rate limit — every request acting as `claims`. It exists to measure what those
/// layers cost (`gateway-bench`, docs/BENCHMARKS.md); serving it exposes every user's
/// orders to anyone.
#[cfg(feature = "bench")]
#[doc(hidden)]
pub fn app_without_security(
    config: &Config,
    backends: Backends,
    claims: authz::Claims,
) -> anyhow::Result<Router> {
    build(config, backends, Security::Off(claims))
}

enum Security {
    On(Box<Authenticator>),
    #[cfg_attr(not(feature = "bench"), allow(dead_code))]
    Off(authz::Claims),
}

fn build(config: &Config, backends: Backends, security: Security) -> anyhow::Result<Router> {
    let limiter = backends.limiter;
    let timeout = Duration::from_millis(config.downstream_timeout_ms);
    let (user_channel, order_channel, payment_channel) = match &backends.in_process {
        Some(local) => (
            local.user.transport(timeout),
            local.order.transport(timeout),
            local.payment.transport(timeout),
        ),
        None => (
            downstream::channel(&config.tls, &config.user_service_url, timeout)?,
            downstream::channel(&config.tls, &config.order_service_url, timeout)?,
            downstream::channel(&config.tls, &config.payment_service_url, timeout)?,
        ),
    };

    // Served on the public port: readiness without backend error text.
    let mut admin = Admin::new("gateway").public();
    if let Some(conn) = backends.redis {
        admin = admin.redis(conn);
    }
    let admin = admin
        .check("user-service", grpc_health(user_channel.clone()))
        .check("order-service", grpc_health(order_channel.clone()))
        .check("payment-service", grpc_health(payment_channel.clone()));
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
        users: UserServiceClient::new(user_channel),
        users_breaker: breaker("user", config),
        orders: OrderServiceClient::new(order_channel),
        orders_breaker: breaker("order", config),
        payments: PaymentServiceClient::new(payment_channel),
        payments_breaker: breaker("payment", config),
        auth: match &security {
            Security::On(auth) => Some((**auth).clone()),
            Security::Off(_) => None,
        },
        limiter,
        proxies: client_ip::TrustedProxies::parse(&config.trusted_proxies)?,
        metrics: metrics.clone(),
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
        Security::Off(claims) => protected.route_layer(axum::Extension(claims.clone())),
    };
    let api = Router::new()
        .route("/api/v1/auth/register", post(routes::auth::register))
        .route("/api/v1/auth/login", post(routes::auth::login))
        .merge(protected);
    let api = match security {
        Security::On(_) => {
            api.route_layer(middleware::from_fn_with_state(state.clone(), rate_limit))
        }
        Security::Off(_) => api,
    };

    Ok(Router::new()
        .merge(api)
        .route("/openapi.json", get(openapi::document))
        .route("/docs", get(openapi::rendered))
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed",
            )
        })
        .with_state(state.clone())
        .merge(admin.router())
        .layer(DefaultBodyLimit::max(config.body_limit_bytes))
        .layer(middleware::from_fn_with_state(
            config.body_limit_bytes,
            refuse_oversized,
        ))
        .layer(middleware::from_fn_with_state(
            Duration::from_secs(config.request_timeout_secs.max(1)),
            request_timeout,
        ))
        .layer(middleware::from_fn(refuse_large_headers))
        .layer(middleware::from_fn(error::with_correlation_id))
        .layer(middleware::from_fn_with_state(state, observe))
        .layer(ContextLayer))
}

/// The most header bytes (names, values and separators) a request may carry.
pub const HEADER_LIMIT_BYTES: usize = 16 * 1024;

/// Headers over [`HEADER_LIMIT_BYTES`]: 431 in the JSON shape, and the connection is
/// closed. (Past 100 header fields or about 400 KB, hyper refuses the request itself
/// while parsing it, with a bare 431.)
async fn refuse_large_headers(req: Request, next: Next) -> Response {
    let size: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if size <= HEADER_LIMIT_BYTES {
        return next.run(req).await;
    }
    let mut response = ApiError::new(
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "request_header_fields_too_large",
        format!("request headers are too large (limit {HEADER_LIMIT_BYTES} bytes)"),
    )
    .into_response();
    response.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    response
}

/// Bodies larger than this are not read through: the connection is closed after the 413
/// (the client may then see a reset instead of the answer).
const DRAIN_MAX_BYTES: u64 = 16 * 1024 * 1024;

/// A body over the limit: 413 in the JSON shape, after reading and dropping what the
/// client sends — a server that answers and closes while the client is still writing
/// makes the client's kernel see a reset, and the client never reads the answer.
/// Declared (`Content-Length`) too large: refused before the handler. Sent without a
/// length (`Transfer-Encoding: chunked`): read up to the limit here — a body within it
/// goes on to the handler — and refused as soon as it passes the limit. Draining is
/// bounded by [`DRAIN_MAX_BYTES`] and the request timeout.
async fn refuse_oversized(State(limit): State<usize>, req: Request, next: Next) -> Response {
    use http_body_util::BodyExt as _;
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let chunked = declared.is_none()
        && req
            .headers()
            .contains_key(axum::http::header::TRANSFER_ENCODING);
    let mut read: u64 = 0;
    let body = if chunked {
        let (parts, mut body) = req.into_parts();
        let mut buf = bytes::BytesMut::new();
        loop {
            match body.frame().await {
                None => break,
                Some(Err(_)) => {
                    return ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "bad_request",
                        "the request body could not be read",
                    )
                    .into_response()
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        buf.extend_from_slice(&data);
                    }
                }
            }
            if buf.len() > limit {
                break;
            }
        }
        if buf.len() <= limit {
            let req = Request::from_parts(parts, axum::body::Body::from(buf.freeze()));
            return next.run(req).await;
        }
        read = buf.len() as u64;
        body
    } else {
        match declared.filter(|n| *n > limit as u64) {
            None => return next.run(req).await,
            Some(n) if n > DRAIN_MAX_BYTES => {
                read = DRAIN_MAX_BYTES; // too much to read through: answer and close
                req.into_body()
            }
            Some(_) => req.into_body(),
        }
    };
    let mut response = ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("request body is too large (limit {limit} bytes)"),
    )
    .into_response();
    let mut body = body;
    while read < DRAIN_MAX_BYTES {
        match body.frame().await {
            Some(Ok(frame)) => {
                read += frame.data_ref().map_or(0, |d| d.len() as u64);
            }
            _ => break,
        }
    }
    response.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    response
}

/// A request not answered within `limit` (a client dripping its body, a handler stuck
/// on a dependency beyond its own deadline) is answered 408 and its handling dropped.
async fn request_timeout(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "the request took too long",
        )
        .into_response(),
    }
}

/// Count and time every request by its route template.
async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let method = req.method().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let started = std::time::Instant::now();
    let resp = next.run(req).await;
    state
        .metrics
        .latency
        .with_label_values(&[method.as_str(), route.as_str()])
        .observe(started.elapsed().as_secs_f64());
    state
        .metrics
        .requests
        .with_label_values(&[method.as_str(), route.as_str(), resp.status().as_str()])
        .inc();
    resp
}

/// Per-client-IP fixed window (`RATE_LIMIT_PER_MINUTE`); 429 with `Retry-After`.
async fn rate_limit(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]));
    let ip = state.proxies.client_ip(peer, req.headers());
    match state.limiter.check(&client_ip::rate_limit_key(ip)).await {
        Ok(d) if !d.allowed => {
            let route = req
                .extensions()
                .get::<MatchedPath>()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_default();
            state
                .metrics
                .rate_limited
                .with_label_values(&[route.as_str()])
                .inc();
            tracing::warn!(client_ip = %ip, "превышен лимит запросов");
            let mut resp = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many requests",
            )
            .retry_after(d.retry_after_secs())
            .into_response();
            resp.headers_mut()
                .insert("x-ratelimit-limit", HeaderValue::from(d.limit));
            resp.headers_mut()
                .insert("x-ratelimit-remaining", HeaderValue::from(0));
            resp
        }
        Ok(d) => {
            let mut resp = next.run(req).await;
            resp.headers_mut()
                .insert("x-ratelimit-limit", HeaderValue::from(d.limit));
            resp.headers_mut()
                .insert("x-ratelimit-remaining", HeaderValue::from(d.remaining));
            resp
        }
        Err(e) => {
            // Availability over strictness: a Redis outage must not take the API down.
            tracing::error!(error = %e, "ограничитель запросов недоступен, запрос пропущен");
            next.run(req).await
        }
    }
}

/// Serve on `listener` until `shutdown` resolves (in-flight requests finish).
pub async fn run(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let backends = Backends::redis(&config).await?;
    run_with(config, listener, shutdown, backends).await
}

/// Serve on `listener` with `backends` until `shutdown` resolves.
pub async fn run_with(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    backends: Backends,
) -> anyhow::Result<()> {
    let router = app_with(&config, backends)?;
    let addr = listener.local_addr()?;
    tracing::info!(http = %addr, "шлюз запущен");
    ordersys_kit::admin::serve(listener, router, async move {
        shutdown.await;
        tracing::info!("получен сигнал остановки, завершаем обработку запросов");
    })
    .await?;
    tracing::info!("шлюз остановлен");
    Ok(())
}
