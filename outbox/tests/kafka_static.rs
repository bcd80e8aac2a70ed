//! Statically assigned consumers (`Assignment::Static`) against a real Kafka-protocol
//! broker (`KAFKA_BROKERS`, default 127.0.0.1:9092; scripts/kafka-up): each replica its
//! own partitions, offsets under the group without joining it, and the takeover of a
//! peer's partition whose messages wait with nobody consuming them.
#![cfg(feature = "kafka")]

use std::time::Duration;

use outbox::kafka::{ensure_topics, KafkaPublisher};
use outbox::OutboxMessage;

mod support;
use support::kafka::{
    brokers, consumer_config, publish_numbered, publish_to, publish_to_partitions,
    spawn_collecting, unique, Collect,
};

/// Two replicas with a static assignment share one group id but join no group: each
/// consumes exactly its own partitions (`p % 2`), nothing of the other's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_replicas_consume_their_own_partitions_and_nothing_else() {
    let topic = unique("static");
    ensure_topics(&brokers(), &[(&topic, 4)]).await.unwrap();
    publish_to_partitions(&topic, 4, 5).await;
    // Both start at once; no takeover, so a slow start of one cannot blur the split.
    let config = consumer_config(&topic).with_takeover_after(None);
    let (even, stop_even, even_task) =
        spawn_collecting(config.clone().with_static_assignment(0, 2));
    let (odd, stop_odd, odd_task) = spawn_collecting(config.with_static_assignment(1, 2));
    even.wait_for(10).await;
    odd.wait_for(10).await;
    for (collect, mine) in [(&even, ["p0-", "p2-"]), (&odd, ["p1-", "p3-"])] {
        let payloads = collect.payloads();
        assert!(
            payloads
                .iter()
                .all(|p| mine.iter().any(|m| p.starts_with(m))),
            "{mine:?}: {payloads:?}"
        );
        assert_eq!(payloads.len(), 10);
    }
    stop_even.send_replace(true);
    stop_odd.send_replace(true);
    even_task.await.unwrap().unwrap();
    odd_task.await.unwrap().unwrap();
}

/// A statically assigned consumer started again (with an empty inbox, so a re-read would
/// show) resumes from the offset it committed under its group id — no membership needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_consumer_resumes_from_its_committed_offsets() {
    let topic = unique("static-resume");
    ensure_topics(&brokers(), &[(&topic, 1)]).await.unwrap();
    let config = consumer_config(&topic).with_static_assignment(0, 1);
    publish_numbered(&topic, 10, 3).await;
    let (first, stop, task) = spawn_collecting(config.clone());
    first.wait_for(10).await;
    stop.send_replace(true);
    task.await.unwrap().unwrap();
    assert_eq!(first.sorted_numbers(), (0..10).collect::<Vec<_>>());

    let publisher = KafkaPublisher::new(&brokers()).unwrap();
    for i in 10..15 {
        let m = OutboxMessage::new(topic.clone(), format!("k{}", i % 3), format!("{i}"));
        outbox::Publisher::publish(&publisher, &m).await.unwrap();
    }
    let (second, stop, task) = spawn_collecting(config);
    second.wait_for(5).await;
    stop.send_replace(true);
    task.await.unwrap().unwrap();
    assert_eq!(second.sorted_numbers(), (10..15).collect::<Vec<_>>());
}

/// The payloads of `collect` from `partition` (`p{partition}-…`).
fn of_partition(collect: &Collect, partition: i32) -> Vec<String> {
    let prefix = format!("p{partition}-");
    let mut seen: Vec<String> = collect
        .payloads()
        .into_iter()
        .filter(|p| p.starts_with(&prefix))
        .collect();
    seen.sort_by_key(|p| p[prefix.len()..].parse::<u32>().unwrap());
    seen
}

fn numbered(partition: i32, numbers: std::ops::Range<usize>) -> Vec<String> {
    numbers.map(|i| format!("p{partition}-{i}")).collect()
}

/// Replica 1 of 2 never comes: replica 0 takes its partition over (messages wait there,
/// the group's offset stands) and drains it, committing under the group — so replica 1,
/// when it finally starts, reads only what came after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_replica_drains_the_partition_of_a_peer_that_is_down() {
    let topic = unique("takeover");
    ensure_topics(&brokers(), &[(&topic, 2)]).await.unwrap();
    publish_to_partitions(&topic, 2, 5).await;
    let config = consumer_config(&topic);
    assert_eq!(
        config.takeover_after,
        Some(Duration::from_millis(500)),
        "the default"
    );
    let (zero, stop_zero, zero_task) =
        spawn_collecting(config.clone().with_static_assignment(0, 2));
    // Without the takeover only partition 0's five arrive, and this times out.
    zero.wait_for(10).await;
    assert_eq!(of_partition(&zero, 0), numbered(0, 0..5));
    assert_eq!(
        of_partition(&zero, 1),
        numbered(1, 0..5),
        "the peer's, drained"
    );
    // Messages keep coming while the peer stays down: drained as well.
    publish_to(&topic, 1, 5..8).await;
    zero.wait_for(13).await;
    assert_eq!(of_partition(&zero, 1), numbered(1, 0..8));
    stop_zero.send_replace(true);
    zero_task.await.unwrap().unwrap();

    // The peer is back (its inbox empty, so a re-read would show): it resumes from the
    // offset the takeover committed.
    publish_to(&topic, 1, 8..10).await;
    let (one, stop_one, one_task) = spawn_collecting(config.with_static_assignment(1, 2));
    one.wait_for(2).await;
    stop_one.send_replace(true);
    one_task.await.unwrap().unwrap();
    assert_eq!(of_partition(&one, 1), numbered(1, 8..10));
    assert!(of_partition(&one, 0).is_empty());
}

/// A live peer consuming a steady stream commits often enough that it is never taken
/// for dead: replica 0 sees nothing of partition 1 (with a peer committing only every
/// second, as a consumer without peers does, its offset stands longer than the 500 ms).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_peer_is_not_taken_over() {
    let topic = unique("no-takeover");
    ensure_topics(&brokers(), &[(&topic, 2)]).await.unwrap();
    let config = consumer_config(&topic);
    let (zero, stop_zero, zero_task) =
        spawn_collecting(config.clone().with_static_assignment(0, 2));
    let (one, stop_one, one_task) = spawn_collecting(config.with_static_assignment(1, 2));
    // A steady stream to the peer's partition for 3 s (a message every 50 ms).
    for i in 0..60 {
        publish_to(&topic, 1, i..i + 1).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    one.wait_for(60).await;
    stop_zero.send_replace(true);
    stop_one.send_replace(true);
    zero_task.await.unwrap().unwrap();
    one_task.await.unwrap().unwrap();
    assert_eq!(of_partition(&one, 1), numbered(1, 0..60));
    assert!(zero.payloads().is_empty(), "{:?}", zero.payloads());
}
