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
    // Cached: the same behaviour from memory, loaded from the table, written through.
    let cached = SqliteBlacklist::cached(pool.clone()).await.unwrap();
    blacklist_all(&cached).await;
    assert!(cached.is_revoked("kept").await.unwrap(), "not loaded");
    cached
        .revoke("through", std::time::Duration::from_secs(60))
        .await
        .unwrap();
    assert!(
        SqliteBlacklist::new(pool.clone())
            .is_revoked("through")
            .await
            .unwrap(),
        "a cached revocation was not written to the table"
    );
    // Answered from memory: a row deleted behind its back does not change its answer
    // (the reason it must be the file's only writer), and a clone shares the memory.
    sqlx::query("DELETE FROM revoked_tokens")
        .execute(&pool)
        .await
        .unwrap();
    assert!(cached.clone().is_revoked("through").await.unwrap());
    pool.close().await;
    let _ = std::fs::remove_file(&path);
}

#[cfg(feature = "redis")]
mod redis_backend {
    use std::sync::Arc;
    use std::time::Duration;

    use authz::redis::{MirroredBlacklist, RedisBlacklist};
    use authz::{Authenticator, Blacklist, Clock, Error, SigningKey, TokenIssuer, TokenValidator};

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

    /// A revocation is announced on `{prefix}revoked` as `"{ttl secs} {jti}"` (what
    /// the mirrors of every gateway listen to), and only once for a token.
    #[tokio::test]
    async fn a_revocation_is_announced_on_the_prefix_channel() {
        let prefix = format!("test:{}:jwt:blacklist:", uuid::Uuid::new_v4().simple());
        let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into());
        let mut sub = redis::Client::open(url)
            .unwrap()
            .get_async_pubsub()
            .await
            .unwrap();
        sub.subscribe(format!("{prefix}revoked")).await.unwrap();
        let blacklist = RedisBlacklist::new(redis().await).with_prefix(&prefix);
        blacklist
            .revoke("jti-1", Duration::from_secs(90))
            .await
            .unwrap();
        blacklist
            .revoke("jti-1", Duration::from_secs(30))
            .await
            .unwrap();
        blacklist
            .revoke("jti-2", Duration::from_secs(5))
            .await
            .unwrap();
        use futures::StreamExt;
        let mut messages = sub.on_message();
        let mut seen = Vec::new();
        for _ in 0..2 {
            let m = tokio::time::timeout(Duration::from_secs(5), messages.next())
                .await
                .expect("an announcement")
                .unwrap();
            seen.push((
                m.get_channel_name().to_owned(),
                m.get_payload::<String>().unwrap(),
            ));
        }
        let channel = format!("{prefix}revoked");
        assert_eq!(
            seen,
            [
                (channel.clone(), "90 jti-1".to_owned()),
                (channel, "5 jti-2".to_owned())
            ],
            "the shorter second revocation of jti-1 changed nothing and said nothing"
        );
    }

    /// A Redis of the test's own that it can kill, killed on drop (so a failing
    /// assertion does not orphan it).
    struct OwnRedis {
        child: std::process::Child,
        port: u16,
    }

    impl OwnRedis {
        fn start(port: Option<u16>) -> Self {
            let port = port.unwrap_or_else(|| {
                std::net::TcpListener::bind("127.0.0.1:0")
                    .unwrap()
                    .local_addr()
                    .unwrap()
                    .port()
            });
            let child = std::process::Command::new("redis-server")
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
            Self { child, port }
        }

        fn client(&self) -> redis::Client {
            redis::Client::open(format!("redis://127.0.0.1:{}/", self.port)).unwrap()
        }

        async fn conn(&self) -> redis::aio::ConnectionManager {
            let client = self.client();
            for _ in 0..100 {
                if let Ok(c) = client.get_connection_manager().await {
                    return c;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("the test's redis-server did not start");
        }

        fn kill(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    impl Drop for OwnRedis {
        fn drop(&mut self) {
            self.kill();
        }
    }

    fn shared_client() -> redis::Client {
        let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into());
        redis::Client::open(url).unwrap()
    }

    async fn until_live(mirror: &MirroredBlacklist) {
        ordersys_testkit::eventually("the mirror to go live", Duration::from_secs(10), || async {
            mirror.is_live().then_some(())
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_mirror_loads_follows_and_answers_from_memory() {
        let prefix = format!("test:{}:jwt:blacklist:", uuid::Uuid::new_v4().simple());
        let mut conn = redis().await;
        let plain = RedisBlacklist::new(conn.clone()).with_prefix(&prefix);
        // Revoked before the mirror exists: loaded when it connects.
        plain
            .revoke("before", Duration::from_secs(60))
            .await
            .unwrap();
        let mirror = RedisBlacklist::new(conn.clone())
            .with_prefix(&prefix)
            .mirrored(shared_client(), Duration::from_millis(100));
        until_live(&mirror).await;
        assert!(mirror.is_revoked("before").await.unwrap());
        assert!(!mirror.is_revoked("never").await.unwrap());
        // Revoked elsewhere afterwards: announced on the channel.
        plain
            .revoke("after", Duration::from_secs(60))
            .await
            .unwrap();
        ordersys_testkit::eventually(
            "the revocation to reach the mirror",
            Duration::from_secs(5),
            || async { mirror.is_revoked("after").await.unwrap().then_some(()) },
        )
        .await;
        // Answered from memory: the key gone from Redis behind its back, still revoked.
        let _: () = redis::cmd("DEL")
            .arg(format!("{prefix}after"))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(!plain.is_revoked("after").await.unwrap());
        assert!(mirror.is_live() && mirror.is_revoked("after").await.unwrap());
        // And it behaves as a blacklist.
        super::blacklist_all(&mirror).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_mirror_without_its_subscription_asks_redis() {
        let prefix = format!("test:{}:jwt:blacklist:", uuid::Uuid::new_v4().simple());
        let conn = redis().await;
        // The subscription goes to a port nobody listens on: never live.
        let nowhere = OwnRedis::start(None);
        let client = nowhere.client();
        drop(nowhere);
        let mirror = RedisBlacklist::new(conn.clone())
            .with_prefix(&prefix)
            .mirrored(client, Duration::from_millis(100));
        RedisBlacklist::new(conn)
            .with_prefix(&prefix)
            .revoke("elsewhere", Duration::from_secs(60))
            .await
            .unwrap();
        assert!(!mirror.is_live());
        assert!(mirror.is_revoked("elsewhere").await.unwrap(), "asked Redis");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_mirror_that_loses_redis_stops_answering_from_memory_and_comes_back() {
        let mut server = OwnRedis::start(None);
        let port = server.port;
        let conn = server.conn().await;
        let key = SigningKey::hs256(b"0123456789abcdef0123456789abcdef-test").unwrap();
        let token = TokenIssuer::new(key.clone(), "ordersys", "api")
            .issue("u1")
            .unwrap();
        let mirror =
            RedisBlacklist::new(conn.clone()).mirrored(server.client(), Duration::from_millis(100));
        until_live(&mirror).await;
        let auth = Authenticator::new(
            TokenValidator::new(key.verifying_key(), "ordersys", "api"),
            Arc::new(mirror.clone()),
        );
        auth.authenticate(&token.token).await.unwrap();
        server.kill();
        ordersys_testkit::eventually("the mirror to notice", Duration::from_secs(10), || async {
            (!mirror.is_live()).then_some(())
        })
        .await;
        // Not live: it asks Redis, which is down — the authenticator fails closed.
        let err = auth.authenticate(&token.token).await.unwrap_err();
        assert!(matches!(err, Error::BlacklistUnavailable(_)), "{err:?}");
        // Redis back (empty, as a new server): the mirror reconnects and reloads.
        let back = OwnRedis::start(Some(port));
        let conn = back.conn().await;
        RedisBlacklist::new(conn)
            .revoke(&token.claims.jti, Duration::from_secs(60))
            .await
            .unwrap();
        until_live(&mirror).await;
        ordersys_testkit::eventually(
            "the token to be refused",
            Duration::from_secs(5),
            || async {
                matches!(auth.authenticate(&token.token).await, Err(Error::Revoked)).then_some(())
            },
        )
        .await;
        assert!(mirror.is_live());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_silent_subscription_is_noticed_by_the_heartbeat() {
        let server = OwnRedis::start(None);
        let mut conn = server.conn().await;
        let mirror =
            RedisBlacklist::new(conn.clone()).mirrored(server.client(), Duration::from_millis(100));
        until_live(&mirror).await;
        // The server stops taking writes (a stand-in for a link that stops carrying
        // anything without closing): no beat is published, none comes back.
        let _: () = redis::cmd("CLIENT")
            .arg("PAUSE")
            .arg(3000)
            .arg("WRITE")
            .query_async(&mut conn)
            .await
            .unwrap();
        ordersys_testkit::eventually(
            "the mirror to stop answering from memory",
            Duration::from_secs(2),
            || async { (!mirror.is_live()).then_some(()) },
        )
        .await;
        // (Lookups go to Redis meanwhile — and wait behind the unanswered beat, so an
        // authenticator fails closed until the server answers again.)
        // Writes back: live again.
        until_live(&mirror).await;
    }

    #[tokio::test]
    async fn redis_outage_fails_closed() {
        let mut server = OwnRedis::start(None);
        let conn = server.conn().await;
        let key = SigningKey::hs256(b"0123456789abcdef0123456789abcdef-test").unwrap();
        let token = TokenIssuer::new(key.clone(), "ordersys", "api")
            .issue("u1")
            .unwrap();
        let auth = Authenticator::new(
            TokenValidator::new(key.verifying_key(), "ordersys", "api"),
            Arc::new(RedisBlacklist::new(conn)),
        );
        auth.authenticate(&token.token).await.unwrap();
        server.kill();
        let err = auth.authenticate(&token.token).await.unwrap_err();
        assert!(matches!(err, Error::BlacklistUnavailable(_)), "{err:?}");
    }
}
