//! Correlation id and W3C trace context: accepted or generated at the edge, carried in
//! HTTP headers, gRPC metadata and message headers, and attached to every log line of
//! the request through a tracing span.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{HeaderMap, HeaderValue, Request, Response};
use tower::{Layer, Service};
use tracing::Instrument;

/// `X-Correlation-ID`.
pub const CORRELATION_ID: &str = "x-correlation-id";
/// W3C `traceparent`.
pub const TRACEPARENT: &str = "traceparent";
/// gRPC metadata naming a REST error code more precise than the status code (e.g.
/// `idempotency_key_reused` on a `FAILED_PRECONDITION`), for the gateway to answer with.
pub const ERROR_CODE: &str = "x-error-code";

/// What identifies a request across services.
#[derive(Clone, PartialEq, Eq)]
pub struct RequestContext {
    /// The correlation id (client-supplied or generated).
    pub correlation_id: String,
    /// The W3C `traceparent` for the next hop.
    pub traceparent: String,
}

impl fmt::Debug for RequestContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestContext")
            .field("correlation_id", &self.correlation_id)
            .field("traceparent", &self.traceparent)
            .finish()
    }
}

fn valid_correlation_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

fn random_hex(bytes: usize) -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..bytes)
        .map(|_| format!("{:02x}", rng.random::<u8>()))
        .collect()
}

/// Parse a W3C `traceparent`; returns the trace id if well-formed.
pub fn trace_id_of(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.split('-');
    let (v, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(v, 2) && hex(trace, 32) && hex(span, 16) && hex(flags, 2) && trace != "0".repeat(32))
        .then_some(trace)
}

impl RequestContext {
    /// From incoming headers: keep a valid correlation id or make one; continue the
    /// caller's trace (new span id) or start one.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let correlation_id = headers
            .get(CORRELATION_ID)
            .and_then(|v| v.to_str().ok())
            .filter(|s| valid_correlation_id(s))
            .map(str::to_owned)
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let trace_id = headers
            .get(TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .and_then(trace_id_of)
            .map(str::to_owned)
            .unwrap_or_else(|| random_hex(16));
        Self {
            correlation_id,
            traceparent: format!("00-{trace_id}-{}-01", random_hex(8)),
        }
    }

    /// The trace id part of the `traceparent`.
    pub fn trace_id(&self) -> &str {
        trace_id_of(&self.traceparent).unwrap_or("")
    }

    /// Write into outgoing HTTP headers / gRPC metadata (as HTTP headers).
    pub fn inject(&self, headers: &mut HeaderMap) {
        if let Ok(v) = HeaderValue::from_str(&self.correlation_id) {
            headers.insert(CORRELATION_ID, v);
        }
        if let Ok(v) = HeaderValue::from_str(&self.traceparent) {
            headers.insert(TRACEPARENT, v);
        }
    }
}

/// Make the `traceparent` in `headers` (if any) the parent of `span`, and return the
/// `traceparent` of `span` itself for the next hop — `None` when no OpenTelemetry layer
/// is installed (then [`RequestContext::from_headers`]' own one stands).
pub fn continue_trace(span: &tracing::Span, headers: &HeaderMap) -> Option<String> {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let parent = opentelemetry::global::get_text_map_propagator(|p| {
        p.extract(&opentelemetry_http::HeaderExtractor(headers))
    });
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut out = HeaderMap::new();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&cx, &mut opentelemetry_http::HeaderInjector(&mut out))
    });
    out.get(TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Server-side layer (axum or tonic): establishes the [`RequestContext`], puts it in the
/// request extensions, runs the request inside a `request` span (an OpenTelemetry server
/// span continuing the caller's `traceparent`) carrying `correlation_id` (so every log
/// line has it, with the trace id), and echoes `X-Correlation-ID` on the response.
#[derive(Debug, Clone, Copy, Default)]
pub struct ContextLayer;

impl<S> Layer<S> for ContextLayer {
    type Service = ContextService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ContextService { inner }
    }
}

/// Service of [`ContextLayer`].
#[derive(Debug, Clone)]
pub struct ContextService<S> {
    inner: S,
}

impl<S, B, RB> Service<Request<B>> for ContextService<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    RB: 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<RB>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let mut ctx = RequestContext::from_headers(req.headers());
        let span = tracing::info_span!(
            "request",
            otel.name = %format_args!("{} {}", req.method(), req.uri().path()),
            otel.kind = "server",
            correlation_id = %ctx.correlation_id,
            method = %req.method(),
            path = %req.uri().path(),
        );
        // Continue the caller's trace; the next hop continues this span.
        if let Some(traceparent) = continue_trace(&span, req.headers()) {
            ctx.traceparent = traceparent;
        }
        let cid = HeaderValue::from_str(&ctx.correlation_id).ok();
        if let Some(v) = &cid {
            // Inner layers (auth errors, handlers) see the id in force.
            req.headers_mut().insert(CORRELATION_ID, v.clone());
        }
        req.extensions_mut().insert(ctx);
        let fut = {
            let _enter = span.enter();
            self.inner.call(req)
        };
        Box::pin(
            async move {
                let mut resp = fut.await?;
                if let Some(cid) = cid {
                    resp.headers_mut().insert(CORRELATION_ID, cid);
                }
                Ok(resp)
            }
            .instrument(span),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_valid_ids_and_continues_traces() {
        let mut h = HeaderMap::new();
        h.insert(CORRELATION_ID, HeaderValue::from_static("abc-123"));
        h.insert(
            TRACEPARENT,
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        let ctx = RequestContext::from_headers(&h);
        assert_eq!(ctx.correlation_id, "abc-123");
        assert_eq!(ctx.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(
            !ctx.traceparent.contains("00f067aa0ba902b7"),
            "a new span id per hop"
        );
    }

    #[test]
    fn replaces_missing_or_hostile_values() {
        let mut h = HeaderMap::new();
        h.insert(
            CORRELATION_ID,
            HeaderValue::from_static("evil\"id with spaces"),
        );
        h.insert(TRACEPARENT, HeaderValue::from_static("garbage"));
        let ctx = RequestContext::from_headers(&h);
        assert_eq!(ctx.correlation_id.len(), 36);
        assert_eq!(ctx.trace_id().len(), 32);
        assert!(trace_id_of(&ctx.traceparent).is_some());
    }
}
