//! The gateway's view of one downstream service: its endpoints, each with its own
//! circuit breaker, and calls spread over them.
//!
//! - **Endpoints.** A downstream named by a DNS name (`https://order:50052`) has one
//!   endpoint per address the name resolves to — one HTTP/2 connection each — and the
//!   name is resolved again every few seconds: a replica that appears is used, one that
//!   is gone is dropped. (A single connection through a Service's virtual IP would pin
//!   every call of a gateway to one replica: kube-proxy balances connections, not calls;
//!   for that, Kubernetes Services of the gRPC services are headless.) An IP address,
//!   `localhost` or an in-process service is one endpoint; a comma-separated list of
//!   such URLs is a fixed set of endpoints.
//! - **A breaker per endpoint** (outlier ejection as in Envoy or Linkerd): a dead or
//!   failing replica is taken out alone, the others keep serving. Its breaker is named
//!   after the service for a single endpoint (`order`) and `order@10.0.0.7:50052` for a
//!   resolved address.
//! - **Recovery driven by health.** While a breaker is OPEN, the endpoint's gRPC health
//!   service is asked every `probe_every` (≈ 1 s); when it answers SERVING, the next call
//!   is the breaker's HALF-OPEN trial at once. OPEN lasts at most the configured time
//!   (the spec's 30 s), but no longer than the endpoint is actually down.
//! - **Picking.** An endpoint whose breaker's trial is due gets the call (else, with
//!   others CLOSED, it would never see one); otherwise power of two choices on calls in
//!   flight among the endpoints whose breaker is CLOSED; otherwise 503 "circuit open"
//!   with `Retry-After`.
//! - **Sending again.** A call that could not be sent (no connection) goes to another
//!   endpoint; so does one that failed if its [`Effect`] allows it. When the last attempt
//!   fails, the answer says what the client can know: 503 if nothing reached a service,
//!   504 `upstream_timeout` for a read that got no answer, 504 `outcome_unknown` for a
//!   change that may have been applied.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use authz::layer::BearerToken;
use axum::http::StatusCode;
use ordersys_kit::context::RequestContext;
use ordersys_kit::local_grpc::{channel_transport, not_sent, Transport};
use ordersys_kit::tls::GrpcTls;
use rand::Rng;
use resilience::{BreakerState, CircuitBreaker, Permit};
use tokio::sync::watch;
use tonic::{Code, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::downstream::{is_outage, request, to_api_error};
use crate::error::ApiError;

/// How often a name is resolved again.
pub const RESOLVE_EVERY: Duration = Duration::from_secs(5);

/// At most this many endpoints are tried for one request.
const MAX_ATTEMPTS: usize = 3;

/// What a call does to the downstream, which decides whether it may be sent again after
/// a failure and what a failure is answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Changes nothing (a GET, a login): sent again to another endpoint after any
    /// outage; no answer in time is 504 `upstream_timeout`.
    Read,
    /// Changes state, but applying it twice is applying it once (an order with an
    /// `Idempotency-Key`, a logout): sent again to another endpoint after any outage;
    /// no answer is 504 `outcome_unknown` ("retry with the same Idempotency-Key").
    Idempotent,
    /// Changes state and may not be applied twice (an order without a key, a cancel, a
    /// registration): sent to another endpoint only if it never left; no answer after it
    /// left is 504 `outcome_unknown` ("check before retrying").
    Once,
}

/// How the endpoints' breakers behave and how long a call may take.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Consecutive failures that open an endpoint's breaker.
    pub failure_threshold: u32,
    /// The longest an endpoint's breaker stays OPEN without a trial.
    pub open_timeout: Duration,
    /// How often an OPEN endpoint's health is asked.
    pub probe_every: Duration,
    /// Deadline of one call to one endpoint.
    pub timeout: Duration,
}

/// One address of a downstream, with its breaker.
pub struct Endpoint {
    addr: Option<SocketAddr>,
    transport: Transport,
    breaker: CircuitBreaker,
    in_flight: AtomicUsize,
    probing: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("breaker", &self.breaker.name())
            .field("state", &self.breaker.state())
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    fn new(
        name: String,
        addr: Option<SocketAddr>,
        transport: Transport,
        settings: &Settings,
    ) -> Self {
        let breaker = CircuitBreaker::builder(name.clone())
            .failure_threshold(settings.failure_threshold)
            .open_timeout(settings.open_timeout)
            .on_transition(move |t| {
                tracing::warn!(breaker = %name, from = %t.from, to = %t.to, reason = %t.reason,
                    "автоматический выключатель сменил состояние");
            })
            .build();
        let probe = transport.clone();
        let probing = breaker.watch_health(settings.probe_every, move || serving(probe.clone()));
        Self {
            addr,
            transport,
            breaker,
            in_flight: AtomicUsize::new(0),
            probing,
        }
    }

    /// The endpoint's breaker.
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.probing.abort();
        // A replica that is gone is not an open circuit: its gauge must not keep an
        // alert firing (the series stays, reading CLOSED).
        if self.breaker.state() != BreakerState::Closed {
            metrics::gauge!("resilience_breaker_state", "breaker" => self.breaker.name().to_owned())
                .set(BreakerState::Closed.metric_value());
        }
    }
}

/// Whether `host` is an address rather than a name to resolve.
fn is_literal(host: &str) -> bool {
    host.is_empty()
        || host == "localhost"
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok()
}

/// A lazily connected channel to `url`, each call bounded by the settings' timeout.
fn channel_to(tls: &GrpcTls, url: &str, settings: &Settings) -> anyhow::Result<Transport> {
    Ok(channel_transport(
        tls.endpoint(url)?
            .connect_timeout(Duration::from_secs(1))
            .timeout(settings.timeout)
            .connect_lazy(),
    ))
}

/// Whether the gRPC health service behind `transport` answers SERVING.
async fn serving(transport: Transport) -> bool {
    HealthClient::new(transport)
        .check(HealthCheckRequest::default())
        .await
        .is_ok_and(|r| r.into_inner().status == ServingStatus::Serving as i32)
}

type Endpoints = Arc<[Arc<Endpoint>]>;

/// A downstream service: its endpoints and how to call them. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Downstream {
    service: &'static str,
    timeout: Duration,
    probe_every: Duration,
    endpoints: watch::Receiver<Endpoints>,
}

impl Downstream {
    /// The downstream at `url`: resolved and balanced when the host is a DNS name, one
    /// lazily connected endpoint otherwise. A comma-separated list of URLs with IP
    /// addresses or `localhost` is a fixed set of endpoints (replicas at known
    /// addresses), balanced the same way.
    pub fn at(
        service: &'static str,
        tls: &GrpcTls,
        url: &str,
        settings: Settings,
    ) -> anyhow::Result<Self> {
        let urls: Vec<&str> = url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect();
        if let [url] = urls[..] {
            let uri: http::Uri = url.parse()?;
            let host = uri.host().unwrap_or_default().to_owned();
            if !is_literal(&host) {
                let port = uri.port_u16().unwrap_or(443);
                return Ok(Self::resolving(
                    service,
                    tls.clone(),
                    host.clone(),
                    settings,
                    RESOLVE_EVERY,
                    move || {
                        let name = host.clone();
                        async move {
                            tokio::net::lookup_host((name.as_str(), port))
                                .await
                                .map(|addrs| addrs.collect())
                        }
                    },
                ));
            }
            let transport = channel_to(tls, url, &settings)?;
            return Ok(Self::fixed(
                service,
                vec![(service.to_owned(), transport)],
                settings,
            ));
        }
        anyhow::ensure!(!urls.is_empty(), "no URL for the {service} service");
        let mut endpoints = Vec::with_capacity(urls.len());
        for url in urls {
            let uri: http::Uri = url.parse()?;
            anyhow::ensure!(
                is_literal(uri.host().unwrap_or_default()),
                "{url}: in a list of {service} service URLs each names an IP address or \
                 localhost (a DNS name is resolved to its replicas on its own)"
            );
            let authority = uri.authority().map_or(url, |a| a.as_str());
            endpoints.push((
                format!("{service}@{authority}"),
                channel_to(tls, url, &settings)?,
            ));
        }
        Ok(Self::fixed(service, endpoints, settings))
    }

    /// A downstream of fixed endpoints, each a name for its breaker and a transport (a
    /// channel, or a service in this process). One endpoint is usually named after the
    /// service.
    pub fn fixed(
        service: &'static str,
        endpoints: Vec<(String, Transport)>,
        settings: Settings,
    ) -> Self {
        let endpoints: Vec<Arc<Endpoint>> = endpoints
            .into_iter()
            .map(|(name, transport)| Arc::new(Endpoint::new(name, None, transport, &settings)))
            .collect();
        let (_, endpoints) = watch::channel(Arc::from(endpoints));
        Self {
            service,
            timeout: settings.timeout,
            probe_every: settings.probe_every,
            endpoints,
        }
    }

    /// A downstream of one endpoint, reached through `transport`; its breaker is named
    /// `service`.
    pub fn single(service: &'static str, transport: Transport, settings: Settings) -> Self {
        Self::fixed(service, vec![(service.to_owned(), transport)], settings)
    }

    /// A downstream at whatever `resolve` answers, asked again every `every` (an answer
    /// that is an error or empty keeps the last known set: a name that briefly does not
    /// resolve does not empty the downstream). Each address is dialled with TLS verified
    /// for `host`; an address that stays keeps its endpoint and breaker. The resolving
    /// task ends when the last clone of the downstream is dropped.
    pub fn resolving<R, F>(
        service: &'static str,
        tls: GrpcTls,
        host: String,
        settings: Settings,
        every: Duration,
        mut resolve: R,
    ) -> Self
    where
        R: FnMut() -> F + Send + 'static,
        F: Future<Output = std::io::Result<Vec<SocketAddr>>> + Send,
    {
        let (tx, endpoints) = watch::channel::<Endpoints>(Arc::from([]));
        let this = Self {
            service,
            timeout: settings.timeout,
            probe_every: settings.probe_every,
            endpoints,
        };
        tokio::spawn(async move {
            loop {
                match resolve().await {
                    Ok(addrs) if !addrs.is_empty() => {
                        let now: BTreeSet<SocketAddr> = addrs.into_iter().collect();
                        let current = tx.borrow().clone();
                        let known: BTreeSet<SocketAddr> =
                            current.iter().filter_map(|e| e.addr).collect();
                        if now != known {
                            let mut next = Vec::with_capacity(now.len());
                            for addr in &now {
                                if let Some(e) = current.iter().find(|e| e.addr == Some(*addr)) {
                                    next.push(e.clone());
                                    continue;
                                }
                                match tls.endpoint_at(&host, *addr) {
                                    Ok(e) => next.push(Arc::new(Endpoint::new(
                                        format!("{service}@{addr}"),
                                        Some(*addr),
                                        channel_transport(
                                            e.connect_timeout(Duration::from_secs(1))
                                                .timeout(settings.timeout)
                                                .connect_lazy(),
                                        ),
                                        &settings,
                                    ))),
                                    Err(e) => {
                                        tracing::error!(host = %host, error = %e, "нет TLS-настроек для нижестоящего сервиса");
                                    }
                                }
                            }
                            tracing::info!(host = %host, addresses = ?now, "адреса нижестоящего сервиса обновлены");
                            drop(current);
                            if tx.send(next.into()).is_err() {
                                return;
                            }
                        }
                    }
                    Ok(_) => {
                        tracing::warn!(host = %host, "имя нижестоящего сервиса не разрешается")
                    }
                    Err(e) => {
                        tracing::warn!(host = %host, error = %e, "имя нижестоящего сервиса не разрешается")
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep(every) => {}
                    () = tx.closed() => return,
                }
            }
        });
        this
    }

    /// The endpoints known now.
    pub fn endpoints(&self) -> Endpoints {
        self.endpoints.borrow().clone()
    }

    /// The endpoints, waiting until `deadline` for the first resolution.
    async fn known(&self, deadline: Instant) -> Option<Endpoints> {
        let now = self.endpoints();
        if !now.is_empty() {
            return Some(now);
        }
        let mut rx = self.endpoints.clone();
        let wait = async move { rx.wait_for(|e| !e.is_empty()).await.map(|e| e.clone()) };
        tokio::time::timeout_at(deadline.into(), wait)
            .await
            .ok()?
            .ok()
    }

    /// [`call`](Self::call) with `msg` wrapped in a request that carries the caller's
    /// correlation id and trace context — and, on behalf of an end user, their access
    /// `token`, forwarded for the service to verify ([`ordersys_kit::end_user`]): `send`
    /// gets the transport and that request.
    pub async fn request<M, T, F, Fut>(
        &self,
        effect: Effect,
        ctx: &RequestContext,
        token: Option<&BearerToken>,
        msg: M,
        mut send: F,
    ) -> Result<T, ApiError>
    where
        M: Clone,
        F: FnMut(Transport, tonic::Request<M>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.call(effect, |t| send(t, request(ctx, token, msg.clone())))
            .await
    }

    /// Call the downstream: `send` makes the call over the transport it is given (it may
    /// be asked again, for another endpoint, as `effect` allows). Every failure that
    /// counts against an endpoint counts against its breaker.
    pub async fn call<T, F, Fut>(&self, effect: Effect, mut send: F) -> Result<T, ApiError>
    where
        F: FnMut(Transport) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let service = self.service;
        let started = Instant::now();
        let Some(endpoints) = self.known(started + self.timeout).await else {
            tracing::warn!(service, "нет адресов нижестоящего сервиса");
            return Err(ApiError::unavailable(format!(
                "{service} service is unavailable (no address)"
            )));
        };
        let mut tried: Vec<&Arc<Endpoint>> = Vec::new();
        let mut sent = false;
        let mut last: Option<Status> = None;
        loop {
            let (endpoint, permit) = match pick(&endpoints, &tried) {
                Ok(picked) => picked,
                Err(retry_after) => {
                    return Err(match last {
                        Some(s) => failure(service, effect, &s, sent),
                        None => {
                            tracing::warn!(
                                service,
                                "автоматический выключатель разомкнут, запрос отклонён"
                            );
                            // The endpoints are probed every `probe_every`: a client may
                            // come back that soon, whatever is left of the OPEN time.
                            let secs = retry_after.min(self.probe_every).as_secs_f64().ceil();
                            ApiError::unavailable(format!(
                                "{service} service is unavailable (circuit open)"
                            ))
                            .retry_after((secs as u64).max(1))
                        }
                    });
                }
            };
            tried.push(endpoint);
            let result = {
                let _in_flight = InFlight::enter(&endpoint.in_flight);
                send(endpoint.transport.clone()).await
            };
            let status = match result {
                Ok(r) => {
                    permit.success();
                    return Ok(r.into_inner());
                }
                Err(s) if !is_outage(&s) => {
                    permit.success();
                    return Err(to_api_error(service, &s));
                }
                Err(s) => {
                    permit.failure();
                    s
                }
            };
            let unsent = not_sent(&status);
            sent |= !unsent;
            let again = (unsent || effect != Effect::Once)
                && status.code() != Code::Internal
                && tried.len() < MAX_ATTEMPTS.min(endpoints.len())
                && started.elapsed() < self.timeout;
            if !again {
                return Err(failure(service, effect, &status, sent));
            }
            tracing::warn!(service, breaker = endpoint.breaker.name(), code = ?status.code(),
                "нижестоящий сервис не ответил, запрос отправлен другому экземпляру");
            last = Some(status);
        }
    }
}

/// The answer to a call whose last attempt failed with `status` (an outage); `sent`:
/// whether any attempt reached a service.
///
/// A status the service itself sent (it has no local error behind it: say
/// UNAVAILABLE, "a dependency is unavailable") is its answer, mapped as usual. A timeout,
/// or a connection lost after the request left, is no answer: for a change, the outcome
/// is unknown.
fn failure(service: &str, effect: Effect, status: &Status, sent: bool) -> ApiError {
    let code = status.code();
    tracing::warn!(
        service,
        ?code,
        sent,
        detail = status.message(),
        "нижестоящий сервис недоступен"
    );
    if !sent {
        return ApiError::unavailable(format!("{service} service is unavailable"));
    }
    let timed_out = matches!(code, Code::DeadlineExceeded | Code::Cancelled);
    let lost = matches!(code, Code::Unavailable | Code::Unknown)
        && std::error::Error::source(status).is_some();
    match effect {
        _ if !timed_out && !lost => to_api_error(service, status),
        Effect::Read if timed_out => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            crate::contract::ErrorCode::UpstreamTimeout,
            format!("{service} service did not answer in time"),
        ),
        Effect::Read => ApiError::unavailable(format!("{service} service is unavailable")),
        Effect::Idempotent => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            crate::contract::ErrorCode::OutcomeUnknown,
            format!(
                "outcome unknown: the {service} service did not answer and the request may \
                 have been applied; retry with the same Idempotency-Key"
            ),
        ),
        Effect::Once => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            crate::contract::ErrorCode::OutcomeUnknown,
            format!(
                "outcome unknown: the {service} service did not answer and the request may \
                 have been applied; check before retrying (an Idempotency-Key makes a retry safe)"
            ),
        ),
    }
}

/// An endpoint for the next attempt, not one of `tried`, with its breaker's permit; or
/// how long until some breaker admits a trial.
fn pick<'a>(
    endpoints: &'a [Arc<Endpoint>],
    tried: &[&Arc<Endpoint>],
) -> Result<(&'a Arc<Endpoint>, Permit), Duration> {
    let untried = |e: &&Arc<Endpoint>| !tried.iter().any(|t| Arc::ptr_eq(t, e));
    // An OPEN endpoint whose trial is due (healthy again, or its OPEN time is over)
    // gets the call: it would never see one while others are CLOSED.
    for e in endpoints
        .iter()
        .filter(untried)
        .filter(|e| e.breaker.state() == BreakerState::Open)
    {
        if let Ok(permit) = e.breaker.try_acquire() {
            return Ok((e, permit));
        }
    }
    let closed = |e: &&Arc<Endpoint>| e.breaker.state() == BreakerState::Closed;
    let n = endpoints.iter().filter(untried).filter(closed).count();
    if n > 0 {
        let nth = |i| endpoints.iter().filter(untried).filter(closed).nth(i);
        let chosen = if n == 1 {
            nth(0)
        } else {
            // Power of two choices: the less busy of two picked at random.
            let mut rng = rand::rng();
            let a = rng.random_range(0..n);
            let b = (a + 1 + rng.random_range(0..n - 1)) % n;
            let (a, b) = (nth(a), nth(b));
            match (a, b) {
                (Some(a), Some(b)) => Some(
                    if b.in_flight.load(Ordering::Relaxed) < a.in_flight.load(Ordering::Relaxed) {
                        b
                    } else {
                        a
                    },
                ),
                (a, b) => a.or(b),
            }
        };
        if let Some(e) = chosen {
            if let Ok(permit) = e.breaker.try_acquire() {
                return Ok((e, permit));
            }
        }
    }
    let mut wait = Duration::MAX;
    for e in endpoints.iter().filter(untried) {
        match e.breaker.try_acquire() {
            Ok(permit) => return Ok((e, permit)),
            Err(open) => wait = wait.min(open.retry_after),
        }
    }
    Err(wait)
}

/// Counts a call in flight on an endpoint while alive.
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn enter(n: &'a AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::Relaxed);
        Self(n)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests;
