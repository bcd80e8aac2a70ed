//! Use cases: create (starts the saga), get (cached), list, cancel.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ordersys_kit::context::RequestContext;
use outbox::idempotency::{Cache, IdempotencyStore};
use outbox::{RelayHandle, Transactional};
use resilience::Retry;
use saga_core::{SagaDefinition, SagaEvent, SagaId};
use uuid::Uuid;

use crate::changes::Changes;
use crate::domain::{
    idempotency_key, Cursor, Item, NewOrder, Order, OrderId, OrderStatus, SagaData, UserId,
    ValidationError,
};
use crate::repository::{NewOrderRow, OrderRepo, OrderRow};
use crate::saga::{cache_key, invalidate, Backend, OrderOrchestrator, CANCEL, CREATE};

/// Why a use case failed.
#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    /// Bad input.
    #[error(transparent)]
    Validation(#[from] ValidationError),
    /// No such order (or not the caller's).
    #[error("order not found")]
    NotFound,
    /// Cancelling a cancelled order.
    #[error("order is already cancelled")]
    AlreadyCancelled,
    /// The Idempotency-Key was used before for a different order (other items or
    /// currency): refused rather than answered with the first order.
    #[error("this Idempotency-Key was used for a different order")]
    KeyReused,
    /// A dependency is down.
    #[error("dependency unavailable: {0}")]
    Unavailable(String),
}

impl From<sqlx::Error> for OrderError {
    fn from(e: sqlx::Error) -> Self {
        Self::Unavailable(e.to_string())
    }
}

impl From<saga_core::Error> for OrderError {
    fn from(e: saga_core::Error) -> Self {
        Self::Unavailable(e.to_string())
    }
}

impl From<outbox::Error> for OrderError {
    fn from(e: outbox::Error) -> Self {
        Self::Unavailable(e.to_string())
    }
}

/// The order an Idempotency-Key already points at, if this request is the same one (same
/// items in the same order, same currency); another request under a used key is
/// [`OrderError::KeyReused`]. The stored order is the fingerprint: nothing else to keep.
fn replay(order: Order, new: &NewOrder) -> Result<Order, OrderError> {
    if order.items == new.items && order.currency == new.currency {
        Ok(order)
    } else {
        Err(OrderError::KeyReused)
    }
}

/// How long a request whose insert found its `Idempotency-Key` taken waits for the
/// order that took it to become readable: 20 looks, 100 ms apart.
fn in_progress_wait() -> Retry {
    Retry::new()
        .named("idempotency_key_in_progress")
        .max_attempts(20)
        .base_delay(Duration::from_millis(100))
        .multiplier(1)
        .max_delay(Duration::from_millis(100))
        .jitter(0.0)
}

/// Cache entry lifetime (SPEC: `order:{id}` for 10 minutes).
const CACHE_TTL: Duration = Duration::from_secs(600);
/// How long an order whose saga is still running stays cached. Its changes are
/// invalidated after each commit, but a process killed between a commit and the
/// invalidation cannot invalidate: the entry must then expire by itself, soon.
const CACHE_TTL_IN_FLIGHT: Duration = Duration::from_secs(1);

/// How long `o` may be cached: long once nothing more will happen to it by itself.
fn cache_ttl(o: &Order) -> Duration {
    let settled =
        o.status != OrderStatus::Pending && matches!(o.saga_state.as_str(), "COMPLETED" | "FAILED");
    if settled {
        CACHE_TTL
    } else {
        CACHE_TTL_IN_FLIGHT
    }
}
/// The longest [`OrderService::wait`].
pub const MAX_WAIT: Duration = Duration::from_secs(30);

/// Idempotency result lifetime (SPEC: 24 hours).
const IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 3600);

/// The order service's logic.
pub struct OrderService<B: Backend> {
    repo: B::Repo,
    orchestrator: Arc<OrderOrchestrator<B>>,
    create_def: Arc<SagaDefinition>,
    cache: Arc<dyn Cache>,
    idempotency: Arc<dyn IdempotencyStore>,
    relay: RelayHandle,
    /// Currencies the wallets hold; empty: any known currency.
    accepted: Arc<Vec<String>>,
    /// Who waits for which order ([`OrderService::wait`]).
    changes: Changes,
}

impl<B: Backend> Clone for OrderService<B> {
    fn clone(&self) -> Self {
        Self {
            repo: self.repo.clone(),
            orchestrator: self.orchestrator.clone(),
            create_def: self.create_def.clone(),
            cache: self.cache.clone(),
            idempotency: self.idempotency.clone(),
            relay: self.relay.clone(),
            accepted: self.accepted.clone(),
            changes: self.changes.clone(),
        }
    }
}

impl<B: Backend> std::fmt::Debug for OrderService<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrderService").finish_non_exhaustive()
    }
}

fn user_id(s: &str) -> Result<Uuid, OrderError> {
    Uuid::parse_str(s).map_err(|_| OrderError::NotFound)
}

impl<B: Backend> OrderService<B> {
    /// Assemble.
    pub fn new(
        repo: B::Repo,
        orchestrator: Arc<OrderOrchestrator<B>>,
        cache: Arc<dyn Cache>,
        idempotency: Arc<dyn IdempotencyStore>,
        relay: RelayHandle,
    ) -> Self {
        let create_def = orchestrator
            .definition(CREATE)
            .expect("create saga registered")
            .clone();
        Self {
            repo,
            orchestrator,
            create_def,
            cache,
            idempotency,
            relay,
            accepted: Arc::new(Vec::new()),
            changes: Changes::local(),
        }
    }

    /// Learn of orders' changes from `changes` (the one the cache reports to:
    /// [`Changes::watching`]) for [`OrderService::wait`].
    pub fn with_changes(mut self, changes: Changes) -> Self {
        self.changes = changes;
        self
    }

    /// Accept orders only in these currencies (those the wallets hold): an order no
    /// wallet can pay is refused up front (422) instead of placed and then always
    /// cancelled. Empty: any known currency.
    pub fn accepting(mut self, currencies: Vec<String>) -> Self {
        self.accepted = Arc::new(currencies);
        self
    }

    fn to_order(&self, row: OrderRow) -> Order {
        let saga_state = row
            .saga_state
            .as_ref()
            .map(|s| s.label(&self.create_def))
            .unwrap_or_else(|| "UNKNOWN".into());
        Order {
            id: row.id,
            user_id: row.user_id,
            status: row.status,
            currency: row.currency,
            total: row.total,
            items: row.items,
            payment_id: row.payment_id,
            failure_reason: row.failure_reason,
            saga_id: row.saga_id,
            cancel_saga_id: row.cancel_saga_id,
            saga_state,
            created_at: row.created_at,
        }
    }

    async fn load(&self, id: Uuid) -> Result<Option<Order>, OrderError> {
        Ok(self.repo.get(id).await?.map(|r| self.to_order(r)))
    }

    /// Place an order and start its saga: the order row, the saga and the debit command
    /// commit together.
    pub async fn create(
        &self,
        user: &str,
        items: Vec<Item>,
        currency: &str,
        idempotency: &str,
        ctx: Option<&RequestContext>,
    ) -> Result<Order, OrderError> {
        let user = user_id(user)?;
        let new = NewOrder::new(items, currency)?;
        if !self.accepted.is_empty() && !self.accepted.contains(&new.currency) {
            return Err(ValidationError::CurrencyNotAccepted(
                new.currency,
                self.accepted.join(", "),
            )
            .into());
        }
        let key = idempotency_key(idempotency)?;
        let redis_key = key.as_ref().map(|k| format!("order:{user}:{k}"));

        // The keys store is a cache in front of the orders' unique (user, key): a retry
        // whose first answer it holds is answered without the orders' database. It is
        // only read — no reservation to write and release per order: two requests
        // with one key at once both try to insert, the unique key lets one through and
        // the other answers with that order (`place`).
        if let Some(rk) = &redis_key {
            match self.idempotency.completed(rk).await {
                Ok(Some(id)) => {
                    if let Some(o) = std::str::from_utf8(&id)
                        .ok()
                        .and_then(|s| Uuid::parse_str(s).ok())
                    {
                        if let Some(order) = self.load(o).await? {
                            return replay(order, &new);
                        }
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "хранилище идемпотентности недоступно"),
            }
        }

        let order = self.place(user, new, key.as_deref(), ctx).await?;
        if let Some(rk) = &redis_key {
            if let Err(e) = self
                .idempotency
                .complete(rk, order.id.to_string().as_bytes(), IDEMPOTENCY_TTL)
                .await
            {
                tracing::warn!(error = %e, "не удалось обновить ключ идемпотентности");
            }
        }
        Ok(order)
    }

    /// The order `user` placed with `key`, for a request whose insert found the key
    /// taken. The order that took it may not be visible to a read yet — its unit of
    /// work still open (SQLite: a group of units commits together) — so look again for
    /// a while (up to 2 s) before giving up.
    async fn placed_with(
        &self,
        user: Uuid,
        key: &str,
        new: &NewOrder,
    ) -> Result<Order, OrderError> {
        let found = in_progress_wait()
            .call_if(
                || async {
                    match self.repo.by_idempotency_key(user, key).await {
                        Ok(Some(id)) => Ok(id),
                        Ok(None) => Err(None),
                        Err(e) => Err(Some(e)),
                    }
                },
                Option::is_none,
            )
            .await;
        match found {
            Ok(id) => replay(self.load(id).await?.ok_or(OrderError::NotFound)?, new),
            Err(e) => match e.into_last() {
                Some(Some(db)) => Err(db.into()),
                _ => Err(OrderError::Unavailable(
                    "the order holding this Idempotency-Key is not readable yet; retry".into(),
                )),
            },
        }
    }

    async fn place(
        &self,
        user: Uuid,
        new: NewOrder,
        key: Option<&str>,
        ctx: Option<&RequestContext>,
    ) -> Result<Order, OrderError> {
        let id = Uuid::now_v7();
        let data = SagaData {
            order_id: id,
            user_id: user,
            amount: new.total,
            currency: new.currency.clone(),
            correlation_id: ctx.map(|c| c.correlation_id.clone()).unwrap_or_default(),
            traceparent: ctx.map(|c| c.traceparent.clone()).unwrap_or_default(),
        };
        let store = self.orchestrator.store();
        let mut tx = store.begin().await?;
        let inserted = self
            .repo
            .insert(
                &mut tx,
                NewOrderRow {
                    id: OrderId(id),
                    user: UserId(user),
                    order: &new,
                    saga: SagaId(id),
                    idempotency_key: key,
                },
            )
            .await?;
        let Some(created_at) = inserted else {
            // The database says this key was used: the same order, never a second one.
            drop(tx);
            return self.placed_with(user, key.unwrap_or_default(), &new).await;
        };
        let bytes = Bytes::from(serde_json::to_vec(&data).expect("saga data serialises"));
        let applied = self
            .orchestrator
            .start(&mut tx, CREATE, SagaId(id), bytes)
            .await?;
        store.commit(tx).await?;
        self.relay.wake();
        tracing::info!(order_id = %id, user_id = %user, total = new.total, currency = %new.currency, "заказ создан, сага запущена");
        // The answer is the row as committed, not a second read: a read could fail
        // (the database went away a moment later) and turn a placed order into a 5xx.
        let order = self.to_order(OrderRow {
            id,
            user_id: user,
            status: OrderStatus::Pending,
            currency: new.currency,
            total: new.total,
            items: new.items,
            payment_id: None,
            failure_reason: None,
            saga_id: id,
            cancel_saga_id: None,
            saga_state: Some(applied.saga.state),
            created_at,
        });
        // The client's first read of it (a wait for its outcome) is then answered
        // without the database. `set_if_absent`: a reply that already changed it left
        // its invalidation marker, which this must not overwrite.
        if let Ok(bytes) = serde_json::to_vec(&order) {
            let _ = self
                .cache
                .set_if_absent(&cache_key(id), &bytes, cache_ttl(&order))
                .await;
        }
        Ok(order)
    }

    /// One of the caller's orders (from the cache when possible).
    pub async fn get(&self, user: &str, id: &str) -> Result<Order, OrderError> {
        let user = user_id(user)?;
        let id = Uuid::parse_str(id).map_err(|_| OrderError::NotFound)?;
        let key = cache_key(id);
        match self.cache.get(&key).await {
            Ok(Some(b)) if !b.is_empty() => {
                if let Ok(o) = serde_json::from_slice::<Order>(&b) {
                    return if o.user_id == user {
                        Ok(o)
                    } else {
                        Err(OrderError::NotFound)
                    };
                }
            }
            Ok(Some(_)) => {
                // Just invalidated: read through, do not refill yet.
                let o = self.load(id).await?.ok_or(OrderError::NotFound)?;
                return if o.user_id == user {
                    Ok(o)
                } else {
                    Err(OrderError::NotFound)
                };
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "кэш заказов недоступен"),
        }
        let o = self.load(id).await?.ok_or(OrderError::NotFound)?;
        if let Ok(bytes) = serde_json::to_vec(&o) {
            let _ = self.cache.set_if_absent(&key, &bytes, cache_ttl(&o)).await;
        }
        if o.user_id == user {
            Ok(o)
        } else {
            Err(OrderError::NotFound)
        }
    }

    /// One of the caller's orders as soon as it is no longer PENDING, or as it is when
    /// `wait` has passed (at most [`MAX_WAIT`]; zero: at once, as [`OrderService::get`]).
    /// The order is read again only when it changed ([`Changes`]) — or a second passed
    /// without news, in case a notice was lost. Counted in
    /// `ordersys_order_waits_total{outcome=decided|timed_out}` and the reads again in
    /// `ordersys_order_wait_reads_total{reason=changed|recheck}`.
    pub async fn wait(&self, user: &str, id: &str, wait: Duration) -> Result<Order, OrderError> {
        let deadline = tokio::time::Instant::now() + wait.min(MAX_WAIT);
        let Ok(order) = Uuid::parse_str(id) else {
            return Err(OrderError::NotFound);
        };
        let watch = self.changes.watch(order);
        loop {
            let changed = watch.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let o = self.get(user, id).await?;
            let now = tokio::time::Instant::now();
            let decided = o.status != OrderStatus::Pending;
            if decided || now >= deadline {
                let outcome = if decided { "decided" } else { "timed_out" };
                metrics::counter!("ordersys_order_waits_total", "outcome" => outcome).increment(1);
                return Ok(o);
            }
            let reason = tokio::select! {
                () = changed => "changed",
                () = tokio::time::sleep_until(deadline.min(now + Duration::from_secs(1))) => "recheck",
            };
            metrics::counter!("ordersys_order_wait_reads_total", "reason" => reason).increment(1);
        }
    }

    /// The caller's orders, newest first; returns the page and the next cursor.
    pub async fn list(
        &self,
        user: &str,
        limit: u32,
        cursor: &str,
    ) -> Result<(Vec<Order>, Option<String>), OrderError> {
        let user = user_id(user)?;
        let limit = if limit == 0 { 20 } else { limit };
        if limit > 100 {
            return Err(ValidationError::BadLimit.into());
        }
        let cursor = if cursor.is_empty() {
            None
        } else {
            Some(Cursor::decode(cursor).ok_or(ValidationError::BadCursor)?)
        };
        let mut rows = self.repo.list(user, cursor, limit + 1).await?;
        let next = if rows.len() > limit as usize {
            rows.truncate(limit as usize);
            rows.last().map(|r| {
                Cursor {
                    created_at: r.created_at,
                    id: r.id,
                }
                .encode()
            })
        } else {
            None
        };
        Ok((rows.into_iter().map(|r| self.to_order(r)).collect(), next))
    }

    /// Cancel: a pending order's saga is aborted (its debit, if any, refunded); a
    /// confirmed order gets a cancel saga (refund, then CANCELLED).
    pub async fn cancel(
        &self,
        user: &str,
        id: &str,
        ctx: Option<&RequestContext>,
    ) -> Result<Order, OrderError> {
        let user = user_id(user)?;
        let id = Uuid::parse_str(id).map_err(|_| OrderError::NotFound)?;
        let store = self.orchestrator.store();
        let mut tx = store.begin().await?;
        let row = self
            .repo
            .lock(&mut tx, id)
            .await?
            .filter(|r| r.user_id == user)
            .ok_or(OrderError::NotFound)?;
        match row.status {
            OrderStatus::Cancelled => return Err(OrderError::AlreadyCancelled),
            OrderStatus::Pending => {
                self.orchestrator
                    .handle(
                        &mut tx,
                        SagaId(row.saga_id),
                        SagaEvent::Abort {
                            reason: "cancelled by the customer".into(),
                        },
                    )
                    .await?;
            }
            OrderStatus::Confirmed if row.cancel_saga_id.is_some() => {} // already under way
            OrderStatus::Confirmed => {
                let saga = Uuid::now_v7();
                let data = SagaData {
                    order_id: id,
                    user_id: user,
                    amount: row.total,
                    currency: row.currency.clone(),
                    correlation_id: ctx.map(|c| c.correlation_id.clone()).unwrap_or_default(),
                    traceparent: ctx.map(|c| c.traceparent.clone()).unwrap_or_default(),
                };
                let bytes = Bytes::from(serde_json::to_vec(&data).expect("saga data serialises"));
                self.orchestrator
                    .start(&mut tx, CANCEL, SagaId(saga), bytes)
                    .await?;
                self.repo.set_cancel_saga(&mut tx, id, saga).await?;
            }
        }
        store.commit(tx).await?;
        self.relay.wake();
        invalidate(&*self.cache, id).await;
        tracing::info!(order_id = %id, "запрошена отмена заказа");
        self.load(id).await?.ok_or(OrderError::NotFound)
    }
}

#[cfg(test)]
mod tests;
