//! Use cases: create (starts the saga), get (cached), list, cancel.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ordersys_kit::context::RequestContext;
use outbox::idempotency::{Cache, IdempotencyStore, Reservation};
use outbox::{RelayHandle, Transactional};
use saga_core::{SagaDefinition, SagaEvent, SagaId};
use uuid::Uuid;

use crate::domain::{
    idempotency_key, Cursor, Item, NewOrder, Order, OrderStatus, SagaData, ValidationError,
};
use crate::repository::{OrderRepo, OrderRow};
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
    /// The same Idempotency-Key is being processed right now.
    #[error("a request with this Idempotency-Key is in progress")]
    InProgress,
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
        }
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

        if let (Some(k), Some(rk)) = (&key, &redis_key) {
            match self.idempotency.reserve(rk, Duration::from_secs(30)).await {
                Ok(Reservation::Completed(id)) => {
                    if let Some(o) = std::str::from_utf8(&id)
                        .ok()
                        .and_then(|s| Uuid::parse_str(s).ok())
                    {
                        if let Some(order) = self.load(o).await? {
                            return replay(order, &new);
                        }
                    }
                }
                Ok(Reservation::InProgress) => {
                    // Another request with this key is being handled: give it a moment.
                    for _ in 0..20 {
                        if let Some(id) = self.repo.by_idempotency_key(user, k).await? {
                            let order = self.load(id).await?.ok_or(OrderError::NotFound)?;
                            return replay(order, &new);
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    return Err(OrderError::InProgress);
                }
                Ok(Reservation::Reserved) => {}
                Err(e) => tracing::warn!(error = %e, "хранилище идемпотентности недоступно"),
            }
        }

        let result = self.place(user, new, key.as_deref(), ctx).await;
        if let Some(rk) = &redis_key {
            let stored = match &result {
                Ok(o) => {
                    self.idempotency
                        .complete(rk, o.id.to_string().as_bytes(), IDEMPOTENCY_TTL)
                        .await
                }
                // Let a retry with the same key run instead of waiting for the pending
                // reservation to expire.
                Err(_) => self.idempotency.release(rk).await,
            };
            if let Err(e) = stored {
                tracing::warn!(error = %e, "не удалось обновить ключ идемпотентности");
            }
        }
        result
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
                id,
                user,
                &new.currency,
                new.total,
                &new.items,
                id,
                key,
            )
            .await?;
        let Some(created_at) = inserted else {
            // The database says this key was used: the same order, never a second one.
            drop(tx);
            let existing = self
                .repo
                .by_idempotency_key(user, key.unwrap_or_default())
                .await?
                .ok_or(OrderError::NotFound)?;
            let order = self.load(existing).await?.ok_or(OrderError::NotFound)?;
            return replay(order, &new);
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
        Ok(self.to_order(OrderRow {
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
        }))
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
mod tests {
    use super::*;

    fn order(status: OrderStatus, saga_state: &str) -> Order {
        Order {
            id: Uuid::nil(),
            user_id: Uuid::nil(),
            status,
            currency: "USD".into(),
            total: 100,
            items: Vec::new(),
            payment_id: None,
            failure_reason: None,
            saga_id: Uuid::nil(),
            cancel_saga_id: None,
            saga_state: saga_state.into(),
            created_at: 0,
        }
    }

    /// SQLite orders whose reads fail on demand (the database going away right after
    /// a commit).
    #[derive(Clone)]
    struct FlakyReads {
        inner: crate::repository::SqliteOrders,
        fail_reads: Arc<std::sync::atomic::AtomicBool>,
    }

    impl FlakyReads {
        fn check(&self) -> sqlx::Result<()> {
            if self.fail_reads.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(sqlx::Error::PoolTimedOut);
            }
            Ok(())
        }
    }

    impl OrderRepo for FlakyReads {
        type Tx = outbox::sqlite::SqliteTx;
        #[allow(clippy::too_many_arguments)]
        async fn insert(
            &self,
            tx: &mut Self::Tx,
            id: Uuid,
            user: Uuid,
            currency: &str,
            total: i64,
            items: &[Item],
            saga_id: Uuid,
            key: Option<&str>,
        ) -> sqlx::Result<Option<i64>> {
            (self.inner)
                .insert(tx, id, user, currency, total, items, saga_id, key)
                .await
        }
        async fn by_idempotency_key(&self, user: Uuid, key: &str) -> sqlx::Result<Option<Uuid>> {
            self.check()?;
            self.inner.by_idempotency_key(user, key).await
        }
        async fn get(&self, id: Uuid) -> sqlx::Result<Option<OrderRow>> {
            self.check()?;
            self.inner.get(id).await
        }
        async fn lock(&self, tx: &mut Self::Tx, id: Uuid) -> sqlx::Result<Option<OrderRow>> {
            self.inner.lock(tx, id).await
        }
        async fn list(
            &self,
            user: Uuid,
            cursor: Option<Cursor>,
            limit: u32,
        ) -> sqlx::Result<Vec<OrderRow>> {
            self.check()?;
            self.inner.list(user, cursor, limit).await
        }
        async fn set_status(
            &self,
            tx: &mut Self::Tx,
            id: Uuid,
            status: OrderStatus,
            reason: Option<&str>,
        ) -> sqlx::Result<u64> {
            self.inner.set_status(tx, id, status, reason).await
        }
        async fn set_payment(
            &self,
            tx: &mut Self::Tx,
            id: Uuid,
            payment: &str,
        ) -> sqlx::Result<()> {
            self.inner.set_payment(tx, id, payment).await
        }
        async fn set_cancel_saga(
            &self,
            tx: &mut Self::Tx,
            id: Uuid,
            saga: Uuid,
        ) -> sqlx::Result<()> {
            self.inner.set_cancel_saga(tx, id, saga).await
        }
        async fn orders_of_saga(&self, saga: Uuid) -> sqlx::Result<Vec<Uuid>> {
            self.inner.orders_of_saga(saga).await
        }
    }

    struct Flaky;

    impl Backend for Flaky {
        type Tx = outbox::sqlite::SqliteTx;
        type Repo = FlakyReads;
        type Sagas = saga_core::sqlite::SqliteSagaStore;
        type Outbox = outbox::sqlite::SqliteOutbox;
    }

    /// An order service on a fresh SQLite file, with `idempotency` as its key store.
    struct Fixture {
        service: OrderService<Flaky>,
        repo: FlakyReads,
        pool: sqlx::SqlitePool,
        _file: outbox::conformance::sqlite::TempDbFile,
    }

    impl Fixture {
        async fn new(idempotency: Arc<dyn IdempotencyStore>) -> Self {
            let file = outbox::conformance::sqlite::TempDbFile::new("ordersys-order");
            let pool = ordersys_kit::db::connect_sqlite(&file.url()).await.unwrap();
            let inner = crate::repository::SqliteOrders::new(pool.clone());
            inner.migrate().await.unwrap();
            let repo = FlakyReads {
                inner,
                fail_reads: Arc::default(),
            };
            let outbox = outbox::sqlite::SqliteOutbox::new(pool.clone());
            let topics = ordersys_kit::messaging::Topics::new("");
            let orchestrator = Arc::new(
                saga_core::Orchestrator::new(
                    saga_core::sqlite::SqliteSagaStore::new(pool.clone()),
                    crate::saga::OrderSink::<Flaky>::new(repo.clone(), outbox.clone(), topics),
                )
                .register(crate::saga::create_order(Duration::from_secs(30)))
                .register(crate::saga::cancel_order(Duration::from_secs(30))),
            );
            let relay = outbox::Relay::new(
                outbox.clone(),
                outbox::memory::MemoryBroker::new(),
                outbox::RelayConfig::default(),
            );
            let service = OrderService::<Flaky>::new(
                repo.clone(),
                orchestrator,
                Arc::new(outbox::idempotency::MemoryCache::new()),
                idempotency,
                relay.handle(),
            );
            Self {
                service,
                repo,
                pool,
                _file: file,
            }
        }

        async fn close(self) {
            self.pool.close().await;
        }
    }

    fn one_line() -> Vec<Item> {
        vec![Item {
            product_id: "sku-1".into(),
            quantity: 2,
            unit_price: 150,
        }]
    }

    /// An idempotency store that is down (Redis unreachable).
    struct Down;

    #[async_trait::async_trait]
    impl IdempotencyStore for Down {
        async fn reserve(&self, _: &str, _: Duration) -> outbox::Result<Reservation> {
            Err(outbox::Error::storage("redis is down"))
        }
        async fn complete(&self, _: &str, _: &[u8], _: Duration) -> outbox::Result<()> {
            Err(outbox::Error::storage("redis is down"))
        }
        async fn release(&self, _: &str) -> outbox::Result<()> {
            Err(outbox::Error::storage("redis is down"))
        }
        async fn purge_expired(&self) -> outbox::Result<u64> {
            Err(outbox::Error::storage("redis is down"))
        }
    }

    /// With the idempotency store down, a retried `Idempotency-Key` still names the
    /// same order: the database's unique key on (user, key) is the guarantee.
    #[tokio::test]
    async fn with_the_key_store_down_the_database_key_still_gives_the_same_order() {
        let f = Fixture::new(Arc::new(Down)).await;
        let user = Uuid::now_v7().to_string();
        let first = f
            .service
            .create(&user, one_line(), "USD", "retry-me", None)
            .await
            .unwrap();
        let again = f
            .service
            .create(&user, one_line(), "USD", "retry-me", None)
            .await
            .unwrap();
        assert_eq!(again.id, first.id, "a second order for the same key");
        let other = f
            .service
            .create(&user, one_line(), "USD", "another-key", None)
            .await
            .unwrap();
        assert_ne!(other.id, first.id);
        let (orders, _) = f.service.list(&user, 10, "").await.unwrap();
        assert_eq!(orders.len(), 2);
        f.close().await;
    }

    /// `POST /api/v1/orders` answers from the row it committed: a read failing right
    /// after the commit does not turn a placed order into an error (the client would
    /// retry, but an answer it could have had is an answer it should get).
    #[tokio::test]
    async fn create_answers_from_the_committed_row_without_reading_it_back() {
        let f = Fixture::new(Arc::new(outbox::idempotency::MemoryIdempotencyStore::new())).await;
        let (service, repo) = (&f.service, &f.repo);
        let user = Uuid::now_v7().to_string();
        let items = one_line();
        repo.fail_reads
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let placed = service
            .create(&user, items.clone(), "USD", "key-1", None)
            .await
            .expect("the order was committed: answer it");
        assert_eq!(placed.status, OrderStatus::Pending);
        assert_eq!(placed.total, 300);
        assert_eq!(placed.items, items);
        assert_eq!(placed.saga_state, "PAYMENT_PENDING");

        // And it is exactly what a read shows once reads work again.
        repo.fail_reads
            .store(false, std::sync::atomic::Ordering::SeqCst);
        let read = service.get(&user, &placed.id.to_string()).await.unwrap();
        assert_eq!(
            serde_json::to_value(&read).unwrap(),
            serde_json::to_value(&placed).unwrap()
        );
        f.close().await;
    }

    #[tokio::test]
    async fn an_order_no_wallet_can_pay_is_refused_up_front() {
        let f = Fixture::new(Arc::new(outbox::idempotency::MemoryIdempotencyStore::new())).await;
        let service = f.service.clone().accepting(vec!["USD".into()]);
        let user = Uuid::now_v7().to_string();
        let e = service
            .create(&user, one_line(), "EUR", "", None)
            .await
            .unwrap_err();
        assert!(
            matches!(e, OrderError::Validation(ValidationError::CurrencyNotAccepted(ref c, _)) if c == "EUR"),
            "{e:?}"
        );
        // Nothing placed.
        assert!(service.list(&user, 10, "").await.unwrap().0.is_empty());
        service
            .create(&user, one_line(), "USD", "", None)
            .await
            .unwrap();
        f.close().await;
    }

    #[test]
    fn only_settled_orders_stay_cached_for_long() {
        // A missed invalidation (killed between commit and invalidate) must not show a
        // running order stale for minutes.
        assert_eq!(
            cache_ttl(&order(OrderStatus::Pending, "PAYMENT_PENDING")),
            CACHE_TTL_IN_FLIGHT
        );
        assert_eq!(
            cache_ttl(&order(OrderStatus::Confirmed, "REFUND_PENDING")),
            CACHE_TTL_IN_FLIGHT
        );
        assert_eq!(
            cache_ttl(&order(OrderStatus::Cancelled, "COMPENSATING")),
            CACHE_TTL_IN_FLIGHT
        );
        assert_eq!(
            cache_ttl(&order(OrderStatus::Confirmed, "COMPLETED")),
            CACHE_TTL
        );
        assert_eq!(
            cache_ttl(&order(OrderStatus::Cancelled, "FAILED")),
            CACHE_TTL
        );
    }
}
