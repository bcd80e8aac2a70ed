use super::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// A gRPC server (the health service) on 127.0.0.1 that counts the calls it takes.
async fn server(calls: Arc<AtomicUsize>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_reporter, health) = tonic_health::server::health_reporter();
    let count = tower::ServiceBuilder::new().map_request(move |r: http::Request<_>| {
        calls.fetch_add(1, Ordering::SeqCst);
        r
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(count)
            .add_service(health)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr
}

async fn calls(client: &mut HealthClient<Transport>, n: usize) {
    for _ in 0..n {
        client.check(HealthCheckRequest::default()).await.unwrap();
    }
}

#[tokio::test]
async fn calls_go_to_every_address_of_the_name_and_follow_it_when_it_changes() {
    let (na, nb) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (a, b) = (server(na.clone()).await, server(nb.clone()).await);
    let answer = Arc::new(Mutex::new(vec![a, b]));
    let resolved = Arc::new(AtomicUsize::new(0));
    let (resolver, count) = (answer.clone(), resolved.clone());
    let transport = balanced(
        GrpcTls::loopback_plaintext(),
        "replicas".into(),
        Duration::from_secs(5),
        Duration::from_millis(20),
        move || {
            count.fetch_add(1, Ordering::SeqCst);
            let addrs = resolver.lock().unwrap().clone();
            async move { Ok(addrs) }
        },
    );
    let mut client = HealthClient::new(transport);
    calls(&mut client, 40).await;
    let (ca, cb) = (na.load(Ordering::SeqCst), nb.load(Ordering::SeqCst));
    assert!(ca > 0 && cb > 0, "both replicas serve: {ca} and {cb}");

    // b leaves the name: once re-resolved, every call goes to a.
    *answer.lock().unwrap() = vec![a];
    ordersys_testkit::eventually("b is no longer called", Duration::from_secs(10), || {
        let (na, nb, mut client) = (na.clone(), nb.clone(), client.clone());
        async move {
            let (a0, b0) = (na.load(Ordering::SeqCst), nb.load(Ordering::SeqCst));
            calls(&mut client, 10).await;
            (na.load(Ordering::SeqCst) == a0 + 10 && nb.load(Ordering::SeqCst) == b0).then_some(())
        }
    })
    .await;

    // A name that briefly resolves to nothing keeps the last known replicas.
    answer.lock().unwrap().clear();
    let asked = resolved.load(Ordering::SeqCst);
    ordersys_testkit::eventually("the empty answer seen", Duration::from_secs(10), || {
        let resolved = resolved.clone();
        async move { (resolved.load(Ordering::SeqCst) >= asked + 2).then_some(()) }
    })
    .await;
    let a0 = na.load(Ordering::SeqCst);
    calls(&mut client, 5).await;
    assert_eq!(na.load(Ordering::SeqCst), a0 + 5);
}

#[tokio::test]
async fn a_call_with_no_address_to_go_to_ends_unavailable_within_the_timeout() {
    let transport = balanced(
        GrpcTls::loopback_plaintext(),
        "nowhere".into(),
        Duration::from_millis(300),
        Duration::from_millis(50),
        || async { Err(std::io::Error::other("no such host")) },
    );
    let err = HealthClient::new(transport)
        .check(HealthCheckRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
}
