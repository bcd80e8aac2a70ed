//! tower adapters: [`CircuitBreakerLayer`] and [`RetryLayer`].
//!
//! Both produce services whose error type is [`tower::BoxError`], like tower's own
//! `Timeout`; a rejection by an open breaker is a boxed [`CircuitOpen`] that callers can
//! `downcast_ref`. They work in front of any `tower::Service`, for example a tonic
//! `Channel` or an axum router.
//!
//! ```
//! use resilience::{layer::CircuitBreakerLayer, CircuitBreaker, CircuitOpen};
//! use tower::{service_fn, Layer, Service, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let breaker = CircuitBreaker::builder("echo").failure_threshold(1).build();
//! let mut svc = CircuitBreakerLayer::new(breaker.clone())
//!     .layer(service_fn(|x: u32| async move { if x == 0 { Err("zero") } else { Ok(x) } }));
//! assert_eq!(svc.ready().await.unwrap().call(7).await.unwrap(), 7);
//! assert!(svc.ready().await.unwrap().call(0).await.is_err()); // opens the breaker
//! let err = svc.ready().await.unwrap().call(7).await.unwrap_err();
//! assert!(err.downcast_ref::<CircuitOpen>().is_some());
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tower::{BoxError, Layer, Service};

use crate::{CircuitBreaker, CircuitOpen, Permit, Retry};

/// Decides whether a call's result counts as a failure of the downstream.
pub type Classifier<Res> = Arc<dyn Fn(Result<&Res, &BoxError>) -> bool + Send + Sync>;

/// Wraps a service in a [`CircuitBreaker`].
pub struct CircuitBreakerLayer<Res = ()> {
    breaker: CircuitBreaker,
    classifier: Option<Classifier<Res>>,
}

impl<Res> Clone for CircuitBreakerLayer<Res> {
    fn clone(&self) -> Self {
        Self {
            breaker: self.breaker.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

impl<Res> fmt::Debug for CircuitBreakerLayer<Res> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerLayer")
            .field("breaker", &self.breaker)
            .finish_non_exhaustive()
    }
}

impl<Res> CircuitBreakerLayer<Res> {
    /// Every `Err` from the inner service counts as a failure; every `Ok` as a success.
    pub fn new(breaker: CircuitBreaker) -> Self {
        Self {
            breaker,
            classifier: None,
        }
    }

    /// Decide per result what counts as a failure, e.g. an HTTP 5xx response or a gRPC
    /// `UNAVAILABLE` status, while a 404 or `INVALID_ARGUMENT` does not.
    pub fn with_classifier(
        breaker: CircuitBreaker,
        classifier: impl Fn(Result<&Res, &BoxError>) -> bool + Send + Sync + 'static,
    ) -> Self {
        Self {
            breaker,
            classifier: Some(Arc::new(classifier)),
        }
    }
}

impl<S, Res> Layer<S> for CircuitBreakerLayer<Res> {
    type Service = CircuitBreakerService<S, Res>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreakerService {
            inner,
            breaker: self.breaker.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

/// The service made by [`CircuitBreakerLayer`].
pub struct CircuitBreakerService<S, Res = ()> {
    inner: S,
    breaker: CircuitBreaker,
    classifier: Option<Classifier<Res>>,
}

impl<S: Clone, Res> Clone for CircuitBreakerService<S, Res> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            breaker: self.breaker.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

impl<S: fmt::Debug, Res> fmt::Debug for CircuitBreakerService<S, Res> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerService")
            .field("inner", &self.inner)
            .field("breaker", &self.breaker)
            .finish_non_exhaustive()
    }
}

impl<S, Req, Res> Service<Req> for CircuitBreakerService<S, Res>
where
    S: Service<Req, Response = Res>,
    S::Error: Into<BoxError>,
{
    type Response = Res;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, Res>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        match self.breaker.try_acquire() {
            Ok(permit) => ResponseFuture {
                state: State::Running {
                    fut: self.inner.call(req),
                    permit: Some(permit),
                    classifier: self.classifier.clone(),
                },
            },
            Err(open) => ResponseFuture {
                state: State::Rejected { open: Some(open) },
            },
        }
    }
}

pin_project! {
    /// Response future of [`CircuitBreakerService`].
    pub struct ResponseFuture<F, Res> {
        #[pin]
        state: State<F, Res>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, Res> {
        Running {
            #[pin]
            fut: F,
            permit: Option<Permit>,
            classifier: Option<Classifier<Res>>,
        },
        Rejected { open: Option<CircuitOpen> },
    }
}

impl<F: fmt::Debug, Res> fmt::Debug for ResponseFuture<F, Res> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, Res, E> Future for ResponseFuture<F, Res>
where
    F: Future<Output = Result<Res, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Res, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Rejected { open } => {
                Poll::Ready(Err(Box::new(open.take().expect("polled after completion"))))
            }
            StateProj::Running {
                fut,
                permit,
                classifier,
            } => {
                let result = match fut.poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(r) => r.map_err(Into::into),
                };
                let failed = match classifier {
                    Some(c) => c(result.as_ref()),
                    None => result.is_err(),
                };
                if let Some(p) = permit.take() {
                    if failed {
                        p.failure();
                    } else {
                        p.success();
                    }
                }
                Poll::Ready(result)
            }
        }
    }
}

/// Decides whether an error may be retried.
pub type RetryPredicate = Arc<dyn Fn(&BoxError) -> bool + Send + Sync>;

/// Retries failed calls of a service whose requests are `Clone`, with a [`Retry`]
/// policy. Errors that are a [`CircuitOpen`] are never retried.
#[derive(Clone)]
pub struct RetryLayer {
    policy: Retry,
    retryable: RetryPredicate,
}

impl fmt::Debug for RetryLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryLayer")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl RetryLayer {
    /// Retry every error except an open breaker.
    pub fn new(policy: Retry) -> Self {
        Self::with_predicate(policy, |_| true)
    }

    /// Retry the errors for which `retryable` holds (an open breaker never is).
    pub fn with_predicate(
        policy: Retry,
        retryable: impl Fn(&BoxError) -> bool + Send + Sync + 'static,
    ) -> Self {
        Self {
            policy,
            retryable: Arc::new(retryable),
        }
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = RetryService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RetryService {
            inner,
            policy: self.policy,
            retryable: self.retryable.clone(),
        }
    }
}

/// The service made by [`RetryLayer`].
#[derive(Clone)]
pub struct RetryService<S> {
    inner: S,
    policy: Retry,
    retryable: RetryPredicate,
}

impl<S: fmt::Debug> fmt::Debug for RetryService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryService")
            .field("inner", &self.inner)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl<S, Req> Service<Req> for RetryService<S>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    S::Response: Send,
    Req: Clone + Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        // The readied service handles the first attempt; clones handle the retries.
        let clone = self.inner.clone();
        let mut first = Some(std::mem::replace(&mut self.inner, clone));
        let spare = self.inner.clone();
        let policy = self.policy;
        let retryable = self.retryable.clone();
        Box::pin(async move {
            let result = policy
                .call_if(
                    move || {
                        let req = req.clone();
                        let ready_first = first.take();
                        let mut svc = spare.clone();
                        async move {
                            match ready_first {
                                Some(mut s) => s.call(req).await.map_err(Into::into),
                                None => {
                                    std::future::poll_fn(|cx| svc.poll_ready(cx))
                                        .await
                                        .map_err(Into::into)?;
                                    svc.call(req).await.map_err(Into::into)
                                }
                            }
                        }
                    },
                    move |e: &BoxError| e.downcast_ref::<CircuitOpen>().is_none() && retryable(e),
                )
                .await;
            result.map_err(|e| match e {
                crate::RetryError::Failed { error, .. } => error,
                crate::RetryError::TimedOut { attempts, .. } => {
                    Box::new(AttemptTimedOut { attempts }) as BoxError
                }
                other => Box::new(DeadlineExceeded {
                    attempts: other.attempts(),
                }) as BoxError,
            })
        })
    }
}

/// Error of [`RetryService`] when the policy's overall deadline passed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("retry deadline exceeded after {attempts} attempt(s)")]
pub struct DeadlineExceeded {
    /// Attempts started.
    pub attempts: u32,
}

/// Error of [`RetryService`] when the last attempt ran past the policy's
/// [`attempt_timeout`](crate::Retry::attempt_timeout) and no retry was left.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the last of {attempts} attempt(s) timed out")]
pub struct AttemptTimedOut {
    /// Attempts made.
    pub attempts: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;
    use tower::{service_fn, ServiceBuilder, ServiceExt};

    #[tokio::test(start_paused = true)]
    async fn breaker_layer_opens_and_rejects_without_calling_inner() {
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let breaker = CircuitBreaker::builder("svc").failure_threshold(2).build();
        let svc = CircuitBreakerLayer::new(breaker.clone()).layer(service_fn(move |_: ()| {
            c.fetch_add(1, Ordering::SeqCst);
            async { Err::<(), _>("down") }
        }));
        for _ in 0..2 {
            svc.clone().oneshot(()).await.unwrap_err();
        }
        let err = svc.clone().oneshot(()).await.unwrap_err();
        assert!(err.downcast_ref::<CircuitOpen>().is_some());
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn classifier_counts_error_responses() {
        let breaker = CircuitBreaker::builder("http").failure_threshold(1).build();
        let svc =
            CircuitBreakerLayer::with_classifier(breaker.clone(), |r: Result<&u16, &BoxError>| {
                r.map(|status| *status >= 500).unwrap_or(true)
            })
            .layer(service_fn(|status: u16| async move {
                Ok::<_, BoxError>(status)
            }));
        assert_eq!(svc.clone().oneshot(404).await.unwrap(), 404);
        assert_eq!(breaker.state(), crate::BreakerState::Closed);
        assert_eq!(svc.clone().oneshot(503).await.unwrap(), 503);
        assert_eq!(breaker.state(), crate::BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_layer_retries_then_succeeds() {
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let svc = RetryLayer::new(Retry::default()).layer(service_fn(move |x: u32| {
            let n = c.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 2 {
                    Err::<u32, BoxError>("flaky".into())
                } else {
                    Ok(x * 2)
                }
            }
        }));
        assert_eq!(svc.oneshot(21).await.unwrap(), 42);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    /// A service that is never ready (back-pressure) or fails to get ready.
    #[derive(Clone)]
    struct NotReady(Option<&'static str>);

    impl Service<()> for NotReady {
        type Response = ();
        type Error = BoxError;
        type Future = std::future::Ready<Result<(), BoxError>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            match self.0 {
                Some(e) => Poll::Ready(Err(e.into())),
                None => Poll::Pending,
            }
        }
        fn call(&mut self, _: ()) -> Self::Future {
            std::future::ready(Ok(()))
        }
    }

    /// Both layers ask the inner service whether it is ready: its back-pressure and its
    /// readiness errors come through.
    #[tokio::test(start_paused = true)]
    async fn readiness_is_the_inner_services() {
        let breaker = CircuitBreaker::new("ready");
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut pending = CircuitBreakerLayer::new(breaker.clone()).layer(NotReady(None));
        assert!(pending.poll_ready(&mut cx).is_pending());
        let mut pending = RetryLayer::new(Retry::default()).layer(NotReady(None));
        assert!(pending.poll_ready(&mut cx).is_pending());
        let mut broken = CircuitBreakerLayer::new(breaker).layer(NotReady(Some("gone")));
        match broken.poll_ready(&mut cx) {
            Poll::Ready(Err(e)) => assert_eq!(e.to_string(), "gone"),
            _ => panic!("the inner error must come through"),
        }
        let mut broken = RetryLayer::new(Retry::default()).layer(NotReady(Some("gone")));
        match broken.poll_ready(&mut cx) {
            Poll::Ready(Err(e)) => assert_eq!(e.to_string(), "gone"),
            _ => panic!("the inner error must come through"),
        }
    }

    /// An open breaker is never retried, even by a layer that retries everything: the
    /// attempt that met it is the last.
    #[tokio::test(start_paused = true)]
    async fn retry_layer_does_not_retry_an_open_breaker() {
        let attempts = Arc::new(AtomicU32::new(0));
        let a = attempts.clone();
        let breaker = CircuitBreaker::builder("b").failure_threshold(1).build();
        let inner = CircuitBreakerLayer::new(breaker).layer(service_fn(|_: ()| async {
            Err::<(), BoxError>("down".into())
        }));
        let counted = tower::util::MapRequest::new(inner, move |r: ()| {
            a.fetch_add(1, Ordering::SeqCst);
            r
        });
        let svc = RetryLayer::new(Retry::default().max_attempts(5)).layer(counted);
        let err = svc.oneshot(()).await.unwrap_err();
        assert!(err.downcast_ref::<CircuitOpen>().is_some());
        assert_eq!(
            attempts.load(Ordering::SeqCst),
            2,
            "one failure, then the open breaker"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn retry_layer_predicate_and_deadline() {
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let svc = RetryLayer::with_predicate(Retry::default().max_attempts(5), |e| {
            e.to_string() != "invalid"
        })
        .layer(service_fn(move |_: ()| {
            c.fetch_add(1, Ordering::SeqCst);
            async { Err::<(), BoxError>("invalid".into()) }
        }));
        let err = svc.oneshot(()).await.unwrap_err();
        assert_eq!(err.to_string(), "invalid", "the inner error, as it was");
        assert_eq!(calls.load(Ordering::SeqCst), 1, "not retryable");

        let svc = RetryLayer::new(
            Retry::default()
                .max_attempts(10)
                .deadline(Duration::from_millis(250)),
        )
        .layer(service_fn(|_: ()| async {
            Err::<(), BoxError>("down".into())
        }));
        let err = svc.oneshot(()).await.unwrap_err();
        let late = err.downcast_ref::<DeadlineExceeded>().expect("deadline");
        assert_eq!(late.attempts, 2);
    }

    /// The classifier sees errors too; a non-failure error leaves the count alone, and
    /// the rejection of an open breaker is answered without calling the inner service.
    #[tokio::test(start_paused = true)]
    async fn classifier_sees_errors_and_rejections_skip_the_inner_service() {
        let breaker = CircuitBreaker::builder("grpc").failure_threshold(1).build();
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let svc =
            CircuitBreakerLayer::with_classifier(breaker.clone(), |r: Result<&(), &BoxError>| {
                r.is_err_and(|e| e.to_string() == "unavailable")
            })
            .layer(service_fn(move |e: &'static str| {
                c.fetch_add(1, Ordering::SeqCst);
                async move { Err::<(), BoxError>(e.into()) }
            }));
        svc.clone().oneshot("not found").await.unwrap_err();
        assert_eq!(breaker.state(), crate::BreakerState::Closed);
        svc.clone().oneshot("unavailable").await.unwrap_err();
        assert_eq!(breaker.state(), crate::BreakerState::Open);
        let err = svc.clone().oneshot("not found").await.unwrap_err();
        assert!(err.downcast_ref::<CircuitOpen>().is_some());
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        // A success through the layer closes a half-open breaker.
        tokio::time::advance(Duration::from_secs(30)).await;
        let ok = CircuitBreakerLayer::<()>::new(breaker.clone())
            .layer(service_fn(|_: ()| async { Ok::<_, BoxError>(()) }));
        ok.oneshot(()).await.unwrap();
        assert_eq!(breaker.state(), crate::BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_outside_breaker_stops_when_it_opens() {
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let breaker = CircuitBreaker::builder("b")
            .failure_threshold(1)
            .open_timeout(Duration::from_secs(30))
            .build();
        let svc = ServiceBuilder::new()
            .layer(RetryLayer::new(Retry::default().max_attempts(5)))
            .layer(CircuitBreakerLayer::new(breaker))
            .service(service_fn(move |_: ()| {
                c.fetch_add(1, Ordering::SeqCst);
                async { Err::<(), BoxError>("down".into()) }
            }));
        let err = svc.oneshot(()).await.unwrap_err();
        assert!(err.downcast_ref::<CircuitOpen>().is_some());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
