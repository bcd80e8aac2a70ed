//! Helpers shared by the tests that run two replicas of each service.
#![allow(dead_code)]

use std::collections::HashMap;
use std::time::Duration;

use ordersys_e2e::{promql, Api};
use serde_json::json;

/// Place one order, trying the gateways in turn (starting at `first`) with one
/// idempotency key until one answers 201, for at most 60 s.
pub async fn place(
    apis: &[Api; 2],
    first: usize,
    token: &str,
    price: i64,
) -> Option<(String, usize)> {
    let key = uuid::Uuid::new_v4().to_string();
    let body = json!({ "items": [{ "product_id": "book", "quantity": 1, "unit_price": price }], "currency": "USD" });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut n = first;
    while tokio::time::Instant::now() < deadline {
        let api = &apis[n % 2];
        let rb = api
            .client()
            .post(format!("{}/api/v1/orders", api.base()))
            .bearer_auth(token)
            .header("Idempotency-Key", &key)
            .timeout(Duration::from_secs(5))
            .json(&body);
        if let Ok(r) = rb.send().await {
            if r.status().as_u16() == 201 {
                let v: serde_json::Value = r.json().await.ok()?;
                return Some((v["order_id"].as_str()?.to_owned(), n % 2));
            }
            // 409: a replica killed while handling this key left it reserved (for 30 s);
            // the contract says to retry later, as this loop does.
            assert!(
                r.status().is_server_error() || matches!(r.status().as_u16(), 409 | 429),
                "unexpected {}",
                r.status()
            );
        }
        n += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// Messages a service consumed (processed) and its relay published, from `/metrics`.
pub async fn processed(admin: &str) -> (f64, f64) {
    let text = reqwest::get(format!("{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let consumed: f64 = text
        .lines()
        .filter(|l| {
            l.starts_with("outbox_consumer_messages_total{") && l.contains("outcome=\"processed\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    let published = promql::parse_text(&text)
        .get("outbox_relay_published_total")
        .copied()
        .unwrap_or(0.0);
    (consumed, published)
}

/// Per key, the ids (UUID v7, time-ordered at enqueue) must first appear in the order
/// they were enqueued; a republished duplicate may come again later.
pub async fn assert_per_key_order(brokers: &str, topic: &str) -> usize {
    let mut config = rdkafka::ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    let mut records =
        outbox::kafka::read_dead_letters(&config, topic, usize::MAX, Duration::from_secs(30))
            .await
            .unwrap();
    records.sort_by_key(|r| (r.partition, r.offset));
    let mut last: HashMap<String, outbox::MessageId> = HashMap::new();
    let mut seen = std::collections::HashSet::new();
    for r in &records {
        let id = r.delivery.id;
        if !seen.insert(id) {
            continue; // a duplicate of one already seen
        }
        if let Some(prev) = last.get(&r.delivery.key) {
            assert!(
                *prev < id,
                "{topic}: key {} has {id} after {prev} (offset {})",
                r.delivery.key,
                r.offset
            );
        }
        last.insert(r.delivery.key.clone(), id);
    }
    records.len()
}
