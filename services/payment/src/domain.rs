//! Payment rules, no I/O: what a debit or refund does given the stored state.

/// State of an order's payment row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentStatus {
    /// Money taken.
    Debited,
    /// Debit refused (insufficient funds, currency mismatch); nothing taken.
    Declined,
    /// Money given back.
    Refunded,
    /// Refund before any debit: a tombstone that makes a later debit fail.
    Cancelled,
}

impl PaymentStatus {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Debited => "DEBITED",
            Self::Declined => "DECLINED",
            Self::Refunded => "REFUNDED",
            Self::Cancelled => "CANCELLED",
        }
    }

    /// Parse the stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "DEBITED" => Self::Debited,
            "DECLINED" => Self::Declined,
            "REFUNDED" => Self::Refunded,
            "CANCELLED" => Self::Cancelled,
            _ => return None,
        })
    }
}

/// What a debit command must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DebitDecision {
    /// Take the money and record the payment.
    Take,
    /// Refuse and record the refusal (so a resend gets the same answer).
    Decline(String),
    /// Already debited: answer success again, change nothing.
    AlreadyDebited,
    /// Answer failure again, change nothing.
    AlreadyRefused(String),
}

/// Decide a debit of `amount` `currency` against an account.
pub fn decide_debit(
    existing: Option<(PaymentStatus, Option<String>)>,
    balance: i64,
    account_currency: &str,
    amount: i64,
    currency: &str,
) -> DebitDecision {
    match existing {
        Some((PaymentStatus::Debited, _)) => DebitDecision::AlreadyDebited,
        Some((PaymentStatus::Declined, reason)) => {
            DebitDecision::AlreadyRefused(reason.unwrap_or_else(|| "payment declined".into()))
        }
        Some((PaymentStatus::Refunded | PaymentStatus::Cancelled, _)) => {
            DebitDecision::AlreadyRefused("payment was cancelled".into())
        }
        None => match first_debit(balance, account_currency, amount, currency) {
            Ok(()) => DebitDecision::Take,
            Err(reason) => DebitDecision::Decline(reason),
        },
    }
}

/// The first debit of an order (no payment row yet) of `amount` `currency` against an
/// account: `Ok` takes the money, `Err` declines it with the reason.
pub fn first_debit(
    balance: i64,
    account_currency: &str,
    amount: i64,
    currency: &str,
) -> Result<(), String> {
    if currency != account_currency {
        Err(format!(
            "currency {currency} does not match the account currency {account_currency}"
        ))
    } else if amount <= 0 {
        Err("amount must be positive".into())
    } else if balance < amount {
        Err("insufficient funds".into())
    } else {
        Ok(())
    }
}

/// What a refund command must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefundDecision {
    /// Give the debited money back.
    GiveBack,
    /// No debit happened (yet): leave a tombstone so none will.
    Tombstone,
    /// Nothing to do; answer success.
    Nothing,
}

/// Decide a refund given the order's payment row.
pub fn decide_refund(existing: Option<PaymentStatus>) -> RefundDecision {
    match existing {
        Some(PaymentStatus::Debited) => RefundDecision::GiveBack,
        None => RefundDecision::Tombstone,
        Some(_) => RefundDecision::Nothing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PaymentStatus::*;

    #[test]
    fn debit_rules() {
        assert_eq!(
            decide_debit(None, 100, "USD", 100, "USD"),
            DebitDecision::Take
        );
        assert_eq!(
            decide_debit(None, 99, "USD", 100, "USD"),
            DebitDecision::Decline("insufficient funds".into())
        );
        assert!(
            matches!(decide_debit(None, 1000, "USD", 100, "EUR"), DebitDecision::Decline(r) if r.contains("currency"))
        );
        assert!(matches!(
            decide_debit(None, 1000, "USD", 0, "USD"),
            DebitDecision::Decline(_)
        ));
        // Resends never take money twice and keep their first answer.
        assert_eq!(
            decide_debit(Some((Debited, None)), 0, "USD", 100, "USD"),
            DebitDecision::AlreadyDebited
        );
        assert_eq!(
            decide_debit(
                Some((Declined, Some("insufficient funds".into()))),
                1_000_000,
                "USD",
                100,
                "USD"
            ),
            DebitDecision::AlreadyRefused("insufficient funds".into())
        );
        // A refund that overtook its debit blocks it.
        assert!(matches!(
            decide_debit(Some((Cancelled, None)), 1000, "USD", 100, "USD"),
            DebitDecision::AlreadyRefused(_)
        ));
        assert!(matches!(
            decide_debit(Some((Refunded, None)), 1000, "USD", 100, "USD"),
            DebitDecision::AlreadyRefused(_)
        ));
    }

    #[test]
    fn refund_rules() {
        assert_eq!(decide_refund(Some(Debited)), RefundDecision::GiveBack);
        assert_eq!(decide_refund(None), RefundDecision::Tombstone);
        for s in [Declined, Refunded, Cancelled] {
            assert_eq!(decide_refund(Some(s)), RefundDecision::Nothing);
        }
    }
}
