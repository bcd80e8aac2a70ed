//! The deployment under test: servers and services as processes, started, killed and
//! restarted.

use super::*;

/// The deployment under test.
pub(crate) struct Deployment {
    pub(crate) servers: HashMap<&'static str, Daemon>,
    pub(crate) services: HashMap<&'static str, Service>,
    pub(crate) base: String,
    pub(crate) mysql: String,
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
        let env: HashMap<String, String> = [
            ("DATA_DIR", dir.join("data").display().to_string()),
            ("HTTP_ADDR", format!("127.0.0.1:{http}")),
            ("INTERNAL_PORTS", "ephemeral".into()),
            ("JWT_TTL_SECS", "7200".into()),
            ("RATE_LIMIT_PER_MINUTE", "100000000".into()),
            ("INITIAL_BALANCE", args.initial.to_string()),
            ("PAYMENT_DEADLINE_SECS", args.deadline.to_string()),
            ("RUST_LOG", "info".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let mut services = HashMap::new();
        services.insert(
            "ordersys",
            Service::start_logged("ordersys", env, &log_dir, &format!("{base}/readyz")),
        );
        Ok(Self {
            servers: HashMap::new(),
            services,
            base,
            mysql: String::new(),
            down: HashSet::new(),
        })
    }

    pub(crate) fn start(args: &Args, dir: &std::path::Path) -> anyhow::Result<Self> {
        let mut servers = HashMap::new();
        for kind in [Kind::MariaDb, Kind::Redis, Kind::Broker] {
            let d = Daemon::start(kind, dir)?;
            log(format!("{} on 127.0.0.1:{}", kind.name(), d.port));
            servers.insert(kind.name(), d);
        }
        let mysql = servers["mariadb"].url();
        let redis = servers["redis"].url();
        let brokers = servers["broker"].url();
        let secret = format!("chaos-{}", Uuid::new_v4().simple());
        let port = |_: &str| free_port();
        let (ug, ua, og, oa, pg, pa, http) = (
            port("user"),
            port("user-admin"),
            port("order"),
            port("order-admin"),
            port("payment"),
            port("payment-admin"),
            port("http"),
        );
        let common = |pairs: Vec<(&str, String)>| -> HashMap<String, String> {
            let mut m: HashMap<String, String> = [
                ("REDIS_URL", redis.clone()),
                ("JWT_SECRET", secret.clone()),
                ("JWT_TTL_SECS", "7200".into()),
                ("KAFKA_BROKERS", brokers.clone()),
                ("RUST_LOG", "info".into()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
            m.extend(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)));
            m
        };
        let log_dir = dir.join("logs");
        std::fs::create_dir_all(&log_dir)?;
        let mut services = HashMap::new();
        services.insert(
            "user",
            Service::start_logged(
                "ordersys-user",
                common(vec![
                    ("GRPC_ADDR", format!("127.0.0.1:{ug}")),
                    ("ADMIN_ADDR", format!("127.0.0.1:{ua}")),
                    ("DATABASE_URL", format!("{mysql}/ordersys_user")),
                ]),
                &log_dir,
                &format!("http://127.0.0.1:{ua}/readyz"),
            ),
        );
        services.insert(
            "order",
            Service::start_logged(
                "ordersys-order",
                common(vec![
                    ("GRPC_ADDR", format!("127.0.0.1:{og}")),
                    ("ADMIN_ADDR", format!("127.0.0.1:{oa}")),
                    ("DATABASE_URL", format!("{mysql}/ordersys_order")),
                    ("PAYMENT_DEADLINE_SECS", args.deadline.to_string()),
                ]),
                &log_dir,
                &format!("http://127.0.0.1:{oa}/readyz"),
            ),
        );
        services.insert(
            "payment",
            Service::start_logged(
                "ordersys-payment",
                common(vec![
                    ("GRPC_ADDR", format!("127.0.0.1:{pg}")),
                    ("ADMIN_ADDR", format!("127.0.0.1:{pa}")),
                    ("DATABASE_URL", format!("{mysql}/ordersys_payment")),
                    ("INITIAL_BALANCE", args.initial.to_string()),
                ]),
                &log_dir,
                &format!("http://127.0.0.1:{pa}/readyz"),
            ),
        );
        let base = format!("http://127.0.0.1:{http}");
        services.insert(
            "gateway",
            Service::start_logged(
                "ordersys-gateway",
                common(vec![
                    ("HTTP_ADDR", format!("127.0.0.1:{http}")),
                    ("USER_SERVICE_URL", format!("http://127.0.0.1:{ug}")),
                    ("ORDER_SERVICE_URL", format!("http://127.0.0.1:{og}")),
                    ("PAYMENT_SERVICE_URL", format!("http://127.0.0.1:{pg}")),
                    ("RATE_LIMIT_PER_MINUTE", "100000000".into()),
                    ("BREAKER_OPEN_SECS", args.breaker_open.to_string()),
                ]),
                &log_dir,
                &format!("{base}/readyz"),
            ),
        );
        Ok(Self {
            servers,
            services,
            base,
            mysql,
            down: HashSet::new(),
        })
    }

    pub(crate) async fn wait_ready(&mut self, within: Duration) -> anyhow::Result<()> {
        for s in self.services.values_mut() {
            s.wait_until_ready(within).await?;
        }
        Ok(())
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
        } else if let Some(s) = d.services.get_mut(target) {
            s.kill();
        }
    }
    tokio::time::sleep(down).await;
    let mut d = dep.lock().await;
    if let Some(s) = d.servers.get_mut(target) {
        tokio::task::block_in_place(|| s.restart())?;
        if s.kind() == Kind::Broker {
            // A memory-storage broker comes back empty: provision the topics again, as
            // an operator's job would (services also create them when they start).
            let url = s.url();
            let topics = [("saga.commands", 3), ("saga.replies", 3), ("dlq.saga", 1)];
            for _ in 0..50 {
                match outbox::kafka::ensure_topics(&url, &topics).await {
                    Ok(()) => break,
                    Err(e) => {
                        log(format!("creating topics: {e}"));
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        }
    } else if let Some(s) = d.services.get_mut(target) {
        s.respawn();
    }
    d.down.remove(target);
    Ok(())
}
