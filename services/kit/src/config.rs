//! Layered, typed configuration: defaults → TOML file (`CONFIG_FILE`) → environment
//! variables. A config is a plain struct deriving `Serialize`, `Deserialize` and
//! `Debug`; shared sections are `#[serde(flatten)]`ed in; the environment variables
//! read are its field names in upper case (no list to keep in step); a secret is a
//! [`Secret`], which never prints.

use figment::providers::{Env, Format, Serialized, Toml};
use figment::{Figment, Provider};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Load `T`: its `Default`, overlaid by the TOML file named in `CONFIG_FILE` (if set),
/// overlaid by environment variables whose upper-case names are `T`'s field names
/// (e.g. `DATABASE_URL` → `database_url`; the fields of flattened sections included).
/// No other variable is read.
pub fn load<T>() -> anyhow::Result<T>
where
    T: DeserializeOwned + Serialize + Default,
{
    let fields = env_names::<T>();
    let mut fig = Figment::from(Serialized::defaults(T::default()));
    if let Ok(file) = std::env::var("CONFIG_FILE") {
        if !std::path::Path::new(&file).exists() {
            anyhow::bail!("CONFIG_FILE {file} does not exist");
        }
        fig = fig.merge(Toml::file(file));
    }
    fig = fig.merge(
        Env::raw()
            .filter(move |k| fields.iter().any(|f| f.eq_ignore_ascii_case(k.as_str())))
            .lowercase(true),
    );
    Ok(fig.extract()?)
}

/// The environment variables [`load`] reads into `T`: its (flattened) field names in
/// upper case, sorted.
pub fn env_names<T: Serialize + Default>() -> Vec<String> {
    let defaults = Figment::from(Serialized::defaults(T::default()));
    let mut names: Vec<String> = defaults
        .data()
        .map(|profiles| {
            profiles
                .into_values()
                .flat_map(|dict| dict.into_keys())
                .map(|k| k.to_uppercase())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names.dedup();
    names
}

/// A secret setting (a password, a token, a URL that may carry credentials): read like
/// a string, never printed — `Debug` shows `<redacted>` (or `<unset>` when empty) and
/// there is no `Display`. [`Secret::expose`] (or deref) gives the value to the code
/// that uses it.
///
/// ```
/// use ordersys_kit::config::Secret;
/// let s = Secret::from("mysql://app:hunter2@db/orders");
/// assert_eq!(format!("{s:?}"), "<redacted>");
/// assert_eq!(format!("{:?}", Secret::default()), "<unset>");
/// assert!(s.expose().starts_with("mysql://"));
/// ```
#[derive(Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The value, for the code that needs it (never for a log line).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for Secret {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() {
            "<unset>"
        } else {
            "<redacted>"
        })
    }
}

/// The token settings the user service (which issues) and the gateway (which checks)
/// share, flattened into each one's `Config`: `JWT_SECRET`, `JWT_ISSUER`,
/// `JWT_AUDIENCE`, `JWT_LEEWAY_SECS`.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Jwt {
    /// HS256 secret shared by the user service and the gateway (`JWT_SECRET`, at least
    /// 32 bytes; required).
    pub jwt_secret: Secret,
    /// `iss` (`JWT_ISSUER`, default `ordersys`).
    pub jwt_issuer: String,
    /// `aud` (`JWT_AUDIENCE`, default `ordersys-api`).
    pub jwt_audience: String,
    /// Seconds an expired (or not yet valid) token is still accepted, for clock skew
    /// (`JWT_LEEWAY_SECS`, default 5); a logout revokes a token this much longer.
    pub jwt_leeway_secs: u64,
}

impl Default for Jwt {
    fn default() -> Self {
        Self {
            jwt_secret: Secret::default(),
            jwt_issuer: "ordersys".into(),
            jwt_audience: "ordersys-api".into(),
            jwt_leeway_secs: 5,
        }
    }
}

impl Jwt {
    /// These settings with `secret`.
    pub fn with_secret(secret: impl Into<Secret>) -> Self {
        Self {
            jwt_secret: secret.into(),
            ..Self::default()
        }
    }

    /// The signing key (an error names `JWT_SECRET` when it is unusable).
    pub fn signing_key(&self) -> anyhow::Result<authz::SigningKey> {
        authz::SigningKey::hs256(self.jwt_secret.as_bytes())
            .map_err(|e| anyhow::anyhow!("JWT_SECRET: {e}"))
    }

    /// The validator of the tokens issued under these settings.
    pub fn validator(&self) -> anyhow::Result<authz::TokenValidator> {
        Ok(authz::TokenValidator::new(
            self.signing_key()?.verifying_key(),
            &self.jwt_issuer,
            &self.jwt_audience,
        )
        .with_leeway(std::time::Duration::from_secs(self.jwt_leeway_secs)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Serialize, serde::Deserialize)]
    #[serde(default)]
    struct Section {
        token: Secret,
        port: u16,
    }

    impl Default for Section {
        fn default() -> Self {
            Self {
                token: Secret::default(),
                port: 7,
            }
        }
    }

    #[derive(Debug, Default, Serialize, serde::Deserialize)]
    #[serde(default)]
    struct Whole {
        name: String,
        #[serde(flatten)]
        section: Section,
    }

    #[test]
    fn the_shared_token_settings_validate_what_their_key_signs() {
        assert_eq!(
            env_names::<Jwt>(),
            [
                "JWT_AUDIENCE",
                "JWT_ISSUER",
                "JWT_LEEWAY_SECS",
                "JWT_SECRET"
            ]
        );
        let jwt = Jwt::with_secret("a-secret-of-at-least-thirty-two-bytes!");
        let issuer =
            authz::TokenIssuer::new(jwt.signing_key().unwrap(), "ordersys", "ordersys-api");
        let token = issuer.issue("user-1").unwrap();
        assert_eq!(
            jwt.validator().unwrap().validate(&token.token).unwrap().sub,
            "user-1"
        );
        let other = Jwt {
            jwt_audience: "elsewhere".into(),
            ..jwt.clone()
        };
        assert!(other.validator().unwrap().validate(&token.token).is_err());
        let err = Jwt::default().signing_key().unwrap_err().to_string();
        assert!(err.starts_with("JWT_SECRET"), "{err}");
    }

    #[test]
    fn the_variables_are_the_field_names_of_every_flattened_section() {
        assert_eq!(env_names::<Whole>(), ["NAME", "PORT", "TOKEN"]);
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's own test API
    fn a_config_reads_its_variables_and_prints_no_secret() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("TOKEN", "hunter2");
            jail.set_env("PORT", "9");
            jail.set_env("UNRELATED", "x");
            let c: Whole = load().expect("loads");
            assert_eq!(c.section.token.expose(), "hunter2");
            assert_eq!(c.section.port, 9);
            let shown = format!("{c:?}");
            assert!(
                !shown.contains("hunter2") && shown.contains("<redacted>"),
                "{shown}"
            );
            Ok(())
        });
    }
}
