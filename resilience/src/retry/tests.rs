/// A downstream that hangs: the deadline ends the attempt as a breaker failure —
/// reported as a timeout, not as "open" — so enough of them open the breaker.
#[tokio::test(start_paused = true)]
async fn a_hanging_call_past_the_deadline_is_a_timeout_counted_by_the_breaker() {
    let breaker = CircuitBreaker::builder("hangs")
        .failure_threshold(2)
        .build();
    let retry = Retry::default().deadline(Duration::from_secs(1));
    for _ in 0..2 {
        let r = retry
            .call_with_breaker(&breaker, std::future::pending::<Result<(), ()>>)
            .await;
        assert!(
            matches!(
                r,
                Err(RetryError::DeadlineExceeded {
                    last: Some(BreakerError::TimedOut),
                    attempts: 1
                })
            ),
            "{r:?}"
        );
    }
    assert_eq!(breaker.state(), crate::BreakerState::Open);
    let r = retry
        .call_with_breaker(&breaker, || async { Ok::<_, ()>(()) })
        .await;
    assert!(
        matches!(
            r,
            Err(RetryError::Failed {
                error: BreakerError::Open(_),
                attempts: 1
            })
        ),
        "{r:?}"
    );
}

/// Failures that use up the retries are the call's own error, each attempt counted.
#[tokio::test(start_paused = true)]
async fn each_failed_attempt_counts_with_the_breaker() {
    let breaker = CircuitBreaker::builder("fails")
        .failure_threshold(5)
        .build();
    let retry = Retry::default().max_attempts(3);
    let r = retry
        .call_with_breaker(&breaker, || async { Err::<(), _>("boom") })
        .await;
    assert!(
        matches!(
            r,
            Err(RetryError::Failed {
                error: BreakerError::Inner("boom"),
                attempts: 3
            })
        ),
        "{r:?}"
    );
    assert_eq!(breaker.state(), crate::BreakerState::Closed);
    let _ = retry
        .call_with_breaker(&breaker, || async { Err::<(), _>("boom") })
        .await;
    // 3 + 2 attempts reached the threshold of 5 (the sixth was refused).
    assert_eq!(breaker.state(), crate::BreakerState::Open);
}
use super::*;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

#[tokio::test(start_paused = true)]
async fn makes_exactly_max_attempts() {
    let calls = AtomicU32::new(0);
    let r = Retry::default()
        .call(|| async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>("always")
        })
        .await;
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(
        r.unwrap_err(),
        RetryError::Failed {
            error: "always",
            attempts: 3
        }
    );
}

#[tokio::test(start_paused = true)]
async fn each_delay_is_within_ten_percent_of_nominal() {
    // Observe the waits between attempts on the paused clock, many times over.
    for _ in 0..200 {
        let stamps = Mutex::new(Vec::new());
        let _ = Retry::default()
            .max_attempts(4)
            .call(|| async {
                stamps.lock().unwrap().push(Instant::now());
                Err::<(), _>(())
            })
            .await;
        let stamps = stamps.into_inner().unwrap();
        assert_eq!(stamps.len(), 4);
        for (i, nominal_ms) in [100.0, 200.0, 400.0].into_iter().enumerate() {
            let waited = (stamps[i + 1] - stamps[i]).as_secs_f64() * 1000.0;
            assert!(
                waited >= nominal_ms * 0.9 - 1e-6 && waited <= nominal_ms * 1.1 + 1.0,
                "retry {} waited {waited} ms, nominal {nominal_ms} ms",
                i + 1
            );
        }
    }
}

#[test]
fn jitter_spreads_both_ways() {
    let delays: Vec<_> = (0..500)
        .filter_map(|_| Retry::default().backoff().next())
        .collect();
    assert!(delays.iter().any(|d| *d < Duration::from_millis(97)));
    assert!(delays.iter().any(|d| *d > Duration::from_millis(103)));
    assert!(delays
        .iter()
        .all(|d| *d >= Duration::from_millis(90) && *d <= Duration::from_millis(110)));
}

#[test]
fn nominal_delays_double_and_cap() {
    let r = Retry::default().max_delay(Duration::from_millis(300));
    assert_eq!(r.nominal_delay(1), Duration::from_millis(100));
    assert_eq!(r.nominal_delay(2), Duration::from_millis(200));
    assert_eq!(r.nominal_delay(3), Duration::from_millis(300));
    assert_eq!(Retry::default().backoff().count(), 2);
}

#[tokio::test(start_paused = true)]
async fn non_retryable_errors_stop_at_once() {
    let calls = AtomicU32::new(0);
    let r = Retry::default()
        .call_if(
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>("invalid")
            },
            |e| *e != "invalid",
        )
        .await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(r.unwrap_err().attempts(), 1);
}

#[tokio::test(start_paused = true)]
async fn deadline_cuts_retries_short() {
    let calls = AtomicU32::new(0);
    let start = Instant::now();
    let r = Retry::default()
        .max_attempts(10)
        .deadline(Duration::from_millis(250))
        .call(|| async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>("down")
        })
        .await;
    // 0 ms, ~100 ms, ~300 ms would be past the deadline: two attempts.
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert!(matches!(
        r,
        Err(RetryError::DeadlineExceeded {
            last: Some("down"),
            attempts: 2
        })
    ));
    assert!(Instant::now() - start < Duration::from_millis(250));
}

#[tokio::test(start_paused = true)]
async fn deadline_interrupts_a_hanging_attempt() {
    // Also the last one: a deadline, not an attempt's own timeout.
    for policy in [Retry::default(), Retry::never()] {
        let r = policy
            .deadline(Duration::from_secs(1))
            .call(std::future::pending::<Result<(), ()>>)
            .await;
        assert!(matches!(
            r,
            Err(RetryError::DeadlineExceeded {
                last: None,
                attempts: 1
            })
        ));
    }
}

/// A call slower than no time but inside the deadline, or inside its attempt's own
/// timeout, runs to its end through the breaker and counts as a success.
#[tokio::test(start_paused = true)]
async fn a_slow_call_inside_its_limits_succeeds_through_the_breaker() {
    let second = Duration::from_secs(1);
    for policy in [
        Retry::default().deadline(second),
        Retry::default().attempt_timeout(second),
    ] {
        let breaker = CircuitBreaker::new("slow");
        let r = policy
            .call_with_breaker(&breaker, || async {
                tokio::time::sleep(Duration::from_millis(500)).await;
                Ok::<_, ()>("late but in time")
            })
            .await;
        assert_eq!(r.unwrap(), "late but in time", "{policy:?}");
        assert_eq!(breaker.consecutive_failures(), 0);
    }
}

#[tokio::test(start_paused = true)]
async fn never_makes_one_attempt() {
    let calls = AtomicU32::new(0);
    let r = Retry::never()
        .call(|| async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>("once")
        })
        .await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(Retry::never().attempts(), 1);
    assert_eq!(Retry::default().attempts(), 3);
    assert_eq!(Retry::default().max_attempts(7).attempts(), 7);
    assert_eq!(Retry::never().backoff().count(), 0);
    assert_eq!(r.unwrap_err().attempts(), 1);
    assert_eq!(
        Retry::default().max_attempts(0).attempts(),
        1,
        "at least one"
    );
}

#[test]
fn the_setters_shape_the_delays() {
    let r = Retry::new()
        .base_delay(Duration::from_millis(50))
        .multiplier(3)
        .max_delay(Duration::from_secs(1))
        .max_attempts(6)
        .jitter(0.0);
    assert_eq!(
        r.backoff().collect::<Vec<_>>(),
        [50, 150, 450, 1000, 1000].map(Duration::from_millis),
        "base 50 ms, × 3 each retry, capped at 1 s, no jitter"
    );
    assert_eq!(
        Retry::new().multiplier(0).nominal_delay(3),
        Duration::from_millis(100),
        "a multiplier below 1 is 1"
    );
    // Jitter is clamped to 0..=1; not a number means none.
    assert_eq!(Retry::new().jitter(f64::NAN), Retry::new().jitter(0.0));
    assert_eq!(Retry::new().jitter(7.0), Retry::new().jitter(1.0));
    assert_eq!(Retry::new().jitter(-1.0), Retry::new().jitter(0.0));
    assert_ne!(Retry::new().jitter(0.5), Retry::new());
    // A wide jitter spreads over the whole ±50 % range.
    let spread: Vec<_> = (0..500)
        .filter_map(|_| Retry::new().jitter(0.5).backoff().next())
        .collect();
    assert!(spread.iter().any(|d| *d < Duration::from_millis(70)));
    assert!(spread.iter().any(|d| *d > Duration::from_millis(130)));
    assert!(spread
        .iter()
        .all(|d| *d >= Duration::from_millis(50) && *d <= Duration::from_millis(150)));
    // A delay past what a Duration holds is the cap, not an overflow.
    assert_eq!(
        Retry::new()
            .base_delay(Duration::MAX)
            .max_delay(Duration::from_secs(5))
            .nominal_delay(2),
        Duration::from_secs(5)
    );
    assert_eq!(
        Retry::new().max_delay(Duration::MAX).nominal_delay(1000),
        Duration::from_millis(100) * 2u32.pow(31),
        "the exponent stops at 31"
    );
}

#[test]
fn errors_report_their_attempts_and_last_error() {
    let failed = RetryError::Failed {
        error: "e",
        attempts: 2,
    };
    assert_eq!(failed.attempts(), 2);
    assert_eq!(failed.into_last(), Some("e"));
    let late: RetryError<&str> = RetryError::DeadlineExceeded {
        last: None,
        attempts: 4,
    };
    assert_eq!(late.attempts(), 4);
    assert_eq!(late.into_last(), None);
    assert_eq!(Retry::default().name(), "unnamed");
    assert_eq!(Retry::default().named("x").name(), "x");
}

#[tokio::test(start_paused = true)]
async fn never_retries_into_an_open_breaker() {
    let breaker = CircuitBreaker::builder("b").failure_threshold(2).build();
    let calls = AtomicU32::new(0);
    let r = Retry::default()
        .max_attempts(5)
        .call_with_breaker(&breaker, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>("down")
        })
        .await;
    // Two real calls open the breaker; the third attempt is rejected and ends it.
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let e = r.unwrap_err();
    assert!(e.is_open());
    assert_eq!(e.attempts(), 3, "two calls and the refused third");
    assert_eq!(e.into_inner(), None);
}

/// A hung attempt costs its own timeout, then the next attempt runs.
#[tokio::test(start_paused = true)]
async fn a_hung_attempt_is_abandoned_after_its_timeout_and_retried() {
    let calls = AtomicU32::new(0);
    let start = Instant::now();
    let r = Retry::default()
        .jitter(0.0)
        .attempt_timeout(Duration::from_millis(300))
        .call(|| async {
            if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                std::future::pending::<()>().await;
            }
            Ok::<_, ()>("second")
        })
        .await;
    assert_eq!(r.unwrap(), "second");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // 300 ms of the hung attempt + the 100 ms delay.
    assert_eq!(Instant::now() - start, Duration::from_millis(400));
}

#[tokio::test(start_paused = true)]
async fn attempts_that_all_time_out_say_so_with_the_last_error_seen() {
    let calls = AtomicU32::new(0);
    let r = Retry::default()
        .attempt_timeout(Duration::from_millis(50))
        .call(|| async {
            if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                return Err("refused");
            }
            std::future::pending().await
        })
        .await;
    assert_eq!(
        r,
        Err::<(), _>(RetryError::TimedOut {
            last: Some("refused"),
            attempts: 3
        })
    );
    let r = Retry::never()
        .attempt_timeout(Duration::from_millis(50))
        .call(std::future::pending::<Result<(), ()>>)
        .await;
    assert_eq!(
        r,
        Err(RetryError::TimedOut {
            last: None,
            attempts: 1
        })
    );
}

/// The overall deadline still wins over a longer attempt timeout.
#[tokio::test(start_paused = true)]
async fn the_deadline_cuts_an_attempt_before_its_own_timeout() {
    let start = Instant::now();
    let r = Retry::default()
        .attempt_timeout(Duration::from_secs(5))
        .deadline(Duration::from_secs(1))
        .call(std::future::pending::<Result<(), ()>>)
        .await;
    assert_eq!(
        r,
        Err(RetryError::DeadlineExceeded {
            last: None,
            attempts: 1
        })
    );
    assert_eq!(Instant::now() - start, Duration::from_secs(1));
}

/// Through a breaker, each timed-out attempt is a failure: three hung attempts open a
/// breaker with a threshold of three.
#[tokio::test(start_paused = true)]
async fn timed_out_attempts_count_with_the_breaker() {
    let breaker = CircuitBreaker::builder("hangs")
        .failure_threshold(3)
        .build();
    let r = Retry::default()
        .attempt_timeout(Duration::from_millis(100))
        .call_with_breaker(&breaker, std::future::pending::<Result<(), ()>>)
        .await;
    assert!(
        matches!(
            r,
            Err(RetryError::Failed {
                error: BreakerError::TimedOut,
                attempts: 3
            })
        ),
        "{r:?}"
    );
    assert_eq!(breaker.state(), crate::BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn the_hook_hears_of_each_retry_with_its_error_and_delay() {
    let seen = Mutex::new(Vec::new());
    let calls = AtomicU32::new(0);
    let r = Retry::default()
        .jitter(0.0)
        .max_attempts(4)
        .attempt_timeout(Duration::from_millis(50))
        .call_notify(
            || async {
                match calls.fetch_add(1, Ordering::SeqCst) {
                    0 => Err("first"),
                    1 => std::future::pending().await,
                    2 => Err("third"),
                    _ => Ok(()),
                }
            },
            |_| true,
            |n| {
                seen.lock()
                    .unwrap()
                    .push((n.attempt, n.error.copied(), n.delay))
            },
        )
        .await;
    assert_eq!(r, Ok(()));
    let ms = Duration::from_millis;
    assert_eq!(
        *seen.lock().unwrap(),
        [
            (1, Some("first"), ms(100)),
            (2, None, ms(200)),
            (3, Some("third"), ms(400))
        ]
    );
    // Not retried, not told.
    seen.lock().unwrap().clear();
    let _ = Retry::default()
        .call_notify(
            || async { Err::<(), _>("final") },
            |_| false,
            |n| {
                seen.lock()
                    .unwrap()
                    .push((n.attempt, n.error.copied(), n.delay))
            },
        )
        .await;
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn the_breaker_hook_hears_of_retried_failures_only() {
    let breaker = CircuitBreaker::new("b");
    let mut seen = Vec::new();
    let calls = AtomicU32::new(0);
    let r = Retry::default()
        .attempt_timeout(Duration::from_millis(50))
        .call_with_breaker_notify(
            &breaker,
            || async {
                match calls.fetch_add(1, Ordering::SeqCst) {
                    0 => Err::<(), _>("unavailable"),
                    1 => std::future::pending().await,
                    _ => Err("not found"),
                }
            },
            |e| *e == "unavailable",
            |n| seen.push((n.attempt, n.error.copied())),
        )
        .await;
    assert_eq!(seen, [(1, Some("unavailable")), (2, None)]);
    let e = r.unwrap_err();
    assert_eq!(e.attempts(), 3);
    assert_eq!(e.into_inner(), Some("not found"));
    assert_eq!(
        breaker.consecutive_failures(),
        0,
        "the answer closed the streak"
    );
}

#[test]
fn an_outcome_maps_its_error_and_keeps_its_attempts() {
    let failed: RetryError<&str> = RetryError::Failed {
        error: "x",
        attempts: 2,
    };
    assert_eq!(
        failed.map(str::len),
        RetryError::Failed {
            error: 1,
            attempts: 2
        }
    );
    let late: RetryError<&str> = RetryError::DeadlineExceeded {
        last: Some("ab"),
        attempts: 3,
    };
    assert_eq!(
        late.map(str::len),
        RetryError::DeadlineExceeded {
            last: Some(2),
            attempts: 3
        }
    );
    let hung: RetryError<&str> = RetryError::TimedOut {
        last: Some("abc"),
        attempts: 4,
    };
    assert_eq!(hung.attempts(), 4);
    assert_eq!(
        hung.map(str::len),
        RetryError::TimedOut {
            last: Some(3),
            attempts: 4
        }
    );
}

/// With both limits set, an attempt's own timeout retries (the deadline ends the call:
/// `deadline_interrupts_a_hanging_attempt`).
#[tokio::test(start_paused = true)]
async fn an_attempt_timeout_retries_where_the_deadline_ends_the_call() {
    let calls = AtomicU32::new(0);
    let r = Retry::default()
        .attempt_timeout(Duration::from_millis(50))
        .deadline(Duration::from_secs(10))
        .call(|| async {
            if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                std::future::pending::<()>().await;
            }
            Ok::<_, ()>("after a timed-out attempt")
        })
        .await;
    assert_eq!(r, Ok("after a timed-out attempt"));
}
