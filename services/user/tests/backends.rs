//! The user repository on both backends (real MariaDB, SQLite file), and the whole user
//! service on SQLite surviving a restart — the embedded mode's building block.

use std::time::Duration;

use ordersys_proto::user::v1::user_service_client::UserServiceClient;
use ordersys_proto::user::v1::{LoginRequest, LogoutRequest, RegisterRequest};
use ordersys_user::domain::{Email, User, UserId};
use ordersys_user::repository::{MySqlUsers, RepoError, SqliteUsers, UserRepository};
use ordersys_user::{Config, Listeners};

async fn contract(repo: &dyn UserRepository) {
    let email = Email::parse(&format!("u-{}@example.com", uuid::Uuid::new_v4().simple())).unwrap();
    let user = User {
        id: UserId::new(),
        email: email.clone(),
        password_hash: "$argon2id$x".into(),
        created_at: 1_700_000_000_000,
    };
    repo.insert(&user).await.unwrap();
    let again = User {
        id: UserId::new(),
        ..user.clone()
    };
    assert!(matches!(
        repo.insert(&again).await,
        Err(RepoError::DuplicateEmail)
    ));
    assert_eq!(repo.by_email(&email).await.unwrap(), Some(user.clone()));
    assert_eq!(repo.by_id(user.id).await.unwrap(), Some(user));
    assert_eq!(repo.by_id(UserId::new()).await.unwrap(), None);
}

/// A SQLite file of its own, deleted (with `-wal`/`-shm`) when dropped, also on panic.
fn temp_db() -> outbox::conformance::sqlite::TempDbFile {
    outbox::conformance::sqlite::TempDbFile::new("ordersys-user")
}

#[tokio::test]
async fn repository_contract_on_mysql_and_sqlite() {
    // A database of its own, dropped at the end — and if the test panics.
    let db = outbox::conformance::mysql::TestDb::new().await;
    let mysql = MySqlUsers::new(db.pool.clone());
    mysql.migrate().await.unwrap();
    contract(&mysql).await;
    db.drop_db().await;

    let file = temp_db();
    let pool = ordersys_kit::db::connect_sqlite(&file.url()).await.unwrap();
    let sqlite = SqliteUsers::new(pool.clone());
    sqlite.migrate().await.unwrap();
    contract(&sqlite).await;
    pool.close().await;
}

async fn start(
    db: &str,
) -> (
    String,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let config = Config {
        listen: ordersys_kit::config::Listen {
            grpc_addr: "127.0.0.1:0".into(),
            admin_addr: "127.0.0.1:0".into(),
        },
        stores: ordersys_kit::config::Stores {
            database_url: format!("sqlite://{db}").into(),
            redis_url: Default::default(),
        },
        jwt: ordersys_kit::config::Jwt::with_secret("embedded-test-secret-0123456789abcdef"),
        // In process, on 127.0.0.1: the test is about storage, not transport security.
        tls: ordersys_kit::tls::GrpcTls::loopback_plaintext(),
        ..Config::default()
    };
    let listeners = Listeners::bind(&config.listen.grpc_addr, &config.listen.admin_addr)
        .await
        .unwrap();
    let url = format!(
        "http://{}",
        listeners.grpc.as_ref().unwrap().local_addr().unwrap()
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(ordersys_user::run(config, listeners, async {
        let _ = stopped.await;
    }));
    (url, stop, task)
}

async fn client(url: &str) -> UserServiceClient<tonic::transport::Channel> {
    for _ in 0..100 {
        if let Ok(c) = UserServiceClient::connect(url.to_owned()).await {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("user service at {url} did not come up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_service_on_sqlite_keeps_users_and_revocations_across_a_restart() {
    let file = temp_db();
    let db = file.path().display().to_string();
    let creds = || RegisterRequest {
        email: "embedded@example.com".into(),
        password: "correct-horse".into(),
    };

    let (url, stop, task) = start(&db).await;
    let mut c = client(&url).await;
    c.register(creds()).await.unwrap();
    let token = c
        .login(LoginRequest {
            email: "embedded@example.com".into(),
            password: "correct-horse".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .access_token;
    c.logout(LogoutRequest {
        access_token: token.clone(),
    })
    .await
    .unwrap();
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();

    // Restarted on the same file: the account is there, the revocation too.
    let (url, stop, task) = start(&db).await;
    let mut c = client(&url).await;
    let dup = c.register(creds()).await.unwrap_err();
    assert_eq!(dup.code(), tonic::Code::AlreadyExists);
    c.login(LoginRequest {
        email: "embedded@example.com".into(),
        password: "correct-horse".into(),
    })
    .await
    .unwrap();
    let blacklist = authz::sqlite::SqliteBlacklist::new(
        ordersys_kit::db::connect_sqlite(&format!("sqlite://{db}"))
            .await
            .unwrap(),
    );
    let claims: serde_json::Value = {
        use base64::Engine;
        let payload = token.split('.').nth(1).unwrap();
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .unwrap(),
        )
        .unwrap()
    };
    let jti = claims["jti"].as_str().unwrap();
    assert!(
        authz::Blacklist::is_revoked(&blacklist, jti).await.unwrap(),
        "revocation lost on restart"
    );
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}
