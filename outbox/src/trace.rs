//! Trace context across the outbox, and the crate's metrics.
//!
//! **Spans.** The crate creates its spans through [`tracing`]: `outbox.publish` around
//! each publish of the [`Relay`](crate::Relay) and `outbox.consume` around each
//! delivery handled by an [`IdempotentConsumer`](crate::IdempotentConsumer). With the
//! `opentelemetry` feature (and a `tracing-opentelemetry` layer in the subscriber) they
//! join one distributed trace:
//!
//! 1. [`OutboxMessage::new`](crate::OutboxMessage::new) stores the current span's
//!    context in the message's headers (W3C `traceparent`, through the global
//!    propagator of `opentelemetry`), so it is saved with the row at enqueue time;
//! 2. the relay's `outbox.publish` span is a child of that context, and the message
//!    leaves with the publish span's context in its headers;
//! 3. the consumer's `outbox.consume` span is a child of the publish span, and whatever
//!    the handler enqueues (replies) is a child of the consume span.
//!
//! Without the feature the spans are still there (for logs); the headers a caller set
//! are carried unchanged. Register a propagator once at start-up, e.g.
//! `opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new())`.
//!
//! **Metrics**, through the [`metrics`] facade (a no-op until the application installs
//! a recorder, e.g. `metrics-exporter-prometheus`):
//!
//! | name | type | labels | what |
//! |---|---|---|---|
//! | `outbox_relay_published_total` | counter | `topic` | messages the broker acknowledged |
//! | `outbox_relay_publish_failures_total` | counter | `topic` | failed publishes (each is retried) |
//! | `outbox_relay_publish_duration_seconds` | histogram | `topic` | one publish, until acknowledged |
//! | `outbox_relay_lag_seconds` | histogram | `topic` | enqueue → acknowledged by the broker |
//! | `outbox_backlog_messages` | gauge | `relay` | unsent messages in the store |
//! | `outbox_oldest_unsent_age_seconds` | gauge | `relay` | age of the oldest unsent message (0 if none) |
//! | `outbox_consumer_messages_total` | counter | `consumer`, `topic`, `outcome` | deliveries by outcome: `processed`, `duplicate`, `dead_lettered`, `failed` (not settled, will come again) |
//! | `outbox_consumer_handle_duration_seconds` | histogram | `consumer`, `topic` | one delivery, inbox check to commit |
//! | `outbox_consumer_lag_messages` | gauge | `group`, `topic`, `partition` | messages behind the end of the partition (Kafka consumer) |

use crate::Headers;

/// The W3C trace context header.
pub const TRACEPARENT: &str = "traceparent";
/// The W3C trace state header.
pub const TRACESTATE: &str = "tracestate";

/// Store the context of the current span in `headers` (a no-op without the
/// `opentelemetry` feature, or when the current span has no valid context).
pub fn inject_current(headers: &mut Headers) {
    inject_span(&tracing::Span::current(), headers);
}

/// Store the context of `span` in `headers` (see [`inject_current`]).
pub fn inject_span(span: &tracing::Span, headers: &mut Headers) {
    #[cfg(feature = "opentelemetry")]
    otel::inject(span, headers);
    #[cfg(not(feature = "opentelemetry"))]
    let _ = (span, headers);
}

/// The trace id (hex) of the current span, if it has a valid OpenTelemetry context
/// (always `None` without the `opentelemetry` feature).
pub fn current_trace_id() -> Option<String> {
    #[cfg(feature = "opentelemetry")]
    return otel::trace_id(&tracing::Span::current());
    #[cfg(not(feature = "opentelemetry"))]
    None
}

/// The headers carrying `span`'s context (`traceparent`, maybe `tracestate`), or `None`
/// when it has no valid one (always without the `opentelemetry` feature).
pub(crate) fn context_of(span: &tracing::Span) -> Option<Headers> {
    let mut headers = Headers::new();
    inject_span(span, &mut headers);
    (!headers.is_empty()).then_some(headers)
}

/// Make the context carried in `headers` the parent of `span` (a no-op without the
/// `opentelemetry` feature or without a valid context in `headers`). Call right after
/// creating the span, before entering it.
pub fn set_parent(span: &tracing::Span, headers: &Headers) {
    #[cfg(feature = "opentelemetry")]
    otel::set_parent(span, headers);
    #[cfg(not(feature = "opentelemetry"))]
    let _ = (span, headers);
}

#[cfg(feature = "opentelemetry")]
mod otel {
    use opentelemetry::propagation::{Extractor, Injector};
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    use crate::Headers;

    struct Inject<'a>(&'a mut Headers);
    impl Injector for Inject<'_> {
        fn set(&mut self, key: &str, value: String) {
            self.0.insert(key, value);
        }
    }

    struct Extract<'a>(&'a Headers);
    impl Extractor for Extract<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key)
        }
        fn keys(&self) -> Vec<&str> {
            self.0.iter().map(|(k, _)| k).collect()
        }
    }

    pub(super) fn inject(span: &tracing::Span, headers: &mut Headers) {
        let cx = span.context();
        if !cx.span().span_context().is_valid() {
            return;
        }
        opentelemetry::global::get_text_map_propagator(|p| {
            p.inject_context(&cx, &mut Inject(headers))
        });
    }

    pub(super) fn trace_id(span: &tracing::Span) -> Option<String> {
        let cx = span.context();
        let sc = cx.span().span_context().clone();
        sc.is_valid().then(|| sc.trace_id().to_string())
    }

    pub(super) fn set_parent(span: &tracing::Span, headers: &Headers) {
        let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&Extract(headers)));
        if cx.span().span_context().is_valid() {
            let _ = span.set_parent(cx);
        }
    }
}
