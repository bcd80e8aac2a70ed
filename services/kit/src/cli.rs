//! The command line every gRPC service binary shares:
//! `ordersys-<service> [serve | migrate | topics]`. A binary's `main` is one call to
//! [`main`] with the service's [`Service`] implementation:
//!
//! ```no_run
//! # struct Order;
//! # #[derive(Debug, serde::Serialize, serde::Deserialize)]
//! # struct Config { #[serde(flatten)] listen: ordersys_kit::config::Listen }
//! # impl Default for Config {
//! #     fn default() -> Self {
//! #         Self { listen: ordersys_kit::config::Listen::on_ports(50052, 8082) }
//! #     }
//! # }
//! # impl ordersys_kit::cli::Service for Order {
//! #     const NAME: &'static str = "order";
//! #     type Config = Config;
//! #     fn listen(config: &Config) -> &ordersys_kit::config::Listen { &config.listen }
//! #     async fn migrate(_: &Config) -> anyhow::Result<()> { Ok(()) }
//! #     async fn run(
//! #         _: Config,
//! #         _: ordersys_kit::Listeners,
//! #         _: impl std::future::Future<Output = ()> + Send + 'static,
//! #     ) -> anyhow::Result<()> { Ok(()) }
//! # }
//! #[tokio::main]
//! async fn main() -> anyhow::Result<()> {
//!     ordersys_kit::cli::main::<Order>().await
//! }
//! ```

use std::fmt;
use std::future::Future;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::config::{Kafka, Listen};
use crate::Listeners;

/// What the binary was asked to do (its first argument).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// No argument, or `serve`: bind the listeners and run until SIGTERM / Ctrl-C.
    Serve,
    /// `migrate`: apply the migrations and exit (`make migrate`, a step before a rollout).
    Migrate,
    /// `topics`: create the missing saga topics and exit (the Kubernetes topics Job);
    /// only for services with a Kafka section.
    Topics,
}

impl Command {
    /// The command named by `arg` (the binary's first argument, if any); an unknown
    /// one is an error that lists those there are, never a silent start.
    pub fn parse(arg: Option<&str>, has_topics: bool) -> anyhow::Result<Self> {
        match arg {
            None | Some("serve") => Ok(Self::Serve),
            Some("migrate") => Ok(Self::Migrate),
            Some("topics") if has_topics => Ok(Self::Topics),
            Some(other) => {
                let topics = if has_topics { " | topics" } else { "" };
                anyhow::bail!("unknown command {other:?}: expected serve | migrate{topics}")
            }
        }
    }
}

/// A gRPC service as its binary starts it.
pub trait Service {
    /// The service's name in logs, metrics and traces (`order`).
    const NAME: &'static str;
    /// One line on what it does, for `--help`.
    const ABOUT: &'static str = "an ordersys service";
    /// Whether it has the `topics` command (a Kafka section), for `--help`.
    const HAS_TOPICS: bool = false;
    /// Its configuration, loaded with [`crate::config::load`].
    type Config: DeserializeOwned + Serialize + Default + fmt::Debug + Send + 'static;
    /// Where it listens.
    fn listen(config: &Self::Config) -> &Listen;
    /// Its Kafka section, if it exchanges saga messages (enables `topics`).
    fn kafka(_config: &Self::Config) -> Option<&Kafka> {
        None
    }
    /// Apply every migration, then return.
    fn migrate(config: &Self::Config) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// Serve on `listeners` until `shutdown` resolves.
    fn run(
        config: Self::Config,
        listeners: Listeners,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// Whether the first argument asks for help (`--help`, `-h` or `help`).
pub fn help_requested() -> bool {
    matches!(
        std::env::args().nth(1).as_deref(),
        Some("--help" | "-h" | "help")
    )
}

/// The usage text of a binary: its commands, then every environment variable its
/// configuration `T` reads (with the default, secrets left out), then those every
/// binary reads.
///
/// ```
/// #[derive(Default, serde::Serialize)]
/// struct Config { http_addr: String, jwt_secret: ordersys_kit::config::Secret }
/// let text = ordersys_kit::cli::usage::<Config>("ordersys-x", "does x", &["serve"]);
/// assert!(text.starts_with("ordersys-x — does x\n\nUsage: ordersys-x [serve | --help]"));
/// assert!(text.contains("  HTTP_ADDR"));
/// assert!(text.contains("  JWT_SECRET"));
/// ```
pub fn usage<T: Serialize + Default>(binary: &str, what: &str, commands: &[&str]) -> String {
    use std::fmt::Write;
    let mut text = format!(
        "{binary} — {what}\n\nUsage: {binary} [{} | --help]\n",
        commands.join(" | ")
    );
    let descriptions = [
        (
            "serve",
            "bind the listeners and run until SIGTERM / Ctrl-C (the default)",
        ),
        ("migrate", "apply the database migrations and exit"),
        ("topics", "create the missing Kafka topics and exit"),
        (
            "openapi",
            "print the REST API's OpenAPI 3.1 document and exit",
        ),
    ];
    for c in commands {
        if let Some((_, d)) = descriptions.iter().find(|(n, _)| n == c) {
            let _ = writeln!(text, "  {c:<8} {d}");
        }
    }
    text.push_str(
        "\nEnvironment (a TOML file named by CONFIG_FILE may set the same keys in lower \
         case; the environment wins):\n",
    );
    let defaults = serde_json::to_value(T::default()).unwrap_or_default();
    for name in crate::config::env_names::<T>() {
        let value = defaults.get(name.to_lowercase());
        let secret = ["SECRET", "PASSWORD", "TOKEN", "_URL", "KEY"]
            .iter()
            .any(|s| name.contains(s));
        let shown = match value {
            Some(serde_json::Value::String(v)) if !v.is_empty() && !secret => {
                format!(" (default {v})")
            }
            Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
                format!(" (default {v})")
            }
            _ => String::new(),
        };
        let _ = writeln!(text, "  {name}{shown}");
    }
    text.push_str(
        "  RUST_LOG (the log filter); OTEL_EXPORTER_OTLP_ENDPOINT and the other OTEL_* \
         variables (traces)\n",
    );
    text
}

/// Set up telemetry, load `S`'s configuration and carry out the command of the first
/// argument (see [`Command`]); `--help` prints [`usage`] and exits.
pub async fn main<S: Service>() -> anyhow::Result<()> {
    if help_requested() {
        let mut commands = vec!["serve", "migrate"];
        if S::HAS_TOPICS {
            commands.push("topics");
        }
        let binary = format!("ordersys-{}", S::NAME);
        print!("{}", usage::<S::Config>(&binary, S::ABOUT, &commands));
        return Ok(());
    }
    let _telemetry = crate::telemetry::init(S::NAME);
    let config: S::Config = crate::config::load()?;
    let arg = std::env::args().nth(1);
    match Command::parse(arg.as_deref(), S::kafka(&config).is_some())? {
        Command::Migrate => {
            S::migrate(&config).await?;
            tracing::info!("миграции применены");
            Ok(())
        }
        Command::Topics => {
            let kafka = S::kafka(&config);
            let kafka = kafka.ok_or_else(|| anyhow::anyhow!("{} has no topics", S::NAME))?;
            kafka.provision_topics().await
        }
        Command::Serve => {
            tracing::info!(config = ?config, "конфигурация загружена");
            let listen = S::listen(&config);
            let listeners = Listeners::bind(&listen.grpc_addr, &listen.admin_addr).await?;
            S::run(config, listeners, crate::shutdown::signal()).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Command;

    #[test]
    fn the_first_argument_names_the_command_and_an_unknown_one_is_refused() {
        assert_eq!(Command::parse(None, false).unwrap(), Command::Serve);
        assert_eq!(Command::parse(Some("serve"), true).unwrap(), Command::Serve);
        assert_eq!(
            Command::parse(Some("migrate"), false).unwrap(),
            Command::Migrate
        );
        assert_eq!(
            Command::parse(Some("topics"), true).unwrap(),
            Command::Topics
        );
        let err = Command::parse(Some("topics"), false)
            .unwrap_err()
            .to_string();
        assert_eq!(err, "unknown command \"topics\": expected serve | migrate");
        let err = Command::parse(Some("migrat"), true)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "unknown command \"migrat\": expected serve | migrate | topics"
        );
    }
}
