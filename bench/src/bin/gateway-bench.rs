//! What the gateway's security layers cost (issue #10, docs/BENCHMARKS.md "The gateway's
//! security layers"): authenticated `GET /api/v1/orders/{id}` throughput through the real
//! gateway — JWT validation, the blacklist, the rate limiter — against the
//! same router with those layers left out.
//!
//! It starts a MariaDB, a Redis and a broker of its own, the separate services with
//! mutual TLS, registers a user and places one order; then it serves three gateways in
//! this process, all calling the same order service: `app_with` (what the gateway
//! binary runs: revocations mirrored in memory, the rate limit decided in process and
//! settled with Redis in batches), the same asking Redis on every request for both
//! (`BLACKLIST_HEARTBEAT_MS=0`, `RATE_LIMIT_SETTLE_MS=0`), and `app_without_security`
//! (the same routes and layers, the user's claims put on every request instead of
//! checking a token, no rate limit).
//! Keep-alive clients ask for the order as fast as it answers, against each in turn,
//! round after round; every answer must be 200.
//!
//! ```sh
//! cargo run --release -p ordersys-bench --bin gateway-bench -- --help
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use ordersys_e2e::infra::{Daemon, Kind};
use ordersys_e2e::{dev_certs, Api, Options, System};

const USAGE: &str = "\
gateway-bench — GET /api/v1/orders/{id} with and without the security layers

  --clients N   concurrent keep-alive clients (32)
  --seconds S   measured seconds per run (8)
  --warmup S    seconds of load before each run is measured (2)
  --rounds R    rounds of the three runs: secured (as shipped), per-request
                (Redis asked on every request: BLACKLIST_HEARTBEAT_MS=0,
                RATE_LIMIT_SETTLE_MS=0), bare (3)
";

struct Args {
    clients: usize,
    seconds: u64,
    warmup: u64,
    rounds: usize,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        clients: 32,
        seconds: 8,
        warmup: 2,
        rounds: 3,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--clients" => a.clients = val()?.parse()?,
            "--seconds" => a.seconds = val()?.parse()?,
            "--warmup" => a.warmup = val()?.parse()?,
            "--rounds" => a.rounds = val()?.parse()?,
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n\n{USAGE}"),
        }
    }
    if a.clients == 0 || a.seconds == 0 || a.rounds == 0 {
        bail!("--clients, --seconds and --rounds must be positive");
    }
    Ok(a)
}

/// CPU ticks of a process and its reaped children (0 if it is gone).
fn ticks(pid: u32) -> u64 {
    ordersys_e2e::cpu::process_ticks(pid).unwrap_or(0)
}

struct Run {
    per_sec: f64,
    failed: u64,
    cpu_ms: Vec<(String, f64)>,
}

async fn load(
    base: &str,
    token: &str,
    order: &str,
    clients: usize,
    warmup: Duration,
    measured: Duration,
    procs: &[(String, u32)],
) -> Run {
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let counting = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let url = format!("{base}/api/v1/orders/{order}");
    let mut tasks = Vec::new();
    for _ in 0..clients {
        // One client (connection pool) per task: a keep-alive connection each.
        let client = reqwest::Client::new();
        let (ok, failed, counting, stop) =
            (ok.clone(), failed.clone(), counting.clone(), stop.clone());
        let (url, auth) = (url.clone(), format!("Bearer {token}"));
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let r = client.get(&url).header("authorization", &auth).send().await;
                let good = match r {
                    Ok(r) => r.status() == 200 && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                if counting.load(Ordering::Relaxed) {
                    if good { &ok } else { &failed }.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(warmup).await;
    let before: Vec<u64> = procs.iter().map(|(_, p)| ticks(*p)).collect();
    counting.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(measured).await;
    counting.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let after: Vec<u64> = procs.iter().map(|(_, p)| ticks(*p)).collect();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let n = ok.load(Ordering::Relaxed);
    let cpu_ms = procs
        .iter()
        .zip(before.iter().zip(&after))
        .map(|((name, _), (b, a))| {
            (
                name.clone(),
                (a - b) as f64 / ordersys_e2e::cpu::TICKS_PER_SEC * 1e3 / (n.max(1) as f64),
            )
        })
        .collect();
    Run {
        per_sec: n as f64 / elapsed,
        failed: failed.load(Ordering::Relaxed),
        cpu_ms,
    }
}

async fn serve(router: axum::Router) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .await
    });
    Ok(base)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    let dir = std::env::temp_dir().join(format!("gateway-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut servers = HashMap::new();
    for kind in [Kind::MariaDb, Kind::Redis, Kind::Broker] {
        servers.insert(kind.name(), Daemon::start(kind, &dir)?);
    }
    let redis_url = servers["redis"].url();
    let system = System::start(Options {
        mysql_server_url: Some(servers["mariadb"].url()),
        redis_url: Some(redis_url.clone()),
        brokers: Some(servers["broker"].url()),
        gateway_env: vec![("RATE_LIMIT_PER_MINUTE".into(), "1000000000".into())],
        ..Options::default()
    })
    .await;

    // One user with one confirmed order: what every request asks for.
    let api = Api::new(&system.base);
    let token = api
        .signup(&ordersys_e2e::email(), "gateway-bench-password")
        .await;
    let r = api
        .send(
            "POST",
            "/api/v1/orders",
            Some(serde_json::json!({
                "items": [{ "product_id": "sku-1", "quantity": 1, "unit_price": 100 }],
                "currency": "USD",
            })),
            Some(&token),
        )
        .await;
    anyhow::ensure!(r.status == 201, "placing the order: {r:?}");
    let order = r.body["order_id"].as_str().context("order_id")?.to_owned();
    api.wait_order(&token, &order, |o| o["status"] != "PENDING")
        .await;

    // Both gateways in this process, over the same order service, Redis and secret.
    let certs = dev_certs();
    let config = ordersys_gateway::Config {
        user_service_url: system.grpc[0].clone(),
        order_service_url: system.grpc[1].clone(),
        payment_service_url: system.grpc[2].clone(),
        redis_url: redis_url.clone().into(),
        jwt: ordersys_kit::config::Jwt::with_ed25519(
            "",
            system.jwt_public_key.display().to_string(),
        ),
        rate_limit_per_minute: 1_000_000_000,
        rate_limit_key_prefix: format!("gateway-bench:{}:", std::process::id()),
        tls: ordersys_kit::tls::GrpcTls::files(
            certs.join("gateway.pem"),
            certs.join("gateway.key"),
            certs.join("ca.pem"),
        ),
        ..ordersys_gateway::Config::default()
    };
    let secured =
        ordersys_gateway::app_with(&config, ordersys_gateway::Backends::redis(&config).await?)?;
    let claims = config.jwt.validator()?.validate(&token)?;
    let bare = ordersys_gateway::app_without_security(
        &config,
        ordersys_gateway::Backends::redis(&config).await?,
        claims,
        token.clone(),
    )?;
    // Redis asked on every request — for revocations (`BLACKLIST_HEARTBEAT_MS=0`) and
    // for the rate limit (`RATE_LIMIT_SETTLE_MS=0`) — as before the mirror and the
    // batched limiter.
    let per_request_config = ordersys_gateway::Config {
        blacklist_heartbeat_ms: 0,
        rate_limit_settle_ms: 0,
        ..config.clone()
    };
    let per_request = ordersys_gateway::app_with(
        &per_request_config,
        ordersys_gateway::Backends::redis(&per_request_config).await?,
    )?;
    let variants = [
        ("secured", serve(secured).await?),
        ("per-request", serve(per_request).await?),
        ("bare", serve(bare).await?),
    ];

    let procs: Vec<(String, u32)> = [
        (
            "bench (gateway + clients)".to_owned(),
            Some(std::process::id()),
        ),
        ("order".to_owned(), system.order.pid()),
        ("redis".to_owned(), servers["redis"].pid()),
    ]
    .into_iter()
    .filter_map(|(n, p)| p.map(|p| (n, p)))
    .collect();
    println!(
        "GET /api/v1/orders/{{id}}: {} clients, {} s per run after {} s of warm-up, {} rounds",
        args.clients, args.seconds, args.warmup, args.rounds
    );
    let mut per_sec: HashMap<&str, Vec<f64>> = HashMap::new();
    for round in 1..=args.rounds {
        for (label, base) in &variants {
            let run = load(
                base,
                &token,
                &order,
                args.clients,
                Duration::from_secs(args.warmup),
                Duration::from_secs(args.seconds),
                &procs,
            )
            .await;
            let cpu: Vec<String> = run
                .cpu_ms
                .iter()
                .map(|(n, ms)| format!("{n} {ms:.3}"))
                .collect();
            println!(
                "round {round} {label:>11}: {:>8.0} requests/s, {} failed; CPU ms per request: {}",
                run.per_sec,
                run.failed,
                cpu.join(" · ")
            );
            anyhow::ensure!(run.failed == 0, "{label}: {} requests failed", run.failed);
            per_sec.entry(label).or_default().push(run.per_sec);
        }
    }
    let m = |label: &str| median(per_sec[label].clone());
    let (secured, per_request, bare) = (m("secured"), m("per-request"), m("bare"));
    let cost = |x: f64| (1.0 - x / bare) * 100.0;
    println!(
        "bench: secured {secured:.0}/s, per-request {per_request:.0}/s, bare {bare:.0}/s (medians): \
         the security layers cost {:.1} % of the throughput ({:.1} % asking Redis on every request)",
        cost(secured),
        cost(per_request),
    );
    system.stop().await;
    drop(servers);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
