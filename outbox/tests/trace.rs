//! With the `opentelemetry` feature the outbox carries a trace across the broker on its
//! own: enqueue under a span → `outbox.publish` (child of it) → `outbox.consume` (child
//! of the publish) → a reply enqueued while handling (child of the consume span).

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use outbox::memory::{MemoryBroker, MemoryDeadLetters, MemoryInbox, MemoryOutbox, MemoryTx};
use outbox::{
    Delivery, DeliveryOutcome, HandlerError, IdempotentConsumer, MessageHandler, OutboxMessage,
    OutboxStore, Relay, RelayConfig, Transactional,
};
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;

/// Handles a command by enqueuing a reply.
struct Reply(MemoryOutbox);

impl MessageHandler<MemoryTx> for Reply {
    type Output = ();
    async fn handle(&self, tx: &mut MemoryTx, msg: &Delivery) -> Result<(), HandlerError> {
        let reply = OutboxMessage::new("replies", msg.key.clone(), "ok");
        self.0
            .enqueue(tx, reply)
            .await
            .map_err(HandlerError::transient)
    }
}

fn named<'a>(spans: &'a [SpanData], name: &str) -> &'a SpanData {
    spans.iter().find(|s| s.name == name).unwrap_or_else(|| {
        panic!(
            "no span {name}: {:?}",
            spans.iter().map(|s| &s.name).collect::<Vec<_>>()
        )
    })
}

#[tokio::test]
async fn one_trace_from_enqueue_through_publish_and_consume_to_the_reply() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let _guard = tracing::subscriber::set_default(subscriber);

    let store = MemoryOutbox::new();
    let broker = MemoryBroker::new();
    assert_eq!(outbox::trace::current_trace_id(), None, "no span, no trace");
    let seen = async {
        let seen = outbox::trace::current_trace_id();
        let mut tx = store.begin().await.unwrap();
        let msg = OutboxMessage::new("commands", "order-1", "debit");
        assert!(msg.headers.get(outbox::trace::TRACEPARENT).is_some());
        store.enqueue(&mut tx, msg).await.unwrap();
        store.commit(tx).await.unwrap();
        seen
    }
    .instrument(tracing::info_span!("place_order"))
    .await;

    let relay = Relay::new(store.clone(), broker.clone(), RelayConfig::default());
    assert_eq!(relay.run_once().await.unwrap().published, 1);
    let sent = broker.published_on("commands");
    let consumer = IdempotentConsumer::new("payment", MemoryInbox::new(), MemoryDeadLetters::new());
    let outcome = consumer
        .process(&sent[0].to_delivery(), &Reply(store.clone()))
        .await
        .unwrap();
    assert_eq!(outcome, DeliveryOutcome::Processed);
    assert_eq!(relay.run_once().await.unwrap().published, 1);
    let reply = broker.published_on("replies");

    let spans = exporter.get_finished_spans().unwrap();
    let (origin, publish, consume) = (
        named(&spans, "place_order"),
        named(&spans, "commands publish"),
        named(&spans, "commands process"),
    );
    let trace = origin.span_context.trace_id();
    assert_eq!(
        seen,
        Some(trace.to_string()),
        "current_trace_id names the span's trace"
    );
    for s in &spans {
        assert_eq!(
            s.span_context.trace_id(),
            trace,
            "{} left the trace",
            s.name
        );
    }
    assert_eq!(publish.parent_span_id, origin.span_context.span_id());
    assert_eq!(consume.parent_span_id, publish.span_context.span_id());
    let reply_publish = named(&spans, "replies publish");
    assert_eq!(reply_publish.parent_span_id, consume.span_context.span_id());
    // What reached the broker names the publish span, not the enqueuing one.
    let carried = reply[0].headers.get(outbox::trace::TRACEPARENT).unwrap();
    assert!(
        carried.contains(&reply_publish.span_context.span_id().to_string()),
        "{carried}"
    );
}
