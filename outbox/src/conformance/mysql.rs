use std::str::FromStr;

use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::{ConnectOptions, Connection, MySqlPool};

/// The server tests run against: `DATABASE_URL`, else the local test server.
pub fn base_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into())
}

/// A database of its own for one test, migrated with the `outbox` tables.
/// Panics (never skips) when the server cannot be reached.
#[derive(Debug, Clone)]
pub struct TestDb {
    /// Pool on the new database.
    pub pool: MySqlPool,
    /// Its name.
    pub name: String,
}

impl TestDb {
    /// Create the database and run `outbox`'s migrations.
    pub async fn new() -> Self {
        let base = MySqlConnectOptions::from_str(&base_url()).expect("DATABASE_URL is a MySQL URL");
        let mut admin = base.connect().await.unwrap_or_else(|e| {
            panic!(
                "MySQL at {} is not reachable ({e}); run scripts/services-up",
                base_url()
            )
        });
        let name = format!("ordersys_t_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE DATABASE `{name}`"))
            .execute(&mut admin)
            .await
            .expect("create test database");
        let _ = admin.close().await;
        let pool = MySqlPoolOptions::new()
            .max_connections(8)
            .connect_with(base.database(&name))
            .await
            .expect("connect to test database");
        crate::mysql::migrate(&pool)
            .await
            .expect("outbox migrations");
        Self { pool, name }
    }

    /// Drop the database (call at the end of a passing test).
    pub async fn drop_db(self) {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS `{}`", self.name))
            .execute(&self.pool)
            .await;
        self.pool.close().await;
    }
}

/// A test that panics never reaches [`TestDb::drop_db`]: drop the database then
/// (on a thread of its own, as this may run inside a runtime).
impl Drop for TestDb {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                let Ok(opts) = MySqlConnectOptions::from_str(&base_url()) else {
                    return;
                };
                if let Ok(mut admin) = opts.connect().await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS `{name}`"))
                        .execute(&mut admin)
                        .await;
                    let _ = admin.close().await;
                }
            });
        })
        .join();
    }
}
