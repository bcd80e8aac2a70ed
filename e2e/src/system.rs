//! A whole system of service processes (or the embedded binary) with its own databases,
//! topics, secret and data directory, removed when dropped.

use std::collections::HashMap;
use std::time::Duration;

use crate::process::*;

/// Settings of one system.
#[derive(Debug, Clone)]
pub struct Options {
    /// Extra gateway environment (e.g. `RATE_LIMIT_PER_MINUTE`).
    pub gateway_env: Vec<(String, String)>,
    /// Extra order service environment.
    pub order_env: Vec<(String, String)>,
    /// Extra payment service environment.
    pub payment_env: Vec<(String, String)>,
    /// Run user, order and payment on SQLite files (Kafka and Redis as usual).
    pub sqlite: bool,
    /// A Redis of the test's own (`redis://…`, or `rediss://…` for a
    /// [`crate::infra::Kind::RedisTls`] one), e.g. one it kills; default `REDIS_URL`
    /// or the shared 127.0.0.1:6379.
    pub redis_url: Option<String>,
    /// A MySQL server of the test's own (`mysql://root@host:port`); default
    /// `DATABASE_SERVER_URL` or the shared 127.0.0.1:3306.
    pub mysql_server_url: Option<String>,
    /// A broker of the test's own; default `KAFKA_BROKERS` or the shared 127.0.0.1:9092.
    pub brokers: Option<String>,
    /// Also start a second order service, payment service and gateway (the gateway
    /// talking to the second ones) on the same databases, topics and Redis
    /// ([`System::second`]); each replica has its own `RELAY_ID`.
    pub two_replicas: bool,
    /// With `two_replicas`: the first gateway calls both replicas of the order and the
    /// payment service (`ORDER_SERVICE_URL=a,b`), not only the first ones.
    pub gateway_to_every_replica: bool,
    /// Environment of every service (e.g. `JWT_TTL_SECS`, `RUST_LOG`), before the
    /// per-service lists above.
    pub common_env: Vec<(String, String)>,
    /// Write each service's log to `{log_dir}/{name}.log` (`order-2.log` for a second
    /// replica) instead of a file of its own under the temp dir.
    pub log_dir: Option<std::path::PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            gateway_env: vec![("RATE_LIMIT_PER_MINUTE".into(), "100000".into())],
            order_env: Vec::new(),
            payment_env: Vec::new(),
            sqlite: false,
            redis_url: None,
            mysql_server_url: None,
            brokers: None,
            two_replicas: false,
            gateway_to_every_replica: false,
            common_env: Vec::new(),
            log_dir: None,
        }
    }
}

/// The second replicas of a [`System`] started with [`Options::two_replicas`].
#[derive(Debug)]
pub struct Replicas {
    /// The second order service.
    pub order: Service,
    /// The second payment service.
    pub payment: Service,
    /// The second gateway (to the second order and payment services).
    pub gateway: Service,
    /// `http://127.0.0.1:<port>` of the second gateway.
    pub base: String,
    /// The second gateway's admin base URL.
    pub gateway_admin: String,
    /// The second order service's admin base URL.
    pub order_admin: String,
    /// The second payment service's admin base URL.
    pub payment_admin: String,
}

/// The whole system — user, order and payment services and the gateway — each on free
/// ports, with databases and Kafka topics of their own.
#[derive(Debug)]
pub struct System {
    /// The user service.
    pub user: Service,
    /// The order service.
    pub order: Service,
    /// The payment service.
    pub payment: Service,
    /// The gateway.
    pub gateway: Service,
    /// `http://127.0.0.1:<port>` of the gateway.
    pub base: String,
    /// The gateway's admin base URL (`/readyz`, `/metrics`).
    pub gateway_admin: String,
    /// The user service's admin base URL.
    pub user_admin: String,
    /// The order service's admin base URL (`/readyz`, `/metrics`).
    pub order_admin: String,
    /// The order service's operator tools base URL (`OPERATOR_ADDR`).
    pub operator: String,
    /// The payment service's admin base URL.
    pub payment_admin: String,
    /// The gRPC URLs of the user, order and payment services (`http://127.0.0.1:port`;
    /// mutual TLS, the development certificates).
    pub grpc: [String; 3],
    /// The Kafka topic prefix of this system.
    pub topic_prefix: String,
    /// Kafka brokers.
    pub brokers: String,
    /// The payment database URL.
    pub payment_db_url: String,
    /// This system's token signing key, Ed25519 (every system has its own pair: a token
    /// of one is worthless at another's gateway). Only its user service is given the
    /// private key; tests forge tokens with it.
    pub jwt_key: authz::SigningKey,
    /// The private key, PEM (tests look for it where it must not be, e.g. the logs).
    pub jwt_private_pem: String,
    /// The public key's file (`JWT_PUBLIC_KEY` of every service).
    pub jwt_public_key: std::path::PathBuf,
    /// The key the order and payment services seal saga messages with (`SAGA_KEY`,
    /// every system its own); tests seal what they publish as those services with
    /// [`System::saga_mac`].
    pub saga_key: String,
    /// The second replicas ([`Options::two_replicas`]).
    pub second: Option<Replicas>,
    mysql_server: String,
    dbs: Vec<String>,
    data_dir: std::path::PathBuf,
    sqlite: bool,
    cleaned: bool,
}

impl System {
    /// Start everything and wait until the gateway is ready.
    pub async fn start(opts: Options) -> Self {
        let mysql = (opts.mysql_server_url.clone())
            .unwrap_or_else(|| env_or("DATABASE_SERVER_URL", "mysql://root@127.0.0.1:3306"));
        let redis = (opts.redis_url.clone())
            .unwrap_or_else(|| env_or("REDIS_URL", "redis://127.0.0.1:6379/"));
        let brokers =
            (opts.brokers.clone()).unwrap_or_else(|| env_or("KAFKA_BROKERS", "127.0.0.1:9092"));
        let id = uuid::Uuid::new_v4().simple().to_string();
        let dbs: Vec<String> = ["user", "order", "payment"]
            .iter()
            .map(|s| format!("ordersys_e2e_{s}_{id}"))
            .collect();
        let data_dir = std::env::temp_dir().join(format!("ordersys-e2e-{id}"));
        let db_url = |i: usize| {
            if opts.sqlite {
                format!("sqlite://{}/{}.db", data_dir.display(), dbs[i])
            } else {
                format!("{mysql}/{}", dbs[i])
            }
        };
        let topic_prefix = format!("e2e.{id}.");
        std::fs::create_dir_all(&data_dir).expect("the system's data dir");
        let (jwt_private_pem, public_pem) = ordersys_kit::keys::ed25519_pem().expect("token keys");
        let jwt_key =
            authz::SigningKey::ed25519_from_pem(jwt_private_pem.as_bytes(), public_pem.as_bytes())
                .expect("the pair just made");
        let (jwt_private_key, jwt_public_key) =
            (data_dir.join("jwt.key"), data_dir.join("jwt.pub"));
        std::fs::write(&jwt_private_key, &jwt_private_pem).expect("jwt.key");
        std::fs::write(&jwt_public_key, &public_pem).expect("jwt.pub");
        let saga_key = format!("saga-{}{}", id, uuid::Uuid::new_v4().simple());
        let ports: Vec<u16> = (0..9).map(|_| free_port()).collect();
        // The second replicas' ports: order gRPC, order admin, payment gRPC, payment
        // admin, gateway HTTP, gateway admin, order operator tools.
        let p: Vec<u16> = (0..7).map(|_| free_port()).collect();
        let (user_grpc, user_admin, order_grpc, order_admin, pay_grpc, pay_admin, http) = (
            ports[0], ports[1], ports[2], ports[3], ports[4], ports[5], ports[6],
        );
        let (gateway_admin, operator) = (ports[7], ports[8]);
        let env = |pairs: &[(&str, String)]| -> HashMap<String, String> {
            let mut m: HashMap<String, String> = [
                ("REDIS_URL", redis.clone()),
                ("JWT_PUBLIC_KEY", jwt_public_key.display().to_string()),
                ("KAFKA_BROKERS", brokers.clone()),
                ("KAFKA_TOPIC_PREFIX", topic_prefix.clone()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
            m.extend(opts.common_env.iter().cloned());
            for (k, v) in pairs {
                m.insert((*k).to_owned(), v.clone());
            }
            m
        };
        // Every service knows its readiness URL (`Service::wait_until_ready`).
        let start = |name: &'static str, log: &str, env: HashMap<String, String>, ready: &str| {
            let log = match &opts.log_dir {
                Some(dir) => dir.join(format!("{log}.log")),
                None => std::env::temp_dir().join(format!("ordersys-e2e-{log}-{id}.log")),
            };
            Service::start_at(name, env, log, Some(format!("{ready}/readyz")))
        };
        let url = |port: u16| format!("http://127.0.0.1:{port}");
        let mut user = start(
            "ordersys-user",
            "user",
            env(&[
                ("GRPC_ADDR", format!("127.0.0.1:{user_grpc}")),
                ("ADMIN_ADDR", format!("127.0.0.1:{user_admin}")),
                ("DATABASE_URL", db_url(0)),
                // The user service alone signs.
                ("JWT_PRIVATE_KEY", jwt_private_key.display().to_string()),
            ]),
            &url(user_admin),
        );
        let mut order_env = env(&[
            ("GRPC_ADDR", format!("127.0.0.1:{order_grpc}")),
            ("ADMIN_ADDR", format!("127.0.0.1:{order_admin}")),
            ("OPERATOR_ADDR", format!("127.0.0.1:{operator}")),
            ("DATABASE_URL", db_url(1)),
            ("RELAY_ID", format!("{id}-1")),
            ("SAGA_KEY", saga_key.clone()),
        ]);
        order_env.extend(opts.order_env.clone());
        let mut order = start(
            "ordersys-order",
            "order",
            order_env.clone(),
            &url(order_admin),
        );
        let payment_db_url = db_url(2);
        let mut payment_env = env(&[
            ("GRPC_ADDR", format!("127.0.0.1:{pay_grpc}")),
            ("ADMIN_ADDR", format!("127.0.0.1:{pay_admin}")),
            ("DATABASE_URL", payment_db_url.clone()),
            ("RELAY_ID", format!("{id}-1")),
            ("SAGA_KEY", saga_key.clone()),
        ]);
        payment_env.extend(opts.payment_env.clone());
        let mut payment = start(
            "ordersys-payment",
            "payment",
            payment_env.clone(),
            &url(pay_admin),
        );
        let mut genv = env(&[
            ("HTTP_ADDR", format!("127.0.0.1:{http}")),
            ("ADMIN_ADDR", format!("127.0.0.1:{gateway_admin}")),
            ("USER_SERVICE_URL", format!("http://127.0.0.1:{user_grpc}")),
            (
                "ORDER_SERVICE_URL",
                format!("http://127.0.0.1:{order_grpc}"),
            ),
            (
                "PAYMENT_SERVICE_URL",
                format!("http://127.0.0.1:{pay_grpc}"),
            ),
            ("RATE_LIMIT_KEY_PREFIX", format!("e2e:{id}:rate:")),
            // Tests log in often with one account; the test of the limit sets its own.
            ("LOGIN_ATTEMPTS_PER_ACCOUNT", "100000".into()),
        ]);
        genv.extend(opts.gateway_env.clone());
        if opts.two_replicas && opts.gateway_to_every_replica {
            for (var, first, second) in [
                ("ORDER_SERVICE_URL", order_grpc, p[0]),
                ("PAYMENT_SERVICE_URL", pay_grpc, p[2]),
            ] {
                genv.insert(
                    var.into(),
                    format!("http://127.0.0.1:{first},http://127.0.0.1:{second}"),
                );
            }
        }
        let mut gateway = start(
            "ordersys-gateway",
            "gateway",
            genv.clone(),
            &url(gateway_admin),
        );
        let user_admin = format!("http://127.0.0.1:{user_admin}");
        wait_ready(
            &format!("{user_admin}/readyz"),
            &mut user,
            Duration::from_secs(90),
        )
        .await;
        wait_ready(
            &format!("http://127.0.0.1:{order_admin}/readyz"),
            &mut order,
            Duration::from_secs(90),
        )
        .await;
        wait_ready(
            &format!("http://127.0.0.1:{pay_admin}/readyz"),
            &mut payment,
            Duration::from_secs(90),
        )
        .await;
        let base = format!("http://127.0.0.1:{http}");
        let gateway_admin = format!("http://127.0.0.1:{gateway_admin}");
        wait_ready(
            &format!("{gateway_admin}/readyz"),
            &mut gateway,
            Duration::from_secs(90),
        )
        .await;
        let second = if opts.two_replicas {
            let mut o2 = order_env.clone();
            o2.insert("GRPC_ADDR".into(), format!("127.0.0.1:{}", p[0]));
            o2.insert("ADMIN_ADDR".into(), format!("127.0.0.1:{}", p[1]));
            o2.insert("RELAY_ID".into(), format!("{id}-2"));
            o2.insert("OPERATOR_ADDR".into(), format!("127.0.0.1:{}", p[6]));
            let mut p2 = payment_env.clone();
            // Statically assigned partitions: the second replica takes the other half.
            for e in [&mut o2, &mut p2] {
                if e.get("KAFKA_ASSIGNMENT").map(String::as_str) == Some("static:0/2") {
                    e.insert("KAFKA_ASSIGNMENT".into(), "static:1/2".into());
                }
            }
            p2.insert("GRPC_ADDR".into(), format!("127.0.0.1:{}", p[2]));
            p2.insert("ADMIN_ADDR".into(), format!("127.0.0.1:{}", p[3]));
            p2.insert("RELAY_ID".into(), format!("{id}-2"));
            let mut order2 = start("ordersys-order", "order-2", o2, &url(p[1]));
            let mut payment2 = start("ordersys-payment", "payment-2", p2, &url(p[3]));
            let (order_admin2, payment_admin2) = (
                format!("http://127.0.0.1:{}", p[1]),
                format!("http://127.0.0.1:{}", p[3]),
            );
            wait_ready(
                &format!("{order_admin2}/readyz"),
                &mut order2,
                Duration::from_secs(90),
            )
            .await;
            wait_ready(
                &format!("{payment_admin2}/readyz"),
                &mut payment2,
                Duration::from_secs(90),
            )
            .await;
            let mut g2 = genv.clone();
            g2.insert("HTTP_ADDR".into(), format!("127.0.0.1:{}", p[4]));
            g2.insert("ADMIN_ADDR".into(), format!("127.0.0.1:{}", p[5]));
            g2.insert(
                "ORDER_SERVICE_URL".into(),
                format!("http://127.0.0.1:{}", p[0]),
            );
            g2.insert(
                "PAYMENT_SERVICE_URL".into(),
                format!("http://127.0.0.1:{}", p[2]),
            );
            let mut gateway2 = start("ordersys-gateway", "gateway-2", g2, &url(p[5]));
            let base2 = format!("http://127.0.0.1:{}", p[4]);
            let gateway_admin2 = format!("http://127.0.0.1:{}", p[5]);
            wait_ready(
                &format!("{gateway_admin2}/readyz"),
                &mut gateway2,
                Duration::from_secs(90),
            )
            .await;
            Some(Replicas {
                order: order2,
                payment: payment2,
                gateway: gateway2,
                base: base2,
                gateway_admin: gateway_admin2,
                order_admin: order_admin2,
                payment_admin: payment_admin2,
            })
        } else {
            None
        };
        Self {
            user,
            order,
            payment,
            gateway,
            base,
            gateway_admin,
            user_admin,
            order_admin: format!("http://127.0.0.1:{order_admin}"),
            operator: format!("http://127.0.0.1:{operator}"),
            payment_admin: format!("http://127.0.0.1:{pay_admin}"),
            grpc: [user_grpc, order_grpc, pay_grpc].map(|p| format!("http://127.0.0.1:{p}")),
            topic_prefix,
            brokers,
            payment_db_url,
            jwt_key,
            jwt_private_pem,
            jwt_public_key,
            saga_key,
            second,
            mysql_server: mysql,
            dbs,
            data_dir,
            sqlite: opts.sqlite,
            cleaned: false,
        }
    }

    /// Restart one service (`user`, `order`, `payment` or `gateway`) and wait until its
    /// own new process answers `/readyz`: a test never runs on against a service that
    /// has not come back.
    pub async fn restart(&mut self, which: &str) {
        let (url, service) = match which {
            "user" => (format!("{}/readyz", self.user_admin), &mut self.user),
            "order" => (format!("{}/readyz", self.order_admin), &mut self.order),
            "payment" => (format!("{}/readyz", self.payment_admin), &mut self.payment),
            "gateway" => (format!("{}/readyz", self.gateway_admin), &mut self.gateway),
            other => panic!("no service {other:?}"),
        };
        service.restart();
        wait_ready(&url, service, Duration::from_secs(90)).await;
    }

    /// Every service by name: `user`, `order`, `payment`, `gateway`, and with
    /// [`Options::two_replicas`] `order-2`, `payment-2`, `gateway-2`.
    pub fn services(&self) -> Vec<(&'static str, &Service)> {
        let mut all = vec![
            ("user", &self.user),
            ("order", &self.order),
            ("payment", &self.payment),
            ("gateway", &self.gateway),
        ];
        if let Some(r) = &self.second {
            all.extend([
                ("order-2", &r.order),
                ("payment-2", &r.payment),
                ("gateway-2", &r.gateway),
            ]);
        }
        all
    }

    /// The service called `name` (see [`services`](Self::services)).
    pub fn service_mut(&mut self, name: &str) -> Option<&mut Service> {
        match (name, &mut self.second) {
            ("user", _) => Some(&mut self.user),
            ("order", _) => Some(&mut self.order),
            ("payment", _) => Some(&mut self.payment),
            ("gateway", _) => Some(&mut self.gateway),
            ("order-2", Some(r)) => Some(&mut r.order),
            ("payment-2", Some(r)) => Some(&mut r.payment),
            ("gateway-2", Some(r)) => Some(&mut r.gateway),
            _ => None,
        }
    }

    /// The order database's URL (MySQL or SQLite).
    pub fn order_db_url(&self) -> String {
        if self.sqlite {
            format!("sqlite://{}/{}.db", self.data_dir.display(), self.dbs[1])
        } else {
            format!("{}/{}", self.mysql_server, self.dbs[1])
        }
    }

    /// Kill the processes and keep the databases and data directory, for a look
    /// afterwards (a failed fault run).
    pub fn kill_keeping_data(mut self) {
        self.kill_all();
        self.cleaned = true;
    }

    /// The URL of `path` on the gateway.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The seal of this system's saga messages (its `SAGA_KEY`).
    pub fn saga_mac(&self) -> ordersys_kit::saga_mac::SagaMac {
        ordersys_kit::saga_mac::SagaMac::new(self.saga_key.as_bytes()).expect("the system's key")
    }

    /// Run a `SELECT COUNT(*) …` with one blob parameter against the payment database
    /// (MySQL or SQLite, whichever this system runs on).
    pub async fn payment_count(&self, sql: &str, param: &[u8]) -> i64 {
        count(&self.payment_db_url, sql, Param::Bytes(param)).await
    }

    /// Run a `SELECT COUNT(*) …` with one text parameter against the order database.
    pub async fn order_count(&self, sql: &str, param: &str) -> i64 {
        count(&self.order_db_url(), sql, Param::Text(param)).await
    }

    /// Stop the services and drop the databases.
    pub async fn stop(mut self) {
        self.kill_all();
        self.clean_up().await;
    }

    fn kill_all(&mut self) {
        if let Some(r) = &mut self.second {
            r.gateway.kill();
            r.order.kill();
            r.payment.kill();
        }
        self.gateway.kill();
        self.order.kill();
        self.payment.kill();
        self.user.kill();
    }

    async fn clean_up(&mut self) {
        if !self.sqlite {
            for db in &self.dbs {
                let _ = drop_database(&self.mysql_server, db).await;
            }
        }
        let _ = std::fs::remove_dir_all(&self.data_dir);
        self.cleaned = true;
    }
}

/// A test that panicked never reached [`System::stop`]: kill the processes (their logs
/// stay in the temp dir, named in the panic of `wait_ready`), drop the databases and
/// remove the data directory anyway. The Kafka topics (`e2e.{id}.*`) stay; they are
/// isolated by name and gone with the test broker.
impl Drop for System {
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        self.kill_all();
        let (server, dbs, dir, sqlite) = (
            self.mysql_server.clone(),
            std::mem::take(&mut self.dbs),
            self.data_dir.clone(),
            self.sqlite,
        );
        // Drop may run inside a runtime: clean up on a thread with a runtime of its own.
        let _ = std::thread::spawn(move || {
            if !sqlite {
                if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    rt.block_on(async {
                        for db in &dbs {
                            let _ = drop_database(&server, db).await;
                        }
                    });
                }
            }
            let _ = std::fs::remove_dir_all(&dir);
        })
        .join();
    }
}

async fn drop_database(server: &str, db: &str) -> anyhow::Result<()> {
    use sqlx::{ConnectOptions, Connection};
    use std::str::FromStr;
    let mut conn = sqlx::mysql::MySqlConnectOptions::from_str(server)?
        .connect()
        .await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS `{db}`"))
        .execute(&mut conn)
        .await?;
    let _ = conn.close().await;
    Ok(())
}

/// The one parameter of a [`count`] query.
enum Param<'a> {
    Bytes(&'a [u8]),
    Text(&'a str),
}

/// `SELECT COUNT(*) …` with one parameter on a MySQL or SQLite database URL.
async fn count(url: &str, sql: &str, param: Param<'_>) -> i64 {
    use sqlx::{ConnectOptions, Connection};
    use std::str::FromStr;
    macro_rules! run {
        ($conn:expr) => {{
            let mut c = $conn;
            let q = sqlx::query_scalar(sql);
            let q = match param {
                Param::Bytes(b) => q.bind(b.to_vec()),
                Param::Text(t) => q.bind(t.to_owned()),
            };
            let n: i64 = q.fetch_one(&mut c).await.expect("query");
            let _ = c.close().await;
            n
        }};
    }
    if let Some(path) = url.strip_prefix("sqlite://") {
        run!(sqlx::sqlite::SqliteConnectOptions::new()
            .filename(path)
            .connect()
            .await
            .expect("sqlite"))
    } else {
        run!(sqlx::mysql::MySqlConnectOptions::from_str(url)
            .expect("url")
            .connect()
            .await
            .expect("mysql"))
    }
}
