//! The relay: drains the outbox into the broker.

use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use resilience::Retry;
use tokio::sync::Notify;
use tracing::Instrument;

use crate::store::{OutboxStore, Publisher};
use crate::{MessageId, OutboxMessage, Result};

/// Tunables of a [`Relay`]: start from [`RelayConfig::with_id`] (or `default()`) and
/// change what you need with the `with_*` methods or by assigning fields. New settings
/// may be added in minor versions (the struct is `#[non_exhaustive]`: it cannot be
/// written as a literal outside this crate).
///
/// ```
/// use std::time::Duration;
/// let config = outbox::RelayConfig::with_id("order-0")
///     .with_batch_size(500)
///     .with_poll_interval(Duration::from_millis(200))
///     .with_retention(None);
/// assert_eq!(config.batch_size, 500);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RelayConfig {
    /// Identifies this relay's leases (several relays may share one outbox). The
    /// default is random, which is right for tests and throwaway relays; in a service
    /// give each instance a **stable** id (its pod or host name, [`RelayConfig::with_id`]):
    /// a relay restarted under the same id takes back the messages it had leased at
    /// once, instead of waiting for their lease to run out.
    pub relay_id: String,
    /// Messages claimed per round (default 100).
    pub batch_size: usize,
    /// How long a claimed message stays leased (default 30 s). A relay that dies keeps
    /// its messages only this long; then another relay republishes them.
    pub lease: Duration,
    /// Polling interval when nothing signals new messages (default 1 s).
    pub poll_interval: Duration,
    /// Backoff, per message and after store errors (default 100 ms doubling to 5 s).
    ///
    /// A message whose publish failed for the n-th time is held back (with every later
    /// message of its key) for this policy's `nominal_delay(n)`, while the other keys
    /// flow on: one message the broker keeps refusing never slows the relay. A failed
    /// *store* call (the database is down) pauses the whole relay along the policy's
    /// delays, then its last delay repeated.
    pub backoff: Retry,
    /// Sent messages are purged after this long (default 24 h); `None` keeps them.
    pub retention: Option<Duration>,
    /// How often the relay reports the store's backlog (`outbox_backlog_messages`,
    /// `outbox_oldest_unsent_age_seconds`; default every 5 s); `None` never asks.
    pub backlog_interval: Option<Duration>,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            relay_id: format!("relay-{}", uuid::Uuid::new_v4()),
            batch_size: 100,
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
            backoff: Retry::default()
                .max_attempts(u32::MAX)
                .max_delay(Duration::from_secs(5)),
            retention: Some(Duration::from_secs(24 * 3600)),
            backlog_interval: Some(Duration::from_secs(5)),
        }
    }
}

impl RelayConfig {
    /// The defaults, with a stable relay id (see [`RelayConfig::relay_id`]).
    ///
    /// ```
    /// let config = outbox::RelayConfig::with_id("order-service-0");
    /// assert_eq!(config.relay_id, "order-service-0");
    /// ```
    pub fn with_id(relay_id: impl Into<String>) -> Self {
        Self {
            relay_id: relay_id.into(),
            ..Self::default()
        }
    }

    /// [`batch_size`](Self::batch_size).
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size;
        self
    }

    /// [`lease`](Self::lease).
    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// [`poll_interval`](Self::poll_interval).
    pub fn with_poll_interval(mut self, poll_interval: Duration) -> Self {
        self.poll_interval = poll_interval;
        self
    }

    /// [`backoff`](Self::backoff).
    pub fn with_backoff(mut self, backoff: Retry) -> Self {
        self.backoff = backoff;
        self
    }

    /// [`retention`](Self::retention) (`None` keeps sent messages).
    pub fn with_retention(mut self, retention: Option<Duration>) -> Self {
        self.retention = retention;
        self
    }

    /// [`backlog_interval`](Self::backlog_interval) (`None` never asks).
    pub fn with_backlog_interval(mut self, backlog_interval: Option<Duration>) -> Self {
        self.backlog_interval = backlog_interval;
        self
    }
}

/// Publish one message inside an `outbox.publish` span (a child of the context stored
/// with the message), carrying the span's context to the broker, and count it.
async fn publish_one<P: Publisher>(publisher: &P, m: &OutboxMessage) -> Result<()> {
    let span = tracing::info_span!(
        "outbox.publish",
        otel.name = %format_args!("{} publish", m.topic),
        otel.kind = "producer",
        messaging.destination.name = %m.topic,
        messaging.message.id = %m.id,
        key = %m.key,
    );
    crate::trace::set_parent(&span, &m.headers);
    // The message leaves with the publish span's context — a copy only when there is one.
    let out = match crate::trace::context_of(&span) {
        Some(context) => {
            let mut headers = m.headers.clone();
            for (k, v) in context.iter() {
                headers.insert(k, v);
            }
            Cow::Owned(OutboxMessage {
                headers,
                ..m.clone()
            })
        }
        None => Cow::Borrowed(m),
    };
    let started = std::time::Instant::now();
    let result = publisher.publish(&out).instrument(span).await;
    let topic = m.topic.clone();
    match &result {
        Ok(()) => {
            metrics::counter!("outbox_relay_published_total", "topic" => topic.clone())
                .increment(1);
            // Exists at 0 until the first failure (for dashboards and alerts).
            metrics::counter!("outbox_relay_publish_failures_total", "topic" => topic.clone())
                .increment(0);
            metrics::histogram!("outbox_relay_publish_duration_seconds", "topic" => topic.clone())
                .record(started.elapsed().as_secs_f64());
            if let Ok(lag) = SystemTime::now().duration_since(m.created_at) {
                metrics::histogram!("outbox_relay_lag_seconds", "topic" => topic)
                    .record(lag.as_secs_f64());
            }
        }
        Err(_) => {
            metrics::counter!("outbox_relay_publish_failures_total", "topic" => topic).increment(1)
        }
    }
    result
}

/// What one round of the relay did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RoundReport {
    /// Messages claimed.
    pub claimed: usize,
    /// Messages the broker acknowledged and that were marked sent.
    pub published: usize,
    /// Messages whose publish failed (attempt recorded).
    pub failed: usize,
    /// Messages given back unpublished because an earlier one of the same key failed.
    pub released: usize,
    /// The shortest retry delay among the messages that failed (`None` if none did):
    /// when the first of them may be claimed again.
    pub retry_in: Option<Duration>,
}

enum Next {
    Now,
    Idle(Duration),
    Backoff(Duration),
}

/// Wakes a running [`Relay`] at once (e.g. right after committing a unit of work that
/// enqueued messages, when the store cannot signal commits itself).
#[derive(Debug, Clone)]
pub struct RelayHandle {
    notify: Arc<Notify>,
}

impl RelayHandle {
    /// Make the relay start a round now.
    pub fn wake(&self) {
        self.notify.notify_one();
    }
}

/// Claims batches from an [`OutboxStore`], publishes them with a [`Publisher`] and marks
/// them sent: at-least-once, in order per key.
///
/// A message is marked sent only after the broker acknowledged it; a crash in between
/// leaves it leased until the lease expires, and it is published again (consumers drop
/// the duplicate by [`MessageId`]). Messages of different keys are published
/// concurrently; messages of one key one after the other, and a failure holds that key
/// back for its retry delay while the others go on.
///
/// ```
/// use outbox::memory::{MemoryBroker, MemoryOutbox};
/// use outbox::{OutboxMessage, OutboxStore, Relay, RelayConfig, Transactional};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> outbox::Result<()> {
/// let store = MemoryOutbox::new();
/// let broker = MemoryBroker::new();
///
/// let mut tx = store.begin().await?;
/// // ... business writes in the same transaction ...
/// store.enqueue(&mut tx, OutboxMessage::new("saga.commands", "order-1", "debit")).await?;
/// store.commit(tx).await?;
///
/// let relay = Relay::new(store.clone(), broker.clone(), RelayConfig::default());
/// let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
/// let task = tokio::spawn(relay.run(async move { let _ = stop_rx.await; }));
/// broker.wait_for(1).await;
/// stop_tx.send(()).unwrap();
/// task.await.unwrap()?;
/// assert_eq!(store.pending(), 0);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Relay<S, P> {
    store: S,
    publisher: Arc<P>,
    config: RelayConfig,
    notify: Arc<Notify>,
}

impl<S: OutboxStore, P: Publisher> Relay<S, P> {
    /// A relay over `store` publishing with `publisher`.
    pub fn new(store: S, publisher: P, config: RelayConfig) -> Self {
        let notify = store.commit_signal().unwrap_or_default();
        Self {
            store,
            publisher: Arc::new(publisher),
            config,
            notify,
        }
    }

    /// A handle that wakes this relay.
    pub fn handle(&self) -> RelayHandle {
        RelayHandle {
            notify: self.notify.clone(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &RelayConfig {
        &self.config
    }

    /// One round: claim a batch, publish it, mark what was acknowledged.
    pub async fn run_once(&self) -> Result<RoundReport> {
        let batch = self
            .store
            .claim(
                &self.config.relay_id,
                self.config.batch_size,
                self.config.lease,
            )
            .await?;
        let mut report = RoundReport {
            claimed: batch.len(),
            ..RoundReport::default()
        };
        if batch.is_empty() {
            return Ok(report);
        }

        // Group by key, keeping the claim (= enqueue) order inside each key.
        let mut order: Vec<&str> = Vec::new();
        let mut groups: HashMap<&str, Vec<&OutboxMessage>> = HashMap::new();
        for m in &batch {
            groups
                .entry(m.key.as_str())
                .or_insert_with(|| {
                    order.push(m.key.as_str());
                    Vec::new()
                })
                .push(m);
        }
        let publisher = &self.publisher;
        let rounds = order.iter().map(|key| {
            let msgs = &groups[key];
            async move {
                let mut sent = Vec::new();
                for (i, m) in msgs.iter().enumerate() {
                    match publish_one(&**publisher, m).await {
                        Ok(()) => sent.push(m.id),
                        Err(e) => {
                            let rest: Vec<MessageId> = msgs[i + 1..].iter().map(|m| m.id).collect();
                            return (sent, Some((m.id, m.attempts, e.to_string())), rest);
                        }
                    }
                }
                (sent, None, Vec::new())
            }
        });
        let results = futures::future::join_all(rounds).await;

        let mut sent_all = Vec::new();
        let mut released = Vec::new();
        let mut failures = Vec::new();
        for (sent, failure, rest) in results {
            sent_all.extend(sent);
            released.extend(rest);
            failures.extend(failure);
        }
        if !sent_all.is_empty() {
            self.store.mark_sent(&sent_all).await?;
        }
        for (id, attempts, err) in &failures {
            let retry_after = self
                .config
                .backoff
                .nominal_delay(attempts.saturating_add(1));
            tracing::warn!(
                message_id = %id,
                attempt = attempts + 1,
                retry_in_ms = retry_after.as_millis() as u64,
                error = %err,
                "failed to publish an outbox message"
            );
            self.store.record_failure(*id, err, retry_after).await?;
            report.retry_in = Some(report.retry_in.map_or(retry_after, |d| d.min(retry_after)));
        }
        if !released.is_empty() {
            self.store.release(&released).await?;
        }
        report.published = sent_all.len();
        report.failed = failures.len();
        report.released = released.len();
        Ok(report)
    }

    /// Report the store's backlog as gauges (see [`trace`](crate::trace)).
    pub async fn report_backlog(&self) -> Result<Option<crate::Backlog>> {
        let backlog = self.store.backlog().await?;
        if let Some(b) = backlog {
            let relay = self.config.relay_id.clone();
            metrics::gauge!("outbox_backlog_messages", "relay" => relay.clone())
                .set(b.messages as f64);
            let age = b
                .oldest
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .unwrap_or_default();
            metrics::gauge!("outbox_oldest_unsent_age_seconds", "relay" => relay)
                .set(age.as_secs_f64());
        }
        Ok(backlog)
    }

    /// Run until `shutdown` resolves. A round in progress is always finished (its
    /// messages are published and marked, or failed and released) before returning, so
    /// a graceful stop never leaves a batch leased; then the store is told the relay
    /// stopped ([`OutboxStore::relay_stopped`]: the streaming outbox hands its stream
    /// back for another relay to take over at once).
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        self.run_until(shutdown).await;
        if let Err(e) = self.store.relay_stopped(&self.config.relay_id).await {
            // Harmless: what the store holds for this relay expires on its own.
            tracing::warn!(error = %e, "relay stopped, but the store did not release what it held for it");
        }
        Ok(())
    }

    async fn run_until(&self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut backoff = self.config.backoff.backoff();
        let mut last_delay = self.config.backoff.nominal_delay(1);
        let mut last_purge = tokio::time::Instant::now();
        let mut last_backlog: Option<tokio::time::Instant> = None;
        // When the earliest message held back after a failed publish is due again.
        let mut next_retry: Option<tokio::time::Instant> = None;
        loop {
            // Register interest before the round so a commit during it is not missed.
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();

            // A failed publish holds back its own key only (see `RelayConfig::backoff`):
            // the relay itself pauses only when its store fails.
            let next = match self.run_once().await {
                Ok(r) => {
                    backoff = self.config.backoff.backoff();
                    let now = tokio::time::Instant::now();
                    // This round saw whatever was due before now.
                    next_retry = next_retry.filter(|due| *due > now);
                    if let Some(d) = r.retry_in {
                        let due = now + d;
                        next_retry = Some(next_retry.map_or(due, |n| n.min(due)));
                    }
                    if r.claimed >= self.config.batch_size {
                        Next::Now // more may be waiting
                    } else {
                        // Come back when the first held-back message is due, at the latest.
                        let poll = self.config.poll_interval;
                        Next::Idle(next_retry.map_or(poll, |due| poll.min(due - now)))
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "outbox store error, retrying after a pause");
                    last_delay = backoff.next().unwrap_or(last_delay);
                    Next::Backoff(last_delay)
                }
            };

            if let Some(every) = self.config.backlog_interval {
                if last_backlog.is_none_or(|at| at.elapsed() >= every) {
                    last_backlog = Some(tokio::time::Instant::now());
                    if let Err(e) = self.report_backlog().await {
                        tracing::debug!(error = %e, "failed to measure the outbox backlog");
                    }
                }
            }

            if let Some(retention) = self.config.retention {
                if last_purge.elapsed() >= retention.min(Duration::from_secs(3600)) {
                    last_purge = tokio::time::Instant::now();
                    if let Err(e) = self.store.purge_sent(retention).await {
                        tracing::warn!(error = %e, "failed to purge old outbox messages");
                    }
                }
            }

            match next {
                Next::Now => {
                    // Still honour a shutdown between back-to-back rounds.
                    if futures::poll!(shutdown.as_mut()).is_ready() {
                        return;
                    }
                }
                Next::Idle(wait) => tokio::select! {
                    biased;
                    () = &mut shutdown => return,
                    () = &mut notified => {}
                    () = tokio::time::sleep(wait) => {}
                },
                // After a store failure new commits do not cut the pause short.
                Next::Backoff(delay) => tokio::select! {
                    biased;
                    () = &mut shutdown => return,
                    () = tokio::time::sleep(delay) => {}
                },
            }
        }
    }
}

#[cfg(test)]
mod config_tests {
    use super::*;

    #[test]
    fn the_settings_are_what_the_builders_say() {
        let d = RelayConfig::default();
        assert!(d.relay_id.starts_with("relay-"));
        assert_ne!(
            d.relay_id,
            RelayConfig::default().relay_id,
            "unique by default"
        );
        assert_eq!(
            (d.batch_size, d.lease, d.poll_interval),
            (100, Duration::from_secs(30), Duration::from_secs(1))
        );
        assert_eq!(d.retention, Some(Duration::from_secs(86_400)));
        assert_eq!(d.backlog_interval, Some(Duration::from_secs(5)));
        let c = RelayConfig::with_id("r1")
            .with_batch_size(7)
            .with_lease(Duration::from_secs(9))
            .with_poll_interval(Duration::from_millis(50))
            .with_backoff(Retry::never())
            .with_retention(None)
            .with_backlog_interval(Some(Duration::from_secs(2)));
        assert_eq!(c.relay_id, "r1");
        assert_eq!(
            (c.batch_size, c.lease, c.poll_interval),
            (7, Duration::from_secs(9), Duration::from_millis(50))
        );
        assert_eq!(c.backoff.attempts(), 1);
        assert_eq!(c.retention, None);
        assert_eq!(c.backlog_interval, Some(Duration::from_secs(2)));
    }
}
