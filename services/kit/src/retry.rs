//! Waiting for a dependency at start-up, with the SDK's [`resilience::Retry`].

use std::future::Future;
use std::time::Duration;

use resilience::{Retry, RetryError};

/// Call `attempt` every half second (±10 %) until it succeeds or `wait` has passed,
/// logging each failure with `what` (e.g. "база данных недоступна, повтор
/// подключения"); the error of the last attempt if none succeeded. For what a service
/// needs before it can serve: its database, its broker's topics.
pub async fn until_up<F, Fut, T>(
    name: &'static str,
    wait: Duration,
    what: &'static str,
    mut attempt: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let every = Duration::from_millis(500);
    let policy = Retry::new()
        .named(name)
        .max_attempts(u32::MAX)
        .base_delay(every)
        .multiplier(1)
        .max_delay(every)
        .jitter(0.1)
        .deadline(wait);
    let result = policy
        .call(|| {
            let fut = attempt();
            async move {
                fut.await
                    .inspect_err(|e| tracing::warn!(error = %e, "{what}"))
            }
        })
        .await;
    result.map_err(|e| match e {
        RetryError::Failed { error, .. } => error,
        RetryError::DeadlineExceeded {
            last: Some(error), ..
        } => error,
        other => anyhow::anyhow!("{name}: {other}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn retries_until_the_dependency_is_up() {
        let calls = AtomicU32::new(0);
        let v = until_up("test", Duration::from_secs(30), "down", || {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                anyhow::ensure!(n >= 3, "not yet");
                Ok(n)
            }
        })
        .await
        .unwrap();
        assert_eq!(v, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_with_the_last_error_after_the_wait() {
        let started = tokio::time::Instant::now();
        let err = until_up("test", Duration::from_secs(2), "down", || async {
            anyhow::bail!("still down") as anyhow::Result<()>
        })
        .await
        .unwrap_err();
        assert_eq!(err.to_string(), "still down");
        assert!(
            started.elapsed() <= Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        // It gives up when the next wait (500 ms ± 10 %, so at most 550 ms) would pass
        // the deadline: never earlier than 2 s - 550 ms.
        assert!(
            started.elapsed() >= Duration::from_millis(1450),
            "{:?}",
            started.elapsed()
        );
    }
}
