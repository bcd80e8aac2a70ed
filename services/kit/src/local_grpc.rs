//! gRPC between services of one process without a socket.
//!
//! The one-process system (`ordersys`) runs the gateway and the three gRPC services side
//! by side. Over loopback TCP every call is an HTTP/2 exchange through the kernel: a
//! send, a wake-up and a receive on each side. A [`LocalGrpc`] hands the gateway's
//! client the service's own tower stack instead — the same tonic server (`Routes`) with
//! the same layers (context, metrics), the same protobuf encoding, the same status
//! codes — called as a function. The TCP listener still serves everyone else.
//!
//! The client side is a [`Transport`]: a boxed tonic transport that is either a
//! [`Channel`](tonic::transport::Channel) ([`channel_transport`]) or a [`LocalGrpc`]
//! ([`LocalGrpc::transport`]), so one client type serves both.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use tonic::body::Body;
use tonic::Status;
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceExt as _};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An error of a [`Transport`]: the channel's or a [`Status`], as its
/// [`source`](std::error::Error::source) — tonic finds the status there (a connection
/// refused is `UNAVAILABLE`, as over a plain channel).
#[derive(Debug)]
pub struct TransportError(BoxError);

impl std::fmt::Display for TransportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for TransportError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

impl From<Status> for TransportError {
    fn from(s: Status) -> Self {
        Self(Box::new(s))
    }
}

/// What a tonic client calls through: a channel or an in-process service.
pub type Transport = BoxCloneSyncService<Request<Body>, Response<Body>, TransportError>;

/// The source of an `UNAVAILABLE` [`Status`] from a [`channel_transport`] that could
/// not connect: the request never left this process, so another replica may take it
/// whatever it does (see [`not_sent`]).
#[derive(Debug)]
pub struct NotSent;

impl std::fmt::Display for NotSent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("no connection: the request was not sent")
    }
}

impl std::error::Error for NotSent {}

/// Whether `status` says the request was never sent (no connection could be made), as
/// opposed to sent and then failed or timed out — after which it may have been
/// applied. Only a [`channel_transport`] marks it; a status from the server never is.
pub fn not_sent(status: &Status) -> bool {
    // tonic wraps the transport's error (and the status inside it) on its way to the
    // caller: look along the whole chain.
    let mut next = std::error::Error::source(status);
    while let Some(e) = next {
        if e.is::<NotSent>() {
            return true;
        }
        next = e.source();
    }
    false
}

fn is_connect_error(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(err) = next {
        if err.is::<tonic::ConnectError>() {
            return true;
        }
        next = err.source();
    }
    false
}

/// A [`Transport`] over a tonic channel. A call that finds no connection and cannot
/// make one fails `UNAVAILABLE` marked [`not_sent`].
pub fn channel_transport(channel: tonic::transport::Channel) -> Transport {
    BoxCloneSyncService::new(channel.map_err(|e| {
        if is_connect_error(&e) {
            let mut status = Status::unavailable(format!("{e}: {}", error_chain(&e)));
            status.set_source(Arc::new(NotSent));
            TransportError::from(status)
        } else {
            TransportError(Box::new(e))
        }
    }))
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = Vec::new();
    let mut next = e.source();
    while let Some(err) = next {
        parts.push(err.to_string());
        next = err.source();
    }
    parts.join(": ")
}

/// A [`Transport`] over a tonic channel in which a call ends `UNAVAILABLE` after
/// `within` at the latest, including the time it waits for the channel to have an
/// endpoint at all (a balanced channel whose name does not resolve yet would otherwise
/// hold calls indefinitely).
pub fn channel_transport_within(channel: tonic::transport::Channel, within: Duration) -> Transport {
    BoxCloneSyncService::new(channel.map_err(|e| TransportError(Box::new(e))).map_future(
        move |call| async move {
            tokio::time::timeout(within, call)
                .await
                .unwrap_or_else(|_| {
                    Err(TransportError::from(Status::unavailable(format!(
                        "no answer within {within:?}"
                    ))))
                })
        },
    ))
}

/// A slot a service fills with its gRPC stack when it starts, and clients call through.
/// Before the service is there, a call fails with `UNAVAILABLE` — as a connection to a
/// port nobody listens on yet would.
#[derive(Clone, Default)]
pub struct LocalGrpc {
    slot: Arc<OnceLock<Transport>>,
}

impl std::fmt::Debug for LocalGrpc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalGrpc")
            .field("serving", &self.slot.get().is_some())
            .finish()
    }
}

impl LocalGrpc {
    /// An empty slot.
    pub fn new() -> Self {
        Self::default()
    }

    /// Serve `service` (a tonic `Routes`, with its layers) to this slot's clients. The
    /// first call wins; later ones are ignored.
    pub fn serve<S>(&self, service: S)
    where
        S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        let _ = self.slot.set(BoxCloneSyncService::new(
            service.map_err(|e: Infallible| -> TransportError { match e {} }),
        ));
    }

    /// A client transport: each call runs the served stack, bounded by `timeout` (then
    /// `DEADLINE_EXCEEDED`, as a channel's per-call timeout).
    pub fn transport(&self, timeout: Duration) -> Transport {
        BoxCloneSyncService::new(LocalCall {
            slot: self.slot.clone(),
            timeout,
        })
    }
}

#[derive(Clone)]
struct LocalCall {
    slot: Arc<OnceLock<Transport>>,
    timeout: Duration,
}

impl Service<Request<Body>> for LocalCall {
    type Response = Response<Body>;
    type Error = TransportError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, TransportError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let service = self.slot.get().cloned();
        let timeout = self.timeout;
        Box::pin(async move {
            let Some(service) = service else {
                let mut status = Status::unavailable("the service has not started yet");
                status.set_source(Arc::new(NotSent));
                return Err(status.into());
            };
            match tokio::time::timeout(timeout, service.oneshot(req)).await {
                Ok(r) => r,
                Err(_) => {
                    Err(Status::deadline_exceeded(format!("no answer within {timeout:?}")).into())
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    fn check() -> HealthCheckRequest {
        HealthCheckRequest {
            service: String::new(),
        }
    }

    #[tokio::test]
    async fn a_call_before_the_service_is_served_is_unavailable_then_it_answers() {
        let local = LocalGrpc::new();
        let mut client = HealthClient::new(local.transport(Duration::from_secs(1)));
        let early = client.check(check()).await.unwrap_err();
        assert_eq!(early.code(), tonic::Code::Unavailable, "{early:?}");
        assert!(not_sent(&early), "nothing was there to take it");

        let (_reporter, health) = tonic_health::server::health_reporter();
        local.serve(tonic::service::Routes::new(health));
        let answer = client.check(check()).await.unwrap().into_inner();
        assert_eq!(answer.status(), ServingStatus::Serving);
        // A status the service returns comes through as itself.
        let missing = client
            .check(HealthCheckRequest {
                service: "no.such.Service".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(missing.code(), tonic::Code::NotFound, "{missing:?}");
        assert!(!not_sent(&missing));
    }

    #[tokio::test]
    async fn a_channel_that_cannot_connect_says_the_request_was_not_sent() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy();
        let refused = HealthClient::new(channel_transport(channel))
            .check(check())
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
        assert!(not_sent(&refused), "{refused:?}");
        // A status a server sends is never taken for one.
        assert!(!not_sent(&Status::unavailable("shutting down")));
    }

    #[tokio::test]
    async fn a_call_that_takes_longer_than_the_timeout_is_deadline_exceeded() {
        let local = LocalGrpc::new();
        local.serve(tower::service_fn(|_req: Request<Body>| async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok::<_, Infallible>(Response::new(Body::empty()))
        }));
        let mut client = HealthClient::new(local.transport(Duration::from_millis(50)));
        let err = client.check(check()).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err:?}");
    }
}
