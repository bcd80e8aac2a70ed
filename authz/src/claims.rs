//! Token claims.

use std::fmt;
use std::time::Duration;

use serde::de::{self, DeserializeOwned, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{Error, Result};

/// The registered claims every ordersys token carries, in their wire order.
pub(crate) const REGISTERED: [&str; 7] = ["sub", "jti", "iat", "nbf", "exp", "iss", "aud"];

/// The claims of an access token: the seven registered ones, all required when
/// validating, and any claims of the application's own in [`extra`](Self::extra) —
/// roles, scopes, a tenant id.
///
/// Scopes and roles follow RFC 9068 (JWT access tokens): `scope` is one string of
/// space-separated scopes, `roles` an array of strings.
///
/// ```
/// use authz::{Claims, SigningKey, TokenIssuer};
/// use serde_json::json;
///
/// # fn main() -> authz::Result<()> {
/// let key = SigningKey::hs256(b"an-example-secret-of-at-least-32-bytes!")?;
/// let issuer = TokenIssuer::new(key.clone(), "ordersys", "ordersys-api");
/// let issued = issuer.issue_with(
///     "user-42",
///     [
///         ("scope", json!("orders:read orders:write")),
///         ("roles", json!(["support"])),
///         ("tenant", json!("acme")),
///     ],
/// )?;
/// let claims = issuer.validator().validate(&issued.token)?;
/// assert!(claims.has_scope("orders:write"));
/// assert!(claims.has_role("support"));
/// assert_eq!(claims.claim::<String>("tenant")?, Some("acme".to_owned()));
/// assert_eq!(claims.claim::<String>("region")?, None);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Claims {
    /// Subject: the user id.
    pub sub: String,
    /// Unique token id, the key of the revocation blacklist.
    pub jti: String,
    /// Issued at (unix seconds).
    pub iat: i64,
    /// Not before (unix seconds).
    pub nbf: i64,
    /// Expires at (unix seconds).
    pub exp: i64,
    /// Issuer.
    pub iss: String,
    /// Audience.
    pub aud: String,
    /// Every other claim of the token, by name (never one of the seven above).
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Claims {
    /// Lifetime left at `now` (unix seconds), zero once expired.
    pub fn remaining(&self, now: i64) -> Duration {
        Duration::from_secs(self.exp.saturating_sub(now).max(0) as u64)
    }

    /// The application's claim `name` as a `T`: `Ok(None)` when the token does not carry
    /// it, [`Error::Malformed`] when it is not a `T`.
    pub fn claim<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>> {
        self.extra
            .get(name)
            .map(|v| {
                T::deserialize(v).map_err(|e| Error::Malformed(format!("claim `{name}`: {e}")))
            })
            .transpose()
    }

    /// The token's scopes: the space-separated words of its `scope` claim (none when
    /// the claim is absent or not a string).
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.extra
            .get("scope")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("")
            .split_ascii_whitespace()
    }

    /// Whether `scope` is one of [`scopes`](Self::scopes).
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes().any(|s| s == scope)
    }

    /// The token's roles: the strings of its `roles` claim (an array; a single string
    /// counts as one role).
    pub fn roles(&self) -> impl Iterator<Item = &str> {
        let (one, many) = match self.extra.get("roles") {
            Some(serde_json::Value::String(s)) => (Some(s.as_str()), None),
            Some(serde_json::Value::Array(a)) => (None, Some(a.iter())),
            _ => (None, None),
        };
        one.into_iter()
            .chain(many.into_iter().flatten().filter_map(|v| v.as_str()))
    }

    /// Whether `role` is one of [`roles`](Self::roles).
    pub fn has_role(&self, role: &str) -> bool {
        self.roles().any(|r| r == role)
    }
}

impl Serialize for Claims {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(REGISTERED.len() + self.extra.len()))?;
        map.serialize_entry("sub", &self.sub)?;
        map.serialize_entry("jti", &self.jti)?;
        map.serialize_entry("iat", &self.iat)?;
        map.serialize_entry("nbf", &self.nbf)?;
        map.serialize_entry("exp", &self.exp)?;
        map.serialize_entry("iss", &self.iss)?;
        map.serialize_entry("aud", &self.aud)?;
        for (name, value) in &self.extra {
            // A registered name in `extra` would make a second, conflicting entry.
            if !REGISTERED.contains(&name.as_str()) {
                map.serialize_entry(name, value)?;
            }
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Claims {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        deserializer.deserialize_map(ClaimsVisitor)
    }
}

struct ClaimsVisitor;

impl<'de> Visitor<'de> for ClaimsVisitor {
    type Value = Claims;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object of JWT claims")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Claims, A::Error> {
        // The registered claims are read straight into their fields (no intermediate
        // `Value`): this runs for every authenticated request.
        let mut sub = None;
        let mut jti = None;
        let mut iat = None;
        let mut nbf = None;
        let mut exp = None;
        let mut iss = None;
        let mut aud = None;
        let mut extra = serde_json::Map::new();
        while let Some(key) = map.next_key::<Key>()? {
            fn once<'de, T: Deserialize<'de>, A: MapAccess<'de>>(
                slot: &mut Option<T>,
                name: &'static str,
                map: &mut A,
            ) -> std::result::Result<(), A::Error> {
                if slot.is_some() {
                    return Err(de::Error::duplicate_field(name));
                }
                *slot = Some(map.next_value()?);
                Ok(())
            }
            match key {
                Key::Registered(0) => once(&mut sub, "sub", &mut map)?,
                Key::Registered(1) => once(&mut jti, "jti", &mut map)?,
                Key::Registered(2) => once(&mut iat, "iat", &mut map)?,
                Key::Registered(3) => once(&mut nbf, "nbf", &mut map)?,
                Key::Registered(4) => once(&mut exp, "exp", &mut map)?,
                Key::Registered(5) => once(&mut iss, "iss", &mut map)?,
                Key::Registered(_) => once(&mut aud, "aud", &mut map)?,
                Key::Other(name) => {
                    let value = map.next_value()?;
                    if let Some(_earlier) = extra.insert(name.clone(), value) {
                        return Err(de::Error::custom(format_args!("duplicate claim `{name}`")));
                    }
                }
            }
        }
        let need = |name: &'static str| de::Error::missing_field(name);
        Ok(Claims {
            sub: sub.ok_or_else(|| need("sub"))?,
            jti: jti.ok_or_else(|| need("jti"))?,
            iat: iat.ok_or_else(|| need("iat"))?,
            nbf: nbf.ok_or_else(|| need("nbf"))?,
            exp: exp.ok_or_else(|| need("exp"))?,
            iss: iss.ok_or_else(|| need("iss"))?,
            aud: aud.ok_or_else(|| need("aud"))?,
            extra,
        })
    }
}

/// A claim's name: one of [`REGISTERED`] (by index, no allocation) or another.
enum Key {
    Registered(usize),
    Other(String),
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a claim name")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Key, E> {
                Ok(match REGISTERED.iter().position(|r| *r == v) {
                    Some(i) => Key::Registered(i),
                    None => Key::Other(v.to_owned()),
                })
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims() -> Claims {
        Claims {
            sub: "u".into(),
            jti: "j".into(),
            iat: 1,
            nbf: 1,
            exp: 2,
            iss: "i".into(),
            aud: "a".into(),
            extra: serde_json::Map::new(),
        }
    }

    #[test]
    fn round_trips_with_and_without_extra_claims() {
        let plain = claims();
        let json = serde_json::to_value(&plain).unwrap();
        assert_eq!(
            json,
            json!({"sub":"u","jti":"j","iat":1,"nbf":1,"exp":2,"iss":"i","aud":"a"})
        );
        assert_eq!(serde_json::from_value::<Claims>(json).unwrap(), plain);

        let mut rich = claims();
        rich.extra.insert("scope".into(), json!("a b"));
        rich.extra.insert("tenant".into(), json!({"id": 7}));
        let back: Claims = serde_json::from_str(&serde_json::to_string(&rich).unwrap()).unwrap();
        assert_eq!(back, rich);
        assert_eq!(back.scopes().collect::<Vec<_>>(), ["a", "b"]);
    }

    #[test]
    fn many_extra_claims_round_trip() {
        let mut c = claims();
        for i in 0..12 {
            c.extra.insert(format!("x{i}"), json!(i));
        }
        let back: Claims = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn what_is_not_claims_says_what_was_expected() {
        let err = serde_json::from_str::<Claims>("[1, 2]").unwrap_err();
        assert!(
            err.to_string()
                .contains("expected a JSON object of JWT claims"),
            "{err}"
        );
        // A map whose keys are not names (possible outside JSON).
        use serde::de::value::{Error as ValueError, MapDeserializer};
        let numbered = MapDeserializer::<_, ValueError>::new(vec![(1u32, 2u32)].into_iter());
        let err = Claims::deserialize(numbered).unwrap_err();
        assert!(err.to_string().contains("expected a claim name"), "{err}");
    }

    #[test]
    fn a_registered_name_in_extra_is_never_written_twice() {
        let mut c = claims();
        c.extra.insert("sub".into(), json!("someone-else"));
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(json.matches("\"sub\"").count(), 1, "{json}");
        assert_eq!(serde_json::from_str::<Claims>(&json).unwrap().sub, "u");
    }

    #[test]
    fn duplicate_or_missing_registered_claims_are_refused() {
        let dup = r#"{"sub":"u","sub":"v","jti":"j","iat":1,"nbf":1,"exp":2,"iss":"i","aud":"a"}"#;
        assert!(serde_json::from_str::<Claims>(dup).is_err());
        let missing = r#"{"sub":"u","iat":1,"nbf":1,"exp":2,"iss":"i","aud":"a"}"#;
        let err = serde_json::from_str::<Claims>(missing).unwrap_err();
        assert!(err.to_string().contains("jti"), "{err}");
    }

    #[test]
    fn typed_access_roles_and_scopes() {
        let mut c = claims();
        assert_eq!(c.scopes().count(), 0);
        assert!(!c.has_role("admin"));
        c.extra
            .insert("scope".into(), json!(" orders:read  orders:write "));
        c.extra
            .insert("roles".into(), json!(["admin", 3, "support"]));
        c.extra.insert("level".into(), json!(3));
        assert!(c.has_scope("orders:write"));
        assert!(!c.has_scope("orders"));
        assert_eq!(c.roles().collect::<Vec<_>>(), ["admin", "support"]);
        assert_eq!(c.claim::<u8>("level").unwrap(), Some(3));
        assert!(matches!(
            c.claim::<String>("level"),
            Err(Error::Malformed(_))
        ));
        c.extra.insert("roles".into(), json!("auditor"));
        assert!(c.has_role("auditor"));
    }
}
