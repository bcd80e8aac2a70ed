//! Accounts and payments: the [`PaymentRepo`] the use cases need, inside the consumer's
//! unit of work, with a MySQL and a SQLite implementation.

use std::future::Future;

use outbox::mysql::MySqlTx;
use outbox::sqlite::SqliteTx;
use sqlx::{MySqlPool, Row, SqlitePool};
use uuid::Uuid;

use crate::domain::PaymentStatus;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// An order's payment row.
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
    /// Who paid (and gets a refund).
    pub user: Uuid,
}

/// A payment row to insert.
#[derive(Debug, Clone)]
pub struct NewPayment<'a> {
    /// Payment id.
    pub id: Uuid,
    /// The order (unique: one payment row per order).
    pub order: Uuid,
    /// The payer.
    pub user: Uuid,
    /// Amount, minor units.
    pub amount: i64,
    /// Currency.
    pub currency: &'a str,
    /// Status.
    pub status: PaymentStatus,
    /// Why (declines, tombstones).
    pub reason: Option<&'a str>,
}

/// Persistence of accounts and payments. Writes take the unit of work shared with the
/// inbox and the outbox.
pub trait PaymentRepo: Clone + Send + Sync + 'static {
    /// The unit of work.
    type Tx: Send + 'static;
    /// Open the account with `initial` if missing (inside `tx`).
    fn ensure_account(
        &self,
        tx: &mut Self::Tx,
        user: Uuid,
        initial: i64,
        currency: &str,
    ) -> impl Future<Output = sqlx::Result<()>> + Send;
    /// Open the account with `initial` if missing (own statement).
    fn open_account(
        &self,
        user: Uuid,
        initial: i64,
        currency: &str,
    ) -> impl Future<Output = sqlx::Result<()>> + Send;
    /// Balance and currency, write-locked for the rest of `tx`; `None` if there is no
    /// account yet.
    fn lock_account(
        &self,
        tx: &mut Self::Tx,
        user: Uuid,
    ) -> impl Future<Output = sqlx::Result<Option<(i64, String)>>> + Send;
    /// Balance and currency.
    fn account(&self, user: Uuid) -> impl Future<Output = sqlx::Result<(i64, String)>> + Send;
    /// Take `amount` from the account if it holds that much in `currency` — the check
    /// and the change in one statement, which write-locks the account as
    /// [`lock_account`](Self::lock_account) would: `false` (nothing changed) when it
    /// does not (or there is no account yet).
    fn take_balance(
        &self,
        tx: &mut Self::Tx,
        user: Uuid,
        amount: i64,
        currency: &str,
    ) -> impl Future<Output = sqlx::Result<bool>> + Send;
    /// Add `delta` to the balance.
    fn add_balance(
        &self,
        tx: &mut Self::Tx,
        user: Uuid,
        delta: i64,
    ) -> impl Future<Output = sqlx::Result<()>> + Send;
    /// The payment of `order`, write-locked.
    fn lock_payment(
        &self,
        tx: &mut Self::Tx,
        order: Uuid,
    ) -> impl Future<Output = sqlx::Result<Option<PaymentRow>>> + Send;
    /// Record a payment unless the order has one: `false` (nothing written) when the
    /// unique `order_id` already holds a row — one statement where a read and a write
    /// would be two, and the claim that makes a second debit impossible.
    fn insert_payment(
        &self,
        tx: &mut Self::Tx,
        p: NewPayment<'_>,
    ) -> impl Future<Output = sqlx::Result<bool>> + Send;
    /// Change a payment's status.
    fn set_status(
        &self,
        tx: &mut Self::Tx,
        id: Uuid,
        status: PaymentStatus,
    ) -> impl Future<Output = sqlx::Result<()>> + Send;
}

fn decode_payment<R: Row>(r: &R) -> sqlx::Result<PaymentRow>
where
    for<'r> Vec<u8>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'c> &'c str: sqlx::ColumnIndex<R>,
{
    let id: Vec<u8> = r.try_get("id")?;
    let user: Vec<u8> = r.try_get("user_id")?;
    let status: String = r.try_get("status")?;
    Ok(PaymentRow {
        id: Uuid::from_slice(&id).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
        status: PaymentStatus::parse(&status)
            .ok_or_else(|| sqlx::Error::Decode(format!("status {status}").into()))?,
        reason: r.try_get("reason")?,
        amount: r.try_get("amount")?,
        user: Uuid::from_slice(&user).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
    })
}

macro_rules! sql_repo {
    ($name:ident, $pool:ty, $tx:ty, $insert_ignore:literal, $for_update:literal) => {
        impl PaymentRepo for $name {
            type Tx = $tx;

            async fn ensure_account(&self, tx: &mut $tx, user: Uuid, initial: i64, currency: &str) -> sqlx::Result<()> {
                sqlx::query(concat!($insert_ignore, " INTO accounts (user_id, balance, currency, updated_at_ms) VALUES (?, ?, ?, ?)"))
                    .bind(user.as_bytes().as_slice())
                    .bind(initial)
                    .bind(currency)
                    .bind(now_ms())
                    .execute(&mut **tx)
                    .await
                    .map(drop)
            }

            async fn open_account(&self, user: Uuid, initial: i64, currency: &str) -> sqlx::Result<()> {
                sqlx::query(concat!($insert_ignore, " INTO accounts (user_id, balance, currency, updated_at_ms) VALUES (?, ?, ?, ?)"))
                    .bind(user.as_bytes().as_slice())
                    .bind(initial)
                    .bind(currency)
                    .bind(now_ms())
                    .execute(&self.pool)
                    .await
                    .map(drop)
            }

            async fn lock_account(&self, tx: &mut $tx, user: Uuid) -> sqlx::Result<Option<(i64, String)>> {
                let row = sqlx::query(concat!("SELECT balance, currency FROM accounts WHERE user_id = ?", $for_update))
                    .bind(user.as_bytes().as_slice())
                    .fetch_optional(&mut **tx)
                    .await?;
                row.map(|row| Ok((row.try_get("balance")?, row.try_get("currency")?)))
                    .transpose()
            }

            async fn account(&self, user: Uuid) -> sqlx::Result<(i64, String)> {
                let row = sqlx::query("SELECT balance, currency FROM accounts WHERE user_id = ?")
                    .bind(user.as_bytes().as_slice())
                    .fetch_one(&self.pool)
                    .await?;
                Ok((row.try_get("balance")?, row.try_get("currency")?))
            }

            async fn take_balance(&self, tx: &mut $tx, user: Uuid, amount: i64, currency: &str) -> sqlx::Result<bool> {
                sqlx::query(
                    "UPDATE accounts SET balance = balance - ?, updated_at_ms = ? \
                     WHERE user_id = ? AND currency = ? AND balance >= ?",
                )
                .bind(amount)
                .bind(now_ms())
                .bind(user.as_bytes().as_slice())
                .bind(currency)
                .bind(amount)
                .execute(&mut **tx)
                .await
                .map(|r| r.rows_affected() == 1)
            }

            async fn add_balance(&self, tx: &mut $tx, user: Uuid, delta: i64) -> sqlx::Result<()> {
                sqlx::query("UPDATE accounts SET balance = balance + ?, updated_at_ms = ? WHERE user_id = ?")
                    .bind(delta)
                    .bind(now_ms())
                    .bind(user.as_bytes().as_slice())
                    .execute(&mut **tx)
                    .await
                    .map(drop)
            }

            async fn lock_payment(&self, tx: &mut $tx, order: Uuid) -> sqlx::Result<Option<PaymentRow>> {
                sqlx::query(concat!("SELECT id, status, reason, amount, user_id FROM payments WHERE order_id = ?", $for_update))
                    .bind(order.as_bytes().as_slice())
                    .fetch_optional(&mut **tx)
                    .await?
                    .as_ref()
                    .map(decode_payment)
                    .transpose()
            }

            async fn insert_payment(&self, tx: &mut $tx, p: NewPayment<'_>) -> sqlx::Result<bool> {
                let now = now_ms();
                sqlx::query(concat!(
                    $insert_ignore,
                    " INTO payments (id, order_id, user_id, amount, currency, status, reason, created_at_ms, updated_at_ms) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                ))
                .bind(p.id.as_bytes().as_slice())
                .bind(p.order.as_bytes().as_slice())
                .bind(p.user.as_bytes().as_slice())
                .bind(p.amount)
                .bind(p.currency)
                .bind(p.status.as_str())
                .bind(p.reason)
                .bind(now)
                .bind(now)
                .execute(&mut **tx)
                .await
                .map(|r| r.rows_affected() == 1)
            }

            async fn set_status(&self, tx: &mut $tx, id: Uuid, status: PaymentStatus) -> sqlx::Result<()> {
                sqlx::query("UPDATE payments SET status = ?, updated_at_ms = ? WHERE id = ?")
                    .bind(status.as_str())
                    .bind(now_ms())
                    .bind(id.as_bytes().as_slice())
                    .execute(&mut **tx)
                    .await
                    .map(drop)
            }
        }
    };
}

/// MySQL accounts and payments.
#[derive(Debug, Clone)]
pub struct MySqlPayments {
    pool: MySqlPool,
}

impl MySqlPayments {
    /// Over `pool`.
    pub fn new(pool: MySqlPool) -> Self {
        Self { pool }
    }

    /// Apply the service's migrations (and the outbox/inbox tables).
    pub async fn migrate(&self) -> anyhow::Result<()> {
        let mut m = sqlx::migrate!("./migrations");
        m.set_ignore_missing(true);
        // One lock around both: replicas starting together take turns.
        Ok(outbox::mysql::migrate_all(&self.pool, &[m, outbox::mysql::migrator()]).await?)
    }
}

/// SQLite accounts and payments (embedded mode). SQLite has no `FOR UPDATE`: the
/// `BEGIN IMMEDIATE` unit of work already holds the database's write lock.
#[derive(Debug, Clone)]
pub struct SqlitePayments {
    pool: SqlitePool,
}

impl SqlitePayments {
    /// Over `pool`.
    pub fn new(pool: SqlitePool) -> Self {
        Self { pool }
    }

    /// Apply the service's SQLite migrations (and the outbox/inbox tables).
    pub async fn migrate(&self) -> anyhow::Result<()> {
        let mut m = sqlx::migrate!("./migrations-sqlite");
        m.set_ignore_missing(true);
        m.run(&self.pool).await?;
        outbox::sqlite::migrate(&self.pool).await?;
        Ok(())
    }
}

sql_repo!(
    MySqlPayments,
    MySqlPool,
    MySqlTx,
    "INSERT IGNORE",
    " FOR UPDATE"
);
sql_repo!(SqlitePayments, SqlitePool, SqliteTx, "INSERT OR IGNORE", "");
