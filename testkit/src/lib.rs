//! Test support shared by the workspace's tests: the Redis connection every Redis test
//! needs, awaiting a condition with a deadline instead of sleeping a guess, and a
//! metrics recorder whose values tests can read, and a gRPC call to any path.
//! Not published; the crates list it as a path-only dev-dependency.

#![warn(missing_docs)]

use std::future::Future;
use std::time::Duration;

/// A connection manager to the test Redis: `REDIS_URL`, default the local server.
/// Panics — never skips — when it cannot be reached.
pub async fn redis() -> redis::aio::ConnectionManager {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into());
    redis::Client::open(url.as_str())
        .expect("REDIS_URL")
        .get_connection_manager()
        .await
        .unwrap_or_else(|e| {
            panic!("Redis at {url} is not reachable ({e}); run scripts/services-up")
        })
}

/// Poll `probe` every 100 ms until it returns `Some`, and return that; panic naming
/// `what` if `within` passes first.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A metrics recorder for tests: keeps every counter's total, every gauge's last value
/// and every histogram sample, and reads them without resetting anything (unlike
/// `metrics_util`'s debugging recorder, whose snapshot swaps every value to zero). Use
/// it with [`metrics::with_local_recorder`] around a current-thread runtime, or (a
/// clone; clones share what they recorded) with [`metrics::set_global_recorder`] for
/// metrics recorded on threads of their own (librdkafka's callbacks, say).
///
/// ```
/// let recorder = ordersys_testkit::MetricsRecorder::default();
/// metrics::with_local_recorder(&recorder, || {
///     metrics::counter!("requests_total", "route" => "/a").increment(2);
///     metrics::gauge!("queue_depth").set(7.0);
/// });
/// assert_eq!(recorder.counter("requests_total", &[("route", "/a")]), Some(2));
/// assert_eq!(recorder.gauge("queue_depth", &[]), Some(7.0));
/// assert_eq!(recorder.counter("missing", &[]), None);
/// ```
#[derive(Clone)]
pub struct MetricsRecorder {
    registry: std::sync::Arc<
        metrics_util::registry::Registry<metrics::Key, metrics_util::registry::AtomicStorage>,
    >,
}

impl Default for MetricsRecorder {
    fn default() -> Self {
        Self {
            registry: std::sync::Arc::new(metrics_util::registry::Registry::atomic()),
        }
    }
}

impl std::fmt::Debug for MetricsRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsRecorder").finish_non_exhaustive()
    }
}

/// Whether `key` is named `name` and carries every one of `labels`.
fn matches(key: &metrics::Key, name: &str, labels: &[(&str, &str)]) -> bool {
    key.name() == name
        && labels
            .iter()
            .all(|(k, v)| key.labels().any(|l| l.key() == *k && l.value() == *v))
}

impl MetricsRecorder {
    /// The total of counter `name` over the series carrying `labels` (None: no such
    /// series was ever registered).
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> Option<u64> {
        let found: Vec<u64> = self
            .registry
            .get_counter_handles()
            .into_iter()
            .filter(|(k, _)| matches(k, name, labels))
            .map(|(_, c)| c.load(std::sync::atomic::Ordering::SeqCst))
            .collect();
        (!found.is_empty()).then(|| found.iter().sum())
    }

    /// The last value of gauge `name` with `labels` (None: never registered). Panics if
    /// `labels` match more than one series.
    pub fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found: Vec<f64> = self
            .registry
            .get_gauge_handles()
            .into_iter()
            .filter(|(k, _)| matches(k, name, labels))
            .map(|(_, g)| f64::from_bits(g.load(std::sync::atomic::Ordering::SeqCst)))
            .collect();
        assert!(
            found.len() <= 1,
            "{name} {labels:?}: {} series",
            found.len()
        );
        found.first().copied()
    }

    /// Every sample recorded in histogram `name` with `labels` (empty: none).
    pub fn histogram(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        self.registry
            .get_histogram_handles()
            .into_iter()
            .filter(|(k, _)| matches(k, name, labels))
            .flat_map(|(_, h)| h.data())
            .collect()
    }
}

impl metrics::Recorder for MetricsRecorder {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }

    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        self.registry
            .get_or_create_counter(key, |c| metrics::Counter::from_arc(c.clone()))
    }

    fn register_gauge(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        self.registry
            .get_or_create_gauge(key, |g| metrics::Gauge::from_arc(g.clone()))
    }

    fn register_histogram(
        &self,
        key: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        self.registry
            .get_or_create_histogram(key, |h| metrics::Histogram::from_arc(h.clone()))
    }
}

/// Call the gRPC method `path` over `channel` with an empty message, whatever the
/// method's types (an empty protobuf message is zero bytes): the answer's status, for
/// tests of who may call what. A success is `Ok` (its body, decoded as a health
/// response, is not looked at).
pub async fn grpc_call(
    channel: tonic::transport::Channel,
    path: &'static str,
) -> Result<(), tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let reply: Result<tonic::Response<tonic_health::pb::HealthCheckResponse>, _> = grpc
        .unary(
            tonic::Request::new(tonic_health::pb::HealthCheckRequest::default()),
            http::uri::PathAndQuery::from_static(path),
            tonic_prost::ProstCodec::default(),
        )
        .await;
    reply.map(drop)
}
