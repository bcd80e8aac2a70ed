//! One service binary as a child process: built before the first start, on free ports,
//! ready when its own `/readyz` answers, killed when dropped.

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1, never one this process handed out before.
///
/// The port is checked free by binding it and released for the child to bind later. It
/// is taken from below the kernel's ephemeral range (20000–32767; Linux hands out
/// 32768 and up to `bind(…:0)` and to outgoing connections), so no connection opened in
/// the gap — a test's own client, a service's pool reaching MariaDB — can land on it
/// before the child binds it (seen: `Address already in use` from a service whose port
/// a connection had taken). A process-wide record of the ports handed out rules out
/// handing one out twice; each test process starts at a place of its own in the range
/// (its pid), away from the ports an earlier one's children may still hold. Should a
/// stranger take the port all the same, the child fails to start and the readiness
/// check (service name + pid) fails loudly instead of passing against it.
pub fn free_port() -> u16 {
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_768;
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut taken = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
    let start = std::process::id().wrapping_mul(7_919) % SPAN;
    // 11 and SPAN (2^5 · 3 · 7 · 19) are coprime: the walk visits every port once.
    for i in 0..SPAN {
        let port = u16::try_from(LOW + (start + i * 11) % SPAN).expect("a port below 32768");
        if taken.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            taken.push(port);
            return port;
        }
    }
    panic!("no free port left in 20000–32767");
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
        "{} is missing: build the service binaries first (`cargo build --bins -p ordersys-user -p ordersys-order -p ordersys-payment -p ordersys-gateway -p ordersys`, which `make test` runs)",
        path.display()
    );
    path
}

/// The packages whose binaries ship (the image's; the Makefile's `PRODUCT`).
pub const PRODUCT: [&str; 5] = [
    "ordersys-user",
    "ordersys-order",
    "ordersys-payment",
    "ordersys-gateway",
    "ordersys",
];

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
        // What ships, built on its own (the Makefile's PRODUCT): no test-only feature of
        // another package reaches the binaries under test.
        cmd.args(["build", "--bins", "--quiet"]);
        for p in PRODUCT {
            cmd.args(["-p", p]);
        }
        cmd.arg("--target-dir").arg(target_dir);
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
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/dev-certs");
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
        let log = std::env::temp_dir().join(format!(
            "ordersys-e2e-{name}-{}.log",
            uuid::Uuid::new_v4().simple()
        ));
        Self::start_at(name, env, log, None)
    }

    /// Start binary `name` with `env`, logging to `{log_dir}/{name}.log`; `ready_url`
    /// answers 200 once it is ready (see [`wait_until_ready`](Self::wait_until_ready)).
    pub fn start_logged(
        name: &'static str,
        env: HashMap<String, String>,
        log_dir: &std::path::Path,
        ready_url: &str,
    ) -> Self {
        let log = log_dir.join(format!("{name}.log"));
        Self::start_at(name, env, log, Some(ready_url.to_owned()))
    }

    /// Start binary `name` with `env`, appending its output to `log`; `ready_url`, if
    /// any, answers 200 once it is ready. The other constructors are this one.
    pub fn start_at(
        name: &'static str,
        env: HashMap<String, String>,
        log: PathBuf,
        ready_url: Option<String>,
    ) -> Self {
        let mut s = Self {
            name,
            env: with_tls(name, env),
            child: None,
            log,
            ready_url,
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

    /// Send the process `sig` (`-STOP` freezes it, `-CONT` lets it run again).
    pub fn signal(&self, sig: &str) {
        let pid = self.pid().expect("the service runs");
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} {pid}");
    }

    /// The value of `key` in the environment the service was started with.
    pub fn env_var(&self, key: &str) -> Option<&str> {
        self.env.get(key).map(String::as_str)
    }

    /// What it logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// After the process died of a signal with a core dump: the backtrace of the thread
    /// that crashed, from `gdb` on the core file the kernel wrote into the current
    /// directory (`kernel.core_pattern` `core` or `core.<pid>`, and `ulimit -c` not 0 —
    /// `make chaos-short` raises it). The whole report (every thread) is written next to
    /// the log as `<log>.backtrace.txt`; the core itself is removed. `None` when there
    /// is no fresh core file or no `gdb`.
    pub fn core_backtrace(&self, pid: u32) -> Option<String> {
        let fresh = |p: &std::path::Path| {
            std::fs::metadata(p)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age < Duration::from_secs(120)))
        };
        let core = [PathBuf::from(format!("core.{pid}")), PathBuf::from("core")]
            .into_iter()
            .find(|p| fresh(p))?;
        let out = Command::new("gdb")
            .args([
                "-batch",
                "-q",
                "-ex",
                "bt 40",
                "-ex",
                "thread apply all bt 25",
            ])
            .arg(bin(self.name))
            .arg(&core)
            .output()
            .ok()?;
        let _ = std::fs::remove_file(&core);
        let report = String::from_utf8_lossy(&out.stdout).into_owned();
        let _ = std::fs::write(self.log.with_extension("backtrace.txt"), &report);
        // The crashing thread's frames come first, up to the first thread listing.
        let crashed: Vec<&str> = report
            .lines()
            .skip_while(|l| !l.starts_with('#'))
            .take_while(|l| !l.starts_with("Thread "))
            .collect();
        Some(crashed.join("\n"))
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The TCP ports the process listens on (from `/proc`: its socket inodes matched
    /// against `/proc/net/tcp` and `tcp6` entries in state LISTEN), sorted.
    pub fn listening_ports(&self) -> Vec<u16> {
        let Some(pid) = self.pid() else {
            return Vec::new();
        };
        let inodes: std::collections::HashSet<String> =
            std::fs::read_dir(format!("/proc/{pid}/fd"))
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|fd| std::fs::read_link(fd.path()).ok())
                .filter_map(|link| {
                    let link = link.to_string_lossy().into_owned();
                    let inode = link.strip_prefix("socket:[")?.strip_suffix(']')?;
                    Some(inode.to_owned())
                })
                .collect();
        let mut ports: Vec<u16> = ["/proc/net/tcp", "/proc/net/tcp6"]
            .iter()
            .filter_map(|table| std::fs::read_to_string(table).ok())
            .flat_map(|table| {
                table
                    .lines()
                    .skip(1)
                    .filter_map(|line| {
                        // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
                        let cols: Vec<&str> = line.split_whitespace().collect();
                        let (local, state, inode) = (cols.get(1)?, cols.get(3)?, cols.get(9)?);
                        let port = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
                        (*state == "0A" && inodes.contains(*inode)).then_some(port)
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        ports.sort_unstable();
        ports.dedup();
        ports
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
        self.exit_status().is_some()
    }

    /// How the process ended (`exit status: 1`, `signal: 6 (SIGABRT)`), if it has;
    /// "not started" when there is no process.
    pub fn exit_status(&mut self) -> Option<String> {
        match &mut self.child {
            Some(c) => c.try_wait().ok().flatten().map(|s| s.to_string()),
            None => Some("not started".into()),
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

pub(crate) fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_owned())
}

/// Run `ordersys-admin --url url args…` with `token`: its exit code and its JSON answer
/// (stdout, or the JSON part of stderr on an error).
pub fn admin_cli(url: &str, token: &str, args: &[&str]) -> (i32, serde_json::Value) {
    let (code, text) = admin_cli_text(url, token, args);
    let json_part = text.find('{').map(|i| &text[i..]).unwrap_or("null");
    let value = serde_json::from_str(json_part)
        .unwrap_or_else(|e| panic!("ordersys-admin {args:?}: not JSON ({e}): {text}"));
    (code, value)
}

/// `ordersys-admin --url URL ARGS…` with `token`: its exit code and what it printed
/// (standard output on success, standard error otherwise).
pub fn admin_cli_text(url: &str, token: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new(bin("ordersys-admin"))
        .args(["--url", url])
        .args(args)
        .env("ORDERSYS_ADMIN_TOKEN", token)
        .env_remove("ADMIN_TOKEN")
        .output()
        .expect("run ordersys-admin");
    let text = String::from_utf8_lossy(if out.status.success() {
        &out.stdout
    } else {
        &out.stderr
    })
    .into_owned();
    (out.status.code().unwrap_or(-1), text)
}
