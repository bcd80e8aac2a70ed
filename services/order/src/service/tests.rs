use super::*;
use outbox::idempotency::Reservation;

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
    async fn insert(
        &self,
        tx: &mut Self::Tx,
        row: crate::repository::NewOrderRow<'_>,
    ) -> sqlx::Result<Option<i64>> {
        self.inner.insert(tx, row).await
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
    async fn confirm(
        &self,
        tx: &mut Self::Tx,
        id: Uuid,
        payment: Option<&str>,
    ) -> sqlx::Result<u64> {
        self.inner.confirm(tx, id, payment).await
    }
    async fn set_payment(&self, tx: &mut Self::Tx, id: Uuid, payment: &str) -> sqlx::Result<()> {
        self.inner.set_payment(tx, id, payment).await
    }
    async fn set_cancel_saga(&self, tx: &mut Self::Tx, id: Uuid, saga: Uuid) -> sqlx::Result<()> {
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
        // Reads on connections of their own, as the service runs: they see only what
        // committed.
        let inner = inner.with_readers(
            ordersys_kit::db::connect_sqlite_readers(&file.url())
                .await
                .unwrap(),
        );
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

/// The memory key store, counting what an order asks of it.
#[derive(Default)]
struct Counted {
    inner: outbox::idempotency::MemoryIdempotencyStore,
    reserves: std::sync::atomic::AtomicUsize,
    lookups: std::sync::atomic::AtomicUsize,
    answers: std::sync::atomic::AtomicUsize,
}

impl Counted {
    fn counts(&self) -> (usize, usize, usize) {
        let n = |c: &std::sync::atomic::AtomicUsize| c.load(std::sync::atomic::Ordering::SeqCst);
        (n(&self.reserves), n(&self.lookups), n(&self.answers))
    }
}

#[async_trait::async_trait]
impl IdempotencyStore for Counted {
    async fn reserve(&self, key: &str, ttl: Duration) -> outbox::Result<Reservation> {
        self.reserves
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.reserve(key, ttl).await
    }
    async fn completed(&self, key: &str) -> outbox::Result<Option<Bytes>> {
        self.lookups
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.completed(key).await
    }
    async fn complete(&self, key: &str, result: &[u8], ttl: Duration) -> outbox::Result<()> {
        self.answers
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.complete(key, result, ttl).await
    }
    async fn release(&self, key: &str) -> outbox::Result<()> {
        self.inner.release(key).await
    }
    async fn purge_expired(&self) -> outbox::Result<u64> {
        self.inner.purge_expired().await
    }
}

/// The key store is a cache in front of the database's unique key: an order reads it
/// and records its answer there, and reserves nothing (no write before the order and
/// none to undo after); a retry is answered from it.
#[tokio::test]
async fn an_order_reads_the_key_store_and_records_its_answer_without_reserving() {
    let store = Arc::new(Counted::default());
    let f = Fixture::new(store.clone()).await;
    let user = Uuid::now_v7().to_string();
    let first = f
        .service
        .create(&user, one_line(), "USD", "k1", None)
        .await
        .unwrap();
    assert_eq!(store.counts(), (0, 1, 1), "reserves, lookups, answers");
    assert_eq!(
        store
            .inner
            .completed(&format!("order:{user}:k1"))
            .await
            .unwrap(),
        Some(Bytes::from(first.id.to_string()))
    );
    let again = f
        .service
        .create(&user, one_line(), "USD", "k1", None)
        .await
        .unwrap();
    assert_eq!(again.id, first.id);
    assert_eq!(
        store.counts(),
        (0, 2, 1),
        "the retry answered from the store"
    );
    // The same key for another order: refused, from the store's answer too.
    let mut other = one_line();
    other[0].quantity = 3;
    let e = f
        .service
        .create(&user, other, "USD", "k1", None)
        .await
        .unwrap_err();
    assert!(matches!(e, OrderError::KeyReused), "{e:?}");
    f.close().await;
}

/// Requests with one `Idempotency-Key` at the same moment, none answered by the key
/// store yet: one order, and every request answers with it — the unique key lets
/// one insert through, the others find its order (on SQLite once the group of units
/// it joined has committed).
#[tokio::test]
async fn requests_with_one_key_at_once_place_one_order() {
    let f = Fixture::new(Arc::new(Down)).await;
    let user = Uuid::now_v7().to_string();
    let answers = futures::future::join_all(
        (0..8).map(|_| f.service.create(&user, one_line(), "USD", "together", None)),
    )
    .await;
    let ids: Vec<Uuid> = answers.into_iter().map(|a| a.unwrap().id).collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    let (orders, _) = f.service.list(&user, 10, "").await.unwrap();
    assert_eq!(orders.len(), 1, "one order per key");
    f.close().await;
}
