//! Blacklist backends against the conformance suite: memory, and Redis for real
//! (`REDIS_URL`, default the local server; see scripts/services-up).

use authz::conformance::blacklist_all;
use authz::MemoryBlacklist;

#[tokio::test(start_paused = true)]
async fn memory_blacklist_conformance() {
    blacklist_all(&MemoryBlacklist::new()).await;
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_blacklist_conformance_and_restart() {
    use authz::sqlite::{migrate, SqliteBlacklist};
    use authz::Blacklist;
    use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
    let path =
        std::env::temp_dir().join(format!("ordersys-bl-{}.db", uuid::Uuid::new_v4().simple()));
    let open = || {
        let opts = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true);
        SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
    };
    let pool = open().await.unwrap();
    migrate(&pool).await.unwrap();
    blacklist_all(&SqliteBlacklist::new(pool.clone())).await;
    SqliteBlacklist::new(pool.clone())
        .revoke("kept", std::time::Duration::from_secs(60))
        .await
        .unwrap();
    pool.close().await;
    let pool = open().await.unwrap();
    assert!(
        SqliteBlacklist::new(pool.clone())
            .is_revoked("kept")
            .await
            .unwrap(),
        "revocation lost on restart"
    );
    pool.close().await;
    let _ = std::fs::remove_file(&path);
}

#[cfg(feature = "redis")]
mod redis_backend {
    use std::sync::Arc;
    use std::time::Duration;

    use authz::redis::RedisBlacklist;
    use authz::{Authenticator, Clock, Error, SigningKey, TokenIssuer, TokenValidator};

    use ordersys_testkit::redis;

    #[tokio::test]
    async fn redis_blacklist_conformance() {
        let prefix = format!("test:{}:jwt:blacklist:", uuid::Uuid::new_v4().simple());
        super::blacklist_all(&RedisBlacklist::new(redis().await).with_prefix(prefix)).await;
    }

    #[tokio::test]
    async fn logout_sets_the_spec_key_for_the_remaining_lifetime() {
        let mut conn = redis().await;
        let key = SigningKey::hs256(b"0123456789abcdef0123456789abcdef-test").unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        // Issued 300 s ago with a 900 s TTL: 600 s left.
        let token = TokenIssuer::new(key.clone(), "ordersys", "api")
            .with_clock(Clock::fixed(now - 300))
            .issue("u1")
            .unwrap();
        let auth = Authenticator::new(
            TokenValidator::new(key.verifying_key(), "ordersys", "api")
                .with_leeway(Duration::from_secs(30)),
            Arc::new(RedisBlacklist::new(conn.clone())),
        );
        auth.authenticate(&token.token).await.unwrap();
        auth.revoke(&token.claims).await.unwrap();
        let redis_key = format!("jwt:blacklist:{}", token.claims.jti);
        let ttl: i64 = redis::cmd("TTL")
            .arg(&redis_key)
            .query_async(&mut conn)
            .await
            .unwrap();
        // 600 s remaining + 30 s leeway + 1 s rounding.
        assert!((628..=631).contains(&ttl), "TTL {ttl}");
        let value: String = redis::cmd("GET")
            .arg(&redis_key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(value, "1");
        assert!(matches!(
            auth.authenticate(&token.token).await,
            Err(Error::Revoked)
        ));
        let _: () = redis::cmd("DEL")
            .arg(&redis_key)
            .query_async(&mut conn)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn redis_outage_fails_closed() {
        // A Redis of our own that we can kill.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // Killed on drop, so a failing assertion below does not orphan it.
        struct KillOnDrop(std::process::Child);
        impl Drop for KillOnDrop {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let server = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server on PATH");
        let mut server = KillOnDrop(server);
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
        let mut conn = None;
        for _ in 0..100 {
            if let Ok(c) = client.get_connection_manager().await {
                conn = Some(c);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let key = SigningKey::hs256(b"0123456789abcdef0123456789abcdef-test").unwrap();
        let token = TokenIssuer::new(key.clone(), "ordersys", "api")
            .issue("u1")
            .unwrap();
        let auth = Authenticator::new(
            TokenValidator::new(key.verifying_key(), "ordersys", "api"),
            Arc::new(RedisBlacklist::new(conn.expect("test redis started"))),
        );
        auth.authenticate(&token.token).await.unwrap();
        server.0.kill().unwrap();
        server.0.wait().unwrap();
        let err = auth.authenticate(&token.token).await.unwrap_err();
        assert!(matches!(err, Error::BlacklistUnavailable(_)), "{err:?}");
    }
}
