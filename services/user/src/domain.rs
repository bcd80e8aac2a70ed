//! Users: types and rules, no I/O.

use std::fmt;

use uuid::Uuid;

/// A user's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UserId(pub Uuid);

impl UserId {
    /// A new id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    /// Parse the text form.
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        Uuid::parse_str(s)
            .map(Self)
            .map_err(|_| ValidationError::BadUserId)
    }
}

impl Default for UserId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A normalised (trimmed, lower-case) e-mail address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

/// Why input was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// Not an e-mail address.
    #[error("email is not a valid address")]
    BadEmail,
    /// Too short.
    #[error("password must be at least {MIN_PASSWORD} characters")]
    ShortPassword,
    /// Too long.
    #[error("password must be at most {MAX_PASSWORD} characters")]
    LongPassword,
    /// Not a user id.
    #[error("user id is not valid")]
    BadUserId,
}

/// Minimum password length in characters.
pub const MIN_PASSWORD: usize = 8;
/// Maximum password length in characters (bounds hashing cost).
pub const MAX_PASSWORD: usize = 128;

impl Email {
    /// Validate and normalise.
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let s = raw.trim().to_lowercase();
        if s.len() > 254 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ValidationError::BadEmail);
        }
        let (local, domain) = s.split_once('@').ok_or(ValidationError::BadEmail)?;
        let labels_ok = domain.split('.').all(|l| {
            !l.is_empty()
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_alphanumeric() || c == '-')
        });
        if local.is_empty()
            || local.len() > 64
            || domain.contains('@')
            || !domain.contains('.')
            || !labels_ok
        {
            return Err(ValidationError::BadEmail);
        }
        Ok(Self(s))
    }

    /// The address.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A password that satisfies the length rules. Its `Debug` never shows it.
#[derive(Clone)]
pub struct Password(String);

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

impl Password {
    /// Validate a new password.
    pub fn new(raw: &str) -> Result<Self, ValidationError> {
        let n = raw.chars().count();
        if n < MIN_PASSWORD {
            return Err(ValidationError::ShortPassword);
        }
        if n > MAX_PASSWORD {
            return Err(ValidationError::LongPassword);
        }
        Ok(Self(raw.to_owned()))
    }

    /// The secret (for hashing only).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// A stored user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Id.
    pub id: UserId,
    /// Address.
    pub email: Email,
    /// argon2id PHC string.
    pub password_hash: String,
    /// Unix milliseconds.
    pub created_at: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_validated_and_normalised() {
        assert_eq!(
            Email::parse("  Alice@Example.COM ").unwrap().as_str(),
            "alice@example.com"
        );
        for bad in [
            "",
            "alice",
            "@example.com",
            "alice@",
            "alice@example",
            "a b@example.com",
            "a@b@c.com",
            "alice@-x.com",
            "alice@example..com",
        ] {
            assert_eq!(Email::parse(bad), Err(ValidationError::BadEmail), "{bad:?}");
        }
        assert!(Email::parse(&format!("{}@example.com", "a".repeat(65))).is_err());
    }

    #[test]
    fn passwords_have_length_bounds_and_stay_secret() {
        assert_eq!(
            Password::new("short").unwrap_err(),
            ValidationError::ShortPassword
        );
        assert_eq!(
            Password::new(&"x".repeat(129)).unwrap_err(),
            ValidationError::LongPassword
        );
        let p = Password::new("correct horse").unwrap();
        assert!(!format!("{p:?}").contains("horse"));
        // Length counts characters, not bytes.
        assert!(Password::new("пароль12").is_ok());
    }
}
