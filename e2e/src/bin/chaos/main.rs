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
use ordersys_e2e::cpu::{percentile, CpuSnap};
use ordersys_e2e::infra::{Daemon, Kind};
use ordersys_e2e::{embedded_env, free_port, Options, Service, System};
use rand::Rng;
use serde_json::{json, Value};
use sqlx::{ConnectOptions, Connection, Row};
use uuid::Uuid;

mod args;
mod check;
mod compose;
mod cpu;
mod deployment;
mod load;
mod soak;

use args::*;
use check::*;
use compose::*;
use cpu::*;
use deployment::*;
use load::*;
use soak::*;

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

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse()?;
    let dir = std::env::temp_dir().join(format!("ordersys-chaos-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    log(format!("work directory {}", dir.display()));
    let mut dep = if let Some(project) = &args.compose {
        Deployment::attach_compose(project).await?
    } else if args.embedded {
        Deployment::start_embedded(&args, &dir)?
    } else {
        Deployment::start(&args, &dir).await?
    };
    dep.wait_ready(Duration::from_secs(120)).await?;
    log(format!("deployment ready, gateway {}", dep.base));
    let logs: Vec<PathBuf> = dep
        .services()
        .iter()
        .map(|(_, s)| s.log_path().to_owned())
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
        wait: (args.wait_s > 0).then(|| format!("?wait={}s", args.wait_s)),
        answers: Mutex::default(),
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
    // When each fault began (for the refusal windows).
    let fault_times: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
    // With --compose: the schedule of container faults ran to its end (load stops).
    let schedule_done = Arc::new(AtomicBool::new(false));
    let injector = {
        let (dep, stop, kills, last_fault, args, done, fault_times) = (
            dep.clone(),
            faults_stop.clone(),
            kills.clone(),
            last_fault.clone(),
            args.clone(),
            schedule_done.clone(),
            fault_times.clone(),
        );
        tokio::spawn(async move {
            if let Some(project) = &args.compose {
                let compose = Compose::new(project);
                let partition = Duration::from_secs(args.partition_secs);
                for fault in &args.compose_faults {
                    tokio::time::sleep(uniform(args.every)).await;
                    log(fault.name());
                    fault_times
                        .lock()
                        .expect("lock")
                        .push((Instant::now(), fault.name()));
                    let back = compose.inflict(fault, partition).await?;
                    log(format!(
                        "{}: healthy again after {:.1} s",
                        fault.name(),
                        back.as_secs_f64()
                    ));
                    *kills.lock().expect("lock").entry(fault.name()).or_default() += 1;
                    *last_fault.lock().expect("lock") = Some(Instant::now());
                }
                // Load on the recovered deployment for a while, then stop.
                tokio::time::sleep(uniform(args.every)).await;
                done.store(true, Ordering::Relaxed);
                return Ok(());
            }
            if args.faults.is_empty() {
                return Ok::<(), anyhow::Error>(());
            }
            let targets: Vec<&'static str> = SERVICES
                .iter()
                .chain(SERVERS.iter())
                .chain(REPLICAS.iter())
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
                fault_times
                    .lock()
                    .expect("lock")
                    .push((Instant::now(), target.to_owned()));
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
                    let names: Vec<&'static str> = d.services().iter().map(|(n, _)| *n).collect();
                    for name in names {
                        if d.down.contains(name) {
                            continue;
                        }
                        let s = d.service_mut(name).expect("service");
                        if let Some(status) = s.exit_status() {
                            log(format!("{name} exited by itself ({status}); restarting it"));
                            let core = status.contains("core dumped");
                            if let Some(bt) =
                                s.pid().filter(|_| core).and_then(|p| s.core_backtrace(p))
                            {
                                let all = s.log_path().with_extension("backtrace.txt");
                                log(format!(
                                    "{name}: where it crashed (every thread: {}):\n{bt}",
                                    all.display()
                                ));
                            }
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
            snapshot(&*dep.lock().await)
        })
    };
    let rss_samples = Arc::new(Mutex::new(Vec::<RssSample>::new()));
    let rss_sampler = args.soak.then(|| {
        let (dep, samples) = (dep.clone(), rss_samples.clone());
        tokio::spawn(async move {
            loop {
                let sample = rss_sample(&*dep.lock().await);
                log(sample.show());
                samples.lock().expect("lock").push(sample);
                tokio::time::sleep(RSS_EVERY).await;
            }
        })
    });
    let progress_every = Duration::from_secs(10);
    while started.elapsed() < Duration::from_secs(args.seconds)
        && !load.is_empty()
        && !schedule_done.load(Ordering::Relaxed)
    {
        tokio::select! {
            _ = load.join_next() => {}
            () = tokio::time::sleep(progress_every) => {
                let done: usize = clients.iter().map(|c| c.lock().expect("lock").orders.len()).sum();
                log(format!("{done} orders placed, {:.0} s", started.elapsed().as_secs_f64()));
            }
        }
    }
    let window_end = snapshot(&*dep.lock().await);
    faults_stop.store(true, Ordering::Relaxed);
    injector.await??;
    shared.stop.store(true, Ordering::Relaxed);
    while load.join_next().await.is_some() {}
    let load_secs = started.elapsed().as_secs_f64();
    if let Some(sampler) = rss_sampler {
        sampler.abort();
        let last = rss_sample(&*dep.lock().await);
        rss_samples.lock().expect("lock").push(last);
    }
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
    let _ = supervisor.await;
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
    let fault_times = fault_times.lock().expect("lock").clone();
    println!(
        "availability: {} slow-orders-after={}",
        availability(
            &shared.answers.lock().expect("lock"),
            &fault_times.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
        ),
        fmt_map(&slow_after(&orders_of(&clients), &fault_times)),
    );
    if args.faults.is_empty() {
        // A load measurement (with faults the figures would mean little).
        println!("{}", bench_line(&clients, &window_start, &window_end, slap));
    }
    if args.soak {
        let per_minute = ended_per_minute(&orders_of(&clients), started, load_secs);
        println!(
            "{}",
            soak_line(&per_minute, &rss_samples.lock().expect("lock"))
        );
    }
    let failed = s.failed() || s.orders == 0;
    let keep = failed || args.keep;
    let dep = Arc::try_unwrap(dep)
        .map_err(|_| anyhow::anyhow!("the deployment is still shared"))?
        .into_inner();
    tokio::task::block_in_place(|| dep.stop(keep));
    if keep {
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
