//! Harness for end-to-end tests: start the real service binaries as processes on free
//! ports against the local MariaDB, Redis and Kafka, wait until they are ready, and stop
//! them when dropped (and, through their stdin lifeline, when the test process dies).
//!
//! Under `cargo test` the harness builds the service binaries itself before the first
//! start (a no-op when `make test` built them), so an edit is never tested against a
//! stale binary. A service counts as ready only when its own process answers `/readyz`
//! (the body names the service and its pid); every system has its own JWT secret,
//! databases, topics and data directory, and a panicking test still kills its processes
//! and drops its databases.

#![warn(missing_docs)]

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod infra;
pub mod otlp;
pub mod promql;

/// A free TCP port on 127.0.0.1, never one this process handed out before.
///
/// The port is found by binding port 0 and released for the child to bind later, so the
/// kernel may offer it again meanwhile — to the next call of this very function (seen:
/// a gateway given its own HTTP port as the user service's port). A process-wide record
/// of the ports handed out rules that out for every system a test process starts; a
/// port taken by another process in the gap makes the child fail to start, and the
/// readiness check (service name + pid) fails loudly instead of passing against a
/// stranger.
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let mut taken = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
        if !taken.contains(&port) {
            taken.push(port);
            return port;
        }
    }
}

/// The path of workspace binary `name` (built first under `cargo test`): a service, or a
/// tool like `ordersys-admin`.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // A test: target/<profile>/deps/<test> → target/<profile>/<name>; a binary of this
    // crate (the fault suite): target/<profile>/<bin> → target/<profile>/<name>.
    let dir = exe.parent().expect("target dir");
    let dir = if dir.ends_with("deps") {
        dir.parent().expect("target dir")
    } else {
        dir
    };
    ensure_built(dir);
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the service binaries first (`cargo build --workspace --bins --all-features`, which `make test` runs)",
        path.display()
    );
    path
}

/// Under `cargo test` (which sets `CARGO`), build the service binaries once per test
/// process before the first start, so an edit is never tested against a stale binary
/// (a no-op when they are up to date). The fault suite, run as a binary, is built by its
/// make target instead.
fn ensure_built(profile_dir: &std::path::Path) {
    static BUILT: std::sync::Once = std::sync::Once::new();
    let Ok(cargo) = std::env::var("CARGO") else {
        return;
    };
    BUILT.call_once(|| {
        let target_dir = profile_dir.parent().expect("target dir");
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build",
            "--workspace",
            "--bins",
            "--all-features",
            "--quiet",
        ])
        .arg("--target-dir")
        .arg(target_dir);
        if profile_dir.ends_with("release") {
            cmd.arg("--release");
        }
        if let Ok(manifest) = std::env::var("CARGO_MANIFEST_DIR") {
            cmd.current_dir(manifest);
        }
        let status = cmd.status().expect("running cargo build");
        assert!(status.success(), "building the service binaries failed");
    });
}

/// One running service process.
#[derive(Debug)]
pub struct Service {
    name: &'static str,
    env: HashMap<String, String>,
    child: Option<Child>,
    log: PathBuf,
    ready_url: Option<String>,
}

/// The development CA and service certificates (`scripts/dev-certs`), made once per
/// test process.
pub fn dev_certs() -> &'static std::path::Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("ordersys-e2e-certs-{}", std::process::id()));
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/dev-certs");
        let out = Command::new(&script)
            .arg(&dir)
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "scripts/dev-certs failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    })
}

/// The mutual-TLS settings (`TLS_CERT`, `TLS_KEY`, `TLS_CA`) of a separate service
/// (`ordersys-user` → the `user` certificate), unless `env` already says how its gRPC is
/// secured: the test suite runs with mutual TLS on, as production does. With a
/// `rediss://` `REDIS_URL` (a [`infra::Kind::RedisTls`] server) and no `REDIS_CA`, also
/// the Redis client's: the development CA and the service's own certificate.
fn with_tls(name: &str, mut env: HashMap<String, String>) -> HashMap<String, String> {
    let Some(cert) = name.strip_prefix("ordersys-") else {
        return env;
    };
    let dir = dev_certs();
    let path = |f: &str| dir.join(f).display().to_string();
    let separate = ["user", "order", "payment", "gateway"].contains(&cert);
    if separate && !env.contains_key("TLS_CERT") && !env.contains_key("GRPC_INSECURE") {
        env.insert("TLS_CERT".into(), path(&format!("{cert}.pem")));
        env.insert("TLS_KEY".into(), path(&format!("{cert}.key")));
        env.insert("TLS_CA".into(), path("ca.pem"));
    }
    let rediss = env
        .get("REDIS_URL")
        .is_some_and(|u| u.starts_with("rediss://"));
    if separate && rediss && !env.contains_key("REDIS_CA") {
        env.insert("REDIS_CA".into(), path("ca.pem"));
        env.insert("REDIS_CERT".into(), path(&format!("{cert}.pem")));
        env.insert("REDIS_KEY".into(), path(&format!("{cert}.key")));
    }
    env
}

/// Run binary `name` with `args` and `env` (plain text inside: no TLS settings added)
/// until it exits, at most `within`: its exit status and what it printed.
pub async fn run_to_end(
    name: &str,
    args: &[&str],
    env: &HashMap<String, String>,
    within: Duration,
) -> (std::process::ExitStatus, String) {
    let child = tokio::process::Command::new(bin(name))
        .args(args)
        .envs(env)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(within, child)
        .await
        .unwrap_or_else(|_| panic!("{name} {args:?} did not exit within {within:?}"))
        .expect("the binary runs");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status, text)
}

impl Service {
    /// Start binary `name` with `env`; its output goes to a log file under the temp dir.
    /// The separate services get mutual TLS (see [`dev_certs`]) unless `env` sets
    /// `TLS_CERT` or `GRPC_INSECURE`.
    pub fn start(name: &'static str, env: HashMap<String, String>) -> Self {
        let env = with_tls(name, env);
        let log = std::env::temp_dir().join(format!(
            "ordersys-e2e-{name}-{}.log",
            uuid::Uuid::new_v4().simple()
        ));
        let mut s = Self {
            name,
            env,
            child: None,
            log,
            ready_url: None,
        };
        s.spawn();
        s
    }

    /// Start binary `name` with `env`, logging to `{log_dir}/{name}.log`; `ready_url`
    /// answers 200 once it is ready (see [`wait_until_ready`](Self::wait_until_ready)).
    pub fn start_logged(
        name: &'static str,
        env: HashMap<String, String>,
        log_dir: &std::path::Path,
        ready_url: &str,
    ) -> Self {
        let env = with_tls(name, env);
        let mut s = Self {
            name,
            env,
            child: None,
            log: log_dir.join(format!("{name}.log")),
            ready_url: Some(ready_url.to_owned()),
        };
        s.spawn();
        s
    }

    /// Where its output goes (appended across restarts).
    pub fn log_path(&self) -> &std::path::Path {
        &self.log
    }

    /// Start it again if it is not running (after [`kill`](Self::kill), or a crash).
    pub fn respawn(&mut self) {
        if self.exited() {
            self.child = None;
            self.spawn();
        }
    }

    /// Wait until the readiness URL given to [`start_logged`](Self::start_logged)
    /// answers 200, restarting the process if it exits meanwhile.
    pub async fn wait_until_ready(&mut self, within: Duration) -> anyhow::Result<()> {
        let Some(url) = self.ready_url.clone() else {
            anyhow::bail!("{} has no readiness URL", self.name);
        };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + within;
        loop {
            self.respawn();
            if self.answers_ready(&client, &url).await {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{} not ready at {url} within {within:?}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn spawn(&mut self) {
        // Appended, so that a restart keeps the log that explains the crash.
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = Command::new(bin(self.name))
            .envs(&self.env)
            .env("ORDERSYS_STDIN_LIFELINE", "1")
            .env(
                "RUST_LOG",
                self.env
                    .get("RUST_LOG")
                    .map(String::as_str)
                    .unwrap_or("info"),
            )
            .stdin(Stdio::piped())
            .stdout(out.try_clone().expect("log file"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.name));
        self.child = Some(child);
    }

    /// Kill the process now (a crash, as far as everyone else can tell).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Send SIGTERM (a graceful stop, as an orchestrator would) and wait up to `within`
    /// for the process to exit; returns its exit status, or `None` if it did not exit
    /// in time (it is then killed).
    pub fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Start it again with the same settings.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// What it logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether `url` answers 200 from *this* process: `/readyz` and `/healthz` name the
    /// service and its pid, so another system's service on a reused port never counts.
    async fn answers_ready(&self, client: &reqwest::Client, url: &str) -> bool {
        let Ok(r) = client.get(url).timeout(Duration::from_secs(2)).send().await else {
            return false;
        };
        if !r.status().is_success() {
            return false;
        }
        let body: serde_json::Value = r.json().await.unwrap_or_default();
        // The all-in-one `ordersys` binary answers on its gateway's port.
        let service = match self.name {
            "ordersys" => "gateway",
            name => name.trim_start_matches("ordersys-"),
        };
        body["service"] == service
            && body["pid"]
                .as_u64()
                .is_some_and(|p| Some(p) == self.pid().map(u64::from))
    }

    /// Whether the process has exited.
    pub fn exited(&mut self) -> bool {
        match &mut self.child {
            Some(c) => c.try_wait().ok().flatten().is_some(),
            None => true,
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Wait until `url` answers 200 from `service`'s own process (see the `pid` check), or
/// panic with the service's log — at once if the process exited.
pub async fn wait_ready(url: &str, service: &mut Service, timeout: Duration) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + timeout;
    loop {
        let exited = service.exited();
        if !exited && service.answers_ready(&client, url).await {
            return;
        }
        if exited || Instant::now() > deadline {
            panic!(
                "{} did not become ready at {url}; log:\n{}",
                service.name,
                service.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_owned())
}

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
    /// [`infra::Kind::RedisTls`] one), e.g. one it kills; default `REDIS_URL`
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
    /// The user service's admin base URL.
    pub user_admin: String,
    /// The order service's admin base URL (`/readyz`, `/metrics`).
    pub order_admin: String,
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
    /// This system's HS256 secret (every system has its own: a token of one is
    /// worthless at another's gateway). Tests forge tokens with it.
    pub jwt_secret: String,
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
        let jwt_secret = format!("e2e-{}{}", id, uuid::Uuid::new_v4().simple());
        let ports: Vec<u16> = (0..7).map(|_| free_port()).collect();
        let (user_grpc, user_admin, order_grpc, order_admin, pay_grpc, pay_admin, http) = (
            ports[0], ports[1], ports[2], ports[3], ports[4], ports[5], ports[6],
        );
        let env = |pairs: &[(&str, String)]| -> HashMap<String, String> {
            let mut m: HashMap<String, String> = [
                ("REDIS_URL", redis.clone()),
                ("JWT_SECRET", jwt_secret.clone()),
                ("KAFKA_BROKERS", brokers.clone()),
                ("KAFKA_TOPIC_PREFIX", topic_prefix.clone()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
            for (k, v) in pairs {
                m.insert((*k).to_owned(), v.clone());
            }
            m
        };
        let mut user = Service::start(
            "ordersys-user",
            env(&[
                ("GRPC_ADDR", format!("127.0.0.1:{user_grpc}")),
                ("ADMIN_ADDR", format!("127.0.0.1:{user_admin}")),
                ("DATABASE_URL", db_url(0)),
            ]),
        );
        let mut order_env = env(&[
            ("GRPC_ADDR", format!("127.0.0.1:{order_grpc}")),
            ("ADMIN_ADDR", format!("127.0.0.1:{order_admin}")),
            ("DATABASE_URL", db_url(1)),
            ("RELAY_ID", format!("{id}-1")),
        ]);
        order_env.extend(opts.order_env.clone());
        let mut order = Service::start("ordersys-order", order_env.clone());
        let payment_db_url = db_url(2);
        let mut payment_env = env(&[
            ("GRPC_ADDR", format!("127.0.0.1:{pay_grpc}")),
            ("ADMIN_ADDR", format!("127.0.0.1:{pay_admin}")),
            ("DATABASE_URL", payment_db_url.clone()),
            ("RELAY_ID", format!("{id}-1")),
        ]);
        payment_env.extend(opts.payment_env.clone());
        let mut payment = Service::start("ordersys-payment", payment_env.clone());
        let mut genv = env(&[
            ("HTTP_ADDR", format!("127.0.0.1:{http}")),
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
        ]);
        genv.extend(opts.gateway_env.clone());
        let mut gateway = Service::start("ordersys-gateway", genv.clone());
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
        wait_ready(
            &format!("{base}/readyz"),
            &mut gateway,
            Duration::from_secs(90),
        )
        .await;
        let second = if opts.two_replicas {
            let p: Vec<u16> = (0..5).map(|_| free_port()).collect();
            let mut o2 = order_env.clone();
            o2.insert("GRPC_ADDR".into(), format!("127.0.0.1:{}", p[0]));
            o2.insert("ADMIN_ADDR".into(), format!("127.0.0.1:{}", p[1]));
            o2.insert("RELAY_ID".into(), format!("{id}-2"));
            let mut p2 = payment_env.clone();
            p2.insert("GRPC_ADDR".into(), format!("127.0.0.1:{}", p[2]));
            p2.insert("ADMIN_ADDR".into(), format!("127.0.0.1:{}", p[3]));
            p2.insert("RELAY_ID".into(), format!("{id}-2"));
            let mut order2 = Service::start("ordersys-order", o2);
            let mut payment2 = Service::start("ordersys-payment", p2);
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
            g2.insert(
                "ORDER_SERVICE_URL".into(),
                format!("http://127.0.0.1:{}", p[0]),
            );
            g2.insert(
                "PAYMENT_SERVICE_URL".into(),
                format!("http://127.0.0.1:{}", p[2]),
            );
            let mut gateway2 = Service::start("ordersys-gateway", g2);
            let base2 = format!("http://127.0.0.1:{}", p[4]);
            wait_ready(
                &format!("{base2}/readyz"),
                &mut gateway2,
                Duration::from_secs(90),
            )
            .await;
            Some(Replicas {
                order: order2,
                payment: payment2,
                gateway: gateway2,
                base: base2,
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
            user_admin,
            order_admin: format!("http://127.0.0.1:{order_admin}"),
            payment_admin: format!("http://127.0.0.1:{pay_admin}"),
            grpc: [user_grpc, order_grpc, pay_grpc].map(|p| format!("http://127.0.0.1:{p}")),
            topic_prefix,
            brokers,
            payment_db_url,
            jwt_secret,
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
            "gateway" => (format!("{}/readyz", self.base), &mut self.gateway),
            other => panic!("no service {other:?}"),
        };
        service.restart();
        wait_ready(&url, service, Duration::from_secs(90)).await;
    }

    /// The URL of `path` on the gateway.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Run a `SELECT COUNT(*) …` with one blob parameter against the payment database
    /// (MySQL or SQLite, whichever this system runs on).
    pub async fn payment_count(&self, sql: &str, param: &[u8]) -> i64 {
        count(&self.payment_db_url, sql, Param::Bytes(param)).await
    }

    /// Run a `SELECT COUNT(*) …` with one text parameter against the order database.
    pub async fn order_count(&self, sql: &str, param: &str) -> i64 {
        let url = if self.sqlite {
            format!("sqlite://{}/{}.db", self.data_dir.display(), self.dbs[1])
        } else {
            format!("{}/{}", self.mysql_server, self.dbs[1])
        };
        count(&url, sql, Param::Text(param)).await
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

/// A JSON API client for the gateway.
#[derive(Debug, Clone)]
pub struct Api {
    client: reqwest::Client,
    base: String,
}

/// A response: status, headers, JSON body (`Null` if none).
#[derive(Debug)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: reqwest::header::HeaderMap,
    /// Body as JSON, or `Value::String` when not JSON.
    pub body: serde_json::Value,
}

impl Reply {
    /// `body.error.code`.
    pub fn error_code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

impl Api {
    /// A client for the gateway at `base`.
    pub fn new(base: &str) -> Self {
        Self {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .expect("client"),
            base: base.to_owned(),
        }
    }

    /// Send a request with an optional JSON body and bearer token.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
        token: Option<&str>,
    ) -> Reply {
        let mut rb = self.client.request(
            method.parse().expect("method"),
            format!("{}{path}", self.base),
        );
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        Self::reply(rb).await
    }

    /// Send a raw request (for malformed bodies and custom headers).
    pub async fn raw(&self, rb: reqwest::RequestBuilder) -> Reply {
        Self::reply(rb).await
    }

    /// Poll `GET /api/v1/orders/{id}` (each answer must be 200) until `done` holds for
    /// the order, for at most 60 s; returns the order.
    pub async fn wait_order(
        &self,
        token: &str,
        id: &str,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let done = &done;
        eventually(
            &format!("order {id} to reach the expected state"),
            Duration::from_secs(60),
            || async move {
                let r = self
                    .send("GET", &format!("/api/v1/orders/{id}"), None, Some(token))
                    .await;
                assert_eq!(r.status, 200, "{r:?}");
                done(&r.body).then_some(r.body)
            },
        )
        .await
    }

    /// The underlying client, for [`raw`](Self::raw).
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// The gateway's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    async fn reply(rb: reqwest::RequestBuilder) -> Reply {
        let r = rb.send().await.expect("request sent");
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(if text.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::Value::String(text)
        });
        Reply {
            status,
            headers,
            body,
        }
    }

    /// Log in; the access token.
    pub async fn login(&self, email: &str, password: &str) -> String {
        let creds = serde_json::json!({ "email": email, "password": password });
        let r = self
            .send("POST", "/api/v1/auth/login", Some(creds), None)
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        r.body["access_token"].as_str().expect("token").to_owned()
    }

    /// A token of a new session of `email`, already logged out (revoked).
    pub async fn revoked_token(&self, email: &str, password: &str) -> String {
        let token = self.login(email, password).await;
        let r = self
            .send("POST", "/api/v1/auth/logout", None, Some(&token))
            .await;
        assert_eq!(r.status, 204, "{r:?}");
        token
    }

    /// Register, then log in; returns the access token.
    pub async fn signup(&self, email: &str, password: &str) -> String {
        let creds = serde_json::json!({ "email": email, "password": password });
        let r = self
            .send("POST", "/api/v1/auth/register", Some(creds.clone()), None)
            .await;
        assert_eq!(r.status, 201, "{r:?}");
        let r = self
            .send("POST", "/api/v1/auth/login", Some(creds), None)
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        r.body["access_token"].as_str().expect("token").to_owned()
    }
}

pub use ordersys_testkit::eventually;

/// The environment of the embedded `ordersys` binary with data in `data_dir`, REST on
/// 127.0.0.1:`port`, internal ports ephemeral, a generous rate limit and no servers at
/// all, whatever this process's environment says.
pub fn embedded_env(data_dir: &std::path::Path, port: u16) -> HashMap<String, String> {
    [
        ("DATA_DIR", data_dir.display().to_string()),
        ("HTTP_ADDR", format!("127.0.0.1:{port}")),
        ("INTERNAL_PORTS", "ephemeral".into()),
        ("RATE_LIMIT_PER_MINUTE", "100000".into()),
        ("DATABASE_URL", String::new()),
        ("KAFKA_BROKERS", String::new()),
        ("REDIS_URL", String::new()),
        ("JWT_SECRET", String::new()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// A unique e-mail address.
pub fn email() -> String {
    format!("user-{}@example.com", uuid::Uuid::new_v4().simple())
}
