//! Cost of the pure state machine and of a whole saga through the orchestrator with the
//! memory store. Run: `cargo bench -p ordersys-saga --bench saga`.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use outbox::memory::MemoryTx;
use saga_core::{
    transition, CommandSink, Dispatched, MemorySagaStore, Orchestrator, SagaCommand,
    SagaDefinition, SagaEvent, SagaId, SagaInstance, SagaState,
};

fn def() -> SagaDefinition {
    saga_core::conformance::create_order_saga(true)
}

struct Sink;

impl CommandSink<MemoryTx> for Sink {
    async fn dispatch(
        &self,
        _: &mut MemoryTx,
        _: &SagaInstance,
        cmd: &SagaCommand,
    ) -> saga_core::Result<Dispatched> {
        Ok(if cmd.name.starts_with("payment.") {
            Dispatched::Sent
        } else {
            Dispatched::Succeeded
        })
    }
}

fn saga(c: &mut Criterion) {
    let d = def();
    let s0 = SagaState::new(&d);
    c.bench_function(
        "transition: start → success → completed (3 events)",
        |b| {
            b.iter(|| {
                let t1 = transition(&d, black_box(&s0), &SagaEvent::Start).unwrap();
                let t2 = transition(&d, &t1.state, &SagaEvent::StepSucceeded { step: 0 }).unwrap();
                let t3 = transition(&d, &t2.state, &SagaEvent::StepSucceeded { step: 1 }).unwrap();
                black_box(t3)
            })
        },
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let orch = Orchestrator::new(MemorySagaStore::new(), Sink).register(def());
    c.bench_function("orchestrator (memory): start + reply + commit", |b| {
        b.to_async(&rt).iter(|| async {
            let id = SagaId::new();
            let mut tx = MemoryTx::new();
            orch.start(&mut tx, "create_order", id, Bytes::new())
                .await
                .unwrap();
            tx.commit().unwrap();
            black_box(
                orch.handle_and_commit(id, SagaEvent::StepSucceeded { step: 1 })
                    .await
                    .unwrap(),
            )
        })
    });
}

criterion_group!(benches, saga);
criterion_main!(benches);
