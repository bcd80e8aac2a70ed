//! The process shutdown signal.

use tokio::sync::watch;

/// Resolves on Ctrl-C or SIGTERM — and, when `ORDERSYS_STDIN_LIFELINE=1`, when standard
/// input reaches end-of-file (test harnesses use this so that services never outlive
/// the process that started them).
pub async fn signal() {
    let lifeline = async {
        if std::env::var("ORDERSYS_STDIN_LIFELINE").as_deref() == Ok("1") {
            use tokio::io::AsyncReadExt;
            let mut stdin = tokio::io::stdin();
            let mut buf = [0u8; 64];
            while let Ok(n) = stdin.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
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
