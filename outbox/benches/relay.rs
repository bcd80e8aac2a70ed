//! Relay throughput with the memory outbox and broker (the framework's own overhead, no
//! I/O): enqueue N messages over 16 keys, then drain them in rounds of 100. With the
//! `sqlite` feature also the delivery latency of one message from the SQLite outbox to a
//! consumer on the in-process bus — commit, relay woken by the commit, consumer's inbox
//! transaction — with the default 1 s poll interval.
//! Run: `cargo bench -p ordersys-outbox --bench relay --features sqlite`.

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

#[cfg(feature = "sqlite")]
fn sqlite_to_bus(c: &mut Criterion) {
    use outbox::local::LocalBus;
    use outbox::sqlite::{SqliteInbox, SqliteOutbox, SqliteTx};
    use outbox::{Delivery, HandlerError, IdempotentConsumer, MessageHandler};

    struct Signal(tokio::sync::mpsc::UnboundedSender<()>);
    impl MessageHandler<SqliteTx> for Signal {
        type Output = ();
        async fn handle(&self, _: &mut SqliteTx, _: &Delivery) -> Result<(), HandlerError> {
            Ok(())
        }
        async fn after_commit(&self, _: &Delivery, (): ()) {
            let _ = self.0.send(());
        }
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let file = std::env::temp_dir().join(format!("relay-bench-{}.db", std::process::id()));
    let (outbox, mut delivered) = rt.block_on(async {
        let pool = outbox::sqlite::connect(&file).await.unwrap();
        outbox::sqlite::migrate(&pool).await.unwrap();
        let outbox = SqliteOutbox::new(pool.clone());
        let bus = LocalBus::new();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        bus.subscribe(
            "t",
            IdempotentConsumer::new("bench", SqliteInbox::new(pool), bus.clone()),
            Signal(tx),
        );
        // The default configuration: a 1 s poll; the commit wakes it.
        let relay = Relay::new(outbox.clone(), bus, RelayConfig::default());
        tokio::spawn(relay.run(std::future::pending()));
        (outbox, rx)
    });
    c.bench_function(
        "sqlite outbox → bus consumer: commit to handled (1 s poll)",
        |b| {
            b.iter(|| {
                rt.block_on(async {
                    let mut tx = outbox.begin().await.unwrap();
                    outbox
                        .enqueue(&mut tx, OutboxMessage::new("t", "k", "p"))
                        .await
                        .unwrap();
                    outbox.commit(tx).await.unwrap();
                    delivered.recv().await.unwrap();
                })
            })
        },
    );
    let _ = std::fs::remove_file(&file);
}

#[cfg(not(feature = "sqlite"))]
fn sqlite_to_bus(_: &mut Criterion) {}

criterion_group!(benches, relay, sqlite_to_bus);
criterion_main!(benches);
