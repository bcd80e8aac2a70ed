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

/// `grpc-status` of a method the server does not have.
const UNIMPLEMENTED: &str = "12";

/// Counts and times requests.
#[derive(Debug, Clone)]
pub struct RequestMetricsLayer {
    requests: IntCounterVec,
    latency: HistogramVec,
    denied: IntCounterVec,
}

impl RequestMetricsLayer {
    /// Register `grpc_server_requests_total{method,code}` and
    /// `grpc_server_request_duration_seconds{method}` on `registry`, and
    /// `grpc_server_denied_total{caller,method}` for [`crate::callers`].
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
        let denied = IntCounterVec::new(
            Opts::new(
                "grpc_server_denied_total",
                "gRPC calls refused because the caller's certificate does not allow them",
            ),
            &["caller", "method"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(denied.clone()))?;
        Ok(Self {
            requests,
            latency,
            denied,
        })
    }

    /// The counter of calls [`crate::callers`] refused.
    pub fn denied(&self) -> IntCounterVec {
        self.denied.clone()
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
            // A path no service implements is answered UNIMPLEMENTED: counted under one
            // label, or anyone could add series to /metrics without bound.
            let method = if code == UNIMPLEMENTED {
                "unimplemented"
            } else {
                method.as_str()
            };
            layer
                .requests
                .with_label_values(&[method, code.as_str()])
                .inc();
            layer
                .latency
                .with_label_values(&[method])
                .observe(started.elapsed().as_secs_f64());
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt as _;

    #[tokio::test]
    async fn unknown_methods_share_one_series() {
        let registry = Registry::new();
        let layer = RequestMetricsLayer::new(&registry).unwrap();
        let svc = layer.layer(tower::service_fn(|req: Request<()>| async move {
            let known = req.uri().path() == "/pkg.Svc/Known";
            let mut resp = Response::new(());
            if !known {
                resp.headers_mut()
                    .insert("grpc-status", UNIMPLEMENTED.parse().unwrap());
            }
            Ok::<_, std::convert::Infallible>(resp)
        }));
        for path in [
            "/pkg.Svc/Known",
            "/pkg.Svc/Nope-1",
            "/garbage/2",
            "/pkg.Svc/Known",
        ] {
            let req = Request::builder().uri(path).body(()).unwrap();
            svc.clone().oneshot(req).await.unwrap();
        }
        let families = registry.gather();
        let requests = families
            .iter()
            .find(|f| f.name() == "grpc_server_requests_total")
            .unwrap();
        let series: Vec<(String, u64)> = requests
            .get_metric()
            .iter()
            .map(|m| {
                let method = m.get_label().iter().find(|l| l.name() == "method").unwrap();
                (
                    method.value().to_owned(),
                    m.get_counter().get_value() as u64,
                )
            })
            .collect();
        assert_eq!(
            series,
            [
                ("/pkg.Svc/Known".to_owned(), 2),
                ("unimplemented".to_owned(), 2)
            ]
        );
    }
}
