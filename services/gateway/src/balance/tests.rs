use super::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// A gRPC server (the health service) on `listener` that counts the calls it takes and
/// answers each after `delay`; it stops when the sender is dropped or fired.
fn serve(
    listener: tokio::net::TcpListener,
    calls: Arc<AtomicUsize>,
    delay: Duration,
) -> tokio::sync::oneshot::Sender<()> {
    let (_reporter, health) = tonic_health::server::health_reporter();
    let layer = tower::ServiceBuilder::new()
        .map_request(move |r: http::Request<_>| {
            calls.fetch_add(1, Ordering::SeqCst);
            r
        })
        .map_future(move |f| async move {
            tokio::time::sleep(delay).await;
            f.await
        });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(layer)
            .add_service(health)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async move {
                    let _ = stopped.await;
                },
            ),
    );
    stop
}

/// A counting health server on 127.0.0.1 that runs until the test ends.
async fn server(calls: Arc<AtomicUsize>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    std::mem::forget(serve(listener, calls, Duration::ZERO));
    addr
}

/// An address nobody listens on: connections are refused.
async fn dead_address() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

fn settings(open: Duration, probe: Duration, timeout: Duration) -> Settings {
    Settings {
        failure_threshold: 2,
        open_timeout: open,
        probe_every: probe,
        timeout,
    }
}

/// A downstream `test` over the name `host` (breakers open 30 s, probed every second),
/// `timeout` per call, `resolve` asked every `every`.
fn resolving<R, F>(host: &str, timeout: Duration, every: Duration, resolve: R) -> Downstream
where
    R: FnMut() -> F + Send + 'static,
    F: Future<Output = std::io::Result<Vec<SocketAddr>>> + Send,
{
    Downstream::resolving(
        "test",
        GrpcTls::loopback_plaintext(),
        host.into(),
        settings(Duration::from_secs(30), Duration::from_secs(1), timeout),
        every,
        resolve,
    )
}

async fn check(d: &Downstream, effect: Effect) -> Result<(), ApiError> {
    d.call(effect, |t| async move {
        HealthClient::new(t)
            .check(HealthCheckRequest::default())
            .await
    })
    .await
    .map(drop)
}

async fn calls(d: &Downstream, n: usize) {
    for _ in 0..n {
        check(d, Effect::Read).await.unwrap();
    }
}

fn state_of(d: &Downstream, addr: SocketAddr) -> BreakerState {
    let name = format!("test@{addr}");
    d.endpoints()
        .iter()
        .find(|e| e.breaker().name() == name)
        .unwrap_or_else(|| panic!("no endpoint {name}"))
        .breaker()
        .state()
}

#[tokio::test]
async fn calls_go_to_every_address_of_the_name_and_follow_it_when_it_changes() {
    let (na, nb) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (a, b) = (server(na.clone()).await, server(nb.clone()).await);
    let answer = Arc::new(Mutex::new(vec![a, b]));
    let resolved = Arc::new(AtomicUsize::new(0));
    let (resolver, count) = (answer.clone(), resolved.clone());
    let d = resolving(
        "replicas",
        Duration::from_secs(5),
        Duration::from_millis(20),
        move || {
            count.fetch_add(1, Ordering::SeqCst);
            let addrs = resolver.lock().unwrap().clone();
            async move { Ok(addrs) }
        },
    );
    calls(&d, 40).await;
    let (ca, cb) = (na.load(Ordering::SeqCst), nb.load(Ordering::SeqCst));
    assert!(ca > 0 && cb > 0, "both replicas serve: {ca} and {cb}");

    // b leaves the name: once re-resolved, every call goes to a.
    *answer.lock().unwrap() = vec![a];
    ordersys_testkit::eventually("b is no longer called", Duration::from_secs(10), || {
        let (na, nb, d) = (na.clone(), nb.clone(), d.clone());
        async move {
            let (a0, b0) = (na.load(Ordering::SeqCst), nb.load(Ordering::SeqCst));
            calls(&d, 10).await;
            (na.load(Ordering::SeqCst) == a0 + 10 && nb.load(Ordering::SeqCst) == b0).then_some(())
        }
    })
    .await;
    assert_eq!(d.endpoints().len(), 1);

    // A name that briefly resolves to nothing keeps the last known replicas.
    answer.lock().unwrap().clear();
    let asked = resolved.load(Ordering::SeqCst);
    ordersys_testkit::eventually("the empty answer seen", Duration::from_secs(10), || {
        let resolved = resolved.clone();
        async move { (resolved.load(Ordering::SeqCst) >= asked + 2).then_some(()) }
    })
    .await;
    let a0 = na.load(Ordering::SeqCst);
    calls(&d, 5).await;
    assert_eq!(na.load(Ordering::SeqCst), a0 + 5);
}

#[tokio::test]
async fn a_call_with_no_address_to_go_to_is_a_503_within_the_timeout() {
    let d = resolving(
        "nowhere",
        Duration::from_millis(300),
        Duration::from_millis(50),
        || async { Err(std::io::Error::other("no such host")) },
    );
    let err = check(&d, Effect::Read).await.unwrap_err();
    assert_eq!(
        (err.status, err.code.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "service_unavailable")
    );
}

/// The mechanism of item 2 of issue 30: without the health probe the breaker would stay
/// OPEN for its full 30 s although the endpoint is back.
#[tokio::test]
async fn an_open_breaker_closes_as_soon_as_the_endpoint_is_healthy_again() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = serve(listener, Arc::default(), Duration::ZERO);
    let d = Downstream::at(
        "test",
        &GrpcTls::loopback_plaintext(),
        &format!("http://{addr}"),
        settings(
            Duration::from_secs(30),
            Duration::from_millis(100),
            Duration::from_secs(1),
        ),
    )
    .unwrap();
    let breaker = d.endpoints()[0].breaker().clone();
    assert_eq!(
        breaker.name(),
        "test",
        "one endpoint: named after the service"
    );
    calls(&d, 1).await;

    drop(stop);
    // Refused connections (nothing sent: 503; a call caught on the closing connection
    // may be 504), twice, then the breaker is open.
    ordersys_testkit::eventually("the breaker opens", Duration::from_secs(10), || {
        let d = d.clone();
        let breaker = breaker.clone();
        async move {
            if let Err(e) = check(&d, Effect::Once).await {
                assert!(
                    matches!(
                        e.status,
                        StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
                    ),
                    "{e:?}"
                );
            }
            (breaker.state() == BreakerState::Open).then_some(())
        }
    })
    .await;
    let refused = check(&d, Effect::Read).await.unwrap_err();
    assert!(refused.message.contains("circuit open"), "{refused:?}");
    assert_eq!(
        refused.retry_after,
        Some(1),
        "Retry-After: the next probe, not the 30 s"
    );

    // Back on the same address: closed within a few probes, far inside the 30 s.
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let _stop = serve(listener, Arc::default(), Duration::ZERO);
    ordersys_testkit::eventually("the endpoint serves again", Duration::from_secs(10), || {
        let d = d.clone();
        async move { check(&d, Effect::Read).await.ok() }
    })
    .await;
    assert_eq!(breaker.state(), BreakerState::Closed);
}

/// The mechanism of item 1 of issue 30: with one breaker per service, the dead
/// replica's failures would open it for the live one too.
#[tokio::test]
async fn one_dead_replica_is_ejected_alone_and_no_request_is_refused_for_it() {
    let live_calls = Arc::new(AtomicUsize::new(0));
    let live = server(live_calls.clone()).await;
    let dead = dead_address().await;
    let d = resolving(
        "replicas",
        Duration::from_secs(1),
        Duration::from_secs(60),
        move || async move { Ok(vec![live, dead]) },
    );
    // Not even a call that may be applied only once is refused: it never reached the
    // dead replica, so it goes to the live one.
    for effect in [Effect::Read, Effect::Idempotent, Effect::Once] {
        for i in 0..20 {
            check(&d, effect)
                .await
                .unwrap_or_else(|e| panic!("{effect:?} call {i} refused: {e:?}"));
        }
    }
    assert_eq!(state_of(&d, dead), BreakerState::Open);
    assert_eq!(state_of(&d, live), BreakerState::Closed);
    assert!(live_calls.load(Ordering::SeqCst) >= 60);

    // The replica comes back: its health probe answers, the next call is its trial, and
    // it takes its share again — although the live one could take them all.
    let back_calls = Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind(dead).await.unwrap();
    let _back = serve(listener, back_calls.clone(), Duration::ZERO);
    ordersys_testkit::eventually("the replica serves again", Duration::from_secs(10), || {
        let d = d.clone();
        async move {
            calls(&d, 4).await;
            (state_of(&d, dead) == BreakerState::Closed).then_some(())
        }
    })
    .await;
    let before = back_calls.load(Ordering::SeqCst);
    calls(&d, 40).await;
    assert!(
        back_calls.load(Ordering::SeqCst) > before,
        "no calls after recovery"
    );
}

#[tokio::test]
async fn no_answer_in_time_is_a_504_that_says_whether_the_request_may_have_been_applied() {
    let slow_calls = Arc::new(AtomicUsize::new(0));
    let (a, b) = (
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
    );
    let addrs = vec![a.local_addr().unwrap(), b.local_addr().unwrap()];
    let _a = serve(a, slow_calls.clone(), Duration::from_secs(5));
    let _b = serve(b, slow_calls.clone(), Duration::from_secs(5));
    let d = resolving(
        "slow",
        Duration::from_millis(300),
        Duration::from_secs(60),
        move || {
            let addrs = addrs.clone();
            async move { Ok(addrs) }
        },
    );
    let read = check(&d, Effect::Read).await.unwrap_err();
    assert_eq!(
        (read.status, read.code.as_str()),
        (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout")
    );
    let before = slow_calls.load(Ordering::SeqCst);
    let once = check(&d, Effect::Once).await.unwrap_err();
    assert_eq!(
        (once.status, once.code.as_str()),
        (StatusCode::GATEWAY_TIMEOUT, "outcome_unknown")
    );
    assert!(once.message.contains("check before retrying"), "{once:?}");
    assert_eq!(
        slow_calls.load(Ordering::SeqCst),
        before + 1,
        "a request that may have been applied is not sent again"
    );
    let keyed = check(&d, Effect::Idempotent).await.unwrap_err();
    assert_eq!(keyed.code, "outcome_unknown");
    assert!(
        keyed
            .message
            .contains("retry with the same Idempotency-Key"),
        "{keyed:?}"
    );
}

#[test]
fn an_outage_is_answered_by_what_the_client_can_know() {
    let answer = |effect, status: Status, sent| {
        let e = failure("order", effect, &status, sent);
        (e.status.as_u16(), e.code.as_str())
    };
    let timeout = || Status::deadline_exceeded("late");
    // Lost after it left: a local error behind the status.
    let lost = |code| {
        let mut s = Status::new(code, "connection reset");
        s.set_source(Arc::new(std::io::Error::other("connection reset by peer")));
        s
    };
    for effect in [Effect::Read, Effect::Idempotent, Effect::Once] {
        // Nothing reached a service: nothing was done.
        assert_eq!(
            answer(effect, lost(Code::Unavailable), false),
            (503, "service_unavailable")
        );
        // The service's own answers.
        assert_eq!(
            answer(effect, Status::internal("db"), true),
            (500, "internal")
        );
        assert_eq!(
            answer(
                effect,
                Status::unavailable("a dependency is unavailable"),
                true
            ),
            (503, "service_unavailable")
        );
    }
    assert_eq!(
        answer(Effect::Read, timeout(), true),
        (504, "upstream_timeout")
    );
    assert_eq!(
        answer(Effect::Read, lost(Code::Unavailable), true),
        (503, "service_unavailable")
    );
    for effect in [Effect::Idempotent, Effect::Once] {
        for status in [
            timeout(),
            Status::cancelled("timeout expired"),
            lost(Code::Unavailable),
            lost(Code::Unknown),
        ] {
            assert_eq!(answer(effect, status, true), (504, "outcome_unknown"));
        }
    }
}

#[tokio::test]
async fn a_list_of_urls_is_a_fixed_set_of_endpoints_each_with_its_breaker() {
    let (na, nb) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (a, b) = (server(na.clone()).await, server(nb.clone()).await);
    let tls = GrpcTls::loopback_plaintext();
    let s = || {
        settings(
            Duration::from_secs(30),
            Duration::from_secs(1),
            Duration::from_secs(5),
        )
    };
    let d = Downstream::at("test", &tls, &format!("http://{a}, http://{b}"), s()).unwrap();
    let names: Vec<String> = d
        .endpoints()
        .iter()
        .map(|e| e.breaker().name().to_owned())
        .collect();
    assert_eq!(names, [format!("test@{a}"), format!("test@{b}")]);
    calls(&d, 40).await;
    let (ca, cb) = (na.load(Ordering::SeqCst), nb.load(Ordering::SeqCst));
    assert!(ca > 0 && cb > 0, "both replicas serve: {ca} and {cb}");

    let err =
        Downstream::at("test", &tls, &format!("http://order:50052,http://{a}"), s()).unwrap_err();
    assert!(err.to_string().contains("IP address"), "{err}");
}
