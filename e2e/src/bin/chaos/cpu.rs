//! CPU accounting of the processes and the benchmark line.

use super::*;

/// The deployment's processes (services and servers) by name, with their pids.
pub(crate) fn processes(dep: &Deployment) -> Vec<(String, u32)> {
    let mut pids: Vec<(String, u32)> = Vec::new();
    for (name, s) in dep.services() {
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
    pids
}

/// The CPU snapshot of every process of the deployment and of this driver.
pub(crate) fn snapshot(dep: &Deployment) -> CpuSnap {
    let mut pids = processes(dep);
    pids.push(("driver".to_owned(), std::process::id()));
    CpuSnap::take(&pids)
}

/// `n` single-row autocommit INSERTs from 16 clients on the MariaDB at `port`
/// (`mariadb-slap`): commits per second.
pub(crate) fn raw_commits(port: u16, n: u64) -> anyhow::Result<f64> {
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
pub(crate) fn bench_line(
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
