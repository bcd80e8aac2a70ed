//! Request metrics for gRPC servers (and any HTTP service): a tower layer that counts
//! requests and observes their latency by path (`/package.Service/Method`) and gRPC
//! status, registered on the service's [`Admin`](crate::admin::Admin) registry.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{Request, Response};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use tower::{Layer, Service};

/// Counts and times requests.
#[derive(Debug, Clone)]
pub struct RequestMetricsLayer {
    requests: IntCounterVec,
    latency: HistogramVec,
}

impl RequestMetricsLayer {
    /// Register `grpc_server_requests_total{method,code}` and
    /// `grpc_server_request_duration_seconds{method}` on `registry`.
    pub fn new(registry: &Registry) -> anyhow::Result<Self> {
        let requests = IntCounterVec::new(
            Opts::new(
                "grpc_server_requests_total",
                "gRPC requests by method and status code",
            ),
            &["method", "code"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "grpc_server_request_duration_seconds",
                "gRPC request latency",
            ),
            &["method"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        Ok(Self { requests, latency })
    }
}

impl<S> Layer<S> for RequestMetricsLayer {
    type Service = RequestMetrics<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequestMetrics {
            inner,
            layer: self.clone(),
        }
    }
}

/// Service of [`RequestMetricsLayer`].
#[derive(Debug, Clone)]
pub struct RequestMetrics<S> {
    inner: S,
    layer: RequestMetricsLayer,
}

impl<S, B, RB> Service<Request<B>> for RequestMetrics<S>
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

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let method = req.uri().path().to_owned();
        let started = Instant::now();
        let fut = self.inner.call(req);
        let layer = self.layer.clone();
        Box::pin(async move {
            let result = fut.await;
            // Errors in unary calls travel as a `grpc-status` header ("trailers only");
            // a success has none here, so it counts as 0 (OK).
            let code = match &result {
                Ok(resp) => resp
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("0")
                    .to_owned(),
                Err(_) => "transport_error".to_owned(),
            };
            layer
                .requests
                .with_label_values(&[method.as_str(), code.as_str()])
                .inc();
            layer
                .latency
                .with_label_values(&[method.as_str()])
                .observe(started.elapsed().as_secs_f64());
            result
        })
    }
}
