//! Layered, typed configuration: defaults → TOML file (`CONFIG_FILE`) → environment
//! variables. A config is a plain struct deriving `Serialize`, `Deserialize` and
//! `Debug`; shared sections are `#[serde(flatten)]`ed in; the environment variables
//! read are its field names in upper case (no list to keep in step); a secret is a
//! [`Secret`], which never prints.

use figment::providers::{Env, Format, Serialized, Toml};
use figment::{Figment, Provider};
use serde::de::DeserializeOwned;
use serde::Serialize;

mod jwt;
pub use jwt::Jwt;

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

/// Where a separate service listens, flattened into its `Config`: `GRPC_ADDR` (the
/// service) and `ADMIN_ADDR` (`/healthz`, `/readyz`, `/metrics`, the operator API).
/// The defaults are each service's own SPEC ports ([`Listen::on_ports`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Listen {
    /// gRPC listen address (`GRPC_ADDR`).
    pub grpc_addr: String,
    /// Admin HTTP listen address (`ADMIN_ADDR`).
    pub admin_addr: String,
}

impl Listen {
    /// `0.0.0.0:{grpc}` and `0.0.0.0:{admin}`.
    ///
    /// ```
    /// let l = ordersys_kit::config::Listen::on_ports(50052, 8082);
    /// assert_eq!((l.grpc_addr.as_str(), l.admin_addr.as_str()), ("0.0.0.0:50052", "0.0.0.0:8082"));
    /// ```
    pub fn on_ports(grpc: u16, admin: u16) -> Self {
        Self {
            grpc_addr: format!("0.0.0.0:{grpc}"),
            admin_addr: format!("0.0.0.0:{admin}"),
        }
    }
}

/// A service's stores, flattened into its `Config`: `DATABASE_URL` (MySQL, or a
/// `sqlite://` file; the database is created if missing) and `REDIS_URL` (empty: no
/// Redis — SQLite files and memory stand in, SQLite only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Stores {
    /// The service's database (`DATABASE_URL`).
    pub database_url: Secret,
    /// Redis (`REDIS_URL`).
    pub redis_url: Secret,
}

impl Stores {
    /// Database `name` on the local MySQL server as `root`, and the local Redis: the
    /// development defaults.
    pub fn local(name: &str) -> Self {
        Self {
            database_url: format!("mysql://root@127.0.0.1:3306/{name}").into(),
            redis_url: "redis://127.0.0.1:6379/".into(),
        }
    }

    /// Whether the database is a SQLite file.
    pub fn is_sqlite(&self) -> bool {
        crate::db::is_sqlite(&self.database_url)
    }

    /// Whether there is no Redis (SQLite and memory stand in).
    pub fn without_redis(&self) -> bool {
        self.redis_url.is_empty()
    }

    /// Create the database if missing and apply a service's migrations: `sqlite` with
    /// a pool on the SQLite file, or `mysql` with a MySQL pool of two connections
    /// (waiting up to 30 s for the server). What a service's `migrate` command runs.
    pub async fn migrate<S, M>(&self, sqlite: S, mysql: M) -> anyhow::Result<()>
    where
        S: AsyncFnOnce(sqlx::SqlitePool) -> anyhow::Result<()>,
        M: AsyncFnOnce(sqlx::MySqlPool) -> anyhow::Result<()>,
    {
        if self.is_sqlite() {
            sqlite(crate::db::connect_sqlite(&self.database_url).await?).await
        } else {
            let wait = std::time::Duration::from_secs(30);
            mysql(crate::db::connect(&self.database_url, 2, wait).await?).await
        }
    }

    /// Without Redis, a SQLite service keeps its idempotency keys in a file beside its
    /// database: create and migrate it (nothing to do otherwise).
    pub async fn idempotency_keys_file(&self) -> anyhow::Result<()> {
        if self.is_sqlite() && self.without_redis() {
            crate::db::sqlite_idempotency_keys(&self.database_url).await?;
        }
        Ok(())
    }
}

/// Saga messaging over Kafka, flattened into the order and payment services'
/// `Config`: `KAFKA_BROKERS`, `KAFKA_TOPIC_PREFIX`, `INBOX_RETENTION_HOURS` and the
/// client tuning ([`KafkaTuning`](crate::messaging::KafkaTuning)).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Kafka {
    /// Kafka (`KAFKA_BROKERS`, default 127.0.0.1:9092).
    pub kafka_brokers: String,
    /// Prefix of topic names and consumer groups (`KAFKA_TOPIC_PREFIX`, default none).
    pub kafka_topic_prefix: String,
    /// How long a processed message's inbox record is kept, so a redelivery is still
    /// recognised (`INBOX_RETENTION_HOURS`, default 168 = Kafka's default log
    /// retention). Purged hourly.
    pub inbox_retention_hours: u64,
    /// Kafka client settings (`KAFKA_FETCH_WAIT_MAX_MS`, `KAFKA_LINGER_MS`, …).
    #[serde(flatten)]
    pub tuning: crate::messaging::KafkaTuning,
    /// The key the order and payment services seal and check every saga message with
    /// (`SAGA_KEY`, at least 32 bytes; required with Kafka — see
    /// [`crate::saga_mac`]).
    pub saga_key: Secret,
}

impl Default for Kafka {
    fn default() -> Self {
        Self {
            kafka_brokers: "127.0.0.1:9092".into(),
            kafka_topic_prefix: String::new(),
            inbox_retention_hours: 168,
            tuning: Default::default(),
            saga_key: Secret::default(),
        }
    }
}

impl Kafka {
    /// Messaging through these brokers with this tuning.
    pub fn messaging(&self) -> crate::messaging::Messaging {
        crate::messaging::Messaging::Kafka {
            brokers: self.kafka_brokers.clone(),
            tuning: self.tuning.clone(),
        }
    }

    /// The seal of the saga messages exchanged through `messaging`: from `SAGA_KEY`,
    /// which Kafka requires (anyone who can write to a topic could otherwise debit a
    /// wallet or confirm an order); on the in-process bus, whose messages never leave
    /// the process, none unless a key is given.
    pub fn saga_mac(
        &self,
        messaging: &crate::messaging::Messaging,
    ) -> anyhow::Result<Option<crate::saga_mac::SagaMac>> {
        if self.saga_key.is_empty() {
            anyhow::ensure!(
                !matches!(messaging, crate::messaging::Messaging::Kafka { .. }),
                "SAGA_KEY is required with Kafka: the order and payment services seal their \
                 saga messages with it (the same secret of at least 32 bytes on both, e.g. \
                 `head -c 32 /dev/urandom | base64`)"
            );
            return Ok(None);
        }
        crate::saga_mac::SagaMac::new(self.saga_key.as_bytes()).map(Some)
    }

    /// The saga topics under the prefix.
    pub fn topics(&self) -> crate::messaging::Topics {
        crate::messaging::Topics::new(&self.kafka_topic_prefix)
    }

    /// Create the saga topics that are missing (replication factor and
    /// `min.insync.replicas` from this configuration), waiting up to two minutes for the
    /// brokers: the services' `topics` subcommand (the Kubernetes topics Job); a service
    /// also does it when it starts.
    pub async fn provision_topics(&self) -> anyhow::Result<()> {
        let wait = std::time::Duration::from_secs(120);
        self.topics()
            .ensure(&self.kafka_brokers, &self.tuning, wait)
            .await?;
        tracing::info!(brokers = %self.kafka_brokers, "топики созданы");
        Ok(())
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

    /// A service's config as the order and payment services build theirs.
    #[derive(Debug, Serialize, serde::Deserialize)]
    #[serde(default)]
    struct ServiceLike {
        #[serde(flatten)]
        listen: Listen,
        #[serde(flatten)]
        stores: Stores,
        #[serde(flatten)]
        kafka: Kafka,
    }

    impl Default for ServiceLike {
        fn default() -> Self {
            Self {
                listen: Listen::on_ports(50052, 8082),
                stores: Stores::local("ordersys_order"),
                kafka: Kafka::default(),
            }
        }
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's own test API
    fn shared_sections_keep_each_service_s_defaults_and_read_their_variables() {
        let names = env_names::<ServiceLike>();
        for name in [
            "GRPC_ADDR",
            "ADMIN_ADDR",
            "DATABASE_URL",
            "REDIS_URL",
            "KAFKA_BROKERS",
            "KAFKA_TOPIC_PREFIX",
            "INBOX_RETENTION_HOURS",
            "KAFKA_LINGER_MS",
        ] {
            assert!(names.iter().any(|n| n == name), "{name} not in {names:?}");
        }
        figment::Jail::expect_with(|jail| {
            jail.set_env("ADMIN_ADDR", "127.0.0.1:9999");
            jail.set_env("REDIS_URL", "");
            jail.set_env("KAFKA_TOPIC_PREFIX", "t.");
            let c: ServiceLike = load().expect("loads");
            assert_eq!(c.listen.grpc_addr, "0.0.0.0:50052");
            assert_eq!(c.listen.admin_addr, "127.0.0.1:9999");
            assert_eq!(
                c.stores.database_url.expose(),
                "mysql://root@127.0.0.1:3306/ordersys_order"
            );
            assert!(c.stores.without_redis() && !c.stores.is_sqlite());
            assert_eq!(c.kafka.topics().commands, "t.saga.commands");
            assert_eq!(c.kafka.inbox_retention_hours, 168);
            assert!(!format!("{c:?}").contains("mysql://"));
            Ok(())
        });
    }
}
