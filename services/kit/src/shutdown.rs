//! The process shutdown signal.

use tokio::sync::watch;

/// Resolves on Ctrl-C or SIGTERM — and, when `ORDERSYS_STDIN_LIFELINE=1`, when standard
/// input reaches end-of-file (test harnesses use this so that services never outlive
/// the process that started them).
pub async fn signal() {
    let lifeline = async {
        if std::env::var("ORDERSYS_STDIN_LIFELINE").as_deref() == Ok("1") {
            // A plain thread, not tokio's blocking pool: a read of stdin cannot be
            // cancelled, and the runtime waits for its blocking tasks when it shuts down —
            // a SIGTERM would then never finish stopping the process while stdin is open.
            let (eof, at_eof) = tokio::sync::oneshot::channel::<()>();
            std::thread::spawn(move || {
                use std::io::Read;
                let mut buf = [0u8; 64];
                let mut stdin = std::io::stdin();
                while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
                let _ = eof.send(());
            });
            let _ = at_eof.await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
        () = lifeline => {},
    }
}

/// A shutdown that many tasks can wait for.
#[derive(Debug, Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

/// Triggers a [`Shutdown`].
#[derive(Debug)]
pub struct Trigger(watch::Sender<bool>);

impl Trigger {
    /// Tell every waiter to stop.
    pub fn fire(&self) {
        self.0.send_replace(true);
    }
}

impl Shutdown {
    /// A new shutdown and its trigger.
    pub fn new() -> (Trigger, Self) {
        let (tx, rx) = watch::channel(false);
        (Trigger(tx), Self { rx })
    }

    /// Resolves once triggered.
    pub async fn wait(mut self) {
        let _ = self.rx.wait_for(|s| *s).await;
    }

    /// Whether it has been triggered.
    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow()
    }
}

/// Wait for `shutdown` or for any task to end; then stop everything (`trigger`) and
/// wait for all tasks. A task that ends early (or fails) is an error: the process
/// should exit and be restarted rather than limp on without, say, its consumer.
pub async fn supervise(
    mut tasks: tokio::task::JoinSet<anyhow::Result<()>>,
    shutdown: impl std::future::Future<Output = ()>,
    trigger: Trigger,
) -> anyhow::Result<()> {
    let mut first_error = None;
    tokio::select! {
        () = shutdown => {
            tracing::info!("получен сигнал остановки, завершаем работу");
        }
        Some(done) = tasks.join_next() => {
            let err = match done {
                Ok(Ok(())) => anyhow::anyhow!("a service task stopped unexpectedly"),
                Ok(Err(e)) => e,
                Err(e) => anyhow::anyhow!("a service task panicked: {e}"),
            };
            tracing::error!(error = %err, "задача сервиса завершилась, останавливаем сервис");
            first_error = Some(err);
        }
    }
    trigger.fire();
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, "ошибка при остановке задачи");
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(anyhow::anyhow!("a service task panicked: {e}"));
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}
