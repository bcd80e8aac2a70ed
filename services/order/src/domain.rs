//! Orders: types and rules, no I/O.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Currencies an order may be placed in (ISO 4217).
pub const CURRENCIES: &[&str] = &["USD", "EUR", "GBP", "RUB", "JPY", "CHF", "CNY"];
/// Most items per order.
pub const MAX_ITEMS: usize = 100;

/// Order status (SPEC: PENDING, CONFIRMED, CANCELLED).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    /// Placed; payment in progress.
    Pending,
    /// Paid.
    Confirmed,
    /// Cancelled (payment declined, timed out, or cancelled by the user; any debit refunded).
    Cancelled,
}

impl OrderStatus {
    /// Stored / shown name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Confirmed => "CONFIRMED",
            Self::Cancelled => "CANCELLED",
        }
    }

    /// Parse the stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "PENDING" => Self::Pending,
            "CONFIRMED" => Self::Confirmed,
            "CANCELLED" => Self::Cancelled,
            _ => return None,
        })
    }
}

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    /// Product id.
    pub product_id: String,
    /// How many (> 0).
    pub quantity: i32,
    /// Price of one, minor units (> 0).
    pub unit_price: i64,
}

/// Why an order was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// No items.
    #[error("an order needs at least one item")]
    NoItems,
    /// Too many items.
    #[error("an order may have at most {MAX_ITEMS} items")]
    TooManyItems,
    /// Empty or overlong product id.
    #[error("item {0}: product_id must be 1 to 64 characters")]
    BadProduct(usize),
    /// quantity ≤ 0.
    #[error("item {0}: quantity must be positive")]
    BadQuantity(usize),
    /// unit_price ≤ 0.
    #[error("item {0}: unit_price must be positive")]
    BadPrice(usize),
    /// Not a supported currency.
    #[error("unknown currency {0:?}")]
    BadCurrency(String),
    /// A currency no wallet holds: the debit could only ever be declined.
    #[error("currency {0} is not accepted here (wallets hold {1})")]
    CurrencyNotAccepted(String, String),
    /// The total does not fit.
    #[error("order total is too large")]
    Overflow,
    /// Page size out of range.
    #[error("limit must be between 1 and 100")]
    BadLimit,
    /// Cursor not one we issued.
    #[error("cursor is not valid")]
    BadCursor,
    /// Idempotency key too long or empty.
    #[error("Idempotency-Key must be 1 to 128 printable ASCII characters")]
    BadIdempotencyKey,
}

/// An order's id (also its create saga's id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OrderId(pub Uuid);

/// A user's id (from the caller's token).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UserId(pub Uuid);

/// A validated new order: items, currency, total.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrder {
    /// Lines.
    pub items: Vec<Item>,
    /// Currency.
    pub currency: String,
    /// Σ quantity × unit_price.
    pub total: i64,
}

impl NewOrder {
    /// Validate items and currency and compute the total (checked).
    pub fn new(items: Vec<Item>, currency: &str) -> Result<Self, ValidationError> {
        if items.is_empty() {
            return Err(ValidationError::NoItems);
        }
        if items.len() > MAX_ITEMS {
            return Err(ValidationError::TooManyItems);
        }
        if !CURRENCIES.contains(&currency) {
            return Err(ValidationError::BadCurrency(currency.to_owned()));
        }
        let mut total: i64 = 0;
        for (i, it) in items.iter().enumerate() {
            if it.product_id.is_empty() || it.product_id.chars().count() > 64 {
                return Err(ValidationError::BadProduct(i));
            }
            if it.quantity <= 0 {
                return Err(ValidationError::BadQuantity(i));
            }
            if it.unit_price <= 0 {
                return Err(ValidationError::BadPrice(i));
            }
            let line = it
                .unit_price
                .checked_mul(i64::from(it.quantity))
                .ok_or(ValidationError::Overflow)?;
            total = total.checked_add(line).ok_or(ValidationError::Overflow)?;
        }
        Ok(Self {
            items,
            currency: currency.to_owned(),
            total,
        })
    }
}

/// Validate a client idempotency key.
pub fn idempotency_key(raw: &str) -> Result<Option<String>, ValidationError> {
    if raw.is_empty() {
        return Ok(None);
    }
    if raw.len() > 128 || !raw.bytes().all(|b| (0x21..0x7f).contains(&b)) {
        return Err(ValidationError::BadIdempotencyKey);
    }
    Ok(Some(raw.to_owned()))
}

/// A stored order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    /// Id.
    pub id: Uuid,
    /// Owner.
    pub user_id: Uuid,
    /// Status.
    pub status: OrderStatus,
    /// Currency.
    pub currency: String,
    /// Total, minor units.
    pub total: i64,
    /// Lines.
    pub items: Vec<Item>,
    /// Set once paid.
    pub payment_id: Option<String>,
    /// Why it was cancelled.
    pub failure_reason: Option<String>,
    /// The create-order saga.
    pub saga_id: Uuid,
    /// The cancel saga, if the user cancelled a confirmed order.
    pub cancel_saga_id: Option<Uuid>,
    /// The create saga's state label (STARTED, PAYMENT_PENDING, COMPLETED, …).
    pub saga_state: String,
    /// Unix milliseconds.
    pub created_at: i64,
}

/// What the saga carries: enough to build its commands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaData {
    /// The order.
    pub order_id: Uuid,
    /// Its owner.
    pub user_id: Uuid,
    /// Amount to debit / refund.
    pub amount: i64,
    /// Its currency.
    pub currency: String,
    /// Correlation id of the request that started the saga.
    pub correlation_id: String,
    /// Trace context of that request.
    pub traceparent: String,
}

/// Opaque pagination cursor: newest first, by (created_at, id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// created_at of the last order returned.
    pub created_at: i64,
    /// Its id.
    pub id: Uuid,
}

impl Cursor {
    /// Encode as `<created_at>_<id hex>`.
    pub fn encode(&self) -> String {
        format!("{}_{}", self.created_at, self.id.simple())
    }

    /// Decode; `None` if malformed.
    pub fn decode(s: &str) -> Option<Self> {
        let (t, id) = s.split_once('_')?;
        Some(Self {
            created_at: t.parse().ok()?,
            id: Uuid::parse_str(id).ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(q: i32, p: i64) -> Item {
        Item {
            product_id: "sku-1".into(),
            quantity: q,
            unit_price: p,
        }
    }

    #[test]
    fn totals_and_rules() {
        let o = NewOrder::new(vec![item(2, 1500), item(1, 250)], "USD").unwrap();
        assert_eq!(o.total, 3250);
        assert_eq!(NewOrder::new(vec![], "USD"), Err(ValidationError::NoItems));
        assert_eq!(
            NewOrder::new(vec![item(0, 1)], "USD"),
            Err(ValidationError::BadQuantity(0))
        );
        assert_eq!(
            NewOrder::new(vec![item(1, 1), item(-1, 1)], "USD"),
            Err(ValidationError::BadQuantity(1))
        );
        assert_eq!(
            NewOrder::new(vec![item(1, 0)], "USD"),
            Err(ValidationError::BadPrice(0))
        );
        assert_eq!(
            NewOrder::new(vec![item(1, 1)], "XYZ"),
            Err(ValidationError::BadCurrency("XYZ".into()))
        );
        assert_eq!(
            NewOrder::new(vec![item(1, 1)], "usd"),
            Err(ValidationError::BadCurrency("usd".into()))
        );
        assert_eq!(
            NewOrder::new(vec![item(i32::MAX, i64::MAX / 2)], "USD"),
            Err(ValidationError::Overflow)
        );
        let empty = Item {
            product_id: String::new(),
            quantity: 1,
            unit_price: 1,
        };
        assert_eq!(
            NewOrder::new(vec![empty], "USD"),
            Err(ValidationError::BadProduct(0))
        );
        assert_eq!(
            NewOrder::new(vec![item(1, 1); 101], "USD"),
            Err(ValidationError::TooManyItems)
        );
    }

    #[test]
    fn idempotency_keys_and_cursors() {
        assert_eq!(idempotency_key("").unwrap(), None);
        assert_eq!(
            idempotency_key("abc-123").unwrap().as_deref(),
            Some("abc-123")
        );
        assert!(idempotency_key("has space").is_err());
        assert!(idempotency_key(&"k".repeat(129)).is_err());
        let c = Cursor {
            created_at: 1_700_000_000_123,
            id: Uuid::now_v7(),
        };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        assert_eq!(Cursor::decode("garbage"), None);
        assert_eq!(Cursor::decode("12_nothex"), None);
    }
}
