//! Observability end to end: one order is one OpenTelemetry trace from the REST call
//! through gRPC, the outbox, Kafka (or the embedded bus), the payment service and back
//! to the orchestrator — received by an OTLP collector inside this test, over OTLP/HTTP
//! and OTLP/gRPC, and flushed when a service stops — and every service's `/metrics`
//! shows the SDK's metrics with live values after one order, including every metric a
//! dashboard or an alert rule queries.

use std::collections::BTreeSet;
use std::time::Duration;

use ordersys_e2e::otlp::{ancestry, Collector, Span};
use ordersys_e2e::promql;
use ordersys_e2e::{email, free_port, wait_ready, Api, Options, Service, System};
use serde_json::json;

const SERVER: i32 = 2;
const PRODUCER: i32 = 4;
const CONSUMER: i32 = 5;

fn otel_env(collector: &Collector, grpc: bool) -> Vec<(String, String)> {
    let (endpoint, protocol) = if grpc {
        (&collector.grpc_endpoint, "grpc")
    } else {
        (&collector.http_endpoint, "http/protobuf")
    };
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), endpoint.clone()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL".into(), protocol.into()),
        ("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()),
    ]
}

fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

/// Place one order under the client's own trace (`traceparent` with a fresh trace id)
/// and wait until it is confirmed; returns (trace id, the client's span id).
async fn one_traced_order(api: &Api) -> (String, String) {
    let token = api.signup(&email(), "password-123").await;
    let (trace_id, parent) = (random_hex(16), random_hex(8));
    let r = api
        .raw(
            api.client()
                .post(format!("{}/api/v1/orders", api.base()))
                .bearer_auth(&token)
                .header("traceparent", format!("00-{trace_id}-{parent}-01"))
                .json(&json!({ "items": [{ "product_id": "book", "quantity": 1, "unit_price": 1500 }], "currency": "USD" })),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    let id = r.body["order_id"].as_str().expect("order id").to_owned();
    api.wait_order(&token, &id, |o| o["status"] == "CONFIRMED")
        .await;
    // The wallet read is the payment service's gRPC (its request metric must be live).
    let w = api
        .raw(
            api.client()
                .get(format!("{}/api/v1/wallet", api.base()))
                .bearer_auth(&token),
        )
        .await;
    assert_eq!(w.status, 200, "{w:?}");
    (trace_id, parent)
}

fn describe(spans: &[Span]) -> String {
    spans
        .iter()
        .map(|s| {
            format!(
                "{} {} kind={} id={} parent={}",
                s.service, s.name, s.kind, s.span_id, s.parent_span_id
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The consumer span of `consumer` whose ancestry passes through a producer span of
/// `producer_service` (a hop through the broker) and ends at the client's span.
fn hop<'a>(
    spans: &'a [Span],
    client_span: &str,
    consumer: &str,
    through: &[(&str, i32)],
) -> Option<Vec<&'a Span>> {
    spans
        .iter()
        .filter(|s| {
            s.kind == CONSUMER && s.attributes.get("consumer").map(String::as_str) == Some(consumer)
        })
        .map(|s| ancestry(spans, s))
        .find(|chain| {
            chain
                .last()
                .is_some_and(|root| root.parent_span_id == client_span)
                && through.iter().all(|(name_part, kind)| {
                    chain
                        .iter()
                        .any(|s| s.kind == *kind && s.name.contains(name_part))
                })
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_order_is_one_trace_through_grpc_kafka_and_back() {
    let collector = Collector::start().await;
    let sys = System::start(Options {
        gateway_env: [
            vec![("RATE_LIMIT_PER_MINUTE".into(), "100000".into())],
            otel_env(&collector, false),
        ]
        .concat(),
        order_env: otel_env(&collector, false),
        // The payment service exports over gRPC: both protocols are exercised.
        payment_env: otel_env(&collector, true),
        ..Options::default()
    })
    .await;
    let api = Api::new(&sys.base);
    let (trace_id, client_span) = one_traced_order(&api).await;

    let complete =
        |spans: &[Span]| hop(spans, &client_span, "order", &[("saga.replies", PRODUCER)]).is_some();
    let spans = collector
        .wait_for(&trace_id, Duration::from_secs(30), complete)
        .await;
    let all = describe(&spans);

    // The gateway's server span continues the client's trace.
    let gateway = spans
        .iter()
        .find(|s| s.service == "ordersys-gateway" && s.name == "POST /api/v1/orders")
        .unwrap_or_else(|| panic!("no gateway span:\n{all}"));
    assert_eq!(gateway.parent_span_id, client_span, "{all}");
    assert_eq!(gateway.kind, SERVER);

    // gRPC: the order service's server span is the gateway's child.
    let order_rpc = spans
        .iter()
        .find(|s| {
            s.service == "ordersys-order" && s.kind == SERVER && s.name.contains("CreateOrder")
        })
        .unwrap_or_else(|| panic!("no CreateOrder span:\n{all}"));
    assert_eq!(order_rpc.parent_span_id, gateway.span_id, "{all}");

    // Kafka, there: the payment consumer's span descends from the order service's
    // publish of the command, which descends from the gRPC call.
    let there = hop(
        &spans,
        &client_span,
        "payment",
        &[("saga.commands", PRODUCER)],
    )
    .unwrap_or_else(|| panic!("no payment span chained to the request:\n{all}"));
    let services: Vec<&str> = there.iter().map(|s| s.service.as_str()).collect();
    assert_eq!(there[0].service, "ordersys-payment", "{all}");
    assert!(
        there[1].kind == PRODUCER && there[1].service == "ordersys-order",
        "{all}"
    );
    assert!(
        there.iter().any(|s| s.span_id == order_rpc.span_id),
        "{services:?}\n{all}"
    );

    // And back: the orchestrator consumes the reply the payment service published while
    // handling the command, and moves the saga on in a span of its own.
    let back = hop(&spans, &client_span, "order", &[("saga.replies", PRODUCER)])
        .unwrap_or_else(|| panic!("no reply span chained to the request:\n{all}"));
    assert!(
        back[1].kind == PRODUCER && back[1].service == "ordersys-payment",
        "{all}"
    );
    assert!(
        back.iter().any(|s| s.span_id == there[0].span_id),
        "the reply does not descend from the payment consumer's span:\n{all}"
    );
    assert!(
        spans
            .iter()
            .any(|s| s.name == "saga.handle" && s.parent_span_id == back[0].span_id),
        "no saga.handle span under the reply's consumer span:\n{all}"
    );

    // The logs carry the same trace id.
    let order_logs = sys.order.logs();
    assert!(
        order_logs.contains(&format!("\"trace_id\":\"{trace_id}\"")),
        "the order service's logs lack trace {trace_id}"
    );
    sys.stop().await;
}

/// The metrics each service must show after one order, with `true` where the value must
/// be above 0 (counted something), `false` where existing suffices (a gauge at 0, a
/// failure counter that stayed 0).
fn expected(service: &str) -> Vec<(&'static str, bool)> {
    let relay = [
        ("outbox_relay_published_total", true),
        ("outbox_relay_publish_failures_total", false),
        ("outbox_relay_publish_duration_seconds_count", true),
        ("outbox_relay_lag_seconds_count", true),
        ("outbox_backlog_messages", false),
        ("outbox_oldest_unsent_age_seconds", false),
    ];
    let consumer = [
        ("outbox_consumer_messages_total", true),
        ("outbox_consumer_handle_duration_seconds_count", true),
        ("outbox_consumer_lag_messages", false),
        ("resilience_retries_total", false),
    ];
    match service {
        "order" => [
            &relay[..],
            &consumer[..],
            &[
                ("saga_started_total", true),
                ("saga_finished_total", true),
                ("saga_compensations_started_total", false),
                ("saga_duration_seconds_count", true),
                ("saga_instances", false),
                ("grpc_server_requests_total", true),
            ],
        ]
        .concat(),
        "payment" => [
            &relay[..],
            &consumer[..],
            &[("grpc_server_requests_total", true)],
        ]
        .concat(),
        "user" => vec![("grpc_server_requests_total", true)],
        "gateway" => vec![
            ("http_requests_total", true),
            ("resilience_breaker_state", false),
            ("resilience_breaker_transitions_total", false),
            ("resilience_rate_limit_rejections_total", false),
            ("authz_blacklist_hits_total", false),
            ("authz_blacklist_errors_total", false),
        ],
        _ => unreachable!(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_shows_the_sdk_metrics_and_every_dashboard_metric_exists() {
    let sys = System::start(Options::default()).await;
    let api = Api::new(&sys.base);
    one_traced_order(&api).await;
    let mut exported: BTreeSet<String> = BTreeSet::new();
    for (service, url) in [
        ("order", sys.order_admin.clone()),
        ("payment", sys.payment_admin.clone()),
        ("gateway", sys.gateway_admin.clone()),
        ("user", sys.user_admin.clone()),
    ] {
        let want = expected(service);
        // Gauges are refreshed every few seconds (backlog, consumer lag): wait for them.
        let got = ordersys_e2e::eventually(
            &format!("{service}'s /metrics to show every SDK metric"),
            Duration::from_secs(30),
            || {
                let (url, want) = (url.clone(), want.clone());
                async move {
                    let got = promql::scrape(&url).await;
                    want.iter()
                        .all(|(name, live)| got.get(*name).is_some_and(|v| !*live || *v > 0.0))
                        .then_some(got)
                }
            },
        )
        .await;
        exported.extend(got.into_keys());
    }
    sys.stop().await;

    // The exporters of the infrastructure panels, run against the local servers.
    exported.extend(
        promql::exporter_metrics(
            "prometheus-mysqld-exporter",
            &[],
            &[("DATA_SOURCE_NAME", "root@(127.0.0.1:3306)/")],
            "mysql_up",
        )
        .await,
    );
    exported.extend(
        promql::exporter_metrics(
            "prometheus-redis-exporter",
            &["--redis.addr=redis://127.0.0.1:6379".to_owned()],
            &[],
            "redis_up",
        )
        .await,
    );
    exported.extend(promql::kafka_exporter_metrics());
    exported.insert("up".into()); // Prometheus' own, per scrape target

    let referenced = promql::referenced();
    assert!(referenced.len() > 30, "{referenced:?}");
    let missing: Vec<String> = referenced
        .iter()
        .filter(|(name, _)| !exported.contains(*name))
        .map(|(name, places)| format!("{name} (in {})", places.join("; ")))
        .collect();
    assert!(
        missing.is_empty(),
        "dashboards or alerts query metrics nothing exports:\n{}",
        missing.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_system_traces_one_order_through_its_bus_and_flushes_at_stop() {
    let collector = Collector::start().await;
    let dir = std::env::temp_dir().join(format!("ordersys-otel-{}", uuid::Uuid::new_v4().simple()));
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut env = ordersys_e2e::embedded_env(&dir, port);
    env.extend(otel_env(&collector, false));
    // Batches leave only every 10 minutes: what arrives was flushed at the stop.
    env.insert("OTEL_BSP_SCHEDULE_DELAY".into(), "600000".into());
    let mut sys = Service::start("ordersys", env);
    wait_ready(
        &ordersys_e2e::embedded_ready_url(&sys),
        &mut sys,
        Duration::from_secs(60),
    )
    .await;
    let api = Api::new(&base);
    let (trace_id, client_span) = one_traced_order(&api).await;
    let status = sys.terminate(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "no clean stop: {status:?}"
    );
    let spans = collector
        .wait_for(&trace_id, Duration::from_secs(30), |spans| {
            hop(spans, &client_span, "order", &[("saga.replies", PRODUCER)]).is_some()
        })
        .await;
    let all = describe(&spans);
    let back = hop(&spans, &client_span, "order", &[("saga.replies", PRODUCER)])
        .unwrap_or_else(|| panic!("no reply span chained to the request:\n{all}"));
    for (part, kind) in [
        ("saga.commands", PRODUCER),
        ("saga.commands", CONSUMER),
        ("CreateOrder", SERVER),
        ("POST /api/v1/orders", SERVER),
    ] {
        assert!(
            back.iter().any(|s| s.kind == kind && s.name.contains(part)),
            "the chain lacks {part}:\n{all}"
        );
    }
    assert!(back.iter().all(|s| s.service == "ordersys"), "{all}");
    let _ = std::fs::remove_dir_all(&dir);
}
