//! The deployment under test: the servers of its own (MariaDB, Redis, a broker) as
//! processes, and on them the e2e harness's [`System`] — or the embedded binary —
//! started, killed and restarted.

use super::*;

/// The deployment under test.
pub(crate) struct Deployment {
    pub(crate) servers: HashMap<&'static str, Daemon>,
    /// The separate services (the same launcher the end-to-end tests use).
    pub(crate) system: Option<System>,
    /// The embedded `ordersys` binary (`--embedded`).
    pub(crate) embedded: Option<Service>,
    /// A compose deployment's MySQL server URL (`--compose`: its containers are not
    /// ours to start or stop).
    pub(crate) compose_mysql: Option<String>,
    pub(crate) base: String,
    /// What the fault injector has killed and not yet restarted.
    pub(crate) down: HashSet<&'static str>,
}

impl Deployment {
    /// The one-process system on SQLite files in `dir`.
    pub(crate) fn start_embedded(args: &Args, dir: &std::path::Path) -> anyhow::Result<Self> {
        let http = free_port();
        let base = format!("http://127.0.0.1:{http}");
        let log_dir = dir.join("logs");
        std::fs::create_dir_all(&log_dir)?;
        let mut env = embedded_env(&dir.join("data"), http);
        env.extend(
            [
                ("JWT_TTL_SECS", "7200".to_owned()),
                ("RATE_LIMIT_PER_MINUTE", "100000000".into()),
                ("INITIAL_BALANCE", args.initial.to_string()),
                ("PAYMENT_DEADLINE_SECS", args.deadline.to_string()),
                ("RUST_LOG", "info".into()),
            ]
            .map(|(k, v)| (k.to_owned(), v)),
        );
        let ready = format!("http://{}/readyz", env["ADMIN_ADDR"]);
        let embedded = Service::start_logged("ordersys", env, &log_dir, &ready);
        Ok(Self {
            servers: HashMap::new(),
            system: None,
            embedded: Some(embedded),
            compose_mysql: None,
            base,
            down: HashSet::new(),
        })
    }

    /// MariaDB, Redis and a broker of its own, then the system on them.
    pub(crate) async fn start(args: &Args, dir: &std::path::Path) -> anyhow::Result<Self> {
        let mut servers = HashMap::new();
        for kind in [Kind::MariaDb, Kind::Redis, Kind::Broker] {
            let d = Daemon::start(kind, dir)?;
            log(format!("{} on 127.0.0.1:{}", kind.name(), d.port()));
            servers.insert(kind.name(), d);
        }
        let log_dir = dir.join("logs");
        std::fs::create_dir_all(&log_dir)?;
        let pairs = |list: &[(&str, String)]| -> Vec<(String, String)> {
            list.iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect()
        };
        // The first replica's; System gives a second replica the other half.
        let assignment = match (args.assignment.as_str(), args.replicas) {
            ("static", true) => "static:0/2".to_owned(),
            (a, _) => a.to_owned(),
        };
        let system = System::start(Options {
            mysql_server_url: Some(servers["mariadb"].url()),
            redis_url: Some(servers["redis"].url()),
            brokers: Some(servers["broker"].url()),
            common_env: pairs(&[("JWT_TTL_SECS", "7200".into()), ("RUST_LOG", "info".into())]),
            order_env: pairs(&[
                ("PAYMENT_DEADLINE_SECS", args.deadline.to_string()),
                ("KAFKA_ASSIGNMENT", assignment.clone()),
            ]),
            payment_env: pairs(&[
                ("INITIAL_BALANCE", args.initial.to_string()),
                ("KAFKA_ASSIGNMENT", assignment),
            ]),
            gateway_env: pairs(&[
                ("RATE_LIMIT_PER_MINUTE", "100000000".into()),
                ("BREAKER_OPEN_SECS", args.breaker_open.to_string()),
            ]),
            log_dir: Some(log_dir),
            two_replicas: args.replicas,
            gateway_to_every_replica: args.replicas,
            ..Options::default()
        })
        .await;
        Ok(Self {
            servers,
            base: system.base.clone(),
            system: Some(system),
            embedded: None,
            compose_mysql: None,
            down: HashSet::new(),
        })
    }

    /// A running compose deployment (`--compose PROJECT`).
    pub(crate) async fn attach_compose(project: &str) -> anyhow::Result<Self> {
        let compose = Compose::new(project);
        let base = compose.published("gateway", 8080).await?;
        let mysql = compose.mysql_url().await?;
        log(format!("compose project {project}: gateway {base}"));
        Ok(Self {
            servers: HashMap::new(),
            system: None,
            embedded: None,
            compose_mysql: Some(mysql),
            base,
            down: HashSet::new(),
        })
    }

    /// Every service process by name.
    pub(crate) fn services(&self) -> Vec<(&'static str, &Service)> {
        match (&self.system, &self.embedded) {
            (Some(system), _) => system.services(),
            (None, Some(s)) => vec![("ordersys", s)],
            (None, None) => Vec::new(),
        }
    }

    /// The service process called `name`.
    pub(crate) fn service_mut(&mut self, name: &str) -> Option<&mut Service> {
        match (&mut self.system, &mut self.embedded) {
            (Some(system), _) => system.service_mut(name),
            (None, Some(s)) if name == "ordersys" => Some(s),
            _ => None,
        }
    }

    /// The order and payment databases (none when embedded: SQLite files behind the
    /// REST API only).
    pub(crate) fn databases(&self) -> Option<(String, String)> {
        if let Some(server) = &self.compose_mysql {
            return Some((
                format!("{server}/ordersys_order"),
                format!("{server}/ordersys_payment"),
            ));
        }
        let s = self.system.as_ref()?;
        Some((s.order_db_url(), s.payment_db_url.clone()))
    }

    pub(crate) async fn wait_ready(&mut self, within: Duration) -> anyhow::Result<()> {
        let names: Vec<&'static str> = self.services().iter().map(|(n, _)| *n).collect();
        for name in names {
            if let Some(s) = self.service_mut(name) {
                s.wait_until_ready(within).await?;
            }
        }
        Ok(())
    }

    /// Stop everything; with `keep`, the databases stay (the servers' data is in the
    /// work directory).
    pub(crate) fn stop(mut self, keep: bool) {
        if let Some(system) = self.system.take() {
            if keep {
                system.kill_keeping_data();
            } else {
                // Dropping it drops its databases (while MariaDB still runs).
                drop(system);
            }
        }
        if let Some(mut s) = self.embedded.take() {
            s.kill();
        }
        for s in self.servers.values_mut() {
            s.kill();
        }
    }
}

pub(crate) async fn kill_and_restart(
    dep: &Arc<tokio::sync::Mutex<Deployment>>,
    target: &'static str,
    down: Duration,
) -> anyhow::Result<()> {
    {
        let mut d = dep.lock().await;
        d.down.insert(target);
        if let Some(s) = d.servers.get_mut(target) {
            s.kill();
        } else if let Some(s) = d.service_mut(target) {
            s.kill();
        }
    }
    tokio::time::sleep(down).await;
    let mut d = dep.lock().await;
    let prefix = (d.system.as_ref()).map_or(String::new(), |s| s.topic_prefix.clone());
    if let Some(s) = d.servers.get_mut(target) {
        tokio::task::block_in_place(|| s.restart())?;
        if s.kind() == Kind::Broker {
            // A memory-storage broker comes back empty: provision the topics again, as
            // an operator's job would (services also create them when they start).
            let url = s.url();
            let topics: Vec<(String, i32)> =
                [("saga.commands", 3), ("saga.replies", 3), ("dlq.saga", 1)]
                    .map(|(t, n)| (format!("{prefix}{t}"), n))
                    .into();
            let topics: Vec<(&str, i32)> = topics.iter().map(|(t, n)| (t.as_str(), *n)).collect();
            let every = Duration::from_millis(200);
            resilience::Retry::new()
                .named("chaos_topics")
                .max_attempts(50)
                .base_delay(every)
                .multiplier(1)
                .max_delay(every)
                .call(|| outbox::kafka::ensure_topics(&url, &topics))
                .await
                .map_err(|e| anyhow::anyhow!("creating topics: {e}"))?;
        }
    } else if let Some(s) = d.service_mut(target) {
        s.respawn();
    }
    d.down.remove(target);
    Ok(())
}
