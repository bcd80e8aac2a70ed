//! The whole system on a Redis that requires a user and password — the deployments'
//! users exactly (`scripts/redis-acl`, which the compose deployment's ACL file comes
//! from): every service reaches it as `ordersys`, the gateway's revocation mirror
//! subscribes to its channel; a client without the password can neither read nor delete
//! a revocation, and the services' user cannot run the dangerous commands.

use std::process::Command;
use std::time::Duration;

use ordersys_e2e::infra::{Daemon, Kind, Scratch, REDIS_ACL_PASSWORD};
use ordersys_e2e::{email, eventually, jti, Api, Options, System};

/// `redis-cli` as `user` (with `password`), or as nobody; what it printed (Redis error
/// replies included: the tool exits 0 on them).
fn redis_cli(port: u16, login: Option<(&str, &str)>, args: &[&str]) -> String {
    let mut c = Command::new("redis-cli");
    c.args(["-h", "127.0.0.1", "-p", &port.to_string()]);
    if let Some((user, password)) = login {
        c.args(["--user", user]).env("REDISCLI_AUTH", password);
    }
    let out = c.args(args).output().expect("redis-cli");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    text.trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_works_as_its_redis_user_and_nobody_else_gets_in() {
    let scratch = Scratch::new("redis-acl");
    let redis = Daemon::start(Kind::RedisAcl, &scratch.0).unwrap();
    let port = redis.port();
    let services = Some(("ordersys", REDIS_ACL_PASSWORD));
    let sys = System::start(Options {
        redis_url: Some(redis.url()),
        ..Options::default()
    })
    .await;
    let api = Api::new(&sys.base);
    let user = email();
    let token = api.signup(&user, "password-123").await;

    // An order goes through, and its Idempotency-Key answers the same order again (the
    // order service keeps the keys and its cache in Redis).
    let key = uuid::Uuid::new_v4().to_string();
    let id = api.confirmed_order(&token, &key, 250).await;
    let again = api.post_order(&token, &key, 250).await;
    assert_eq!(
        (again.status, again.body["order_id"].as_str()),
        (201, Some(id.as_str()))
    );

    // A logout revokes in Redis; the token is refused, the live one is not.
    let revoked = api.revoked_token(&user, "password-123").await;
    assert_eq!(api.me(&revoked).await, 401);
    assert_eq!(api.me(&token).await, 200);
    let revocation = format!("jwt:blacklist:{}", jti(&revoked));
    assert_eq!(redis_cli(port, services, &["EXISTS", &revocation]), "1");

    // The mirror's subscription works under the user's channel rights: a revocation
    // announced on the channel only is refused.
    let heard = api.login(&user, "password-123").await;
    eventually(
        "the mirror to hear a revocation",
        Duration::from_secs(10),
        || {
            let t = heard.clone();
            let api = &api;
            let message = format!("600 {}", jti(&t));
            redis_cli(
                port,
                services,
                &["PUBLISH", "jwt:blacklist:revoked", &message],
            );
            async move { (api.me(&t).await == 401).then_some(()) }
        },
    )
    .await;

    // Without the password: nothing — not reading a revocation, not deleting one (which
    // would un-revoke the token), not a ping.
    for args in [
        vec!["PING"],
        vec!["EXISTS", &revocation],
        vec!["DEL", &revocation],
    ] {
        let got = redis_cli(port, None, &args);
        assert!(got.contains("NOAUTH"), "{args:?} without a password: {got}");
    }
    let wrong = redis_cli(port, Some(("ordersys", "guess")), &["PING"]);
    assert!(wrong.contains("WRONGPASS"), "{wrong}");
    assert_eq!(redis_cli(port, services, &["EXISTS", &revocation]), "1");
    assert_eq!(api.me(&revoked).await, 401);
    // The services' user cannot wipe or reconfigure the server.
    for args in [
        vec!["FLUSHALL"],
        vec!["CONFIG", "SET", "appendonly", "no"],
        vec!["KEYS", "*"],
    ] {
        let got = redis_cli(port, services, &args);
        assert!(got.contains("NOPERM"), "{args:?} as ordersys: {got}");
    }
    // The exporter reads the server's state and writes nothing.
    let exporter = format!("{REDIS_ACL_PASSWORD}-exporter");
    let exporter = Some(("exporter", exporter.as_str()));
    assert!(redis_cli(port, exporter, &["INFO", "server"]).contains("redis_version"));
    let got = redis_cli(port, exporter, &["DEL", &revocation]);
    assert!(got.contains("NOPERM"), "DEL as exporter: {got}");
    sys.stop().await;
}
