//! The fault suite: the separate-process deployment on MariaDB, Redis and a Kafka broker
//! of its own, orders placed through the REST API by concurrent clients, and meanwhile
//! `kill -9` of the services and the servers at random, each restarted. Then the
//! invariants, through the REST API and with SQL; one summary line; exit status 1 if
//! any invariant is broken.
//!
//! ```sh
//! make chaos                                   # the long run (release build)
//! cargo run -p ordersys-e2e --bin chaos -- --help
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ordersys_e2e::infra::{Daemon, Kind};
use ordersys_e2e::{free_port, Service};
use rand::Rng;
use serde_json::{json, Value};
use sqlx::{ConnectOptions, Connection, Row};
use uuid::Uuid;

const USAGE: &str = "\
chaos — the ordersys fault suite

  --clients N          concurrent clients (16)
  --orders N           stop placing orders after N in all (10000)
  --seconds S          stop placing orders after S seconds (600)
  --faults KINDS       what to kill: all | services | none, or a comma list of
                       user,order,payment,gateway,broker,redis,mariadb (all)
  --every A-B          seconds between faults, uniform in [A, B] (3-8)
  --down A-B           seconds a killed process stays down (0.2-2)
  --settle S           seconds allowed after the load for every order to end (120)
  --deadline S         PAYMENT_DEADLINE_SECS of the order service (30)
  --breaker-open S     BREAKER_OPEN_SECS of the gateway (5)
  --initial N          INITIAL_BALANCE of a new account (2000000)
  --cancel-percent P   orders the client tries to cancel right after placing (10)
  --poll-ms MS         how often a client polls its order until it ends (25); small
                       values measure latency finely, at the cost of GET load
  --warmup S           measure throughput, latency and CPU per order only after the
                       first S seconds of load (0); printed as the `bench:` line
  --slap N             after the load, N single-row INSERT commits from 16 clients
                       (mariadb-slap) on the same MariaDB: the raw commit rate (0: off)
  --embedded           load the one-process system (`ordersys`, SQLite + in-process
                       bus) instead of the separate services; no faults, and the
                       invariants checked through the REST API only
  --keep               keep the work directory (logs, data) after a pass
";

#[derive(Debug, Clone)]
struct Args {
    clients: usize,
    orders: u64,
    seconds: u64,
    faults: Vec<String>,
    every: (f64, f64),
    down: (f64, f64),
    settle: u64,
    deadline: u64,
    breaker_open: u64,
    initial: i64,
    cancel_percent: u32,
    poll_ms: u64,
    warmup: u64,
    slap: u64,
    embedded: bool,
    keep: bool,
}

const SERVICES: [&str; 4] = ["user", "order", "payment", "gateway"];
const SERVERS: [&str; 3] = ["broker", "redis", "mariadb"];

fn range(s: &str) -> anyhow::Result<(f64, f64)> {
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let (a, b) = (a.parse::<f64>()?, b.parse::<f64>()?);
    anyhow::ensure!(a >= 0.0 && b >= a, "bad range {s}");
    Ok((a, b))
}

impl Args {
    fn parse() -> anyhow::Result<Self> {
        let mut a = Self {
            clients: 16,
            orders: 10_000,
            seconds: 600,
            faults: SERVICES
                .iter()
                .chain(SERVERS.iter())
                .map(|s| (*s).to_owned())
                .collect(),
            every: (3.0, 8.0),
            down: (0.2, 2.0),
            settle: 120,
            deadline: 30,
            breaker_open: 5,
            initial: 2_000_000,
            cancel_percent: 10,
            poll_ms: 25,
            warmup: 0,
            slap: 0,
            embedded: false,
            keep: false,
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            let mut val = || it.next().with_context(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "--clients" => a.clients = val()?.parse()?,
                "--orders" => a.orders = val()?.parse()?,
                "--seconds" => a.seconds = val()?.parse()?,
                "--faults" => {
                    let v = val()?;
                    a.faults = match v.as_str() {
                        "all" => SERVICES
                            .iter()
                            .chain(SERVERS.iter())
                            .map(|s| (*s).to_owned())
                            .collect(),
                        "services" => SERVICES.iter().map(|s| (*s).to_owned()).collect(),
                        "none" => Vec::new(),
                        list => list.split(',').map(str::to_owned).collect(),
                    };
                    for f in &a.faults {
                        anyhow::ensure!(
                            SERVICES.contains(&f.as_str()) || SERVERS.contains(&f.as_str()),
                            "unknown fault target {f}"
                        );
                    }
                }
                "--every" => a.every = range(&val()?)?,
                "--down" => a.down = range(&val()?)?,
                "--settle" => a.settle = val()?.parse()?,
                "--deadline" => a.deadline = val()?.parse()?,
                "--breaker-open" => a.breaker_open = val()?.parse()?,
                "--initial" => a.initial = val()?.parse()?,
                "--cancel-percent" => a.cancel_percent = val()?.parse()?,
                "--poll-ms" => a.poll_ms = val()?.parse()?,
                "--warmup" => a.warmup = val()?.parse()?,
                "--slap" => a.slap = val()?.parse()?,
                "--embedded" => a.embedded = true,
                "--keep" => a.keep = true,
                "-h" | "--help" => {
                    print!("{USAGE}");
                    std::process::exit(0);
                }
                other => anyhow::bail!("unknown argument {other}\n{USAGE}"),
            }
        }
        if a.embedded {
            anyhow::ensure!(
                a.faults.is_empty(),
                "--embedded runs without faults: add --faults none"
            );
            anyhow::ensure!(
                a.slap == 0,
                "--slap needs the MariaDB of the separate services"
            );
        }
        Ok(a)
    }
}

fn log(msg: impl AsRef<str>) {
    eprintln!("chaos {}: {}", chrono_now(), msg.as_ref());
}

fn chrono_now() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let s = t.as_secs();
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        (s / 3600) % 24,
        (s / 60) % 60,
        s % 60,
        t.subsec_millis()
    )
}

/// The deployment under test.
struct Deployment {
    servers: HashMap<&'static str, Daemon>,
    services: HashMap<&'static str, Service>,
    base: String,
    mysql: String,
    /// What the fault injector has killed and not yet restarted.
    down: HashSet<&'static str>,
}

impl Deployment {
    /// The one-process system on SQLite files in `dir`.
    fn start_embedded(args: &Args, dir: &std::path::Path) -> anyhow::Result<Self> {
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

    fn start(args: &Args, dir: &std::path::Path) -> anyhow::Result<Self> {
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

    async fn wait_ready(&mut self, within: Duration) -> anyhow::Result<()> {
        for s in self.services.values_mut() {
            s.wait_until_ready(within).await?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
struct OrderRec {
    id: String,
    total: i64,
    cancel_accepted: bool,
    placed: Instant,
    ended: Option<(Instant, String)>,
}

#[derive(Debug, Default)]
struct ClientRec {
    email: String,
    user_id: String,
    token: String,
    orders: Vec<OrderRec>,
    /// Keys answered with two different order ids.
    key_conflicts: u64,
    rejected: BTreeMap<u16, u64>,
}

struct Shared {
    http: reqwest::Client,
    base: String,
    stop: AtomicBool,
    placed: AtomicU64,
    limit: u64,
    cancel_percent: u32,
    poll: Duration,
}

async fn send(
    s: &Shared,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    key: Option<&str>,
    body: Option<&Value>,
) -> Option<(u16, Value)> {
    let mut rb = s
        .http
        .request(method, format!("{}{path}", s.base))
        .timeout(Duration::from_secs(10));
    if let Some(t) = token {
        rb = rb.bearer_auth(t);
    }
    if let Some(k) = key {
        rb = rb.header("Idempotency-Key", k);
    }
    if let Some(b) = body {
        rb = rb.json(b);
    }
    let r = rb.send().await.ok()?;
    let status = r.status().as_u16();
    let text = r.text().await.ok()?;
    Some((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

/// Retry until an answer other than "try again" (no answer, 5xx, 429) comes, or
/// `give_up` passes.
async fn answered(
    s: &Shared,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    key: Option<&str>,
    body: Option<&Value>,
    give_up: Instant,
) -> Option<(u16, Value)> {
    let mut pause = Duration::from_millis(50);
    loop {
        match send(s, method.clone(), path, token, key, body).await {
            Some((st, v)) if st < 500 && st != 429 => return Some((st, v)),
            _ if Instant::now() > give_up => return None,
            _ => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        }
    }
}

fn terminal(status: &str, cancel_accepted: bool) -> bool {
    if cancel_accepted {
        status == "CANCELLED"
    } else {
        status == "CONFIRMED" || status == "CANCELLED"
    }
}

async fn client(s: Arc<Shared>, rec: Arc<Mutex<ClientRec>>) {
    let forever = Instant::now() + Duration::from_secs(24 * 3600);
    let email = format!("chaos-{}@example.com", Uuid::new_v4().simple());
    let creds = json!({ "email": email, "password": "chaos-password" });
    let reg = answered(
        &s,
        reqwest::Method::POST,
        "/api/v1/auth/register",
        None,
        None,
        Some(&creds),
        forever,
    )
    .await;
    let Some((201 | 409, body)) = reg else {
        log(format!("register failed: {reg:?}"));
        return;
    };
    let mut user_id = body["user_id"].as_str().unwrap_or("").to_owned();
    let token = loop {
        match answered(
            &s,
            reqwest::Method::POST,
            "/api/v1/auth/login",
            None,
            None,
            Some(&creds),
            forever,
        )
        .await
        {
            Some((200, b)) => break b["access_token"].as_str().unwrap_or("").to_owned(),
            other => {
                log(format!("login: {other:?}"));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    if user_id.is_empty() {
        if let Some((200, me)) = answered(
            &s,
            reqwest::Method::GET,
            "/api/v1/auth/me",
            Some(&token),
            None,
            None,
            forever,
        )
        .await
        {
            user_id = me["user_id"].as_str().unwrap_or("").to_owned();
        }
    }
    {
        let mut r = rec.lock().expect("lock");
        r.email = email;
        r.user_id = user_id;
        r.token = token.clone();
    }
    while !s.stop.load(Ordering::Relaxed) {
        if s.placed.fetch_add(1, Ordering::Relaxed) >= s.limit {
            break;
        }
        let (items, total) = {
            let mut rng = rand::rng();
            let n = rng.random_range(1..=3);
            let mut items = Vec::new();
            let mut total = 0i64;
            for i in 0..n {
                let q: i64 = rng.random_range(1..=3);
                let p: i64 = rng.random_range(100..=2_000);
                total += q * p;
                items.push(
                    json!({"product_id": format!("sku-{i}"), "quantity": q, "unit_price": p}),
                );
            }
            (items, total)
        };
        let key = Uuid::new_v4().to_string();
        let body = json!({ "items": items, "currency": "USD" });
        let placed = Instant::now();
        let mut first_id: Option<String> = None;
        let mut conflict = false;
        // Answered = 201; everything else but a 4xx is retried with the same key, and a
        // second answer must name the same order.
        let created = loop {
            match answered(
                &s,
                reqwest::Method::POST,
                "/api/v1/orders",
                Some(&token),
                Some(&key),
                Some(&body),
                forever,
            )
            .await
            {
                Some((201, o)) => {
                    let id = o["order_id"].as_str().unwrap_or("").to_owned();
                    // Ask once more with the same key now and then: must be the same order.
                    if first_id.is_none() && rand::rng().random_ratio(1, 20) {
                        first_id = Some(id);
                        continue;
                    }
                    if let Some(f) = &first_id {
                        conflict |= *f != id;
                    }
                    break Some((id, o));
                }
                // The same key still being processed: ask again.
                Some((409, _)) => tokio::time::sleep(Duration::from_millis(100)).await,
                Some((st, _)) => {
                    *rec.lock().expect("lock").rejected.entry(st).or_default() += 1;
                    break None;
                }
                None => break None,
            }
        };
        let Some((id, o)) = created else { continue };
        let total_answered = o["total_amount"].as_i64().unwrap_or(-1);
        if total_answered != total {
            log(format!(
                "order {id}: total {total_answered} answered, {total} sent"
            ));
        }
        let mut cancel_accepted = false;
        if rand::rng().random_ratio(s.cancel_percent.min(100), 100) {
            if let Some((st, _)) = answered(
                &s,
                reqwest::Method::POST,
                &format!("/api/v1/orders/{id}/cancel"),
                Some(&token),
                None,
                None,
                forever,
            )
            .await
            {
                cancel_accepted = st == 202;
            }
        }
        {
            let mut r = rec.lock().expect("lock");
            r.key_conflicts += u64::from(conflict);
            r.orders.push(OrderRec {
                id: id.clone(),
                total,
                cancel_accepted,
                placed,
                ended: None,
            });
        }
        // Follow it until it ends (bounded: the final check follows the rest).
        let give_up = Instant::now() + Duration::from_secs(60);
        while Instant::now() < give_up && !s.stop.load(Ordering::Relaxed) {
            if let Some((200, o)) = send(
                &s,
                reqwest::Method::GET,
                &format!("/api/v1/orders/{id}"),
                Some(&token),
                None,
                None,
            )
            .await
            {
                let st = o["status"].as_str().unwrap_or("");
                if terminal(st, cancel_accepted) {
                    let mut r = rec.lock().expect("lock");
                    if let Some(last) = r.orders.last_mut() {
                        last.ended = Some((Instant::now(), st.to_owned()));
                    }
                    break;
                }
            }
            tokio::time::sleep(s.poll).await;
        }
    }
}

fn pick<T: Copy>(v: &[T]) -> T {
    v[rand::rng().random_range(0..v.len())]
}

fn uniform((a, b): (f64, f64)) -> Duration {
    Duration::from_secs_f64(if b > a {
        rand::rng().random_range(a..=b)
    } else {
        a
    })
}

async fn kill_and_restart(
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

struct Summary {
    orders: usize,
    confirmed: usize,
    cancelled: usize,
    stuck: Vec<String>,
    lost: Vec<String>,
    double_charged: Vec<String>,
    unpaid: Vec<String>,
    phantom: Vec<String>,
    balance_wrong: Vec<String>,
    outbox_unsent: i64,
    sagas_open: i64,
    dead_letters: Vec<String>,
}

impl Summary {
    fn failed(&self) -> bool {
        !(self.stuck.is_empty()
            && self.lost.is_empty()
            && self.double_charged.is_empty()
            && self.unpaid.is_empty()
            && self.phantom.is_empty()
            && self.balance_wrong.is_empty()
            && self.outbox_unsent == 0
            && self.sagas_open == 0
            && self.dead_letters.is_empty())
    }
}

async fn mysql(url: &str) -> anyhow::Result<sqlx::MySqlConnection> {
    Ok(sqlx::mysql::MySqlConnectOptions::from_str(url)?
        .connect()
        .await?)
}

fn uuid_of(bytes: &[u8]) -> String {
    Uuid::from_slice(bytes)
        .map(|u| u.to_string())
        .unwrap_or_default()
}

/// Wait for the end state, then check every invariant.
async fn check(
    args: &Args,
    s: &Shared,
    clients: &[Arc<Mutex<ClientRec>>],
    dep: &Deployment,
    logs: &[PathBuf],
) -> anyhow::Result<(Summary, Instant)> {
    let settle_start = Instant::now();
    let settle_until = settle_start + Duration::from_secs(args.settle);
    // 1. Every order the clients know ends (as the REST API shows it).
    let mut final_status: HashMap<String, String> = HashMap::new();
    loop {
        let mut open = 0;
        for c in clients {
            let (token, orders) = {
                let r = c.lock().expect("lock");
                (
                    r.token.clone(),
                    r.orders
                        .iter()
                        .map(|o| (o.id.clone(), o.cancel_accepted))
                        .collect::<Vec<_>>(),
                )
            };
            for (id, cancel) in orders {
                if final_status.get(&id).is_some_and(|st| terminal(st, cancel)) {
                    continue;
                }
                match send(
                    s,
                    reqwest::Method::GET,
                    &format!("/api/v1/orders/{id}"),
                    Some(&token),
                    None,
                    None,
                )
                .await
                {
                    Some((200, o)) => {
                        let st = o["status"].as_str().unwrap_or("").to_owned();
                        if !terminal(&st, cancel) {
                            open += 1;
                        }
                        final_status.insert(id, st);
                    }
                    Some((404, _)) => {
                        final_status.insert(id, "NOT_FOUND".into());
                    }
                    _ => open += 1,
                }
            }
        }
        if open == 0 || Instant::now() > settle_until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let all_ended_at = Instant::now();
    if dep.mysql.is_empty() {
        // Embedded: what the REST API shows is all there is to check from outside.
        let count = |want: &str| final_status.values().filter(|s| *s == want).count();
        let stuck: Vec<String> = orders_of(clients)
            .into_iter()
            .filter(|o| {
                !final_status
                    .get(&o.id)
                    .is_some_and(|st| terminal(st, o.cancel_accepted))
            })
            .map(|o| o.id)
            .collect();
        let summary = Summary {
            orders: final_status.len(),
            confirmed: count("CONFIRMED"),
            cancelled: count("CANCELLED"),
            stuck,
            lost: Vec::new(),
            double_charged: Vec::new(),
            unpaid: Vec::new(),
            phantom: Vec::new(),
            balance_wrong: Vec::new(),
            outbox_unsent: 0,
            sagas_open: 0,
            dead_letters: Vec::new(),
        };
        let _ = logs;
        return Ok((summary, all_ended_at));
    }

    // 2. The outboxes drain; the sagas end.
    let order_db = format!("{}/ordersys_order", dep.mysql);
    let pay_db = format!("{}/ordersys_payment", dep.mysql);
    let (mut outbox_unsent, mut sagas_open);
    loop {
        let mut o = mysql(&order_db).await?;
        let mut p = mysql(&pay_db).await?;
        // Unsent: not marked by a claims relay, and past a streaming relay's position.
        let q = "SELECT COUNT(*) FROM outbox_messages WHERE sent_at IS NULL AND seq > \
                 COALESCE((SELECT MAX(position) FROM outbox_relay_position), 0)";
        outbox_unsent = sqlx::query_scalar::<_, i64>(q).fetch_one(&mut o).await?
            + sqlx::query_scalar::<_, i64>(q).fetch_one(&mut p).await?;
        sagas_open = sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM saga_instances WHERE status NOT IN ('COMPLETED', 'FAILED')",
        )
        .fetch_one(&mut o)
        .await?;
        let _ = o.close().await;
        let _ = p.close().await;
        if (outbox_unsent == 0 && sagas_open == 0) || Instant::now() > settle_until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // 3. SQL: the order rows and the payment rows.
    let mut o = mysql(&order_db).await?;
    let mut p = mysql(&pay_db).await?;
    let rows = sqlx::query("SELECT id, user_id, status, total_amount FROM orders")
        .fetch_all(&mut o)
        .await?;
    let mut sql_orders: HashMap<String, (String, String, i64)> = HashMap::new();
    for r in rows {
        let id: Vec<u8> = r.get(0);
        let user: Vec<u8> = r.get(1);
        sql_orders.insert(uuid_of(&id), (uuid_of(&user), r.get(2), r.get(3)));
    }
    let rows = sqlx::query("SELECT order_id, status, amount FROM payments")
        .fetch_all(&mut p)
        .await?;
    let mut payments: HashMap<String, Vec<(String, i64)>> = HashMap::new();
    for r in rows {
        let id: Vec<u8> = r.get(0);
        payments
            .entry(uuid_of(&id))
            .or_default()
            .push((r.get(1), r.get(2)));
    }
    let _ = o.close().await;
    let _ = p.close().await;

    let mut sum = Summary {
        orders: 0,
        confirmed: 0,
        cancelled: 0,
        stuck: Vec::new(),
        lost: Vec::new(),
        double_charged: Vec::new(),
        unpaid: Vec::new(),
        phantom: Vec::new(),
        balance_wrong: Vec::new(),
        outbox_unsent,
        sagas_open,
        dead_letters: Vec::new(),
    };
    let mut known: HashSet<String> = HashSet::new();
    for c in clients {
        let (token, user_id, orders, key_conflicts) = {
            let r = c.lock().expect("lock");
            (
                r.token.clone(),
                r.user_id.clone(),
                r.orders.clone(),
                r.key_conflicts,
            )
        };
        if token.is_empty() {
            continue;
        }
        for k in 0..key_conflicts {
            sum.phantom.push(format!(
                "user {user_id}: an Idempotency-Key answered with two orders ({k})"
            ));
        }
        let mine: HashSet<String> = orders.iter().map(|o| o.id.clone()).collect();
        known.extend(mine.iter().cloned());
        let mut confirmed_total = 0i64;
        for ord in &orders {
            sum.orders += 1;
            let st = final_status
                .get(&ord.id)
                .map(String::as_str)
                .unwrap_or("UNKNOWN");
            match st {
                "CONFIRMED" => sum.confirmed += 1,
                "CANCELLED" => sum.cancelled += 1,
                _ => {}
            }
            if st == "NOT_FOUND" || !sql_orders.contains_key(&ord.id) {
                sum.lost.push(format!("{} ({st})", ord.id));
                continue;
            }
            if !terminal(st, ord.cancel_accepted) {
                sum.stuck.push(format!(
                    "{} ({st}, cancel accepted: {})",
                    ord.id, ord.cancel_accepted
                ));
            }
            let pay = payments.get(&ord.id).cloned().unwrap_or_default();
            let debited: Vec<&(String, i64)> = pay.iter().filter(|(s, _)| s == "DEBITED").collect();
            match st {
                "CONFIRMED" => {
                    confirmed_total += ord.total;
                    if debited.len() != 1 || debited[0].1 != ord.total || pay.len() != 1 {
                        if debited.is_empty() {
                            sum.unpaid
                                .push(format!("{} CONFIRMED with payments {pay:?}", ord.id));
                        } else {
                            sum.double_charged
                                .push(format!("{} CONFIRMED with payments {pay:?}", ord.id));
                        }
                    }
                }
                "CANCELLED" if !debited.is_empty() => {
                    sum.double_charged
                        .push(format!("{} CANCELLED with payments {pay:?}", ord.id));
                }
                _ => {}
            }
        }
        // The user's list holds exactly the client's orders.
        let mut listed: HashSet<String> = HashSet::new();
        let mut cursor = String::new();
        loop {
            let path = if cursor.is_empty() {
                "/api/v1/orders?limit=100".to_owned()
            } else {
                format!("/api/v1/orders?limit=100&cursor={cursor}")
            };
            let Some((200, page)) = answered(
                s,
                reqwest::Method::GET,
                &path,
                Some(&token),
                None,
                None,
                Instant::now() + Duration::from_secs(30),
            )
            .await
            else {
                anyhow::bail!("listing orders failed");
            };
            for o in page["orders"].as_array().into_iter().flatten() {
                listed.insert(o["order_id"].as_str().unwrap_or("").to_owned());
            }
            match page["next_cursor"].as_str() {
                Some(c) if !c.is_empty() => cursor = c.to_owned(),
                _ => break,
            }
        }
        for id in listed.difference(&mine) {
            sum.phantom.push(format!(
                "{id} listed for user {user_id}, never created by its client"
            ));
        }
        for id in mine.difference(&listed) {
            sum.lost
                .push(format!("{id} missing from the list of user {user_id}"));
        }
        // The wallet: initial balance minus the confirmed orders.
        if let Some((200, w)) = answered(
            s,
            reqwest::Method::GET,
            "/api/v1/wallet",
            Some(&token),
            None,
            None,
            Instant::now() + Duration::from_secs(30),
        )
        .await
        {
            let balance = w["balance"].as_i64().unwrap_or(i64::MIN);
            let expected = args.initial - confirmed_total;
            if balance != expected {
                sum.balance_wrong.push(format!(
                    "user {user_id}: balance {balance}, expected {expected}"
                ));
            }
        } else {
            sum.balance_wrong
                .push(format!("user {user_id}: wallet not answered"));
        }
    }
    for (id, (user, _, _)) in &sql_orders {
        if !known.contains(id) {
            sum.phantom.push(format!(
                "{id} of user {user} in the orders table, never created by a client"
            ));
        }
    }
    // Dead letters: none is expected from valid orders; each one is shown with its reason.
    for path in logs {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        for line in text
            .lines()
            .filter(|l| l.contains("очередь недоставленных"))
        {
            sum.dead_letters.push(line.chars().take(400).collect());
        }
    }
    Ok((sum, all_ended_at))
}

/// Every order of every client (a copy).
fn orders_of(clients: &[Arc<Mutex<ClientRec>>]) -> Vec<OrderRec> {
    clients
        .iter()
        .flat_map(|c| c.lock().expect("lock").orders.clone())
        .collect()
}

/// CPU time (clock ticks) of every process of the system, and of the machine.
struct CpuSnap {
    at: Instant,
    procs: Vec<(String, u64)>,
    /// `/proc/stat`'s first line: user, nice, system, idle, iowait, irq, softirq, steal.
    machine: Vec<u64>,
}

impl CpuSnap {
    fn take(dep: &Deployment) -> Self {
        let mut pids: Vec<(String, u32)> = Vec::new();
        for (name, s) in &dep.services {
            if let Some(pid) = s.pid() {
                pids.push(((*name).to_owned(), pid));
            }
        }
        for (name, s) in &dep.servers {
            if let Some(pid) = s.pid() {
                pids.push(((*name).to_owned(), pid));
            }
        }
        pids.sort();
        pids.push(("driver".to_owned(), std::process::id()));
        let procs = pids
            .into_iter()
            .filter_map(|(n, pid)| proc_ticks(pid).map(|t| (n, t)))
            .collect();
        let machine = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| {
                s.lines().next().map(|l| {
                    l.split_whitespace()
                        .skip(1)
                        .take(8)
                        .filter_map(|v| v.parse().ok())
                        .collect()
                })
            })
            .unwrap_or_default();
        Self {
            at: Instant::now(),
            procs,
            machine,
        }
    }
}

/// utime + stime of a process, in clock ticks (1/100 s).
fn proc_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3, utime 14, stime 15.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// `n` single-row autocommit INSERTs from 16 clients on the MariaDB at `port`
/// (`mariadb-slap`): commits per second.
fn raw_commits(port: u16, n: u64) -> anyhow::Result<f64> {
    let out = std::process::Command::new("mariadb-slap")
        .args([
            "--host=127.0.0.1",
            &format!("--port={port}"),
            "--user=root",
            "--concurrency=16",
            "--iterations=1",
            &format!("--number-of-queries={n}"),
            "--create-schema=slap",
            "--create=CREATE TABLE t (id INT AUTO_INCREMENT PRIMARY KEY, v INT) ENGINE=InnoDB",
            "--query=INSERT INTO t (v) VALUES (1)",
        ])
        .output()
        .context("running mariadb-slap")?;
    let text = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "mariadb-slap failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // "Average number of seconds to run all queries: 1.234 seconds"
    let secs: f64 = text
        .lines()
        .find(|l| l.contains("Average number of seconds"))
        .and_then(|l| l.split(':').nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no timing in mariadb-slap output")?;
    Ok(n as f64 / secs.max(1e-6))
}

/// The steady-state figures between the two snapshots: orders confirmed per second,
/// create→CONFIRMED latency of the orders placed in the window, CPU per order per
/// process and the machine's CPU split; the raw commit rate if measured.
fn bench_line(
    clients: &[Arc<Mutex<ClientRec>>],
    w0: &CpuSnap,
    w1: &CpuSnap,
    slap: Option<f64>,
) -> String {
    let mut confirmed = 0u64;
    let mut lat = Vec::new();
    for o in orders_of(clients) {
        if let Some((t, status)) = &o.ended {
            if status == "CONFIRMED" && *t >= w0.at && *t <= w1.at {
                confirmed += 1;
            }
            if o.placed >= w0.at && o.placed <= w1.at {
                lat.push(*t - o.placed);
            }
        }
    }
    lat.sort();
    let secs = w1
        .at
        .saturating_duration_since(w0.at)
        .as_secs_f64()
        .max(1e-6);
    let per_order = |ticks: u64| ticks as f64 * 10.0 / confirmed.max(1) as f64;
    let mut cpu = Vec::new();
    let mut total = 0u64;
    for (name, t1) in &w1.procs {
        // A process restarted in the window has no comparable start.
        if let Some((_, t0)) = w0.procs.iter().find(|(n, _)| n == name) {
            let d = t1.saturating_sub(*t0);
            total += d;
            cpu.push(format!("{name}={:.2}", per_order(d)));
        }
    }
    let m: Vec<u64> = w1
        .machine
        .iter()
        .zip(w0.machine.iter().chain(std::iter::repeat(&0)))
        .map(|(a, b)| a.saturating_sub(*b))
        .collect();
    let all: u64 = m.iter().sum::<u64>().max(1);
    let pct = |i: usize| m.get(i).copied().unwrap_or(0) as f64 * 100.0 / all as f64;
    let rate = confirmed as f64 / secs;
    let slap = slap.map_or(String::new(), |r| {
        format!(
            " raw-commits/s={r:.0} ratio={:.2}%",
            rate * 100.0 / r.max(1e-6)
        )
    });
    format!(
        "bench: window={secs:.1}s confirmed={confirmed} confirmed/s={rate:.1} p50={}ms p95={}ms p99={}ms \
         cpu-ms/order: {} total={:.2} machine: user={:.0}% system={:.0}% softirq={:.0}% idle={:.0}% iowait={:.0}%{slap}",
        percentile(&lat, 0.50).as_millis(),
        percentile(&lat, 0.95).as_millis(),
        percentile(&lat, 0.99).as_millis(),
        cpu.join(" "),
        per_order(total),
        pct(0) + pct(1),
        pct(2) + pct(5),
        pct(6),
        pct(3),
        pct(4),
    )
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse()?;
    let dir = std::env::temp_dir().join(format!("ordersys-chaos-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    log(format!("work directory {}", dir.display()));
    let mut dep = if args.embedded {
        Deployment::start_embedded(&args, &dir)?
    } else {
        Deployment::start(&args, &dir)?
    };
    dep.wait_ready(Duration::from_secs(120)).await?;
    log(format!("deployment ready, gateway {}", dep.base));
    let logs: Vec<PathBuf> = dep
        .services
        .values()
        .map(|s| s.log_path().to_owned())
        .collect();
    let base = dep.base.clone();
    let dep = Arc::new(tokio::sync::Mutex::new(dep));

    let shared = Arc::new(Shared {
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()?,
        base,
        stop: AtomicBool::new(false),
        placed: AtomicU64::new(0),
        limit: args.orders,
        cancel_percent: args.cancel_percent,
        poll: Duration::from_millis(args.poll_ms.max(1)),
    });
    let clients: Vec<Arc<Mutex<ClientRec>>> = (0..args.clients).map(|_| Arc::default()).collect();
    let mut load = tokio::task::JoinSet::new();
    for c in &clients {
        load.spawn(client(shared.clone(), c.clone()));
    }

    // Faults, and a supervisor that restarts a service which exited by itself.
    let faults_stop = Arc::new(AtomicBool::new(false));
    let kills: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let crashes: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let last_fault: Arc<Mutex<Option<Instant>>> = Arc::default();
    let injector = {
        let (dep, stop, kills, last_fault, args) = (
            dep.clone(),
            faults_stop.clone(),
            kills.clone(),
            last_fault.clone(),
            args.clone(),
        );
        tokio::spawn(async move {
            if args.faults.is_empty() {
                return Ok::<(), anyhow::Error>(());
            }
            let targets: Vec<&'static str> = SERVICES
                .iter()
                .chain(SERVERS.iter())
                .copied()
                .filter(|t| args.faults.iter().any(|f| f == t))
                .collect();
            loop {
                tokio::time::sleep(uniform(args.every)).await;
                if stop.load(Ordering::Relaxed) {
                    return Ok(());
                }
                let target = pick(&targets);
                log(format!("kill -9 {target}"));
                kill_and_restart(&dep, target, uniform(args.down)).await?;
                *kills
                    .lock()
                    .expect("lock")
                    .entry(target.to_owned())
                    .or_default() += 1;
                *last_fault.lock().expect("lock") = Some(Instant::now());
            }
        })
    };
    let supervisor = {
        let (dep, crashes, shared) = (dep.clone(), crashes.clone(), shared.clone());
        tokio::spawn(async move {
            let _ = &shared;
            loop {
                {
                    let mut d = dep.lock().await;
                    let names: Vec<&'static str> = d.services.keys().copied().collect();
                    for name in names {
                        if d.down.contains(name) {
                            continue;
                        }
                        let s = d.services.get_mut(name).expect("service");
                        if s.exited() {
                            log(format!("{name} exited by itself; restarting it"));
                            *crashes
                                .lock()
                                .expect("lock")
                                .entry(name.to_owned())
                                .or_default() += 1;
                            s.respawn();
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };

    let started = Instant::now();
    let window_start = {
        let (dep, warmup) = (dep.clone(), Duration::from_secs(args.warmup));
        tokio::spawn(async move {
            tokio::time::sleep(warmup).await;
            CpuSnap::take(&*dep.lock().await)
        })
    };
    let progress_every = Duration::from_secs(10);
    while started.elapsed() < Duration::from_secs(args.seconds) && !load.is_empty() {
        tokio::select! {
            _ = load.join_next() => {}
            () = tokio::time::sleep(progress_every) => {
                let done: usize = clients.iter().map(|c| c.lock().expect("lock").orders.len()).sum();
                log(format!("{done} orders placed, {:.0} s", started.elapsed().as_secs_f64()));
            }
        }
    }
    let window_end = CpuSnap::take(&*dep.lock().await);
    faults_stop.store(true, Ordering::Relaxed);
    injector.await??;
    shared.stop.store(true, Ordering::Relaxed);
    while load.join_next().await.is_some() {}
    let load_secs = started.elapsed().as_secs_f64();
    log("load stopped; waiting for every order to end");

    let summary;
    let all_ended_at;
    let load_stopped = Instant::now();
    {
        let mut d = dep.lock().await;
        // Every service up (a supervisor restart may be in flight).
        d.wait_ready(Duration::from_secs(120)).await?;
        let (s, t) = check(&args, &shared, &clients, &d, &logs).await?;
        summary = s;
        all_ended_at = t;
    }
    supervisor.abort();
    let window_start = window_start.await?;
    let slap = if args.slap > 0 {
        let port = dep.lock().await.servers["mariadb"].port();
        Some(raw_commits(port, args.slap)?)
    } else {
        None
    };

    let mut lat: Vec<Duration> = orders_of(&clients)
        .iter()
        .filter_map(|o| o.ended.as_ref().map(|(t, _)| *t - o.placed))
        .collect();
    lat.sort();
    let fmt_map = |m: &BTreeMap<String, u64>| {
        if m.is_empty() {
            "0".to_owned()
        } else {
            m.iter()
                .map(|(k, v)| format!("{k}:{v}"))
                .collect::<Vec<_>>()
                .join(",")
        }
    };
    let kills = kills.lock().expect("lock").clone();
    let crashes = crashes.lock().expect("lock").clone();
    // From the last fault to the moment every order had ended.
    let ended_at = all_ended_at;
    let after_last_fault = last_fault.lock().expect("lock").map(|t| {
        format!(
            " all-ended-after-last-fault={:.1}s",
            ended_at.saturating_duration_since(t).as_secs_f64()
        )
    });
    let rejected: BTreeMap<u16, u64> = clients.iter().fold(BTreeMap::new(), |mut acc, c| {
        for (k, v) in &c.lock().expect("lock").rejected {
            *acc.entry(*k).or_default() += v;
        }
        acc
    });
    let s = &summary;
    for (what, list) in [
        ("stuck", &s.stuck),
        ("lost", &s.lost),
        ("double-charged", &s.double_charged),
        ("unpaid", &s.unpaid),
        ("phantom", &s.phantom),
        ("balance", &s.balance_wrong),
        ("dead letter", &s.dead_letters),
    ] {
        for item in list.iter().take(20) {
            log(format!("{what}: {item}"));
        }
    }
    println!(
        "chaos: orders={} confirmed={} cancelled={} stuck={} lost={} double-charged={} unpaid={} phantom={} balance-wrong={} outbox-unsent={} sagas-open={} dead-letters={} rejected={:?} kills={} crashes={} p50={}ms p99={}ms max={}ms load={:.0}s settled-in={:.1}s{}",
        s.orders,
        s.confirmed,
        s.cancelled,
        s.stuck.len(),
        s.lost.len(),
        s.double_charged.len(),
        s.unpaid.len(),
        s.phantom.len(),
        s.balance_wrong.len(),
        s.outbox_unsent,
        s.sagas_open,
        s.dead_letters.len(),
        rejected,
        fmt_map(&kills),
        fmt_map(&crashes),
        percentile(&lat, 0.50).as_millis(),
        percentile(&lat, 0.99).as_millis(),
        lat.last().copied().unwrap_or_default().as_millis(),
        load_secs,
        all_ended_at.saturating_duration_since(load_stopped).as_secs_f64(),
        after_last_fault.unwrap_or_default(),
    );
    if args.faults.is_empty() {
        // A load measurement (with faults the figures would mean little).
        println!("{}", bench_line(&clients, &window_start, &window_end, slap));
    }
    let failed = s.failed() || s.orders == 0;
    {
        let mut d = dep.lock().await;
        for s in d.services.values_mut() {
            s.kill();
        }
        for s in d.servers.values_mut() {
            s.kill();
        }
    }
    if failed || args.keep {
        log(format!("logs and data kept in {}", dir.display()));
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    if failed {
        log("FAILED");
        std::process::exit(1);
    }
    Ok(())
}
