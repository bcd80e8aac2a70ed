//! Servers of our own for tests that must kill them: a MariaDB instance, a Redis server
//! and a Kafka-protocol broker (Tansu), each on its own port with its own data
//! directory, started as child processes and killed with SIGKILL when asked (and when
//! dropped).
//!
//! Used by the fault suite (`chaos`) and by the degraded-dependency tests; the shared
//! servers of the other tests are never touched.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

/// Which server a [`Daemon`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `mariadbd` with a data directory of its own.
    MariaDb,
    /// `redis-server` with an append-only file (so a kill loses nothing it acknowledged).
    Redis,
    /// The same on TLS only (no plain-text port), requiring client certificates: the
    /// server presents the development `redis` certificate and trusts the development
    /// CA ([`dev_certs`](crate::dev_certs)); clients connect with `rediss://`.
    RedisTls,
    /// Plain text, with the deployments' users (`scripts/redis-acl`): the default user
    /// off, the services' `ordersys` with [`REDIS_ACL_PASSWORD`].
    RedisAcl,
    /// Tansu with memory storage: a restart is a new, empty cluster.
    Broker,
}

impl Kind {
    /// A short name for logs and summaries.
    pub fn name(self) -> &'static str {
        match self {
            Self::MariaDb => "mariadb",
            Self::Redis => "redis",
            Self::RedisTls => "redis-tls",
            Self::RedisAcl => "redis-acl",
            Self::Broker => "broker",
        }
    }
}

/// The password of the `ordersys` user of a [`Kind::RedisAcl`] server (its exporter's:
/// the same with `-exporter`).
pub const REDIS_ACL_PASSWORD: &str = "e2e-redis-password-of-the-services";

/// A directory for servers' data, removed with everything in it when dropped.
#[derive(Debug)]
pub struct Scratch(pub PathBuf);

impl Scratch {
    /// A new directory under the system's temporary one, named after `what`.
    pub fn new(what: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("ordersys-{what}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("a scratch directory");
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One server process of our own.
#[derive(Debug)]
pub struct Daemon {
    kind: Kind,
    /// Its TCP port on 127.0.0.1.
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

fn port_open(port: u16) -> bool {
    TcpStream::connect_timeout(
        &format!("127.0.0.1:{port}").parse().expect("address"),
        Duration::from_millis(200),
    )
    .is_ok()
}

/// The Tansu binary: `TANSU_BIN`, else where `scripts/kafka-up` installs it.
pub fn tansu_bin() -> PathBuf {
    if let Ok(p) = std::env::var("TANSU_BIN") {
        return PathBuf::from(p);
    }
    tools_dir().join("tansu-calfkit-0.1.2/tansu")
}

/// Whether the broker keeps its log in a SQLite file (`TANSU_STORAGE=sqlite`).
fn tansu_sqlite() -> bool {
    std::env::var("TANSU_STORAGE").as_deref() == Ok("sqlite")
}

/// The index Tansu 0.6's SQLite schema lacks on the `header` table's record key:
/// without it every fetched record scans all headers ever stored, and the broker slows
/// down as its log grows (docs/BENCHMARKS.md, issue #33 item 4). The compose
/// deployment's broker gets it too (`deployments/compose/offline/kafka-entrypoint`).
/// Made on a connection of our own once the broker listens (its tables exist then);
/// SQLite re-prepares the broker's statements after the schema change.
const TANSU_HEADER_INDEX: &str =
    "CREATE INDEX IF NOT EXISTS ordersys_header_record ON header (topition, offset_id)";

fn index_tansu_headers(db: &Path) -> anyhow::Result<()> {
    let db = db.to_owned();
    let made = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            use sqlx::ConnectOptions;
            let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(&db)
                .busy_timeout(Duration::from_secs(30))
                .connect()
                .await?;
            sqlx::query(TANSU_HEADER_INDEX).execute(&mut conn).await?;
            anyhow::Ok(())
        })
    })
    .join();
    made.map_err(|_| anyhow::anyhow!("indexing the broker's headers panicked"))?
}

/// Where the project's scripts install their tools: `ORDERSYS_TOOLS`, else
/// `~/.cache/ordersys`.
pub fn tools_dir() -> PathBuf {
    std::env::var("ORDERSYS_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
                .join(".cache/ordersys")
        })
}

impl Daemon {
    /// Start a server of `kind` on a free port with its data under `dir`, and wait until
    /// it accepts connections.
    pub fn start(kind: Kind, dir: &Path) -> anyhow::Result<Self> {
        let dir = dir.join(kind.name());
        std::fs::create_dir_all(&dir)?;
        let mut d = Self {
            kind,
            port: free_port(),
            dir,
            child: None,
        };
        if kind == Kind::MariaDb {
            d.install_mariadb()?;
        }
        if kind == Kind::RedisAcl {
            d.write_acl()?;
        }
        d.spawn()?;
        Ok(d)
    }

    /// The users of the deployments, from the script that writes theirs.
    fn write_acl(&self) -> anyhow::Result<()> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/redis-acl");
        let exporter = format!("{REDIS_ACL_PASSWORD}-exporter");
        let out = Command::new(&script)
            .args([REDIS_ACL_PASSWORD, exporter.as_str()])
            .output()?;
        anyhow::ensure!(out.status.success(), "{}: {out:?}", script.display());
        std::fs::write(self.dir.join("users.acl"), out.stdout)?;
        Ok(())
    }

    fn install_mariadb(&self) -> anyhow::Result<()> {
        let data = self.dir.join("data");
        if data.join("mysql").exists() {
            return Ok(());
        }
        let out = Command::new("mariadb-install-db")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .args([
                "--user=root",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ])
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "mariadb-install-db failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    fn command(&self) -> Command {
        let p = self.port;
        let d = self.dir.display();
        match self.kind {
            Kind::MariaDb => {
                let mut c = Command::new("mariadbd");
                c.arg("--no-defaults")
                    .arg(format!("--datadir={d}/data"))
                    .arg(format!("--socket={d}/mysqld.sock"))
                    .arg(format!("--pid-file={d}/mysqld.pid"))
                    .arg(format!("--port={p}"))
                    .args([
                        "--bind-address=127.0.0.1",
                        "--user=root",
                        "--skip-grant-tables",
                        "--skip-name-resolve",
                        "--innodb-buffer-pool-size=256M",
                        "--max-connections=500",
                    ]);
                c
            }
            Kind::Redis => {
                let mut c = Command::new("redis-server");
                c.args(["--port", &p.to_string(), "--bind", "127.0.0.1"])
                    .args(["--save", "", "--appendonly", "yes"])
                    .args(["--appendfsync", "everysec", "--dir"])
                    .arg(&self.dir);
                c
            }
            Kind::RedisAcl => {
                let mut c = Command::new("redis-server");
                c.args(["--port", &p.to_string(), "--bind", "127.0.0.1"])
                    .args(["--save", "", "--appendonly", "yes"])
                    .args(["--appendfsync", "everysec", "--dir"])
                    .arg(&self.dir)
                    .arg("--aclfile")
                    .arg(self.dir.join("users.acl"));
                c
            }
            Kind::RedisTls => {
                let certs = crate::dev_certs();
                let mut c = Command::new("redis-server");
                c.args(["--port", "0", "--bind", "127.0.0.1"])
                    .args(["--tls-port", &p.to_string(), "--tls-auth-clients", "yes"])
                    .arg("--tls-cert-file")
                    .arg(certs.join("redis.pem"))
                    .arg("--tls-key-file")
                    .arg(certs.join("redis.key"))
                    .arg("--tls-ca-cert-file")
                    .arg(certs.join("ca.pem"))
                    .args(["--save", "", "--appendonly", "yes"])
                    .args(["--appendfsync", "everysec", "--dir"])
                    .arg(&self.dir);
                c
            }
            Kind::Broker => {
                // `TANSU_STORAGE=sqlite` (with `TANSU_BIN` a build with the `libsql`
                // feature): the log in a SQLite file of the server's directory, kept
                // across a kill; otherwise in memory, lost with the process.
                // (The file's URL is relative to the working directory: the server's.)
                let storage = if tansu_sqlite() {
                    "sqlite://tansu.db"
                } else {
                    "memory://tansu/"
                };
                let mut c = Command::new(tansu_bin());
                c.current_dir(&self.dir);
                c.arg("broker")
                    .arg(format!("--listener-url=tcp://127.0.0.1:{p}"))
                    .arg(format!("--advertised-listener-url=tcp://127.0.0.1:{p}"))
                    .arg(format!("--storage-engine={storage}"))
                    .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
                c
            }
        }
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))?;
        let child = self
            .command()
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting {}: {e}", self.kind.name()))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !port_open(self.port) {
            if let Some(c) = &mut self.child {
                if let Some(status) = c.try_wait()? {
                    anyhow::bail!(
                        "{} exited at start ({status}); log:\n{}",
                        self.kind.name(),
                        self.log_tail()
                    );
                }
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{} did not open port {}",
                self.kind.name(),
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        if self.kind == Kind::Broker && tansu_sqlite() {
            index_tansu_headers(&self.dir.join("tansu.db"))?;
        }
        Ok(())
    }

    /// The last lines of the server's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// `kill -9`, and wait for the process to be gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start it again on the same port and data directory (after [`kill`](Self::kill)).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        // The port may linger for a moment after the kill.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn() {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() < deadline => {
                    tracing_free_log(&format!(
                        "restart of {} failed, again: {e}",
                        self.kind.name()
                    ));
                    std::thread::sleep(Duration::from_millis(300));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// What this server is.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(std::process::Child::id)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL clients use: `mysql://root@127.0.0.1:P`, `redis://127.0.0.1:P/`,
    /// `rediss://127.0.0.1:P/`, `redis://ordersys:PASSWORD@127.0.0.1:P/` or
    /// `127.0.0.1:P` (bootstrap servers).
    pub fn url(&self) -> String {
        match self.kind {
            Kind::MariaDb => format!("mysql://root@127.0.0.1:{}", self.port),
            Kind::Redis => format!("redis://127.0.0.1:{}/", self.port),
            Kind::RedisTls => format!("rediss://127.0.0.1:{}/", self.port),
            Kind::RedisAcl => format!(
                "redis://ordersys:{REDIS_ACL_PASSWORD}@127.0.0.1:{}/",
                self.port
            ),
            Kind::Broker => format!("127.0.0.1:{}", self.port),
        }
    }
}

fn tracing_free_log(msg: &str) {
    eprintln!("infra: {msg}");
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}
