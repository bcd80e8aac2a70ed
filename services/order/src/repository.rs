//! Orders: the [`OrderRepo`] the use cases need, with MySQL and SQLite implementations.
//! Writes take the unit of work shared with the saga store and the outbox; reads join
//! the create saga's state.

use std::future::Future;

use outbox::mysql::MySqlTx;
use outbox::sqlite::SqliteTx;
use saga_core::{SagaId, SagaState};
use sqlx::{MySqlPool, Row, SqlitePool};
use uuid::Uuid;

use crate::domain::{Cursor, Item, NewOrder, OrderId, OrderStatus, UserId};

/// What a new order's row holds: who placed what, under which saga and
/// `Idempotency-Key`.
#[derive(Debug, Clone, Copy)]
pub struct NewOrderRow<'a> {
    /// The order's id.
    pub id: OrderId,
    /// Who placed it.
    pub user: UserId,
    /// Items, currency and total.
    pub order: &'a NewOrder,
    /// Its create saga.
    pub saga: SagaId,
    /// The request's `Idempotency-Key`, if any.
    pub idempotency_key: Option<&'a str>,
}

/// An order row plus its create saga's state.
#[derive(Debug, Clone)]
pub struct OrderRow {
    /// Id.
    pub id: Uuid,
    /// Owner.
    pub user_id: Uuid,
    /// Status.
    pub status: OrderStatus,
    /// Currency.
    pub currency: String,
    /// Total.
    pub total: i64,
    /// Lines.
    pub items: Vec<Item>,
    /// Payment id.
    pub payment_id: Option<String>,
    /// Failure reason.
    pub failure_reason: Option<String>,
    /// Create saga.
    pub saga_id: Uuid,
    /// Cancel saga.
    pub cancel_saga_id: Option<Uuid>,
    /// The create saga's state (None if it is missing, which would be a bug).
    pub saga_state: Option<SagaState>,
    /// Unix ms.
    pub created_at: i64,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn uuid<R: Row>(row: &R, col: &str) -> sqlx::Result<Uuid>
where
    for<'r> Vec<u8>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'c> &'c str: sqlx::ColumnIndex<R>,
{
    let b: Vec<u8> = row.try_get(col)?;
    Uuid::from_slice(&b).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

fn decode<R: Row>(row: &R) -> sqlx::Result<OrderRow>
where
    for<'r> Vec<u8>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<Vec<u8>>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'c> &'c str: sqlx::ColumnIndex<R>,
{
    let status: String = row.try_get("status")?;
    let items: String = row.try_get("items")?;
    let cancel: Option<Vec<u8>> = row.try_get("cancel_saga_id")?;
    let state: Option<String> = row.try_get("saga_state")?;
    Ok(OrderRow {
        id: uuid(row, "id")?,
        user_id: uuid(row, "user_id")?,
        status: OrderStatus::parse(&status)
            .ok_or_else(|| sqlx::Error::Decode(format!("status {status}").into()))?,
        currency: row.try_get("currency")?,
        total: row.try_get("total_amount")?,
        items: serde_json::from_str(&items).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
        payment_id: row.try_get("payment_id")?,
        failure_reason: row.try_get("failure_reason")?,
        saga_id: uuid(row, "saga_id")?,
        cancel_saga_id: cancel
            .map(|b| Uuid::from_slice(&b))
            .transpose()
            .map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
        saga_state: state.and_then(|s| serde_json::from_str(&s).ok()),
        created_at: row.try_get("created_at_ms")?,
    })
}

const SELECT: &str =
    "SELECT o.id, o.user_id, o.status, o.currency, o.total_amount, o.items, o.payment_id, \
     o.failure_reason, o.saga_id, o.cancel_saga_id, o.created_at_ms, s.state AS saga_state \
     FROM orders o LEFT JOIN saga_instances s ON s.id = o.saga_id";

/// Persistence of orders.
pub trait OrderRepo: Clone + Send + Sync + 'static {
    /// The unit of work.
    type Tx: Send + 'static;
    /// Insert a new PENDING order; returns its `created_at` (Unix ms) as written, or
    /// `None` if the user's idempotency key is taken.
    fn insert(
        &self,
        tx: &mut Self::Tx,
        row: NewOrderRow<'_>,
    ) -> impl Future<Output = sqlx::Result<Option<i64>>> + Send;
    /// The order a user created with `key`.
    fn by_idempotency_key(
        &self,
        user: Uuid,
        key: &str,
    ) -> impl Future<Output = sqlx::Result<Option<Uuid>>> + Send;
    /// Read an order.
    fn get(&self, id: Uuid) -> impl Future<Output = sqlx::Result<Option<OrderRow>>> + Send;
    /// Read and write-lock an order in `tx`.
    fn lock(
        &self,
        tx: &mut Self::Tx,
        id: Uuid,
    ) -> impl Future<Output = sqlx::Result<Option<OrderRow>>> + Send;
    /// A page of a user's orders, newest first, after `cursor`.
    fn list(
        &self,
        user: Uuid,
        cursor: Option<Cursor>,
        limit: u32,
    ) -> impl Future<Output = sqlx::Result<Vec<OrderRow>>> + Send;
    /// Change status (and the failure reason, when given); a confirmation only applies
    /// to a PENDING order. Returns the rows changed.
    fn set_status(
        &self,
        tx: &mut Self::Tx,
        id: Uuid,
        status: OrderStatus,
        reason: Option<&str>,
    ) -> impl Future<Output = sqlx::Result<u64>> + Send;
    /// Confirm a PENDING order and, when given, record its payment id — one
    /// statement. Returns the rows changed (0: the order is no longer pending).
    fn confirm(
        &self,
        tx: &mut Self::Tx,
        id: Uuid,
        payment_id: Option<&str>,
    ) -> impl Future<Output = sqlx::Result<u64>> + Send;
    /// Record the payment id.
    fn set_payment(
        &self,
        tx: &mut Self::Tx,
        id: Uuid,
        payment_id: &str,
    ) -> impl Future<Output = sqlx::Result<()>> + Send;
    /// Record the cancel saga.
    fn set_cancel_saga(
        &self,
        tx: &mut Self::Tx,
        id: Uuid,
        saga: Uuid,
    ) -> impl Future<Output = sqlx::Result<()>> + Send;
    /// The orders a saga belongs to.
    fn orders_of_saga(&self, saga: Uuid) -> impl Future<Output = sqlx::Result<Vec<Uuid>>> + Send;
}

macro_rules! sql_repo {
    ($name:ident, $tx:ty, $for_update:literal) => {
        impl OrderRepo for $name {
            type Tx = $tx;

            async fn insert(&self, tx: &mut $tx, row: NewOrderRow<'_>) -> sqlx::Result<Option<i64>> {
                let NewOrderRow { id: OrderId(id), user: UserId(user), order, saga: SagaId(saga_id), idempotency_key } = row;
                let now = now_ms();
                let r = sqlx::query(
                    "INSERT INTO orders (id, user_id, status, currency, total_amount, items, saga_id, idempotency_key, \
                     created_at_ms, updated_at_ms) VALUES (?, ?, 'PENDING', ?, ?, ?, ?, ?, ?, ?)",
                )
                .bind(id.as_bytes().as_slice())
                .bind(user.as_bytes().as_slice())
                .bind(&order.currency)
                .bind(order.total)
                .bind(serde_json::to_string(&order.items).expect("items serialise"))
                .bind(saga_id.as_bytes().as_slice())
                .bind(idempotency_key)
                .bind(now)
                .bind(now)
                .execute(&mut **tx)
                .await;
                match r {
                    Ok(_) => Ok(Some(now)),
                    Err(sqlx::Error::Database(d)) if d.is_unique_violation() => Ok(None),
                    Err(e) => Err(e),
                }
            }

            async fn by_idempotency_key(&self, user: Uuid, key: &str) -> sqlx::Result<Option<Uuid>> {
                let id: Option<Vec<u8>> = sqlx::query_scalar("SELECT id FROM orders WHERE user_id = ? AND idempotency_key = ?")
                    .bind(user.as_bytes().as_slice())
                    .bind(key)
                    .fetch_optional(&self.readers)
                    .await?;
                id.map(|b| Uuid::from_slice(&b).map_err(|e| sqlx::Error::Decode(Box::new(e)))).transpose()
            }

            async fn get(&self, id: Uuid) -> sqlx::Result<Option<OrderRow>> {
                sqlx::query(&format!("{SELECT} WHERE o.id = ?"))
                    .bind(id.as_bytes().as_slice())
                    .fetch_optional(&self.readers)
                    .await?
                    .as_ref()
                    .map(decode)
                    .transpose()
            }

            async fn lock(&self, tx: &mut $tx, id: Uuid) -> sqlx::Result<Option<OrderRow>> {
                sqlx::query(&format!(concat!("{}", " WHERE o.id = ?", $for_update), SELECT))
                    .bind(id.as_bytes().as_slice())
                    .fetch_optional(&mut **tx)
                    .await?
                    .as_ref()
                    .map(decode)
                    .transpose()
            }

            async fn list(&self, user: Uuid, cursor: Option<Cursor>, limit: u32) -> sqlx::Result<Vec<OrderRow>> {
                let rows = match cursor {
                    None => {
                        sqlx::query(&format!("{SELECT} WHERE o.user_id = ? ORDER BY o.created_at_ms DESC, o.id DESC LIMIT ?"))
                            .bind(user.as_bytes().as_slice())
                            .bind(i64::from(limit))
                            .fetch_all(&self.readers)
                            .await?
                    }
                    Some(c) => {
                        sqlx::query(&format!(
                            "{SELECT} WHERE o.user_id = ? AND (o.created_at_ms < ? OR (o.created_at_ms = ? AND o.id < ?)) \
                             ORDER BY o.created_at_ms DESC, o.id DESC LIMIT ?"
                        ))
                        .bind(user.as_bytes().as_slice())
                        .bind(c.created_at)
                        .bind(c.created_at)
                        .bind(c.id.as_bytes().as_slice())
                        .bind(i64::from(limit))
                        .fetch_all(&self.readers)
                        .await?
                    }
                };
                rows.iter().map(decode).collect()
            }

            async fn set_status(&self, tx: &mut $tx, id: Uuid, status: OrderStatus, reason: Option<&str>) -> sqlx::Result<u64> {
                let guard = match status {
                    OrderStatus::Confirmed => " AND status = 'PENDING'",
                    _ => "",
                };
                Ok(sqlx::query(&format!(
                    "UPDATE orders SET status = ?, failure_reason = COALESCE(?, failure_reason), updated_at_ms = ? WHERE id = ?{guard}"
                ))
                .bind(status.as_str())
                .bind(reason)
                .bind(now_ms())
                .bind(id.as_bytes().as_slice())
                .execute(&mut **tx)
                .await?
                .rows_affected())
            }

            async fn confirm(&self, tx: &mut $tx, id: Uuid, payment_id: Option<&str>) -> sqlx::Result<u64> {
                Ok(sqlx::query(
                    "UPDATE orders SET status = 'CONFIRMED', payment_id = COALESCE(?, payment_id), updated_at_ms = ? \
                     WHERE id = ? AND status = 'PENDING'",
                )
                .bind(payment_id)
                .bind(now_ms())
                .bind(id.as_bytes().as_slice())
                .execute(&mut **tx)
                .await?
                .rows_affected())
            }

            async fn set_payment(&self, tx: &mut $tx, id: Uuid, payment_id: &str) -> sqlx::Result<()> {
                sqlx::query("UPDATE orders SET payment_id = ?, updated_at_ms = ? WHERE id = ?")
                    .bind(payment_id)
                    .bind(now_ms())
                    .bind(id.as_bytes().as_slice())
                    .execute(&mut **tx)
                    .await
                    .map(drop)
            }

            async fn set_cancel_saga(&self, tx: &mut $tx, id: Uuid, saga: Uuid) -> sqlx::Result<()> {
                sqlx::query("UPDATE orders SET cancel_saga_id = ?, updated_at_ms = ? WHERE id = ?")
                    .bind(saga.as_bytes().as_slice())
                    .bind(now_ms())
                    .bind(id.as_bytes().as_slice())
                    .execute(&mut **tx)
                    .await
                    .map(drop)
            }

            async fn orders_of_saga(&self, saga: Uuid) -> sqlx::Result<Vec<Uuid>> {
                let ids: Vec<Vec<u8>> = sqlx::query_scalar("SELECT id FROM orders WHERE saga_id = ? OR cancel_saga_id = ?")
                    .bind(saga.as_bytes().as_slice())
                    .bind(saga.as_bytes().as_slice())
                    .fetch_all(&self.readers)
                    .await?;
                ids.iter()
                    .map(|b| Uuid::from_slice(b).map_err(|e| sqlx::Error::Decode(Box::new(e))))
                    .collect()
            }
        }
    };
}

/// MySQL orders.
#[derive(Debug, Clone)]
pub struct MySqlOrders {
    pool: MySqlPool,
    readers: MySqlPool,
}

impl MySqlOrders {
    /// Over `pool`.
    pub fn new(pool: MySqlPool) -> Self {
        Self {
            readers: pool.clone(),
            pool,
        }
    }

    /// Apply migrations: orders, sagas, outbox/inbox.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        let mut m = sqlx::migrate!("./migrations");
        m.set_ignore_missing(true);
        // One lock around all three: replicas starting together take turns.
        let all = [m, outbox::mysql::migrator(), saga_core::mysql::migrator()];
        Ok(outbox::mysql::migrate_all(&self.pool, &all).await?)
    }
}

/// SQLite orders (embedded mode; `BEGIN IMMEDIATE` replaces `FOR UPDATE`).
#[derive(Debug, Clone)]
pub struct SqliteOrders {
    pool: SqlitePool,
    readers: SqlitePool,
}

impl SqliteOrders {
    /// Over `pool`, reading through it too.
    pub fn new(pool: SqlitePool) -> Self {
        Self {
            readers: pool.clone(),
            pool,
        }
    }

    /// Reads outside a transaction (an order, a list, an idempotency key) through
    /// `readers` — connections of their own to the same file
    /// ([`connect_sqlite_readers`](ordersys_kit::db::connect_sqlite_readers)): in WAL
    /// mode they see every committed write and neither wait for the writer nor make it
    /// wait, where the one writing connection would queue them behind every write.
    pub fn with_readers(mut self, readers: SqlitePool) -> Self {
        self.readers = readers;
        self
    }

    /// Apply migrations: orders, sagas, outbox/inbox.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        let mut m = sqlx::migrate!("./migrations-sqlite");
        m.set_ignore_missing(true);
        m.run(&self.pool).await?;
        outbox::sqlite::migrate(&self.pool).await?;
        saga_core::sqlite::migrate(&self.pool).await?;
        Ok(())
    }
}

sql_repo!(MySqlOrders, MySqlTx, " FOR UPDATE");
sql_repo!(SqliteOrders, SqliteTx, "");
