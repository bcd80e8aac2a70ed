//! Hot-path costs: a call through a CLOSED breaker, a rejected call through an OPEN one,
//! and a first-try success through retry + breaker; the closed-state call beside the
//! `failsafe` crate's.
//! Run: `cargo bench -p ordersys-resilience --bench resilience`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use resilience::{CircuitBreaker, Retry};

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

criterion_group!(benches, breaker);
criterion_main!(benches);
