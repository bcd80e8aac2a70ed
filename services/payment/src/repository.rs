//! Accounts and payments in MySQL, inside the consumer's transaction.

use outbox::mysql::MySqlTx;
use sqlx::{MySqlPool, Row};
use uuid::Uuid;

use crate::domain::PaymentStatus;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Apply the service's migrations (and the outbox/inbox tables).
pub async fn migrate(pool: &MySqlPool) -> anyhow::Result<()> {
    let mut m = sqlx::migrate!("./migrations");
    m.set_ignore_missing(true);
    m.run(pool).await?;
    outbox::mysql::migrate(pool).await?;
    Ok(())
}

/// Open the account with `initial` if it does not exist.
pub async fn ensure_account<'c, E>(
    db: E,
    user: Uuid,
    initial: i64,
    currency: &str,
) -> sqlx::Result<()>
where
    E: sqlx::Executor<'c, Database = sqlx::MySql>,
{
    sqlx::query("INSERT IGNORE INTO accounts (user_id, balance, currency, updated_at_ms) VALUES (?, ?, ?, ?)")
        .bind(user.as_bytes().as_slice())
        .bind(initial)
        .bind(currency)
        .bind(now_ms())
        .execute(db)
        .await?;
    Ok(())
}

/// Balance and currency (locks the row in `tx`).
pub async fn lock_account(tx: &mut MySqlTx, user: Uuid) -> sqlx::Result<(i64, String)> {
    let row = sqlx::query("SELECT balance, currency FROM accounts WHERE user_id = ? FOR UPDATE")
        .bind(user.as_bytes().as_slice())
        .fetch_one(&mut **tx)
        .await?;
    Ok((row.try_get("balance")?, row.try_get("currency")?))
}

/// Balance and currency.
pub async fn account(pool: &MySqlPool, user: Uuid) -> sqlx::Result<(i64, String)> {
    let row = sqlx::query("SELECT balance, currency FROM accounts WHERE user_id = ?")
        .bind(user.as_bytes().as_slice())
        .fetch_one(pool)
        .await?;
    Ok((row.try_get("balance")?, row.try_get("currency")?))
}

/// Add `delta` to the balance.
pub async fn add_balance(tx: &mut MySqlTx, user: Uuid, delta: i64) -> sqlx::Result<()> {
    sqlx::query("UPDATE accounts SET balance = balance + ?, updated_at_ms = ? WHERE user_id = ?")
        .bind(delta)
        .bind(now_ms())
        .bind(user.as_bytes().as_slice())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// An order's payment row, locked in `tx`.
#[derive(Debug, Clone)]
pub struct PaymentRow {
    /// Payment id.
    pub id: Uuid,
    /// Status.
    pub status: PaymentStatus,
    /// Why it was declined.
    pub reason: Option<String>,
    /// Amount.
    pub amount: i64,
}

/// The payment of `order`, locked.
pub async fn lock_payment(tx: &mut MySqlTx, order: Uuid) -> sqlx::Result<Option<PaymentRow>> {
    let row = sqlx::query(
        "SELECT id, status, reason, amount FROM payments WHERE order_id = ? FOR UPDATE",
    )
    .bind(order.as_bytes().as_slice())
    .fetch_optional(&mut **tx)
    .await?;
    row.map(|r| {
        let id: Vec<u8> = r.try_get("id")?;
        let status: String = r.try_get("status")?;
        Ok(PaymentRow {
            id: Uuid::from_slice(&id).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
            status: PaymentStatus::parse(&status)
                .ok_or_else(|| sqlx::Error::Decode(format!("status {status}").into()))?,
            reason: r.try_get("reason")?,
            amount: r.try_get("amount")?,
        })
    })
    .transpose()
}

/// Record the payment of `order` (the unique key on `order_id` refuses a second one).
#[allow(clippy::too_many_arguments)]
pub async fn insert_payment(
    tx: &mut MySqlTx,
    id: Uuid,
    order: Uuid,
    user: Uuid,
    amount: i64,
    currency: &str,
    status: PaymentStatus,
    reason: Option<&str>,
) -> sqlx::Result<()> {
    let now = now_ms();
    sqlx::query(
        "INSERT INTO payments (id, order_id, user_id, amount, currency, status, reason, created_at_ms, updated_at_ms) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(id.as_bytes().as_slice())
    .bind(order.as_bytes().as_slice())
    .bind(user.as_bytes().as_slice())
    .bind(amount)
    .bind(currency)
    .bind(status.as_str())
    .bind(reason)
    .bind(now)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Change a payment's status.
pub async fn set_status(tx: &mut MySqlTx, id: Uuid, status: PaymentStatus) -> sqlx::Result<()> {
    sqlx::query("UPDATE payments SET status = ?, updated_at_ms = ? WHERE id = ?")
        .bind(status.as_str())
        .bind(now_ms())
        .bind(id.as_bytes().as_slice())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// How many payments of `order` are `DEBITED` (tests and checks: never more than one).
pub async fn debits_of(pool: &MySqlPool, order: Uuid) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT COUNT(*) FROM payments WHERE order_id = ? AND status = 'DEBITED'")
        .bind(order.as_bytes().as_slice())
        .fetch_one(pool)
        .await
}
