//! Orders in MySQL. Writes take the unit of work shared with the saga store and the
//! outbox; reads join the create saga's state.

use outbox::mysql::MySqlTx;
use saga_core::SagaState;
use sqlx::mysql::MySqlRow;
use sqlx::{MySqlPool, Row};
use uuid::Uuid;

use crate::domain::{Cursor, Item, OrderStatus};

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

fn uuid(row: &MySqlRow, col: &str) -> sqlx::Result<Uuid> {
    let b: Vec<u8> = row.try_get(col)?;
    Uuid::from_slice(&b).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

fn decode(row: &MySqlRow) -> sqlx::Result<OrderRow> {
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

/// Apply migrations: orders, sagas, outbox/inbox.
pub async fn migrate(pool: &MySqlPool) -> anyhow::Result<()> {
    let mut m = sqlx::migrate!("./migrations");
    m.set_ignore_missing(true);
    m.run(pool).await?;
    outbox::mysql::migrate(pool).await?;
    saga_core::mysql::migrate(pool).await?;
    Ok(())
}

/// Insert a new PENDING order. `Ok(false)` if the user's idempotency key is taken.
#[allow(clippy::too_many_arguments)]
pub async fn insert(
    tx: &mut MySqlTx,
    id: Uuid,
    user: Uuid,
    currency: &str,
    total: i64,
    items: &[Item],
    saga_id: Uuid,
    idempotency_key: Option<&str>,
) -> sqlx::Result<bool> {
    let now = now_ms();
    let r = sqlx::query(
        "INSERT INTO orders (id, user_id, status, currency, total_amount, items, saga_id, idempotency_key, \
         created_at_ms, updated_at_ms) VALUES (?, ?, 'PENDING', ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(id.as_bytes().as_slice())
    .bind(user.as_bytes().as_slice())
    .bind(currency)
    .bind(total)
    .bind(serde_json::to_string(items).expect("items serialise"))
    .bind(saga_id.as_bytes().as_slice())
    .bind(idempotency_key)
    .bind(now)
    .bind(now)
    .execute(&mut **tx)
    .await;
    match r {
        Ok(_) => Ok(true),
        Err(sqlx::Error::Database(d)) if d.is_unique_violation() => Ok(false),
        Err(e) => Err(e),
    }
}

/// The order a user created with `key`.
pub async fn by_idempotency_key(
    pool: &MySqlPool,
    user: Uuid,
    key: &str,
) -> sqlx::Result<Option<Uuid>> {
    let id: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT id FROM orders WHERE user_id = ? AND idempotency_key = ?")
            .bind(user.as_bytes().as_slice())
            .bind(key)
            .fetch_optional(pool)
            .await?;
    id.map(|b| Uuid::from_slice(&b).map_err(|e| sqlx::Error::Decode(Box::new(e))))
        .transpose()
}

/// Read an order.
pub async fn get(pool: &MySqlPool, id: Uuid) -> sqlx::Result<Option<OrderRow>> {
    sqlx::query(&format!("{SELECT} WHERE o.id = ?"))
        .bind(id.as_bytes().as_slice())
        .fetch_optional(pool)
        .await?
        .as_ref()
        .map(decode)
        .transpose()
}

/// Read and lock an order in `tx`.
pub async fn lock(tx: &mut MySqlTx, id: Uuid) -> sqlx::Result<Option<OrderRow>> {
    sqlx::query(&format!("{SELECT} WHERE o.id = ? FOR UPDATE"))
        .bind(id.as_bytes().as_slice())
        .fetch_optional(&mut **tx)
        .await?
        .as_ref()
        .map(decode)
        .transpose()
}

/// A page of a user's orders, newest first, after `cursor`.
pub async fn list(
    pool: &MySqlPool,
    user: Uuid,
    cursor: Option<Cursor>,
    limit: u32,
) -> sqlx::Result<Vec<OrderRow>> {
    let rows = match cursor {
        None => {
            sqlx::query(&format!(
                "{SELECT} WHERE o.user_id = ? ORDER BY o.created_at_ms DESC, o.id DESC LIMIT ?"
            ))
            .bind(user.as_bytes().as_slice())
            .bind(limit)
            .fetch_all(pool)
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
            .bind(limit)
            .fetch_all(pool)
            .await?
        }
    };
    rows.iter().map(decode).collect()
}

/// Change status (and the failure reason, when given).
pub async fn set_status(
    tx: &mut MySqlTx,
    id: Uuid,
    status: OrderStatus,
    reason: Option<&str>,
) -> sqlx::Result<u64> {
    let guard = match status {
        // Only a pending order can be confirmed.
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

/// Record the payment id.
pub async fn set_payment(tx: &mut MySqlTx, id: Uuid, payment_id: &str) -> sqlx::Result<()> {
    sqlx::query("UPDATE orders SET payment_id = ?, updated_at_ms = ? WHERE id = ?")
        .bind(payment_id)
        .bind(now_ms())
        .bind(id.as_bytes().as_slice())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Record the cancel saga.
pub async fn set_cancel_saga(tx: &mut MySqlTx, id: Uuid, saga: Uuid) -> sqlx::Result<()> {
    sqlx::query("UPDATE orders SET cancel_saga_id = ?, updated_at_ms = ? WHERE id = ?")
        .bind(saga.as_bytes().as_slice())
        .bind(now_ms())
        .bind(id.as_bytes().as_slice())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The orders that sagas belong to.
pub async fn orders_of_saga(pool: &MySqlPool, saga: Uuid) -> sqlx::Result<Vec<Uuid>> {
    let ids: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT id FROM orders WHERE saga_id = ? OR cancel_saga_id = ?")
            .bind(saga.as_bytes().as_slice())
            .bind(saga.as_bytes().as_slice())
            .fetch_all(pool)
            .await?;
    ids.iter()
        .map(|b| Uuid::from_slice(b).map_err(|e| sqlx::Error::Decode(Box::new(e))))
        .collect()
}
