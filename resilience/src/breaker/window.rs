//! The failure-rate policy of a breaker: the share of failed calls over a sliding
//! window of time.

use std::sync::Mutex;
use std::time::Duration;

/// Open the breaker when at least `percent` % of the calls of the last `window` failed
/// — once the window holds `minimum_calls` calls (a few calls prove nothing). Set with
/// [`BreakerConfig::with_failure_rate`](super::BreakerConfig::with_failure_rate) or
/// [`CircuitBreakerBuilder::failure_rate`](super::CircuitBreakerBuilder::failure_rate);
/// it works alongside the consecutive-failures threshold (whichever trips first opens
/// the breaker). It catches a downstream that fails often but not in a row — one bad
/// replica of three behind a balancer, say — which consecutive failures never would.
///
/// The window slides in tenths: calls older than `window` (give or take a tenth) no
/// longer count. A breaker with this policy takes a short lock per call in the CLOSED
/// state (the consecutive policy alone is lock-free); `docs/BENCHMARKS.md` has the cost.
///
/// ```
/// use std::time::Duration;
/// use resilience::{BreakerState, CircuitBreaker};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// // Half the calls of the last 10 s failing, over at least 10 calls, opens it.
/// let breaker = CircuitBreaker::builder("catalog")
///     .failure_rate(50, Duration::from_secs(10), 10)
///     .build();
/// for i in 0..10 {
///     // every other call fails: never two in a row
///     let _ = breaker.call(|| async move { if i % 2 == 1 { Err("502") } else { Ok(()) } }).await;
/// }
/// assert_eq!(breaker.state(), BreakerState::Open);
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct FailureRate {
    /// The share of failed calls that opens the breaker, in percent (1–100).
    pub percent: u8,
    /// How far back calls count.
    pub window: Duration,
    /// Calls the window must hold before the share is judged (at least 1).
    pub minimum_calls: u32,
}

impl FailureRate {
    /// `percent` (clamped to 1–100) of the calls of the last `window`, judged once the
    /// window holds `minimum_calls` (at least 1).
    pub fn new(percent: u8, window: Duration, minimum_calls: u32) -> Self {
        Self {
            percent: percent.clamp(1, 100),
            window: window.max(Duration::from_millis(10)),
            minimum_calls: minimum_calls.max(1),
        }
    }
}

const BUCKETS: u64 = 10;

#[derive(Debug, Default, Clone, Copy)]
struct Bucket {
    /// Which tenth of time (since the breaker's epoch) it counts.
    tick: u64,
    calls: u32,
    failed: u32,
}

/// Call outcomes by tenth of the window.
#[derive(Debug)]
pub(super) struct Window {
    policy: FailureRate,
    tick_nanos: u64,
    buckets: Mutex<[Bucket; BUCKETS as usize]>,
}

impl Window {
    pub(super) fn new(policy: FailureRate) -> Self {
        let tick_nanos = (policy.window.as_nanos() as u64 / BUCKETS).max(1);
        Self {
            policy,
            tick_nanos,
            buckets: Mutex::new([Bucket::default(); BUCKETS as usize]),
        }
    }

    /// Count one call ending at `now_nanos`; whether the failure share of the window
    /// has now reached the policy's.
    pub(super) fn record(&self, now_nanos: u64, failed: bool) -> bool {
        let tick = now_nanos / self.tick_nanos;
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let b = &mut buckets[(tick % BUCKETS) as usize];
        if b.tick != tick {
            *b = Bucket {
                tick,
                ..Bucket::default()
            };
        }
        b.calls += 1;
        b.failed += u32::from(failed);
        if !failed {
            return false;
        }
        let (calls, failures) = buckets
            .iter()
            .filter(|b| b.tick + BUCKETS > tick)
            .fold((0u64, 0u64), |(c, f), b| {
                (c + u64::from(b.calls), f + u64::from(b.failed))
            });
        calls >= u64::from(self.policy.minimum_calls)
            && failures * 100 >= u64::from(self.policy.percent) * calls
    }

    /// Forget every call (the breaker opened or closed: a new period starts).
    pub(super) fn clear(&self) {
        *self.buckets.lock().unwrap_or_else(|e| e.into_inner()) =
            [Bucket::default(); BUCKETS as usize];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn window(percent: u8, min: u32) -> Window {
        Window::new(FailureRate::new(percent, Duration::from_secs(10), min))
    }

    #[test]
    fn the_share_trips_only_past_the_minimum_and_the_percent() {
        let w = window(50, 4);
        assert!(!w.record(0, true), "one call proves nothing");
        assert!(!w.record(SEC, false));
        assert!(!w.record(2 * SEC, false));
        // 2 of 4 failed: 50 %.
        assert!(w.record(3 * SEC, true));
        let w = window(60, 4);
        for t in 0..3 {
            w.record(t * SEC, t == 0);
        }
        assert!(!w.record(3 * SEC, true), "2 of 4 is under 60 %");
    }

    #[test]
    fn calls_older_than_the_window_no_longer_count() {
        let w = window(50, 2);
        assert!(!w.record(0, true));
        // 11 s later the first failure has left the window: 1 call, under the minimum.
        assert!(!w.record(11 * SEC, true));
        assert!(w.record(12 * SEC, true), "two failures in the window");
        w.clear();
        assert!(!w.record(12 * SEC, true), "cleared");
    }

    #[test]
    fn the_policy_is_clamped_to_sense() {
        let p = FailureRate::new(0, Duration::ZERO, 0);
        assert_eq!((p.percent, p.minimum_calls), (1, 1));
        assert_eq!(p.window, Duration::from_millis(10));
        assert_eq!(
            FailureRate::new(200, Duration::from_secs(1), 5).percent,
            100
        );
    }
}
