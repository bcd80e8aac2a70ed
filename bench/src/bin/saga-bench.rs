//! One load generator for ordersys and its peers (docs/BENCHMARKS.md, "Side by side"):
//! each client opens an account, then runs the order saga in a loop — debit the
//! balance, confirm the order — as fast as the system answers; after a warm-up it
//! measures sagas per second, create→confirmed latency, errors and the CPU time of
//! every process of the system under test; at the end it checks the money and that a
//! saga the balance cannot pay is declined without touching the balance.
//!
//! ```sh
//! make bench-peers                     # all systems, one table (bench/peers/run)
//! cargo run --release -p ordersys-bench --bin saga-bench -- --help
//! ```

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use ordersys_e2e::cpu::{percentile, CpuSnap, TICKS_PER_SEC};
use rand::Rng;
use serde_json::{json, Value};
use uuid::Uuid;

const USAGE: &str = "\
saga-bench — the order saga under load, the same for every system

  --system S        ordersys | restate | dbos: which REST/ingress protocol to speak
  --base URL        where the system's HTTP entry point listens
  --label L         the system's name in the table (the value of --system)
  --clients N       concurrent clients, each with an account of its own (1)
  --seconds S       measured seconds, after the warm-up (20)
  --warmup S        seconds of load before measuring (5)
  --initial N       the opening balance of each account; ordersys: read from the
                    wallet instead (its INITIAL_BALANCE) (1000000000)
  --wait-s S        ordersys only: the REST contract answers 201 at once and the saga
                    goes on behind it; a client then asks for its order with
                    `?wait=Ss`, answered when the order is decided (10; 0: poll)
  --poll-ms MS      ordersys with --wait-s 0: how often a client asks for its order's
                    status until it ends (1)
  --proc NAME=PID   a process of the system under test; its CPU time, with that of
                    all its descendants, is counted per saga (repeatable)
  --json FILE       append the result as one JSON line to FILE
  --table FILE      print the JSON lines of FILE as a Markdown table and exit
";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum System {
    Ordersys,
    Restate,
    Dbos,
}

#[derive(Debug)]
struct Args {
    system: System,
    base: String,
    label: String,
    clients: usize,
    seconds: u64,
    warmup: u64,
    initial: i64,
    poll: Duration,
    wait: u64,
    procs: Vec<(String, u32)>,
    json: Option<String>,
}

impl Args {
    fn parse() -> anyhow::Result<Self> {
        let mut it = std::env::args().skip(1);
        let (mut system, mut base, mut label) = (None, None, None);
        let mut a = Args {
            system: System::Ordersys,
            base: String::new(),
            label: String::new(),
            clients: 1,
            seconds: 20,
            warmup: 5,
            initial: 1_000_000_000,
            poll: Duration::from_millis(1),
            wait: 10,
            procs: Vec::new(),
            json: None,
        };
        while let Some(flag) = it.next() {
            let mut val = || it.next().with_context(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "--system" => {
                    system = Some(match val()?.as_str() {
                        "ordersys" => System::Ordersys,
                        "restate" => System::Restate,
                        "dbos" => System::Dbos,
                        other => bail!("unknown system {other:?}"),
                    })
                }
                "--base" => base = Some(val()?.trim_end_matches('/').to_owned()),
                "--label" => label = Some(val()?),
                "--clients" => a.clients = val()?.parse()?,
                "--seconds" => a.seconds = val()?.parse()?,
                "--warmup" => a.warmup = val()?.parse()?,
                "--initial" => a.initial = val()?.parse()?,
                "--poll-ms" => a.poll = Duration::from_millis(val()?.parse::<u64>()?.max(1)),
                "--wait-s" => a.wait = val()?.parse::<u64>()?.min(30),
                "--proc" => {
                    let v = val()?;
                    let (n, p) = v.split_once('=').context("--proc wants NAME=PID")?;
                    a.procs.push((n.to_owned(), p.trim().parse()?));
                }
                "--json" => a.json = Some(val()?),
                "--table" => {
                    print!("{}", table(&std::fs::read_to_string(val()?)?)?);
                    std::process::exit(0);
                }
                "-h" | "--help" => {
                    print!("{USAGE}");
                    std::process::exit(0);
                }
                other => bail!("unknown argument {other:?}\n\n{USAGE}"),
            }
        }
        a.system = system.context("--system is required")?;
        a.base = base.context("--base is required")?;
        a.label = label.unwrap_or_else(|| format!("{:?}", a.system).to_lowercase());
        if a.clients == 0 || a.seconds == 0 {
            bail!("--clients and --seconds must be positive");
        }
        Ok(a)
    }
}

/// How a saga ended, as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Confirmed,
    Declined,
    Error(String),
}

/// A client's account: who it is and what it started with.
#[derive(Debug, Clone)]
struct Account {
    user: String,
    token: String,
    initial: i64,
}

/// The system under test, through its own HTTP entry point.
struct Target {
    system: System,
    base: String,
    http: reqwest::Client,
    poll: Duration,
    wait: u64,
}

const TIMEOUT: Duration = Duration::from_secs(60);

impl Target {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let mut rb = self
            .http
            .request(method, format!("{}{path}", self.base))
            .timeout(TIMEOUT);
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        if let Some(b) = body {
            rb = rb.json(b);
        }
        let r = rb.send().await?;
        let status = r.status().as_u16();
        let text = r.text().await?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    async fn expect(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
        want: u16,
    ) -> anyhow::Result<Value> {
        // "Busy, retry shortly" (503, 429) is retried, as a client would.
        let mut pause = Duration::from_millis(20);
        for _ in 0..50 {
            let (st, v) = self.call(method.clone(), path, token, body).await?;
            if st == want {
                return Ok(v);
            }
            if st != 503 && st != 429 {
                bail!("{path}: {st} {v}");
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
        bail!("{path}: still busy after 50 attempts")
    }

    /// A new account holding `initial` (ordersys: its configured opening balance).
    async fn open(&self, initial: i64) -> anyhow::Result<Account> {
        use reqwest::Method as M;
        let user = Uuid::new_v4().simple().to_string();
        match self.system {
            System::Ordersys => {
                let creds = json!({"email": format!("bench-{user}@example.com"), "password": "bench-password"});
                self.expect(M::POST, "/api/v1/auth/register", None, Some(&creds), 201)
                    .await?;
                let login = self
                    .expect(M::POST, "/api/v1/auth/login", None, Some(&creds), 200)
                    .await?;
                let token = login["access_token"].as_str().unwrap_or("").to_owned();
                let mut a = Account {
                    user,
                    token,
                    initial: 0,
                };
                a.initial = self.balance(&a).await?;
                Ok(a)
            }
            System::Restate | System::Dbos => {
                let (path, body) = if self.system == System::Restate {
                    (format!("/Account/{user}/open"), json!(initial))
                } else {
                    (
                        "/accounts".to_owned(),
                        json!({"user": user, "balance": initial}),
                    )
                };
                self.expect(M::POST, &path, None, Some(&body), 200).await?;
                Ok(Account {
                    user,
                    token: String::new(),
                    initial,
                })
            }
        }
    }

    async fn balance(&self, a: &Account) -> anyhow::Result<i64> {
        use reqwest::Method as M;
        let v = match self.system {
            System::Ordersys => self
                .expect(M::GET, "/api/v1/wallet", Some(&a.token), None, 200)
                .await?["balance"]
                .clone(),
            System::Restate => {
                self.expect(
                    M::POST,
                    &format!("/Account/{}/balance", a.user),
                    None,
                    None,
                    200,
                )
                .await?
            }
            System::Dbos => self
                .expect(M::GET, &format!("/accounts/{}", a.user), None, None, 200)
                .await?["balance"]
                .clone(),
        };
        v.as_i64().with_context(|| format!("balance: {v}"))
    }

    /// One saga, from the request that starts it until the system says it ended.
    async fn saga(&self, a: &Account, amount: i64) -> Outcome {
        match self.try_saga(a, amount).await {
            Ok(o) => o,
            Err(e) => Outcome::Error(format!("{e:#}")),
        }
    }

    async fn try_saga(&self, a: &Account, amount: i64) -> anyhow::Result<Outcome> {
        use reqwest::Method as M;
        let order = Uuid::new_v4().to_string();
        let status = match self.system {
            System::Ordersys => {
                let body = json!({
                    "items": [{"product_id": "sku-1", "quantity": 1, "unit_price": amount}],
                    "currency": "USD",
                });
                let created = self
                    .http
                    .post(format!("{}/api/v1/orders", self.base))
                    .bearer_auth(&a.token)
                    .header("Idempotency-Key", &order)
                    .json(&body)
                    .timeout(TIMEOUT)
                    .send()
                    .await?;
                let st = created.status().as_u16();
                let v: Value = created.json().await.unwrap_or(Value::Null);
                if st != 201 {
                    bail!("POST /api/v1/orders: {st} {v}");
                }
                let id = v["order_id"].as_str().context("no order_id")?.to_owned();
                let give_up = Instant::now() + TIMEOUT;
                loop {
                    let wait = if self.wait > 0 {
                        format!("?wait={}s", self.wait)
                    } else {
                        String::new()
                    };
                    let o = self
                        .expect(
                            M::GET,
                            &format!("/api/v1/orders/{id}{wait}"),
                            Some(&a.token),
                            None,
                            200,
                        )
                        .await?;
                    match o["status"].as_str() {
                        Some("CONFIRMED") => break "CONFIRMED".to_owned(),
                        Some("CANCELLED") => break "DECLINED".to_owned(),
                        _ if Instant::now() > give_up => bail!("order {id} did not end: {o}"),
                        _ if self.wait > 0 => {}
                        _ => tokio::time::sleep(self.poll).await,
                    }
                }
            }
            System::Restate => {
                let v = self
                    .expect(
                        M::POST,
                        &format!("/OrderSaga/{order}/run"),
                        None,
                        Some(&json!({"user": a.user, "amount": amount})),
                        200,
                    )
                    .await?;
                v["status"].as_str().unwrap_or_default().to_owned()
            }
            System::Dbos => {
                let v = self
                    .expect(
                        M::POST,
                        "/orders",
                        None,
                        Some(&json!({"order_id": order, "user": a.user, "amount": amount})),
                        200,
                    )
                    .await?;
                v["status"].as_str().unwrap_or_default().to_owned()
            }
        };
        Ok(match status.as_str() {
            "CONFIRMED" => Outcome::Confirmed,
            "DECLINED" => Outcome::Declined,
            other => Outcome::Error(format!("ended {other:?}")),
        })
    }
}

/// One saga as the client saw it.
struct Run {
    started: Instant,
    ended: Instant,
    amount: i64,
    outcome: Outcome,
}

async fn client(t: Arc<Target>, a: Account, stop: Arc<AtomicBool>) -> Vec<Run> {
    let mut runs = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let amount = rand::rng().random_range(100..=2_000);
        let started = Instant::now();
        let outcome = t.saga(&a, amount).await;
        if let Outcome::Error(e) = &outcome {
            eprintln!("saga-bench: {e}");
            // Do not spin on a system that refuses everything.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        runs.push(Run {
            started,
            ended: Instant::now(),
            amount,
            outcome,
        });
    }
    runs
}

fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    percentile(sorted, p).as_secs_f64() * 1e3
}

/// The system's processes and this load generator, as [`CpuSnap`] roots.
fn roots(procs: &[(String, u32)]) -> Vec<(String, u32)> {
    let mut all = procs.to_vec();
    all.push((LOADGEN.to_owned(), std::process::id()));
    all
}

const LOADGEN: &str = "\0loadgen";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse()?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.clients.max(8))
        .tcp_nodelay(true)
        .build()?;
    let target = Arc::new(Target {
        system: args.system,
        base: args.base.clone(),
        http,
        poll: args.poll,
        wait: args.wait,
    });

    let mut accounts = Vec::new();
    for chunk in (0..args.clients).collect::<Vec<_>>().chunks(16) {
        let opened =
            futures::future::join_all(chunk.iter().map(|_| target.open(args.initial))).await;
        for a in opened {
            accounts.push(a.context("opening an account")?);
        }
    }

    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let tasks: Vec<_> = accounts
        .iter()
        .map(|a| tokio::spawn(client(target.clone(), a.clone(), stop.clone())))
        .collect();
    tokio::time::sleep(Duration::from_secs(args.warmup)).await;
    let from = CpuSnap::take(&roots(&args.procs));
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let to = CpuSnap::take(&roots(&args.procs));
    stop.store(true, Ordering::Relaxed);
    let mut per_client = Vec::new();
    for t in tasks {
        per_client.push(t.await?);
    }
    let window = to.at - from.at;

    // Throughput: sagas confirmed inside the window. Latency: of those started in it.
    let all: Vec<&Run> = per_client.iter().flatten().collect();
    let in_window = |i: Instant| i >= from.at && i < to.at;
    let confirmed = all
        .iter()
        .filter(|r| r.outcome == Outcome::Confirmed && in_window(r.ended))
        .count();
    let mut lat: Vec<Duration> = all
        .iter()
        .filter(|r| r.outcome == Outcome::Confirmed && in_window(r.started))
        .map(|r| r.ended - r.started)
        .collect();
    lat.sort();
    let errors = all
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Error(_)))
        .count();
    let declined = all
        .iter()
        .filter(|r| r.outcome == Outcome::Declined)
        .count();
    let per_s = confirmed as f64 / window.as_secs_f64();

    // The money: every balance is its opening minus what its confirmed sagas took.
    let mut money_ok = true;
    for (a, runs) in accounts.iter().zip(&per_client) {
        let spent: i64 = runs
            .iter()
            .filter(|r| r.outcome == Outcome::Confirmed)
            .map(|r| r.amount)
            .sum();
        let balance = target.balance(a).await?;
        if balance != a.initial - spent {
            eprintln!(
                "saga-bench: account {} holds {balance}, expected {} - {spent}",
                a.user, a.initial
            );
            money_ok = false;
        }
    }
    // A saga the balance cannot pay is declined and changes nothing.
    let probe = &accounts[0];
    let before = target.balance(probe).await?;
    let declined_probe = target.saga(probe, before + 1).await;
    let after = target.balance(probe).await?;
    if declined_probe != Outcome::Declined || after != before {
        eprintln!(
            "saga-bench: a saga over the balance ({}) ended {declined_probe:?}, balance {before} → {after}",
            before + 1
        );
        money_ok = false;
    }

    let ms_per = |ticks: u64| {
        if confirmed == 0 {
            f64::NAN
        } else {
            ticks as f64 / TICKS_PER_SEC * 1e3 / confirmed as f64
        }
    };
    let mut cpu = serde_json::Map::new();
    let mut system_ticks = 0;
    for (name, _) in &args.procs {
        let d = to
            .of(name)
            .unwrap_or(0)
            .saturating_sub(from.of(name).unwrap_or(0));
        system_ticks += d;
        cpu.insert(name.clone(), json!(round2(ms_per(d))));
    }
    let result = json!({
        "system": args.label,
        "clients": args.clients,
        "seconds": round2(window.as_secs_f64()),
        "sagas_per_s": round2(per_s),
        "p50_ms": round2(percentile_ms(&lat, 0.50)),
        "p95_ms": round2(percentile_ms(&lat, 0.95)),
        "p99_ms": round2(percentile_ms(&lat, 0.99)),
        "confirmed": confirmed,
        "errors": errors,
        "declined": declined,
        "money_ok": money_ok,
        "cpu_ms_per_saga": round2(ms_per(system_ticks)),
        "cpu_ms_per_saga_by_process": cpu,
        "loadgen_cpu_ms_per_saga": round2(ms_per(
            to.of(LOADGEN)
                .unwrap_or(0)
                .saturating_sub(from.of(LOADGEN).unwrap_or(0))
        )),
        "machine_busy_percent": round2(
            to.busy().saturating_sub(from.busy()) as f64 / TICKS_PER_SEC / window.as_secs_f64() * 100.0 / 2.0
        ),
        "warmup_s": args.warmup,
        "poll_ms": (args.system == System::Ordersys && args.wait == 0).then_some(args.poll.as_millis() as u64),
        "wait_s": (args.system == System::Ordersys && args.wait > 0).then_some(args.wait),
        "run_s": round2(started.elapsed().as_secs_f64()),
    });
    println!("{result}");
    if let Some(path) = &args.json {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        writeln!(f, "{result}")?;
    }
    if !money_ok {
        bail!("the money check failed");
    }
    Ok(())
}

fn round2(x: f64) -> Value {
    if x.is_finite() {
        json!((x * 100.0).round() / 100.0)
    } else {
        Value::Null
    }
}

/// The JSON lines of a run as one Markdown table.
fn table(lines: &str) -> anyhow::Result<String> {
    let mut out = String::from(
        "| system | clients | sagas/s | p50 / p95 / p99 ms | errors | money | CPU ms/saga (by process) | machine busy |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for l in lines.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(l)?;
        let f = |k: &str| match &v[k] {
            Value::Null => "–".to_owned(),
            x => x.to_string(),
        };
        let by = v["cpu_ms_per_saga_by_process"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, x)| format!("{k} {x}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        out.push_str(&format!(
            "| {} | {} | {} | {} / {} / {} | {} | {} | **{}** ({by}) | {}% |\n",
            v["system"].as_str().unwrap_or("?"),
            f("clients"),
            f("sagas_per_s"),
            f("p50_ms"),
            f("p95_ms"),
            f("p99_ms"),
            f("errors"),
            if v["money_ok"] == json!(true) {
                "ok"
            } else {
                "**WRONG**"
            },
            f("cpu_ms_per_saga"),
            f("machine_busy_percent"),
        ));
    }
    Ok(out)
}
