use super::KafkaTuning;

#[test]
fn a_sasl_password_never_reaches_a_log_line() {
    let tuning = KafkaTuning {
        kafka_properties: "security.protocol=SASL_SSL;sasl.password=hunter2".into(),
        ..KafkaTuning::default()
    };
    let shown = format!("{tuning:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("kafka_properties: <redacted>"), "{shown}");
    assert_eq!(tuning.properties().unwrap()[1].1, "hunter2");
}

#[test]
fn kafka_properties_reach_every_client() {
    let tuning = KafkaTuning {
        kafka_properties: " security.protocol=ssl ; ssl.ca.location=/nonexistent/ca.pem;".into(),
        ..KafkaTuning::default()
    };
    assert_eq!(
        tuning.properties().unwrap(),
        [
            ("security.protocol".to_owned(), "ssl".to_owned()),
            (
                "ssl.ca.location".to_owned(),
                "/nonexistent/ca.pem".to_owned()
            )
        ]
    );
    let admin = tuning.client_config("127.0.0.1:9092").unwrap();
    assert_eq!(admin.get("security.protocol"), Some("ssl"));
    let consumer = tuning
        .consumer(outbox::kafka::ConsumerConfig::new(
            "127.0.0.1:9092",
            "g",
            &["t"],
        ))
        .unwrap();
    assert!(consumer
        .extra
        .contains(&("security.protocol".into(), "ssl".into())));
    // The producer really gets them: librdkafka refuses the missing CA file.
    let err = tuning
        .publisher("127.0.0.1:9092")
        .expect_err("a producer with a missing CA");
    assert!(err.to_string().contains("ssl.ca.location"), "{err}");
    // Malformed entries are an error, not ignored.
    let bad = KafkaTuning {
        kafka_properties: "security.protocol".into(),
        ..KafkaTuning::default()
    };
    assert!(bad.properties().is_err());
}

/// The topics a service creates carry `KAFKA_TOPIC_CONFIG` (on the broker of
/// `KAFKA_BROKERS`, default 127.0.0.1:9092: scripts/kafka-up).
#[tokio::test]
async fn created_topics_carry_the_topic_config() {
    use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
    use rdkafka::client::DefaultClientContext;
    let brokers = std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_owned());
    let topics = super::Topics::new(&format!("cfg{}.", uuid::Uuid::new_v4().simple()));
    let tuning = KafkaTuning {
        kafka_topic_config: "cleanup.policy=delete; retention.ms=600000".into(),
        ..KafkaTuning::default()
    };
    let wait = std::time::Duration::from_secs(30);
    topics.ensure(&brokers, &tuning, wait).await.unwrap();
    let admin: AdminClient<DefaultClientContext> =
        tuning.client_config(&brokers).unwrap().create().unwrap();
    let described = admin
        .describe_configs(
            &[ResourceSpecifier::Topic(&topics.commands)],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    let config = described[0].as_ref().expect("the topic's configuration");
    let value = |name: &str| config.get(name).and_then(|e| e.value.clone());
    assert_eq!(value("retention.ms").as_deref(), Some("600000"));
    assert_eq!(value("cleanup.policy").as_deref(), Some("delete"));
    assert_eq!(value("min.insync.replicas").as_deref(), Some("1"));
    // A malformed entry stops the start instead of creating topics without it.
    let bad = KafkaTuning {
        kafka_topic_config: "retention.ms".into(),
        ..KafkaTuning::default()
    };
    let err = super::Topics::new("never.")
        .ensure(&brokers, &bad, wait)
        .await
        .expect_err("a malformed KAFKA_TOPIC_CONFIG");
    assert!(err.to_string().contains("KAFKA_TOPIC_CONFIG"), "{err}");
}

#[test]
fn kafka_assignment_is_group_static_or_one_replica_of_several() {
    use outbox::kafka::Assignment;
    let of = |text: &str| {
        KafkaTuning {
            kafka_assignment: text.into(),
            ..KafkaTuning::default()
        }
        .assignment()
    };
    assert_eq!(
        KafkaTuning::default().assignment().unwrap(),
        Assignment::Group
    );
    assert_eq!(of("").unwrap(), Assignment::Group);
    assert_eq!(
        of("static").unwrap(),
        Assignment::Static {
            replica: 0,
            replicas: 1
        }
    );
    assert_eq!(
        of(" static:1/2 ").unwrap(),
        Assignment::Static {
            replica: 1,
            replicas: 2
        }
    );
    for bad in [
        "static:2/2",
        "static:1",
        "static:a/2",
        "static:0/b",
        "dynamic",
    ] {
        let e = of(bad).unwrap_err().to_string();
        assert!(e.contains("KAFKA_ASSIGNMENT"), "{bad}: {e}");
    }
    let consumer = KafkaTuning {
        kafka_assignment: "static:0/3".into(),
        ..KafkaTuning::default()
    }
    .consumer(outbox::kafka::ConsumerConfig::new("b", "g", &["t"]))
    .unwrap();
    assert_eq!(
        consumer.assignment,
        Assignment::Static {
            replica: 0,
            replicas: 3
        }
    );
    assert_eq!(
        consumer.takeover_after,
        Some(std::time::Duration::from_millis(500))
    );
    let never = KafkaTuning {
        kafka_assignment: "static:0/3".into(),
        kafka_takeover_ms: 0,
        ..KafkaTuning::default()
    }
    .consumer(outbox::kafka::ConsumerConfig::new("b", "g", &["t"]))
    .unwrap();
    assert_eq!(never.takeover_after, None);
}
use std::sync::Arc;
use std::time::Duration;

use outbox::idempotency::{IdempotencyStore, MemoryIdempotencyStore, Reservation};
use outbox::memory::MemoryInbox;
use outbox::{Inbox, MessageId, Transactional};

#[tokio::test(start_paused = true)]
async fn housekeeping_purges_old_inbox_records_and_expired_keys() {
    let inbox = MemoryInbox::new();
    let old = MessageId::new();
    let mut tx = inbox.begin().await.unwrap();
    assert!(inbox.try_record(&mut tx, "c", old).await.unwrap());
    inbox.commit(tx).await.unwrap();
    let keys = Arc::new(MemoryIdempotencyStore::new());
    keys.reserve("k", Duration::from_secs(60)).await.unwrap();

    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(super::housekeeping(
        inbox.clone(),
        keys.clone(),
        Duration::from_secs(2 * 3600 + 600),
        Duration::from_secs(3600),
        async {
            let _ = rx.await;
        },
    ));
    // Purges at 0, 1 h, 2 h, 3 h; the record's retention is 2 h 10 min.
    tokio::time::sleep(Duration::from_secs(2 * 3600 + 1)).await;
    assert!(inbox.contains("c", old), "purged before its retention");
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert!(!inbox.contains("c", old), "kept past its retention");
    // The key (expired at 1 min) was already deleted by the purge at 1 h.
    assert_eq!(keys.purge_expired().await.unwrap(), 0);
    assert_eq!(
        keys.reserve("k", Duration::from_secs(60)).await.unwrap(),
        Reservation::Reserved
    );
    stop.send(()).unwrap();
    task.await.unwrap();
}
