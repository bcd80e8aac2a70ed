#!/usr/bin/env python3
"""Writes the Grafana dashboards of the reference deployment (dashboards/*.json).

Edit the panels here and run `python3 gen-dashboards.py`; the JSON is committed too, and
e2e/tests/dashboards.rs checks that every query names only metrics that exist.
"""
import json
import os

DS = {"type": "prometheus", "uid": "prometheus"}


def panel(title, exprs, unit="short", kind="timeseries", w=12, h=8, legend=None, desc=""):
    targets = []
    for i, e in enumerate(exprs):
        expr, fmt = e if isinstance(e, tuple) else (e, legend)
        t = {"datasource": DS, "expr": expr, "refId": chr(ord("A") + i)}
        if fmt:
            t["legendFormat"] = fmt
        targets.append(t)
    return {
        "type": kind,
        "title": title,
        "description": desc,
        "datasource": DS,
        "gridPos": {"w": w, "h": h},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {},
        "targets": targets,
    }


def row(title):
    return {"type": "row", "title": title, "collapsed": False, "gridPos": {"w": 24, "h": 1}, "panels": []}


def dashboard(uid, title, panels, variables=()):
    x = y = 0
    line_h = 0
    for i, p in enumerate(panels):
        p["id"] = i + 1
        g = p["gridPos"]
        if x + g["w"] > 24 or p["type"] == "row":
            x, y = 0, y + line_h
            line_h = 0
        g["x"], g["y"] = x, y
        x += g["w"]
        line_h = max(line_h, g["h"])
        if p["type"] == "row":
            x, y, line_h = 0, y + 1, 0
    return {
        "uid": uid,
        "title": title,
        "tags": ["ordersys"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": list(variables)},
        "annotations": {"list": []},
        "panels": panels,
    }


def q(p, metric, by="le"):
    return f"histogram_quantile({p}, sum by ({by}) (rate({metric}[5m])))"


flow = dashboard(
    "ordersys-flow",
    "ordersys — order flow",
    [
        row("Orders and sagas"),
        panel("Orders placed /s", [("sum(rate(saga_started_total{saga=\"create_order\"}[5m]))", "orders/s")], "reqps", w=8),
        panel("Saga outcomes /s", ["sum by (saga, outcome) (rate(saga_finished_total[5m]))"], "ops", w=8, legend="{{saga}} {{outcome}}"),
        panel(
            "Order create → confirmed",
            [
                (q(0.5, 'saga_duration_seconds_bucket{saga="create_order",outcome="completed"}'), "p50"),
                (q(0.99, 'saga_duration_seconds_bucket{saga="create_order",outcome="completed"}'), "p99"),
            ],
            "s",
            w=8,
        ),
        panel("Unfinished sagas", ["sum by (saga, status) (saga_instances)"], w=12, legend="{{saga}} {{status}}"),
        panel(
            "Stalest unfinished saga (not moved for)",
            ["max by (saga, status) (saga_oldest_update_age_seconds)"],
            "s",
            w=12,
            legend="{{saga}} {{status}}",
            desc="Alerts: COMPENSATING over 5 min, RUNNING over 10 min.",
        ),
        row("Outbox"),
        panel("Backlog (unsent rows)", ["sum by (service, relay) (outbox_backlog_messages)"], w=8, legend="{{relay}}"),
        panel("Oldest unsent row", ["max by (service, relay) (outbox_oldest_unsent_age_seconds)"], "s", w=8, legend="{{relay}}"),
        panel(
            "Commit → broker ack (p99)",
            [q(0.99, "outbox_relay_lag_seconds_bucket", "le, topic")],
            "s",
            w=8,
            legend="{{topic}}",
        ),
        panel(
            "Published and failed /s",
            [
                ("sum by (topic) (rate(outbox_relay_published_total[5m]))", "published {{topic}}"),
                ("sum by (topic) (rate(outbox_relay_publish_failures_total[5m]))", "failed {{topic}}"),
            ],
            "ops",
        ),
        panel("Publish latency (p99)", [q(0.99, "outbox_relay_publish_duration_seconds_bucket", "le, topic")], "s", legend="{{topic}}"),
        row("Consumers"),
        panel("Consumer lag", ["sum by (group, topic) (outbox_consumer_lag_messages)"], w=8, legend="{{group}} {{topic}}"),
        panel(
            "Deliveries by outcome /s",
            ["sum by (consumer, outcome) (rate(outbox_consumer_messages_total[5m]))"],
            "ops",
            w=8,
            legend="{{consumer}} {{outcome}}",
        ),
        panel(
            "Dead-lettered (last hour)",
            ["sum by (consumer, topic) (increase(outbox_consumer_messages_total{outcome=\"dead_lettered\"}[1h]))"],
            kind="stat",
            w=8,
            legend="{{consumer}} {{topic}}",
            desc="Anything above 0 pages (DeadLettersNotEmpty): replay with ordersys-admin dlq replay.",
        ),
        panel(
            "Handling latency (p99)",
            [q(0.99, "outbox_consumer_handle_duration_seconds_bucket", "le, consumer")],
            "s",
            w=24,
            legend="{{consumer}}",
        ),
    ],
)

service_var = {
    "name": "service",
    "type": "query",
    "datasource": DS,
    "query": {"query": "label_values(up{job=\"ordersys\"}, service)", "refId": "service"},
    "definition": "label_values(up{job=\"ordersys\"}, service)",
    "refresh": 1,
    "current": {},
    "includeAll": False,
    "multi": False,
}
S = 'service="$service"'
service = dashboard(
    "ordersys-service",
    "ordersys — service",
    [
        row("Up"),
        panel("Up", [f"up{{job=\"ordersys\",{S}}}"], kind="stat", w=6, legend="{{instance}}"),
        panel("Retries /s", [f"sum by (retry) (rate(resilience_retries_total{{{S}}}[5m]))"], "ops", w=18, legend="{{retry}}"),
        row("REST (gateway)"),
        panel("Requests /s", [f"sum by (route, status) (rate(http_requests_total{{{S}}}[5m]))"], "reqps", w=8, legend="{{route}} {{status}}"),
        panel(
            "Errors (5xx) /s",
            [f"sum by (route) (rate(http_requests_total{{{S},status=~\"5..\"}}[5m]))"],
            "reqps",
            w=8,
            legend="{{route}}",
        ),
        panel("Latency (p99)", [q(0.99, f"http_request_duration_seconds_bucket{{{S}}}", "le, route")], "s", w=8, legend="{{route}}"),
        row("gRPC"),
        panel("Requests /s", [f"sum by (method, code) (rate(grpc_server_requests_total{{{S}}}[5m]))"], "reqps", w=8, legend="{{method}} {{code}}"),
        panel(
            "Errors /s",
            [f"sum by (method) (rate(grpc_server_requests_total{{{S},code!=\"0\"}}[5m]))"],
            "reqps",
            w=8,
            legend="{{method}}",
        ),
        panel("Latency (p99)", [q(0.99, f"grpc_server_request_duration_seconds_bucket{{{S}}}", "le, method")], "s", w=8, legend="{{method}}"),
        row("Protection"),
        panel(
            "Circuit breakers (0 closed, 1 open, 2 half-open)",
            [f"max by (breaker) (resilience_breaker_state{{{S}}})"],
            w=8,
            legend="{{breaker}}",
        ),
        panel(
            "Breaker transitions (last hour)",
            [f"sum by (breaker, to) (increase(resilience_breaker_transitions_total{{{S}}}[1h]))"],
            w=8,
            legend="{{breaker}} → {{to}}",
        ),
        panel(
            "Rate-limit rejections /s",
            [(f"sum by (limiter) (rate(resilience_rate_limit_rejections_total{{{S}}}[5m]))", "{{limiter}}")],
            "reqps",
            w=8,
        ),
        panel(
            "Token blacklist",
            [
                (f"sum(rate(authz_blacklist_hits_total{{{S}}}[5m]))", "revoked tokens refused /s"),
                (f"sum by (policy) (rate(authz_blacklist_errors_total{{{S}}}[5m]))", "lookup failures /s ({{policy}})"),
            ],
            "ops",
            w=24,
        ),
    ],
    variables=[service_var],
)

infra = dashboard(
    "ordersys-infra",
    "ordersys — infrastructure",
    [
        row("MySQL (mysqld-exporter)"),
        panel("Up", ["mysql_up"], kind="stat", w=4),
        panel("Queries /s", ["rate(mysql_global_status_queries[5m])"], "ops", w=10),
        panel("Connections", ["mysql_global_status_threads_connected"], w=10),
        panel("Slow queries /s", ["rate(mysql_global_status_slow_queries[5m])"], "ops", w=8),
        panel("Row lock waits /s", ["rate(mysql_global_status_innodb_row_lock_waits[5m])"], "ops", w=8),
        panel(
            "Commands /s",
            ["topk(5, sum by (command) (rate(mysql_global_status_commands_total[5m])))"],
            "ops",
            w=8,
            legend="{{command}}",
        ),
        row("Kafka (kafka-exporter)"),
        panel("Brokers", ["kafka_brokers"], kind="stat", w=4),
        panel(
            "Messages in /s",
            ["sum by (topic) (rate(kafka_topic_partition_current_offset[5m]))"],
            "ops",
            w=10,
            legend="{{topic}}",
        ),
        panel(
            "Consumer group lag",
            ["sum by (consumergroup, topic) (kafka_consumergroup_lag)"],
            w=10,
            legend="{{consumergroup}} {{topic}}",
        ),
        row("Redis (redis-exporter)"),
        panel("Up", ["redis_up"], kind="stat", w=4),
        panel("Commands /s", ["rate(redis_commands_processed_total[5m])"], "ops", w=10),
        panel("Memory", ["redis_memory_used_bytes"], "bytes", w=10),
        panel("Clients", ["redis_connected_clients"], w=8),
        panel(
            "Cache hit ratio",
            ["rate(redis_keyspace_hits_total[5m]) / (rate(redis_keyspace_hits_total[5m]) + rate(redis_keyspace_misses_total[5m]))"],
            "percentunit",
            w=8,
        ),
        panel("Keys", ["sum by (db) (redis_db_keys)"], w=8, legend="{{db}}"),
    ],
)

here = os.path.dirname(os.path.abspath(__file__))
for name, d in [("order-flow", flow), ("service", service), ("infrastructure", infra)]:
    with open(os.path.join(here, "dashboards", f"{name}.json"), "w") as f:
        json.dump(d, f, indent=2, ensure_ascii=False)
        f.write("\n")
