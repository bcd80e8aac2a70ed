//! Relay throughput with the memory outbox and broker (the framework's own overhead, no
//! I/O): enqueue N messages over 16 keys, then drain them in rounds of 100.
//! Run: `cargo bench -p ordersys-outbox --bench relay`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use outbox::memory::{MemoryBroker, MemoryOutbox};
use outbox::{OutboxMessage, OutboxStore, Relay, RelayConfig, Transactional};

const N: u64 = 1000;

fn relay(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("relay (memory)");
    g.throughput(Throughput::Elements(N));
    g.bench_function("enqueue + publish + mark 1000 messages", |b| {
        b.to_async(&rt).iter(|| async {
            let store = MemoryOutbox::new();
            let mut tx = store.begin().await.unwrap();
            for i in 0..N {
                store
                    .enqueue(
                        &mut tx,
                        OutboxMessage::new("t", format!("k{}", i % 16), vec![0u8; 64]),
                    )
                    .await
                    .unwrap();
            }
            store.commit(tx).await.unwrap();
            let relay = Relay::new(store.clone(), MemoryBroker::new(), RelayConfig::default());
            while relay.run_once().await.unwrap().claimed > 0 {}
            assert_eq!(store.pending(), 0);
        })
    });
    g.finish();
}

criterion_group!(benches, relay);
criterion_main!(benches);
