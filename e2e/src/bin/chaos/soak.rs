//! `--soak`: staying power — every process's resident memory every 30 s while the load
//! runs, and afterwards the orders that ended in each minute of the load beside it, in
//! one `soak:` line (issue #33, item 4: throughput within 10 % of the first minute's,
//! every service flat and under 150 MB).

use super::*;

/// How often the resident memory is sampled.
pub(crate) const RSS_EVERY: Duration = Duration::from_secs(30);

/// Resident memory of every process of the deployment at one instant, in MB.
#[derive(Debug, Clone)]
pub(crate) struct RssSample {
    pub(crate) mb: Vec<(String, u64)>,
}

/// `VmRSS` of `pid` in MB; `None` if it is gone.
fn rss_mb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb / 1024)
}

/// The resident memory of the deployment's processes now (the driver excluded).
pub(crate) fn rss_sample(dep: &Deployment) -> RssSample {
    let mb = processes(dep)
        .into_iter()
        .filter_map(|(name, pid)| rss_mb(pid).map(|mb| (name, mb)))
        .collect();
    RssSample { mb }
}

impl RssSample {
    pub(crate) fn show(&self) -> String {
        let parts: Vec<String> = self.mb.iter().map(|(n, mb)| format!("{n}={mb}")).collect();
        format!("rss MB: {}", parts.join(" "))
    }
}

/// Orders that ended in each whole minute of the load (`load_secs` long, from
/// `started`), whatever their outcome.
pub(crate) fn ended_per_minute(orders: &[OrderRec], started: Instant, load_secs: f64) -> Vec<u64> {
    let minutes = (load_secs / 60.0).floor() as usize;
    let mut per = vec![0u64; minutes];
    for o in orders {
        if let Some((t, _)) = &o.ended {
            let i = (t.saturating_duration_since(started).as_secs() / 60) as usize;
            if let Some(n) = per.get_mut(i) {
                *n += 1;
            }
        }
    }
    per
}

/// The `soak:` line: orders/s minute by minute, the last and the slowest minute against
/// the first, and each process's memory at the first sample → its peak → the last.
pub(crate) fn soak_line(per_minute: &[u64], samples: &[RssSample]) -> String {
    let rate = |n: u64| n as f64 / 60.0;
    let rates: Vec<String> = per_minute
        .iter()
        .map(|n| format!("{:.0}", rate(*n)))
        .collect();
    let vs_first = |n: u64| match per_minute.first() {
        Some(&first) if first > 0 => format!("{:+.1}%", (n as f64 / first as f64 - 1.0) * 100.0),
        _ => "n/a".to_owned(),
    };
    let last = per_minute.last().copied().unwrap_or(0);
    let slowest = per_minute.iter().copied().min().unwrap_or(0);
    let mut names: Vec<&str> = samples
        .iter()
        .flat_map(|s| s.mb.iter().map(|(n, _)| n.as_str()))
        .collect();
    names.sort_unstable();
    names.dedup();
    let memory: Vec<String> = names
        .iter()
        .map(|name| {
            let of: Vec<u64> = samples
                .iter()
                .filter_map(|s| s.mb.iter().find(|(n, _)| n == name).map(|(_, mb)| *mb))
                .collect();
            let (first, last) = (of.first().copied(), of.last().copied());
            let peak = of.iter().copied().max();
            match (first, peak, last) {
                (Some(a), Some(p), Some(z)) => format!("{name}={a}→{p}→{z}"),
                _ => format!("{name}=?"),
            }
        })
        .collect();
    format!(
        "soak: orders/s per minute={} last-vs-first={} slowest-vs-first={} rss-MB(first→peak→last): {}",
        rates.join(","),
        vs_first(last),
        vs_first(slowest),
        memory.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soak_line_compares_minutes_and_memory() {
        let sample = |broker, order| RssSample {
            mb: vec![("broker".into(), broker), ("order".into(), order)],
        };
        let line = soak_line(
            &[600, 570, 540],
            &[sample(24, 20), sample(40, 31), sample(30, 25)],
        );
        assert!(line.contains("orders/s per minute=10,10,9"), "{line}");
        assert!(line.contains("last-vs-first=-10.0%"), "{line}");
        assert!(line.contains("slowest-vs-first=-10.0%"), "{line}");
        assert!(line.contains("broker=24→40→30 order=20→31→25"), "{line}");
    }

    #[test]
    fn orders_count_in_the_minute_they_ended() {
        let started = Instant::now();
        let order = |secs: u64| OrderRec {
            id: String::new(),
            total: 1,
            cancel_accepted: false,
            placed: started,
            ended: Some((started + Duration::from_secs(secs), "CONFIRMED".into())),
        };
        let orders = [order(5), order(59), order(60), order(119), order(130)];
        // 130 s of load: two whole minutes; the order of the third is left out.
        assert_eq!(ended_per_minute(&orders, started, 130.0), [2, 2]);
    }
}
