//! News that an order changed, for the readers waiting on it (`GET
//! /api/v1/orders/{id}?wait=`): no reader asks the database again until its order has
//! changed (or a second has passed without news — the safety net when a notice is lost).
//!
//! Every change of an order is followed by the invalidation of its cache entry (the
//! invariant the cache already rests on: [`crate::saga::invalidate`]); [`Watching`], the
//! cache the service uses, turns each invalidation into a notice to the waiters in this
//! process and — with Redis — a message on the channel `ordersys:order-changed`, which
//! every replica follows ([`Changes::follow`]): an order finished by another replica
//! wakes the readers waiting here too.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use outbox::idempotency::Cache;
use redis::aio::ConnectionManager;
use tokio::sync::Notify;
use uuid::Uuid;

/// The Redis channel of the notices.
pub const CHANNEL: &str = "ordersys:order-changed";

/// Who waits for which order, and the notices that wake them. Cheap to clone.
#[derive(Clone, Default)]
pub struct Changes {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    waiting: Mutex<HashMap<Uuid, Weak<Notify>>>,
    /// Where notices go to the other replicas (`None`: one process).
    redis: Option<ConnectionManager>,
}

impl std::fmt::Debug for Changes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Changes")
            .field("redis", &self.inner.redis.is_some())
            .finish_non_exhaustive()
    }
}

/// A reader's interest in one order: [`Watch::notified`] resolves at its next change.
#[derive(Debug)]
pub struct Watch {
    notify: Arc<Notify>,
}

impl Watch {
    /// The next change of the order (take it before reading the order, so a change
    /// between the read and the wait is not missed).
    pub fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.notify.notified()
    }
}

impl Changes {
    /// Notices within this process only.
    pub fn local() -> Self {
        Self::default()
    }

    /// Notices here and, through `conn`'s Redis, to every replica ([`Changes::follow`]).
    pub fn redis(conn: ConnectionManager) -> Self {
        Self {
            inner: Arc::new(Inner {
                waiting: Mutex::default(),
                redis: Some(conn),
            }),
        }
    }

    /// Wait for changes of `order`.
    pub fn watch(&self, order: Uuid) -> Watch {
        let mut waiting = lock(&self.inner.waiting);
        if let Some(notify) = waiting.get(&order).and_then(Weak::upgrade) {
            return Watch { notify };
        }
        let notify = Arc::new(Notify::new());
        waiting.insert(order, Arc::downgrade(&notify));
        // Forget the orders nobody waits for any more (their readers are gone).
        if waiting.len() > 64 && waiting.len().is_power_of_two() {
            waiting.retain(|_, w| w.strong_count() > 0);
        }
        Watch { notify }
    }

    /// `order` changed: wake its readers here, and tell the other replicas.
    pub async fn changed(&self, order: Uuid) {
        self.wake(order);
        if let Some(conn) = &self.inner.redis {
            let mut conn = conn.clone();
            let mut publish = redis::cmd("PUBLISH");
            publish.arg(CHANNEL).arg(order.to_string());
            let sent = publish.query_async::<i64>(&mut conn);
            // A lost notice costs the other replicas' readers at most a second.
            match tokio::time::timeout(Duration::from_secs(1), sent).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "не удалось разослать изменение заказа"),
                Err(_) => tracing::warn!("рассылка изменения заказа не уложилась в 1 с"),
            }
        }
    }

    fn wake(&self, order: Uuid) {
        let notify = {
            let mut waiting = lock(&self.inner.waiting);
            match waiting.get(&order).map(Weak::upgrade) {
                Some(Some(n)) => Some(n),
                Some(None) => {
                    waiting.remove(&order);
                    None
                }
                None => None,
            }
        };
        if let Some(n) = notify {
            n.notify_waiters();
        }
    }

    /// Follow the other replicas' notices on `client`'s Redis until `stop` resolves,
    /// subscribing again after a broken connection (100 ms, doubling to 5 s).
    pub async fn follow(
        self,
        client: redis::Client,
        stop: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        tokio::pin!(stop);
        let mut wait = Duration::from_millis(100);
        loop {
            let started = tokio::time::Instant::now();
            tokio::select! {
                () = &mut stop => return Ok(()),
                r = self.follow_once(&client) => {
                    if let Err(e) = r {
                        tracing::warn!(error = %e, "подписка на изменения заказов прервана");
                    }
                }
            }
            if started.elapsed() > Duration::from_secs(10) {
                wait = Duration::from_millis(100);
            }
            tokio::select! {
                () = &mut stop => return Ok(()),
                () = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(Duration::from_secs(5));
        }
    }

    async fn follow_once(&self, client: &redis::Client) -> redis::RedisResult<()> {
        use futures::StreamExt as _;
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(CHANNEL).await?;
        let mut messages = pubsub.into_on_message();
        while let Some(msg) = messages.next().await {
            let payload: String = msg.get_payload()?;
            if let Ok(order) = Uuid::parse_str(&payload) {
                self.wake(order);
            }
        }
        Ok(())
    }

    /// `cache` with every invalidation of an order's entry reported as its change.
    pub fn watching(&self, cache: Arc<dyn Cache>) -> Watching {
        Watching {
            cache,
            changes: self.clone(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The order cache, reporting each invalidation — the empty marker
/// [`crate::saga::invalidate`] writes after every change — to [`Changes`].
pub struct Watching {
    cache: Arc<dyn Cache>,
    changes: Changes,
}

impl std::fmt::Debug for Watching {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watching")
            .field("changes", &self.changes)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Cache for Watching {
    async fn get(&self, key: &str) -> outbox::Result<Option<Bytes>> {
        self.cache.get(key).await
    }

    async fn set(&self, key: &str, value: &[u8], ttl: Duration) -> outbox::Result<()> {
        let r = self.cache.set(key, value, ttl).await;
        if value.is_empty() {
            if let Ok(order) = Uuid::parse_str(key) {
                self.changes.changed(order).await;
            }
        }
        r
    }

    async fn set_if_absent(&self, key: &str, value: &[u8], ttl: Duration) -> outbox::Result<bool> {
        self.cache.set_if_absent(key, value, ttl).await
    }

    async fn delete(&self, key: &str) -> outbox::Result<()> {
        self.cache.delete(key).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outbox::idempotency::MemoryCache;

    #[tokio::test]
    async fn an_invalidation_wakes_the_readers_of_that_order_only() {
        let changes = Changes::local();
        let cache = changes.watching(Arc::new(MemoryCache::new()));
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let (wa, wb) = (changes.watch(a), changes.watch(b));
        let (na, nb) = (wa.notified(), wb.notified());
        tokio::pin!(na);
        tokio::pin!(nb);
        na.as_mut().enable();
        nb.as_mut().enable();
        // A value filled in is no change; the invalidation marker is.
        cache
            .set(&a.to_string(), b"{}", Duration::from_secs(1))
            .await
            .unwrap();
        assert!(futures::poll!(na.as_mut()).is_pending());
        cache
            .set(&a.to_string(), b"", Duration::from_secs(1))
            .await
            .unwrap();
        assert!(futures::poll!(na.as_mut()).is_ready());
        assert!(futures::poll!(nb.as_mut()).is_pending());
    }

    #[tokio::test]
    async fn a_reader_gone_leaves_nothing_behind() {
        let changes = Changes::local();
        let order = Uuid::new_v4();
        drop(changes.watch(order));
        changes.changed(order).await;
        assert!(lock(&changes.inner.waiting).is_empty());
        // Two readers of one order share its notice.
        let (w1, w2) = (changes.watch(order), changes.watch(order));
        assert!(Arc::ptr_eq(&w1.notify, &w2.notify));
    }
}
