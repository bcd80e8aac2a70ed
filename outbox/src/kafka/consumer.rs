//! The consumer loop: [`run_consumer`] with its [`ConsumerConfig`].

use std::future::Future;
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers as _};
use rdkafka::Message;
use uuid::Uuid;

use crate::store::{DeadLetter, Inbox};
use crate::{
    Delivery, DeliveryOutcome, Headers, IdempotentConsumer, MessageHandler, MessageId, Result,
    MESSAGE_ID_HEADER,
};

use super::consumer_config::{Assignment, ConsumerConfig};
use super::kafka_err;
use super::watchdog::Watchdog;
use super::window::{Position, Window};

/// What a consumer run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumerStats {
    /// Deliveries handled and committed.
    pub processed: u64,
    /// Redeliveries dropped by the inbox.
    pub duplicates: u64,
    /// Deliveries sent to the dead-letter sink.
    pub dead_lettered: u64,
}

/// The consumer's client context: reports each assigned partition's lag
/// (`outbox_consumer_lag_messages{group,topic,partition}`) from librdkafka's statistics
/// (every `statistics.interval.ms`, default 5 s here).
pub(super) struct LagContext {
    group: String,
}

impl ClientContext for LagContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                // -1: the internal "unassigned" partition, or no lag known (not ours).
                if *partition < 0 || p.consumer_lag < 0 {
                    continue;
                }
                metrics::gauge!("outbox_consumer_lag_messages",
                    "group" => self.group.clone(), "topic" => topic.clone(),
                    "partition" => partition.to_string())
                .set(p.consumer_lag as f64);
            }
        }
    }
}

impl ConsumerContext for LagContext {}

/// Turn a Kafka message into a [`Delivery`]. A message without a valid `message-id`
/// header gets an id derived from its topic, partition and offset, which is stable
/// across redeliveries.
pub fn to_delivery(m: &BorrowedMessage<'_>) -> Delivery {
    let mut headers = Headers::new();
    let mut id = None;
    if let Some(hs) = m.headers() {
        for h in hs.iter() {
            let value = h
                .value
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default();
            if h.key == MESSAGE_ID_HEADER {
                id = MessageId::parse(&value);
            }
            headers.insert(h.key, value);
        }
    }
    let id = id.unwrap_or_else(|| {
        let name = format!("{}/{}/{}", m.topic(), m.partition(), m.offset());
        MessageId(Uuid::new_v5(&Uuid::NAMESPACE_OID, name.as_bytes()))
    });
    Delivery {
        id,
        topic: m.topic().to_owned(),
        key: m
            .key()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .unwrap_or_default(),
        payload: m
            .payload()
            .map(bytes::Bytes::copy_from_slice)
            .unwrap_or_default(),
        headers,
    }
}

/// [`Assignment::Static`]: take this replica's partitions of every topic, each from
/// the offset committed under the group (or the start of its log). Blocking.
fn assign_statically(
    kafka: &StreamConsumer<LagContext>,
    config: &ConsumerConfig,
) -> rdkafka::error::KafkaResult<()> {
    let mut tpl = rdkafka::TopicPartitionList::new();
    for topic in &config.topics {
        let md = kafka.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        for t in md.topics() {
            for p in t.partitions() {
                if config.assignment.owns(p.id()) {
                    tpl.add_partition_offset(t.name(), p.id(), rdkafka::Offset::Stored)?;
                }
            }
        }
    }
    if tpl.count() == 0 {
        tracing::warn!(assignment = ?config.assignment, group = %config.group_id,
            "static assignment: no partition is this replica's");
    } else {
        tracing::info!(partitions = tpl.count(), group = %config.group_id,
            "consuming assigned partitions (static assignment, no group join)");
    }
    kafka.assign(&tpl)
}

/// Consume `config.topics` until `shutdown` resolves, handing each message to
/// `consumer.process(.., handler)`.
///
/// At-least-once: an offset is stored only after its message and every earlier one of
/// its partition were processed (or dead-lettered) and committed; stored offsets are
/// committed every second and at shutdown. Up to [`ConsumerConfig::max_in_flight`]
/// messages are handled at once, one key at a time in log order; those received
/// together share units of work of up to [`ConsumerConfig::max_batch`]. While the store is
/// down a message is retried with backoff, so nothing is skipped. Messages in progress
/// are finished before shutdown (one waiting out a store outage is given up and comes
/// again); closing the consumer is bounded by `close_timeout`.
pub async fn run_consumer<I, D, H>(
    config: &ConsumerConfig,
    consumer: &IdempotentConsumer<I, D>,
    handler: &H,
    shutdown: impl Future<Output = ()>,
) -> Result<ConsumerStats>
where
    I: Inbox,
    D: DeadLetter,
    H: MessageHandler<I::Tx>,
{
    let cc = config.client_config();
    let context = LagContext {
        group: config.group_id.clone(),
    };
    let kafka: std::sync::Arc<StreamConsumer<LagContext>> =
        std::sync::Arc::new(cc.create_with_context(context).map_err(kafka_err)?);
    match config.assignment {
        Assignment::Group => {
            let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
            kafka.subscribe(&topics).map_err(kafka_err)?;
        }
        Assignment::Static { .. } => {
            let (k, c) = (kafka.clone(), config.clone());
            tokio::task::spawn_blocking(move || assign_statically(&k, &c))
                .await
                .map_err(crate::Error::storage)?
                .map_err(kafka_err)?;
        }
    }

    tokio::pin!(shutdown);
    let mut stats = ConsumerStats::default();
    // The watchdog runs beside consumption, off the async threads (its librdkafka
    // metadata and offset requests block), one check at a time. It keeps its clocks
    // between checks; a check that panicked leaves them as they were.
    let watchdog = std::sync::Arc::new(std::sync::Mutex::new(Watchdog::new(
        config.session_timeout,
        &cc,
    )));
    let mut checking: Option<tokio::task::JoinHandle<()>> = None;
    let next_check_after = |from: tokio::time::Instant| {
        config
            .watchdog_interval
            .and_then(|every| from.checked_add(every))
    };
    let mut next_check = next_check_after(tokio::time::Instant::now());
    let max_in_flight = config.max_in_flight.max(1);
    let max_batch = config.max_batch.max(1);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut stopping = false;
    let mut window = Window::default();
    let mut running = futures::stream::FuturesUnordered::new();
    let takeover = super::takeover::Takeover::of(config).map(|t| {
        let run = super::takeover::run(t, kafka.clone(), config.topics.clone(), stop_rx.clone());
        tokio::spawn(run)
    });
    loop {
        if stopping && running.is_empty() {
            break;
        }
        tokio::select! {
            biased;
            () = &mut shutdown, if !stopping => {
                // Stop taking messages; finish the ones in progress.
                stopping = true;
                let _ = stop_tx.send(true);
                window.drop_queued();
            }
            Some(settled) = futures::StreamExt::next(&mut running) => {
                let finished = match settled {
                    Settled::Done(finished) => finished,
                    Settled::Split(batch) => {
                        // Each on its own now: one slow or failing message no longer
                        // holds back the others' offsets.
                        for one in batch {
                            running.push(settle(config, consumer, handler, vec![one], stop_rx.clone()));
                        }
                        continue;
                    }
                };
                let mut ready = Vec::new();
                for (delivery, at, outcome) in finished {
                    let Some(outcome) = outcome else {
                        continue; // given up at shutdown: not settled, its offset not stored
                    };
                    match outcome {
                        DeliveryOutcome::Processed => stats.processed += 1,
                        DeliveryOutcome::Duplicate => stats.duplicates += 1,
                        DeliveryOutcome::DeadLettered { .. } => stats.dead_lettered += 1,
                    }
                    if let Some(through) = window.finish(&at) {
                        if let Err(e) = kafka.store_offset(&at.topic, at.partition, through) {
                            // E.g. the partition was revoked in a rebalance: the new owner
                            // redelivers, and the inbox drops the duplicate.
                            tracing::warn!(error = %e, "failed to store an offset");
                        }
                    }
                    if !stopping {
                        ready.extend(window.next_of_key(&at, delivery.key));
                    }
                }
                while !ready.is_empty() {
                    let rest = ready.split_off(ready.len().min(max_batch));
                    let batch = std::mem::replace(&mut ready, rest);
                    running.push(settle(config, consumer, handler, batch, stop_rx.clone()));
                }
            }
            msg = kafka.recv(), if !stopping && window.len() < max_in_flight => {
                let msg = match msg {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(error = %e, "failed to receive a message from Kafka");
                        // Do not spin while the broker is unreachable.
                        tokio::select! {
                            biased;
                            () = &mut shutdown => {
                                stopping = true;
                                let _ = stop_tx.send(true);
                                window.drop_queued();
                            }
                            () = tokio::time::sleep(Duration::from_millis(200)) => {}
                        }
                        continue;
                    }
                };
                let mut ready = Vec::new();
                ready.extend(receive(&mut window, &msg));
                drop(msg);
                // Whatever else is already here joins this batch (without waiting).
                while ready.len() < max_batch && window.len() < max_in_flight {
                    match futures::FutureExt::now_or_never(kafka.recv()) {
                        Some(Ok(msg)) => ready.extend(receive(&mut window, &msg)),
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "failed to receive a message from Kafka");
                            break;
                        }
                        None => break, // nothing more here yet
                    }
                }
                if !ready.is_empty() {
                    running.push(settle(config, consumer, handler, ready, stop_rx.clone()));
                }
            }
            _ = async { checking.as_mut().expect("awaited only while running").await },
                if checking.is_some() => {
                checking = None;
                // One interval after this check ended: a slow check (a probe waits up to
                // seconds) never runs back to back with the next.
                next_check = next_check_after(tokio::time::Instant::now());
            }
            // Cancel-safe: a message is taken from the queue only when `recv` is ready.
            () = async { tokio::time::sleep_until(next_check.expect("only when due")).await },
                if !stopping && checking.is_none() && next_check.is_some() => {
                let (k, t, w) = (kafka.clone(), config.topics.clone(), watchdog.clone());
                let grouped = config.assignment == Assignment::Group;
                checking = Some(tokio::task::spawn_blocking(move || {
                    let mut w = w.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    if let Err(e) = w.check(&k, &t, grouped) {
                        tracing::debug!(error = %e, "Kafka consumer check failed");
                    }
                }));
            }
        }
    }
    if let Some(takeover) = takeover {
        // It holds the consumer: let its check end before closing.
        let _ = tokio::time::timeout(config.close_timeout, takeover).await;
    }
    if let Some(check) = checking {
        // It holds the consumer: let it end (bounded by its own timeouts) before closing.
        let _ = tokio::time::timeout(config.close_timeout, check).await;
    }

    if let Err(e) = kafka.commit_consumer_state(CommitMode::Sync) {
        if !matches!(e, KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) {
            tracing::warn!(error = %e, "failed to commit offsets on shutdown");
        }
    }
    // Leaving the group can hang on some brokers; never let it block shutdown.
    let close = tokio::task::spawn_blocking(move || drop(kafka));
    if tokio::time::timeout(config.close_timeout, close)
        .await
        .is_err()
    {
        tracing::warn!("closing the Kafka consumer took longer than allowed");
    }
    Ok(stats)
}

/// Take a received message into the window: the delivery and its position if it is
/// to be handled now (`None`: queued behind an unfinished one of its key).
fn receive(window: &mut Window, msg: &BorrowedMessage<'_>) -> Option<(Delivery, Position)> {
    let at = Position {
        topic: msg.topic().to_owned(),
        partition: msg.partition(),
        offset: msg.offset(),
    };
    window.receive(to_delivery(msg), at)
}

/// What became of the deliveries handed to [`settle`].
enum Settled {
    /// Each with its outcome (`None`: given up because the consumer is stopping).
    Done(Vec<(Delivery, Position, Option<DeliveryOutcome>)>),
    /// Their shared unit of work did not commit: to handle one by one.
    Split(Vec<(Delivery, Position)>),
}

/// Handle `batch`: several deliveries in one unit of work
/// ([`IdempotentConsumer::process_batch`]'s way) or, if that did not commit, handed back
/// to be handled one by one; one delivery on its own, retried while the store is down.
async fn settle<I, D, H>(
    config: &ConsumerConfig,
    consumer: &IdempotentConsumer<I, D>,
    handler: &H,
    mut batch: Vec<(Delivery, Position)>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Settled
where
    I: Inbox,
    D: DeadLetter,
    H: MessageHandler<I::Tx>,
{
    if batch.len() == 1 {
        let (delivery, at) = batch.pop().expect("one");
        let outcome = process_one(config, consumer, handler, &delivery, stop).await;
        return Settled::Done(vec![(delivery, at, outcome)]);
    }
    let (deliveries, positions): (Vec<Delivery>, Vec<Position>) = batch.into_iter().unzip();
    match consumer.try_batch(&deliveries, handler).await {
        Some(outcomes) => Settled::Done(
            deliveries
                .into_iter()
                .zip(positions)
                .zip(outcomes)
                .map(|((d, at), o)| (d, at, Some(o)))
                .collect(),
        ),
        None => Settled::Split(deliveries.into_iter().zip(positions).collect()),
    }
}

/// Handle one delivery, retrying while the store is down; `None` if given up because
/// the consumer is stopping.
async fn process_one<I, D, H>(
    config: &ConsumerConfig,
    consumer: &IdempotentConsumer<I, D>,
    handler: &H,
    delivery: &Delivery,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Option<DeliveryOutcome>
where
    I: Inbox,
    D: DeadLetter,
    H: MessageHandler<I::Tx>,
{
    let mut backoff = config.store_backoff.backoff();
    loop {
        match consumer.process(delivery, handler).await {
            Ok(o) => return Some(o),
            Err(e) => {
                let wait = backoff.next().unwrap_or(Duration::from_secs(5));
                tracing::error!(error = %e, message_id = %delivery.id, topic = %delivery.topic,
                    "failed to handle a message, retrying");
                tokio::select! {
                    biased;
                    // Not processed: its offset is not stored; it comes again.
                    _ = stop.wait_for(|s| *s) => return None,
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}
