use super::*;
use std::sync::Mutex;

type Log = Arc<Mutex<Vec<(BreakerState, BreakerState)>>>;

fn breaker_with_log(threshold: u32) -> (CircuitBreaker, Log) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let l = log.clone();
    let b = CircuitBreaker::builder("test")
        .failure_threshold(threshold)
        .open_timeout(Duration::from_secs(30))
        .on_transition(move |t| l.lock().unwrap().push((t.from, t.to)))
        .build();
    (b, log)
}

async fn fail(b: &CircuitBreaker) -> BreakerError<&'static str> {
    b.call(|| async { Err::<(), _>("down") }).await.unwrap_err()
}

async fn ok(b: &CircuitBreaker) -> Result<(), BreakerError<&'static str>> {
    b.call(|| async { Ok(()) }).await
}

#[tokio::test(start_paused = true)]
async fn opens_after_threshold_consecutive_failures() {
    let (b, log) = breaker_with_log(5);
    for _ in 0..4 {
        assert!(!fail(&b).await.is_open());
    }
    assert_eq!(b.state(), BreakerState::Closed);
    assert!(!fail(&b).await.is_open());
    assert_eq!(b.state(), BreakerState::Open);
    assert!(ok(&b).await.unwrap_err().is_open());
    assert_eq!(
        *log.lock().unwrap(),
        vec![(BreakerState::Closed, BreakerState::Open)]
    );
}

#[tokio::test(start_paused = true)]
async fn success_resets_the_consecutive_count() {
    let (b, _) = breaker_with_log(3);
    fail(&b).await;
    fail(&b).await;
    ok(&b).await.unwrap();
    fail(&b).await;
    fail(&b).await;
    assert_eq!(b.state(), BreakerState::Closed);
    fail(&b).await;
    assert_eq!(b.state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn open_rejects_until_timeout_then_half_open_trial_closes() {
    let (b, log) = breaker_with_log(1);
    fail(&b).await;
    tokio::time::advance(Duration::from_secs(29)).await;
    let err = ok(&b).await.unwrap_err();
    match err {
        BreakerError::Open(o) => assert_eq!(o.retry_after, Duration::from_secs(1)),
        other => panic!("unexpected {other:?}"),
    }
    tokio::time::advance(Duration::from_secs(1)).await;
    ok(&b).await.unwrap();
    assert_eq!(b.state(), BreakerState::Closed);
    assert_eq!(
        *log.lock().unwrap(),
        vec![
            (BreakerState::Closed, BreakerState::Open),
            (BreakerState::Open, BreakerState::HalfOpen),
            (BreakerState::HalfOpen, BreakerState::Closed),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn failed_trial_reopens_for_a_full_timeout() {
    let (b, log) = breaker_with_log(1);
    fail(&b).await;
    tokio::time::advance(Duration::from_secs(30)).await;
    assert!(!fail(&b).await.is_open()); // the trial ran and failed
    assert_eq!(b.state(), BreakerState::Open);
    tokio::time::advance(Duration::from_secs(29)).await;
    assert!(ok(&b).await.unwrap_err().is_open());
    tokio::time::advance(Duration::from_secs(1)).await;
    ok(&b).await.unwrap();
    assert_eq!(b.state(), BreakerState::Closed);
    assert_eq!(log.lock().unwrap().len(), 5);
}

#[tokio::test(start_paused = true)]
async fn half_open_admits_exactly_one_concurrent_trial() {
    let (b, _) = breaker_with_log(1);
    fail(&b).await;
    tokio::time::advance(Duration::from_secs(30)).await;
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let b2 = b.clone();
    let trial = tokio::spawn(async move {
        b2.call(|| async move {
            release_rx.await.unwrap();
            Ok::<_, &str>(())
        })
        .await
    });
    tokio::task::yield_now().await;
    assert_eq!(b.state(), BreakerState::HalfOpen);
    // Every concurrent caller is rejected while the trial runs.
    let mut rejected = 0;
    for _ in 0..50 {
        if ok(&b).await.unwrap_err().is_open() {
            rejected += 1;
        }
    }
    assert_eq!(rejected, 50);
    release_tx.send(()).unwrap();
    trial.await.unwrap().unwrap();
    assert_eq!(b.state(), BreakerState::Closed);
}

#[test]
fn many_threads_race_for_the_trial_and_one_wins() {
    // Real OS threads released together by a barrier, many rounds: the half-open
    // permit is handed out exactly once each time.
    for _ in 0..50 {
        let breaker = CircuitBreaker::builder("race")
            .failure_threshold(1)
            .open_timeout(Duration::ZERO)
            .build();
        breaker.try_acquire().unwrap().failure();
        assert_eq!(breaker.state(), BreakerState::Open);
        let barrier = Arc::new(std::sync::Barrier::new(8));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let (b, barrier) = (breaker.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    (0..8)
                        .filter_map(|_| b.try_acquire().ok())
                        .map(|p| (p.is_trial(), p))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let granted: Vec<_> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        assert_eq!(granted.len(), 1, "more than one trial permit");
        assert!(granted[0].0);
    }
}

#[tokio::test(start_paused = true)]
async fn cancelled_trial_does_not_wedge_the_breaker() {
    let (b, _) = breaker_with_log(1);
    fail(&b).await;
    tokio::time::advance(Duration::from_secs(30)).await;
    {
        let fut = b.call(std::future::pending::<Result<(), &str>>);
        // Poll once so the permit is taken, then drop (cancel) the call.
        let timed = tokio::time::timeout(Duration::from_millis(1), fut).await;
        assert!(timed.is_err());
    }
    assert_eq!(b.state(), BreakerState::Open);
    // The next caller can run a new trial without waiting another 30 s.
    ok(&b).await.unwrap();
    assert_eq!(b.state(), BreakerState::Closed);
}

/// A normal call admitted before the breaker opened, cancelled while a later trial
/// runs, must not take the trial's outcome away.
#[tokio::test(start_paused = true)]
async fn a_cancelled_normal_call_leaves_the_trial_alone() {
    let (b, _) = breaker_with_log(1);
    let normal = b.try_acquire().unwrap();
    assert!(!normal.is_trial());
    b.try_acquire().unwrap().failure();
    assert_eq!(b.state(), BreakerState::Open);
    tokio::time::advance(Duration::from_secs(30)).await;
    let trial = b.try_acquire().unwrap();
    assert!(trial.is_trial());
    drop(normal);
    assert_eq!(b.state(), BreakerState::HalfOpen);
    trial.success();
    assert_eq!(b.state(), BreakerState::Closed);
}

/// A late failure of a call admitted while CLOSED does not re-open a breaker whose
/// trial is running, nor restart its count.
#[tokio::test(start_paused = true)]
async fn failures_outside_closed_do_not_open_again() {
    let (b, log) = breaker_with_log(1);
    let late = b.try_acquire().unwrap();
    b.try_acquire().unwrap().failure();
    tokio::time::advance(Duration::from_secs(30)).await;
    let trial = b.try_acquire().unwrap();
    late.failure();
    assert_eq!(b.state(), BreakerState::HalfOpen);
    trial.success();
    assert_eq!(b.state(), BreakerState::Closed);
    assert_eq!(b.consecutive_failures(), 0);
    assert_eq!(log.lock().unwrap().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_running_trial_rejects_with_no_wait_and_the_count_restarts_after_opening() {
    let (b, _) = breaker_with_log(2);
    fail(&b).await;
    assert_eq!(b.consecutive_failures(), 1);
    fail(&b).await;
    assert_eq!(b.state(), BreakerState::Open);
    assert_eq!(b.consecutive_failures(), 0, "reset when it opened");
    tokio::time::advance(Duration::from_secs(31)).await;
    let trial = b.try_acquire().unwrap();
    let rejected = b.try_acquire().unwrap_err();
    assert_eq!(rejected.retry_after, Duration::ZERO);
    assert_eq!(&*rejected.name, "test");
    assert_eq!(rejected.to_string(), "circuit breaker `test` is open");
    trial.success();
    // Closed again: it takes the full threshold to open once more.
    fail(&b).await;
    assert_eq!(b.state(), BreakerState::Closed);
    assert_eq!(b.consecutive_failures(), 1);
    ok(&b).await.unwrap();
    assert_eq!(b.consecutive_failures(), 0);
}

#[test]
fn names_configuration_and_errors() {
    assert_eq!(BreakerState::Closed.to_string(), "CLOSED");
    assert_eq!(BreakerState::Open.to_string(), "OPEN");
    assert_eq!(BreakerState::HalfOpen.to_string(), "HALF_OPEN");
    assert_eq!(BreakerState::Closed.metric_value(), 0.0);
    assert_eq!(BreakerState::Open.metric_value(), 1.0);
    assert_eq!(BreakerState::HalfOpen.metric_value(), 2.0);
    for s in [
        BreakerState::Closed,
        BreakerState::Open,
        BreakerState::HalfOpen,
    ] {
        assert_eq!(BreakerState::from_u8(s.metric_value() as u8), s);
    }

    let config = BreakerConfig::default()
        .with_failure_threshold(7)
        .with_open_timeout(Duration::from_secs(3));
    assert_eq!(config.failure_threshold, 7);
    assert_eq!(config.open_timeout, Duration::from_secs(3));
    let b = CircuitBreaker::builder("cfg").config(config).build();
    assert_eq!(b.config(), config);
    assert_eq!(b.name(), "cfg");
    let zero = CircuitBreaker::builder("z")
        .config(config.with_failure_threshold(0))
        .build();
    assert_eq!(zero.config().failure_threshold, 1, "at least one failure");
    let zero = CircuitBreaker::builder("z").failure_threshold(0).build();
    assert_eq!(zero.config().failure_threshold, 1);
    let d = CircuitBreaker::new("d").config();
    assert_eq!(
        (d.failure_threshold, d.open_timeout),
        (5, Duration::from_secs(30))
    );

    let inner: BreakerError<&str> = BreakerError::Inner("boom");
    assert!(!inner.is_open());
    assert_eq!(inner.into_inner(), Some("boom"));
    let open: BreakerError<&str> = BreakerError::Open(CircuitOpen {
        name: "x".into(),
        retry_after: Duration::ZERO,
    });
    assert!(open.is_open());
    assert_eq!(open.into_inner(), None);
    assert!(!BreakerError::<&str>::TimedOut.is_open());
    assert_eq!(BreakerError::<&str>::TimedOut.into_inner(), None);
}

/// The state gauge and the transition counter follow every change.
#[test]
fn metrics_follow_the_state() {
    let recorder = ordersys_testkit::MetricsRecorder::default();
    let state = [("breaker", "m")];
    let moved = |from, to, reason| {
        recorder.counter(
            "resilience_breaker_transitions_total",
            &[
                ("breaker", "m"),
                ("from", from),
                ("to", to),
                ("reason", reason),
            ],
        )
    };
    metrics::with_local_recorder(&recorder, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let b = CircuitBreaker::builder("m").failure_threshold(1).build();
            assert_eq!(
                recorder.gauge("resilience_breaker_state", &state),
                Some(0.0)
            );
            assert_eq!(
                moved("CLOSED", "OPEN", "failures"),
                Some(0),
                "the counter exists before the first opening"
            );
            fail(&b).await;
            assert_eq!(
                recorder.gauge("resilience_breaker_state", &state),
                Some(1.0)
            );
            assert_eq!(moved("CLOSED", "OPEN", "failures"), Some(1));
            tokio::time::advance(Duration::from_secs(30)).await;
            let trial = b.try_acquire().unwrap();
            assert_eq!(
                recorder.gauge("resilience_breaker_state", &state),
                Some(2.0)
            );
            assert_eq!(moved("OPEN", "HALF_OPEN", "open_timeout"), Some(1));
            trial.success();
            assert_eq!(
                recorder.gauge("resilience_breaker_state", &state),
                Some(0.0)
            );
            assert_eq!(moved("HALF_OPEN", "CLOSED", "trial_succeeded"), Some(1));
            assert_eq!(moved("CLOSED", "OPEN", "failures"), Some(1));
        });
    });
}

#[tokio::test(start_paused = true)]
async fn classifier_decides_what_counts() {
    let (b, _) = breaker_with_log(2);
    for _ in 0..5 {
        let r = b
            .call_classified(
                || async { Err::<(), _>("not found") },
                |e| *e != "not found",
            )
            .await;
        assert!(!r.unwrap_err().is_open());
    }
    assert_eq!(b.state(), BreakerState::Closed);
}

type ReasonLog = Arc<Mutex<Vec<TransitionReason>>>;

fn breaker_with_reasons(open: Duration) -> (CircuitBreaker, ReasonLog) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let l = log.clone();
    let b = CircuitBreaker::builder("health")
        .failure_threshold(1)
        .open_timeout(open)
        .on_transition(move |t| l.lock().unwrap().push(t.reason))
        .build();
    (b, log)
}

/// A downstream that reports healthy ends the open state at once; the trial decides,
/// and a failed trial waits a full timeout again (a stale "healthy" does not skip it).
#[tokio::test(start_paused = true)]
async fn a_healthy_report_makes_the_next_call_the_trial_at_once() {
    let (b, log) = breaker_with_reasons(Duration::from_secs(30));
    b.recovered(); // CLOSED: nothing to do
    fail(&b).await;
    tokio::time::advance(Duration::from_secs(2)).await;
    assert!(
        ok(&b).await.unwrap_err().is_open(),
        "open, nothing reported yet"
    );
    b.recovered();
    assert!(
        !fail(&b).await.is_open(),
        "the trial ran at once (and failed)"
    );
    assert_eq!(b.state(), BreakerState::Open);
    tokio::time::advance(Duration::from_secs(29)).await;
    assert!(
        ok(&b).await.unwrap_err().is_open(),
        "a failed trial: a full timeout"
    );
    b.recovered();
    ok(&b).await.unwrap();
    assert_eq!(b.state(), BreakerState::Closed);
    use TransitionReason::*;
    assert_eq!(
        *log.lock().unwrap(),
        vec![Failures, Healthy, TrialFailed, Healthy, TrialSucceeded]
    );
}

/// `watch_health` probes only while the breaker is OPEN, about once per period, and
/// turns a healthy answer into the trial; the breaker stays OPEN while the probe says
/// no. Without it the breaker would stay open for the whole 30 s.
#[tokio::test(start_paused = true)]
async fn watch_health_probes_while_open_and_recovers_when_the_probe_answers() {
    use std::sync::atomic::{AtomicBool, AtomicUsize};
    let (b, log) = breaker_with_reasons(Duration::from_secs(30));
    let (probes, up) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let (p, u) = (probes.clone(), up.clone());
    let task = b.watch_health(Duration::from_secs(1), move || {
        p.fetch_add(1, Ordering::SeqCst);
        let up = u.load(Ordering::SeqCst);
        async move { up }
    });
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(probes.load(Ordering::SeqCst), 0, "no probe while CLOSED");
    fail(&b).await;
    tokio::time::sleep(Duration::from_millis(5_500)).await;
    let n = probes.load(Ordering::SeqCst);
    assert!(
        (4..=6).contains(&n),
        "about one probe a second while OPEN: {n}"
    );
    assert!(ok(&b).await.unwrap_err().is_open(), "the probe said down");
    up.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    ok(&b).await.unwrap();
    assert_eq!(b.state(), BreakerState::Closed);
    assert_eq!(
        log.lock().unwrap()[1],
        TransitionReason::Healthy,
        "recovered by the probe, long before the 30 s timeout"
    );
    drop(b);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(task.is_finished(), "the task ends with the breaker");
}

/// A probe that hangs counts as "down" and does not stall the watcher.
#[tokio::test(start_paused = true)]
async fn a_hanging_probe_is_down() {
    let (b, _) = breaker_with_reasons(Duration::from_secs(30));
    let _task = b.watch_health(Duration::from_secs(1), std::future::pending::<bool>);
    fail(&b).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(ok(&b).await.unwrap_err().is_open());
    tokio::time::advance(Duration::from_secs(20)).await;
    ok(&b).await.unwrap();
}

#[test]
fn a_transition_reason_prints_as_its_label() {
    for (reason, label) in [
        (TransitionReason::Failures, "failures"),
        (TransitionReason::OpenTimeout, "open_timeout"),
        (TransitionReason::Healthy, "healthy"),
        (TransitionReason::TrialSucceeded, "trial_succeeded"),
        (TransitionReason::TrialFailed, "trial_failed"),
        (TransitionReason::TrialAbandoned, "trial_abandoned"),
    ] {
        assert_eq!(reason.as_str(), label);
        assert_eq!(reason.to_string(), label);
    }
}

/// One bad replica of three behind a balancer: every third call fails, never two in a
/// row. Consecutive failures never open the breaker; a failure rate of 30 % does.
#[tokio::test(start_paused = true)]
async fn a_failure_rate_opens_on_failures_that_never_come_in_a_row() {
    let reasons = Arc::new(Mutex::new(Vec::new()));
    let r = reasons.clone();
    let rated = CircuitBreaker::builder("rated")
        .failure_threshold(5)
        .failure_rate(30, Duration::from_secs(10), 9)
        .on_transition(move |t| r.lock().unwrap().push(t.reason))
        .build();
    let (plain, _) = breaker_with_log(5);
    for i in 0..8 {
        for b in [&rated, &plain] {
            if i % 3 == 2 {
                fail(b).await;
            } else {
                ok(b).await.unwrap();
            }
        }
        tokio::time::advance(Duration::from_millis(100)).await;
    }
    assert_eq!(
        rated.state(),
        BreakerState::Closed,
        "8 calls: under the minimum"
    );
    fail(&rated).await; // the 9th call: 3 of 9 failed, 33 %
    fail(&plain).await;
    assert_eq!(rated.state(), BreakerState::Open);
    assert_eq!(*reasons.lock().unwrap(), [TransitionReason::FailureRate]);
    assert_eq!(plain.state(), BreakerState::Closed, "never 5 in a row");

    // Closed again by a trial, it starts a new window: one failure is not 30 % of one
    // call's worth of history before the minimum is reached.
    rated.recovered();
    ok(&rated).await.unwrap();
    assert_eq!(rated.state(), BreakerState::Closed);
    fail(&rated).await;
    assert_eq!(
        rated.state(),
        BreakerState::Closed,
        "the old window was cleared"
    );
}

#[tokio::test(start_paused = true)]
async fn failures_older_than_the_window_do_not_count() {
    let b = CircuitBreaker::builder("aging")
        .failure_threshold(100)
        .failure_rate(50, Duration::from_secs(10), 4)
        .build();
    fail(&b).await;
    fail(&b).await;
    fail(&b).await;
    tokio::time::advance(Duration::from_secs(12)).await;
    ok(&b).await.unwrap();
    ok(&b).await.unwrap();
    ok(&b).await.unwrap();
    fail(&b).await; // 1 of 4 in the window: the three old failures left it
    assert_eq!(b.state(), BreakerState::Closed);
    assert_eq!(
        b.config().failure_rate,
        Some(FailureRate::new(50, Duration::from_secs(10), 4))
    );
    let config = BreakerConfig::default().with_failure_rate(FailureRate::new(
        50,
        Duration::from_secs(10),
        4,
    ));
    assert_eq!(
        config.failure_rate,
        Some(FailureRate::new(50, Duration::from_secs(10), 4))
    );
    assert_eq!(
        CircuitBreaker::builder("c").config(config).build().config(),
        config
    );
}
