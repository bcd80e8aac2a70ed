//! Logs, traces and metrics of a service.
//!
//! **Logs**: JSON, one object per line with `timestamp`, `level`, `service`, `target`,
//! the `message` (in Russian, for people), every field of the event and of its enclosing
//! spans (stable English names, for machines) — so `correlation_id` from the request span
//! appears on every line of a request — and the OpenTelemetry `trace_id` and `span_id`
//! of the span the line was written in.
//!
//! **Traces**: every `tracing` span is an OpenTelemetry span (`tracing-opentelemetry`),
//! exported over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, configured by the standard variables:
//! `OTEL_EXPORTER_OTLP_PROTOCOL` (`http/protobuf`, the default, or `grpc`),
//! `OTEL_SERVICE_NAME` (default `ordersys-{service}`, `ordersys` for the embedded binary), `OTEL_RESOURCE_ATTRIBUTES`,
//! `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG`, `OTEL_BSP_*`,
//! `OTEL_EXPORTER_OTLP_HEADERS` / `_TIMEOUT`; `OTEL_SDK_DISABLED=true` or
//! `OTEL_TRACES_EXPORTER=none` turn the export off. Unset, nothing is exported and
//! nothing is attempted; trace context is still propagated (W3C `traceparent`) so a
//! caller's trace continues through us. The [`Telemetry`] guard flushes on drop.
//!
//! **Metrics**: the SDK crates' metrics (the `metrics` facade) are recorded by a
//! Prometheus recorder installed here and served on `/metrics` next to the service's own
//! registry ([`render_metrics`]).

use std::fmt;
use std::time::SystemTime;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;

struct JsonVisitor<'a>(&'a mut Map<String, Value>);

impl Visit for JsonVisitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0
            .insert(field.name().to_owned(), Value::String(value.to_owned()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0
            .insert(field.name().to_owned(), Value::String(value.to_string()));
    }
}

/// Span fields, kept structured for the JSON formatter.
struct SpanFields(Map<String, Value>);

/// Records span fields as JSON values in the span's extensions.
struct SpanFieldStore;

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for SpanFieldStore {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut map = Map::new();
        attrs.record(&mut JsonVisitor(&mut map));
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(SpanFields(map));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            let mut ext = span.extensions_mut();
            if let Some(fields) = ext.get_mut::<SpanFields>() {
                values.record(&mut JsonVisitor(&mut fields.0));
            }
        }
    }
}

/// The JSON event format.
#[derive(Debug, Clone)]
pub struct JsonFormat {
    service: &'static str,
}

impl<S, N> FormatEvent<S, N> for JsonFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut map = Map::new();
        map.insert(
            "timestamp".into(),
            humantime::format_rfc3339_millis(SystemTime::now())
                .to_string()
                .into(),
        );
        map.insert("level".into(), meta.level().as_str().into());
        map.insert("service".into(), self.service.into());
        map.insert("target".into(), meta.target().into());
        // The OpenTelemetry ids of the innermost span (looked up before any of the
        // span's extensions are borrowed below).
        if let Some(leaf) = ctx.lookup_current() {
            let cx = tracing::dispatcher::get_default(|d| {
                tracing_opentelemetry::get_otel_context(&leaf.id(), d)
            });
            if let Some(cx) = cx {
                let span = cx.span();
                let sc = span.span_context();
                if sc.is_valid() {
                    map.insert("trace_id".into(), sc.trace_id().to_string().into());
                    map.insert("span_id".into(), sc.span_id().to_string().into());
                }
            }
        }
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                if let Some(fields) = span.extensions().get::<SpanFields>() {
                    // `otel.*` fields steer the OpenTelemetry span (name, kind), not logs.
                    for (k, v) in fields.0.iter().filter(|(k, _)| !k.starts_with("otel.")) {
                        map.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        event.record(&mut JsonVisitor(&mut map));
        let line = serde_json::to_string(&map).map_err(|_| fmt::Error)?;
        writeln!(writer, "{line}")
    }
}

/// What [`init`] set up; flushes and shuts the trace export down when dropped (keep it
/// alive until the service has stopped).
#[must_use = "dropping it stops the trace export"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    /// Where spans go (`None`: not exported).
    pub exporting_to: Option<String>,
}

impl fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Telemetry")
            .field("exporting_to", &self.exporting_to)
            .finish()
    }
}

impl Telemetry {
    /// Export what is buffered and stop exporting.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let Some(provider) = self.provider.take() else {
            return;
        };
        if self.exporting_to.is_none() {
            return;
        }
        // The exporter may need this runtime's other threads: do not block one of its
        // workers without telling it.
        let flush = move || {
            if let Err(e) = provider.shutdown() {
                eprintln!("OpenTelemetry shutdown: {e}");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(flush)
            }
            _ => flush(),
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.stop();
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// The OTLP endpoint from the environment, unless export is turned off.
fn otlp_endpoint() -> Option<String> {
    if env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return None;
    }
    if env("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none")) {
        return None;
    }
    env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT"))
}

/// A tracer provider for `service`, exporting over OTLP if configured.
fn tracer_provider(service: &str) -> anyhow::Result<(SdkTracerProvider, Option<String>)> {
    let mut resource = opentelemetry_sdk::Resource::builder();
    if env("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(if service == "ordersys" {
            service.to_owned() // the embedded binary
        } else {
            format!("ordersys-{service}")
        });
    }
    let builder = SdkTracerProvider::builder().with_resource(resource.build());
    let Some(endpoint) = otlp_endpoint() else {
        return Ok((builder.build(), None));
    };
    let protocol = env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or_else(|| "http/protobuf".into());
    use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig, WithHttpConfig};
    let exporter = match protocol.as_str() {
        "grpc" => SpanExporter::builder().with_tonic().build()?,
        "http/protobuf" => SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_http_client(SpawningHttpClient::new()?)
            .build()?,
        other => anyhow::bail!(
            "OTEL_EXPORTER_OTLP_PROTOCOL={other:?}: supported are `grpc` and `http/protobuf`"
        ),
    };
    Ok((
        builder.with_batch_exporter(exporter).build(),
        Some(format!("{endpoint} ({protocol})")),
    ))
}

/// The OTLP/HTTP client: hyper on this process's Tokio runtime. The batch exporter runs
/// on a thread of its own, outside the runtime, so each request is spawned onto it.
#[derive(Debug, Clone)]
struct SpawningHttpClient {
    inner: std::sync::Arc<opentelemetry_http::hyper::HyperClient>,
    runtime: tokio::runtime::Handle,
}

impl SpawningHttpClient {
    fn new() -> anyhow::Result<Self> {
        let timeout = env("OTEL_EXPORTER_OTLP_TIMEOUT")
            .and_then(|v| v.parse().ok())
            .map(std::time::Duration::from_millis)
            .unwrap_or(std::time::Duration::from_secs(10));
        Ok(Self {
            inner: std::sync::Arc::new(
                opentelemetry_http::hyper::HyperClient::with_default_connector(timeout, None),
            ),
            runtime: tokio::runtime::Handle::try_current()
                .map_err(|_| anyhow::anyhow!("the OTLP/HTTP exporter needs a Tokio runtime"))?,
        })
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for SpawningHttpClient {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let inner = self.inner.clone();
        self.runtime
            .spawn(async move { inner.send_bytes(request).await })
            .await
            .map_err(|e| Box::new(e) as opentelemetry_http::HttpError)?
    }
}

static PROMETHEUS: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
    std::sync::OnceLock::new();

/// Latency buckets of every histogram the SDK records (seconds).
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0,
];

/// How often the recorder's histograms are drained into their buckets when nobody
/// scrapes them (the exporter's own default).
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Install the process-wide recorder of the `metrics` facade (Prometheus text, histograms
/// with buckets from 0.5 ms to 300 s); later calls return the same handle.
///
/// A histogram keeps every value recorded until its samples are drained into the
/// buckets — by a scrape ([`render_metrics`]) and, so that a process nobody scrapes
/// does not grow by every value it ever recorded (≈ 60–90 bytes per order in the order
/// and payment services, docs/BENCHMARKS.md), every 5 s by a thread of its own.
pub fn metrics_recorder() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    PROMETHEUS.get_or_init(|| {
        let builder = metrics_exporter_prometheus::PrometheusBuilder::new()
            .set_buckets(BUCKETS)
            .expect("the bucket list is not empty");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Another recorder already installed (a test harness): keep ours unused.
        if metrics::set_global_recorder(recorder).is_ok() {
            let upkeep = handle.clone();
            let spawned = std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || loop {
                    std::thread::sleep(UPKEEP_EVERY);
                    upkeep.run_upkeep();
                });
            if let Err(e) = spawned {
                eprintln!(
                    "metrics upkeep thread not started ({e}): histograms drain on scrapes only"
                );
            }
        }
        handle
    })
}

/// The `metrics`-facade metrics in Prometheus text format.
pub fn render_metrics() -> String {
    let handle = metrics_recorder();
    handle.run_upkeep();
    handle.render()
}

/// Install logs, traces and metrics for `service` (log level from `RUST_LOG`, default
/// `info`). Call once, first thing in `main`, inside the Tokio runtime; keep the guard
/// until the service stopped. Later calls (tests) install nothing and return an inert
/// guard. A bad OpenTelemetry setting is reported on stderr and the export left off:
/// telemetry never stops a service from starting.
pub fn init(service: &'static str) -> Telemetry {
    metrics_recorder();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let (provider, exporting_to) = match tracer_provider(service) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("OpenTelemetry export disabled: {e:#}");
            (SdkTracerProvider::builder().build(), None)
        }
    };
    let tracer = provider.tracer("ordersys");
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(SpanFieldStore)
        .with(tracing_opentelemetry::layer().with_tracer(tracer))
        .with(
            tracing_subscriber::fmt::layer()
                .event_format(JsonFormat { service })
                .with_writer(std::io::stdout),
        )
        .try_init()
        .is_ok();
    if !installed {
        return Telemetry {
            provider: None,
            exporting_to: None,
        };
    }
    if let Some(to) = &exporting_to {
        tracing::info!(otlp = %to, "трассировки экспортируются по OTLP");
    }
    Telemetry {
        provider: Some(provider),
        exporting_to,
    }
}
