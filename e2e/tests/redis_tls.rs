//! The whole system on a Redis that speaks only TLS and requires client certificates
//! (`rediss://`, `REDIS_CA`/`REDIS_CERT`/`REDIS_KEY`): every service that uses Redis
//! reaches it, the gateway's revocation mirror follows the channel over TLS (also after
//! the server is killed and restarted), and what the services wrote is in that server.

use std::process::Command;
use std::time::Duration;

use ordersys_e2e::infra::{Daemon, Kind, Scratch};
use ordersys_e2e::{dev_certs, email, eventually, jti, Api, Options, System};

/// `redis-cli` over TLS with the development CA and the gateway's certificate.
fn redis_cli(port: u16, args: &[&str]) -> String {
    let certs = dev_certs();
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "--tls"])
        .arg("--cacert")
        .arg(certs.join("ca.pem"))
        .arg("--cert")
        .arg(certs.join("gateway.pem"))
        .arg("--key")
        .arg(certs.join("gateway.key"))
        .args(args)
        .output()
        .expect("redis-cli");
    assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_works_on_a_tls_only_redis_with_client_certificates() {
    let scratch = Scratch::new("redis-tls");
    let mut redis = Daemon::start(Kind::RedisTls, &scratch.0).unwrap();
    assert!(redis.url().starts_with("rediss://"));
    // The harness gives each service REDIS_CA and its own certificate for a rediss:// URL.
    let sys = System::start(Options {
        redis_url: Some(redis.url()),
        ..Options::default()
    })
    .await;
    let api = Api::new(&sys.base);
    let user = email();
    let token = api.signup(&user, "password-123").await;

    // An order goes through (the order and payment services use Redis too).
    let key = uuid::Uuid::new_v4().to_string();
    api.confirmed_order(&token, &key, 300).await;

    // Logout: the user service writes the revocation over TLS, the gateway's mirror
    // takes it from the channel (or asks Redis): the token is refused.
    let revoked = api.revoked_token(&user, "password-123").await;
    assert_eq!(api.me(&revoked).await, 401);
    assert_eq!(api.me(&token).await, 200);
    let key = |t: &str| format!("jwt:blacklist:{}", jti(t));
    assert_eq!(redis_cli(redis.port(), &["EXISTS", &key(&revoked)]), "1");
    assert_eq!(redis_cli(redis.port(), &["EXISTS", &key(&token)]), "0");
    // The rate limiter settles its counts there too.
    eventually(
        "rate-limit counters in Redis",
        Duration::from_secs(5),
        || {
            let port = redis.port();
            async move {
                let keys = redis_cli(port, &["--scan", "--pattern", "e2e:*:rate:*"]);
                (!keys.is_empty()).then_some(())
            }
        },
    )
    .await;
    // The gateway's subscription runs over TLS: a revocation announced on the channel
    // only (no key written, so asking Redis would not find it) is refused. (Announced
    // until heard: a message sent before the mirror (re)subscribed is not delivered.)
    let port = redis.port(); // the same after a restart
    let announced_only = |t: &str| {
        let message = format!("600 {}", jti(t));
        redis_cli(port, &["PUBLISH", "jwt:blacklist:revoked", &message]);
    };
    let heard = api.login(&user, "password-123").await;
    assert_eq!(api.me(&heard).await, 200);
    eventually(
        "the mirror to hear a revocation",
        Duration::from_secs(10),
        || {
            let t = heard.clone();
            let api = &api;
            announced_only(&t);
            async move { (api.me(&t).await == 401).then_some(()) }
        },
    )
    .await;

    // Killed and restarted: the mirror reconnects over TLS and reloads; the valid token
    // works again and the revocation (append-only file) still holds.
    redis.kill();
    eventually("the gateway to fail closed", Duration::from_secs(5), || {
        let t = token.clone();
        let api = &api;
        async move { (api.me(&t).await == 503).then_some(()) }
    })
    .await;
    redis.restart().unwrap();
    eventually(
        "the token to be accepted again",
        Duration::from_secs(30),
        || {
            let t = token.clone();
            let api = &api;
            async move { (api.me(&t).await == 200).then_some(()) }
        },
    )
    .await;
    assert_eq!(api.me(&revoked).await, 401);
    // ... and the new subscription hears the channel again.
    let later = api.login(&user, "password-123").await;
    eventually(
        "the resubscribed mirror to hear a revocation",
        Duration::from_secs(15),
        || {
            let t = later.clone();
            let api = &api;
            announced_only(&t);
            async move { (api.me(&t).await == 401).then_some(()) }
        },
    )
    .await;
    sys.stop().await;
}
