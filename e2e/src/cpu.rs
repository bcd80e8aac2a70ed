//! CPU accounting from `/proc` (Linux) for the load tools and the fault suite — one
//! implementation: the clock ticks of process trees and of the whole machine at an
//! instant, and latency percentiles.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux x86-64).
pub const TICKS_PER_SEC: f64 = 100.0;

/// utime + stime + cutime + cstime of one process (its own time and that of its reaped
/// children), in clock ticks; `None` if it is gone.
pub fn process_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat).map(|(_, ticks)| ticks)
}

/// (ppid, ticks) from a `/proc/{pid}/stat` line.
fn parse_stat(stat: &str) -> Option<(u32, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state, ppid, … utime (14th field of the line), stime, cutime,
    // cstime.
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Some((num(1) as u32, num(11) + num(12) + num(13) + num(14)))
}

/// Every process with its parent and ticks.
fn all_processes() -> BTreeMap<u32, (u32, u64)> {
    let mut m = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return m;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Some(entry) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| parse_stat(&s))
        {
            m.insert(pid, entry);
        }
    }
    m
}

/// A process's ticks with those of all its descendants (a reaped child's time is in its
/// parent's cutime/cstime, so nothing that ended inside the tree is lost), except the
/// trees rooted at `apart` (processes accounted under names of their own: the services a
/// driver started are not the driver's).
fn tree_ticks(procs: &BTreeMap<u32, (u32, u64)>, root: u32, apart: &[u32]) -> Option<u64> {
    procs.get(&root)?;
    let mut total = 0;
    let mut todo = vec![root];
    while let Some(p) = todo.pop() {
        if let Some((_, t)) = procs.get(&p) {
            total += t;
        }
        todo.extend(
            procs
                .iter()
                .filter(|(c, (pp, _))| *pp == p && !apart.contains(c))
                .map(|(c, _)| *c),
        );
    }
    Some(total)
}

/// CPU time of named process trees and of the machine, at one instant.
#[derive(Debug, Clone)]
pub struct CpuSnap {
    /// When it was taken.
    pub at: Instant,
    /// Ticks of each named process with its descendants (processes that are gone are
    /// left out).
    pub procs: Vec<(String, u64)>,
    /// `/proc/stat`'s first line: user, nice, system, idle, iowait, irq, softirq, steal
    /// (ticks of all cores).
    pub machine: Vec<u64>,
}

impl CpuSnap {
    /// The ticks of each `(name, pid)` tree and of the machine, now. A tree inside
    /// another is counted once, under its own name (the driver's tree leaves out the
    /// services it started).
    pub fn take(roots: &[(String, u32)]) -> Self {
        let all = all_processes();
        let pids: Vec<u32> = roots.iter().map(|(_, pid)| *pid).collect();
        let procs = roots
            .iter()
            .filter_map(|(name, pid)| {
                let apart: Vec<u32> = pids.iter().copied().filter(|p| p != pid).collect();
                tree_ticks(&all, *pid, &apart).map(|t| (name.clone(), t))
            })
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

    /// The ticks of the tree named `name`, if it was there.
    pub fn of(&self, name: &str) -> Option<u64> {
        self.procs.iter().find(|(n, _)| n == name).map(|(_, t)| *t)
    }

    /// The machine's non-idle ticks (all but idle and iowait).
    pub fn busy(&self) -> u64 {
        let m = &self.machine;
        let idle = m.get(3).copied().unwrap_or(0) + m.get(4).copied().unwrap_or(0);
        m.iter().sum::<u64>().saturating_sub(idle)
    }
}

/// The `p` quantile (0..=1) of `sorted` by nearest rank; zero when empty.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_and_its_tree_are_counted() {
        let me = std::process::id();
        let before = process_ticks(me).expect("this process is there");
        let snap = CpuSnap::take(&[("me".into(), me), ("gone".into(), u32::MAX)]);
        assert!(snap.of("me").is_some_and(|t| t >= before), "{snap:?}");
        assert_eq!(snap.of("gone"), None);
        assert_eq!(snap.machine.len(), 8);
        assert!(snap.busy() > 0);
    }

    #[test]
    fn a_tree_named_apart_is_not_counted_in_its_parents() {
        // A child that burns CPU, then waits.
        let mut child = std::process::Command::new("sh")
            .args([
                "-c",
                "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done; sleep 60",
            ])
            .spawn()
            .expect("sh");
        let (me, pid) = (std::process::id(), child.id());
        let deadline = Instant::now() + Duration::from_secs(60);
        while process_ticks(pid).unwrap_or(0) < 10 {
            assert!(Instant::now() < deadline, "the child never burned 10 ticks");
            std::thread::yield_now();
        }
        let apart = CpuSnap::take(&[("me".into(), me), ("child".into(), pid)]);
        let together = CpuSnap::take(&[("me".into(), me)]);
        let _ = child.kill();
        let _ = child.wait();
        let (mine, childs) = (apart.of("me").unwrap(), apart.of("child").unwrap());
        assert!(childs >= 10, "{apart:?}");
        // Together, the child's ticks are in mine; apart, they are not.
        assert!(
            together.of("me").unwrap() >= mine + childs,
            "{apart:?} {together:?}"
        );
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let ms = |v: u64| Duration::from_millis(v);
        let sorted: Vec<_> = (1..=100).map(ms).collect();
        assert_eq!(percentile(&sorted, 0.5), ms(50));
        assert_eq!(percentile(&sorted, 0.99), ms(99));
        assert_eq!(percentile(&sorted, 1.0), ms(100));
        assert_eq!(percentile(&sorted, 0.0), ms(1));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }
}
