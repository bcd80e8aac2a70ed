//! ordersys-resilience around a tonic client (here the standard gRPC health service, so
//! the example needs no server of ours):
//!
//! - tonic's client methods take `&mut self`: **clone the client in each attempt** (a
//!   clone shares the channel, it is cheap);
//! - [`Retry::call_with_breaker`] retries every error and counts every attempt with the
//!   breaker; [`Retry::call_with_breaker_classified`] retries and counts **only the
//!   errors that mean the downstream is in trouble** (`UNAVAILABLE`,
//!   `DEADLINE_EXCEEDED`, `RESOURCE_EXHAUSTED` — not a `NOT_FOUND` or
//!   `INVALID_ARGUMENT`, which are answers), as below;
//! - a per-attempt timeout ([`Retry::attempt_timeout`]) keeps a hanging downstream from
//!   holding the caller, and counts as a breaker failure;
//! - a hook ([`Retry::call_with_breaker_notify`]) hears of each retry, and the error
//!   says how many attempts were made.
//!
//! `cargo run -p example-tonic-resilience`.

use std::time::Duration;

use resilience::{BreakerError, BreakerState, CircuitBreaker, Retry, RetryError};
use tonic::{Code, Status};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// Errors that say the downstream is down or overloaded: worth a retry, and a failure
/// for the breaker. Everything else is the downstream's answer.
fn transient(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted
    )
}

/// One logical call: up to 3 attempts (100 ms, 200 ms apart), each at most 500 ms,
/// through `breaker`.
async fn check(
    client: &HealthClient<tonic::transport::Channel>,
    breaker: &CircuitBreaker,
    service: &str,
) -> Result<i32, RetryError<BreakerError<Status>>> {
    Retry::default()
        .named("health-check")
        .attempt_timeout(Duration::from_millis(500))
        .call_with_breaker_notify(
            breaker,
            || {
                let mut client = client.clone(); // `&mut self` methods: clone per attempt
                let request = HealthCheckRequest {
                    service: service.to_owned(),
                };
                async move { client.check(request).await.map(|r| r.into_inner().status) }
            },
            transient,
            |retry| match retry.error {
                Some(status) => println!(
                    "  attempt {} failed ({:?}), retrying in {:?}",
                    retry.attempt,
                    status.code(),
                    retry.delay
                ),
                None => println!(
                    "  attempt {} timed out, retrying in {:?}",
                    retry.attempt, retry.delay
                ),
            },
        )
        .await
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A gRPC server with the health service, on a free port.
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("orders", tonic_health::ServingStatus::Serving)
        .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = stopped.await;
                },
            ),
    );

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_millis(200))
        .connect_lazy();
    let client = HealthClient::new(channel);
    let breaker = CircuitBreaker::builder("health")
        .failure_threshold(3)
        .open_timeout(Duration::from_secs(30))
        .build();

    // The downstream answers: a success, and an answer that is not a failure.
    assert_eq!(check(&client, &breaker, "orders").await?, 1); // SERVING
    match check(&client, &breaker, "no-such-service").await {
        Err(RetryError::Failed {
            error: BreakerError::Inner(s),
            attempts: 1,
        }) if s.code() == Code::NotFound => {
            println!("NOT_FOUND is an answer: returned at once, not counted by the breaker")
        }
        other => return Err(format!("expected NOT_FOUND, got {other:?}").into()),
    }
    assert_eq!(breaker.consecutive_failures(), 0);

    // The downstream goes away: UNAVAILABLE is retried and each attempt counted; three
    // failures open the breaker.
    let _ = stop.send(());
    server.await??;
    match check(&client, &breaker, "orders").await {
        Err(e) if e.is_open() => println!(
            "down: the breaker opened during the retries ({} attempts)",
            e.attempts()
        ),
        Err(e) => {
            let attempts = e.attempts();
            println!("down: {:?} after {attempts} attempts", e.into_inner());
        }
        Ok(status) => return Err(format!("expected failures, got {status}").into()),
    }
    assert_eq!(breaker.state(), BreakerState::Open);

    // While open, calls fail at once without touching the network.
    let started = std::time::Instant::now();
    match check(&client, &breaker, "orders").await {
        Err(RetryError::Failed {
            error: BreakerError::Open(o),
            attempts: 1,
        }) => println!(
            "open: refused in {:?}, retry after {:?}",
            started.elapsed(),
            o.retry_after
        ),
        other => return Err(format!("expected an open breaker, got {other:?}").into()),
    }
    println!("tonic-resilience: retries and breaker behave as documented");
    Ok(())
}
