//! Hot-path costs: a call through a CLOSED breaker, a rejected call through an OPEN one,
//! and a first-try success through retry + breaker; the closed-state call beside the
//! `failsafe` crate's. Then the retry extras beside their counterparts: a first-try
//! success and a call retried twice with a hook (`backon`'s `notify`, `tower`'s retry
//! layer), a per-attempt timeout (`tower`'s timeout layer, `backon` + `tokio::time::timeout`),
//! and the failure-rate breaker (`failsafe`'s success rate over a time window).
//! Run: `cargo bench -p ordersys-resilience --bench resilience`.

use std::hint::black_box;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use backon::Retryable as _;
use criterion::{criterion_group, criterion_main, Criterion};
use resilience::{CircuitBreaker, Retry};
use tower::{Service as _, ServiceExt as _};

fn breaker(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let closed = CircuitBreaker::new("bench");
    c.bench_function("breaker: permit + success (closed)", |b| {
        b.iter(|| {
            let p = closed.try_acquire().unwrap();
            p.success();
        })
    });
    // The same closed-state call through `failsafe` (its default policy: consecutive
    // failures with exponential backoff).
    let theirs = failsafe::Config::new().build();
    c.bench_function("failsafe: call success (closed)", |b| {
        b.iter(|| {
            use failsafe::CircuitBreaker as _;
            black_box(theirs.call(|| Ok::<_, ()>(1u32)).is_ok())
        })
    });
    c.bench_function("breaker: call success (closed), same shape", |b| {
        b.iter(|| {
            let p = closed.try_acquire().unwrap();
            let r = black_box(Ok::<_, ()>(1u32));
            if r.is_ok() {
                p.success();
            } else {
                p.failure();
            }
            black_box(r.is_ok())
        })
    });
    let open = CircuitBreaker::builder("bench-open")
        .failure_threshold(1)
        .build();
    rt.block_on(async {
        let _ = open.call(|| async { Err::<(), _>(()) }).await;
    });
    c.bench_function("breaker: rejected (open)", |b| {
        b.iter(|| black_box(open.try_acquire().is_err()))
    });
    let retry = Retry::default();
    c.bench_function("retry + breaker: first-try success", |b| {
        b.to_async(&rt).iter(|| async {
            black_box(
                retry
                    .call_with_breaker(&closed, || async { Ok::<_, ()>(1u32) })
                    .await
                    .unwrap(),
            )
        })
    });
}

/// `tower::retry`'s policy: retry any error up to `n` times, no delay.
#[derive(Clone)]
struct Attempts(u32);

impl<Req: Clone, Res, E> tower::retry::Policy<Req, Res, E> for Attempts {
    type Future = std::future::Ready<()>;
    fn retry(&mut self, _: &mut Req, result: &mut Result<Res, E>) -> Option<Self::Future> {
        match result {
            Err(_) if self.0 > 0 => {
                self.0 -= 1;
                Some(std::future::ready(()))
            }
            _ => None,
        }
    }
    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        Some(req.clone())
    }
}

fn retry_extras(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    // First-try success: the price of being wrapped at all.
    let ours = Retry::default();
    c.bench_function("retry: first-try success", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(ours.call(|| async { Ok::<_, ()>(1u32) }).await) })
    });
    c.bench_function("backon: first-try success", |b| {
        b.to_async(&rt).iter(|| async {
            black_box(
                (|| async { Ok::<_, ()>(1u32) })
                    .retry(backon::ExponentialBuilder::default())
                    .await,
            )
        })
    });
    let svc = tower::ServiceBuilder::new()
        .retry(Attempts(2))
        .service_fn(|()| async { Ok::<_, ()>(1u32) });
    c.bench_function("tower retry: first-try success", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(svc.clone().oneshot(()).await) })
    });

    // Two failures, then success, no delays, a hook told of each retry.
    let zero = Retry::default()
        .max_attempts(3)
        .base_delay(Duration::ZERO)
        .jitter(0.0);
    c.bench_function("retry: 2 failures + success, notify", |b| {
        b.to_async(&rt).iter(|| async {
            let calls = AtomicU32::new(0);
            let heard = AtomicU32::new(0);
            let r = zero
                .call_notify(
                    || async {
                        if calls.fetch_add(1, Ordering::Relaxed) < 2 {
                            Err(())
                        } else {
                            Ok(1u32)
                        }
                    },
                    |_| true,
                    |_| {
                        heard.fetch_add(1, Ordering::Relaxed);
                    },
                )
                .await;
            black_box((r, heard.into_inner()))
        })
    });
    c.bench_function("backon: 2 failures + success, notify", |b| {
        b.to_async(&rt).iter(|| async {
            let calls = AtomicU32::new(0);
            let heard = AtomicU32::new(0);
            let r = (|| async {
                if calls.fetch_add(1, Ordering::Relaxed) < 2 {
                    Err(())
                } else {
                    Ok(1u32)
                }
            })
            .retry(
                backon::ExponentialBuilder::default()
                    .with_min_delay(Duration::ZERO)
                    .with_max_times(2),
            )
            .notify(|_, _| {
                heard.fetch_add(1, Ordering::Relaxed);
            })
            .await;
            black_box((r, heard.into_inner()))
        })
    });

    // A per-attempt timeout around a first-try success.
    let timed = Retry::default().attempt_timeout(Duration::from_secs(1));
    c.bench_function("retry: attempt_timeout, first-try success", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(timed.call(|| async { Ok::<_, ()>(1u32) }).await) })
    });
    c.bench_function("backon + tokio timeout: first-try success", |b| {
        b.to_async(&rt).iter(|| async {
            black_box(
                (|| async {
                    tokio::time::timeout(Duration::from_secs(1), async { Ok::<_, ()>(1u32) })
                        .await
                        .unwrap_or(Err(()))
                })
                .retry(backon::ExponentialBuilder::default())
                .await,
            )
        })
    });
    let timed_svc = tower::ServiceBuilder::new()
        .retry(Attempts(2))
        .timeout(Duration::from_secs(1))
        .service_fn(|()| async { Ok::<_, tower::BoxError>(1u32) });
    c.bench_function("tower retry + timeout: first-try success", |b| {
        b.to_async(&rt).iter(|| async {
            let mut s = timed_svc.clone();
            black_box(s.ready().await.unwrap().call(()).await.is_ok())
        })
    });

    // The failure-rate breaker, closed, a success.
    let rated = CircuitBreaker::builder("bench-rate")
        .failure_rate(50, Duration::from_secs(10), 20)
        .build();
    c.bench_function(
        "breaker with failure rate: permit + success (closed)",
        |b| {
            b.iter(|| {
                let p = rated.try_acquire().unwrap();
                p.success();
            })
        },
    );
    let theirs = failsafe::Config::new()
        .failure_policy(failsafe::failure_policy::success_rate_over_time_window(
            0.5,
            20,
            Duration::from_secs(10),
            failsafe::backoff::constant(Duration::from_secs(30)),
        ))
        .build();
    c.bench_function("failsafe success rate: call success (closed)", |b| {
        b.iter(|| {
            use failsafe::CircuitBreaker as _;
            black_box(theirs.call(|| Ok::<_, ()>(1u32)).is_ok())
        })
    });
}

criterion_group!(benches, breaker, retry_extras);
criterion_main!(benches);
