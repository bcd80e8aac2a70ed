//! MySQL connection helpers.

use std::str::FromStr;
use std::time::Duration;

use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::{ConnectOptions, Connection, MySqlPool};

/// Connect to `url`, creating its database first if it does not exist (so a fresh
/// server needs no manual setup). Retries for up to `wait` while the server is not up.
pub async fn connect(url: &str, max_connections: u32, wait: Duration) -> anyhow::Result<MySqlPool> {
    let opts = MySqlConnectOptions::from_str(url)?;
    crate::retry::until_up(
        "db_connect",
        wait,
        "база данных недоступна, повтор подключения",
        || try_connect(&opts, max_connections),
    )
    .await
}

async fn try_connect(
    opts: &MySqlConnectOptions,
    max_connections: u32,
) -> anyhow::Result<MySqlPool> {
    if let Some(db) = opts.get_database() {
        anyhow::ensure!(
            db.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
            "database name {db:?} must be [A-Za-z0-9_]"
        );
        let mut admin = opts.clone().database("").connect().await?;
        sqlx::query(&format!("CREATE DATABASE IF NOT EXISTS `{db}`"))
            .execute(&mut admin)
            .await?;
        let _ = admin.close().await;
    }
    Ok(MySqlPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(opts.clone())
        .await?)
}

/// Open (creating if missing) a SQLite database from a `sqlite://path` URL — WAL journal,
/// 5 s busy timeout — for the embedded mode.
///
/// `SQLITE_POOL_SIZE` (default 1): connections per database file. SQLite has one writer
/// per file; with one connection, writers queue in the pool (woken the moment the
/// previous unit of work ends) instead of in SQLite's busy handler, which sleeps between
/// tries — 16 clients got 3× the orders per second of an 8-connection pool.
/// `SQLITE_SYNCHRONOUS` (`full`, the default, or `normal`): with `full` every commit is
/// flushed to disk before it returns; with `normal` (WAL) a commit survives the process
/// being killed but not a power loss or OS crash, which can take back the last commits
/// of each file — and the files (orders, payments) are not flushed together.
/// `SQLITE_GROUP_COMMIT` (default 64): how many units of work queued behind each other
/// may share one `COMMIT` (one disk flush; each still returns only once committed —
/// `outbox::sqlite::SqliteTx`); `1`: every unit commits alone.
pub async fn connect_sqlite(url: &str) -> anyhow::Result<sqlx::SqlitePool> {
    let sync = match std::env::var("SQLITE_SYNCHRONOUS").as_deref() {
        Err(_) | Ok("" | "full") => sqlx::sqlite::SqliteSynchronous::Full,
        Ok("normal") => sqlx::sqlite::SqliteSynchronous::Normal,
        Ok(other) => anyhow::bail!("SQLITE_SYNCHRONOUS must be full or normal, not {other:?}"),
    };
    open_sqlite(url, sync).await
}

/// A SQLite database that only ever holds a cache — what a power loss may take back
/// costs a fast path, never correctness (the idempotency keys in front of a unique key
/// of the real data): `synchronous = NORMAL` whatever `SQLITE_SYNCHRONOUS` says, so its
/// commits survive the process being killed but wait for no disk.
pub async fn connect_sqlite_cache(url: &str) -> anyhow::Result<sqlx::SqlitePool> {
    open_sqlite(url, sqlx::sqlite::SqliteSynchronous::Normal).await
}

async fn open_sqlite(
    url: &str,
    sync: sqlx::sqlite::SqliteSynchronous,
) -> anyhow::Result<sqlx::SqlitePool> {
    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .ok_or_else(|| anyhow::anyhow!("not a sqlite URL: {url}"))?;
    if let Some(dir) = std::path::Path::new(path).parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir)?;
        }
    }
    owner_only(path)?;
    let opts = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(sync)
        .busy_timeout(Duration::from_secs(5));
    let group: usize = match std::env::var("SQLITE_GROUP_COMMIT") {
        Err(_) => outbox::sqlite::MAX_GROUP,
        Ok(v) => match v.parse() {
            Ok(n) if n > 0 => n,
            _ => anyhow::bail!("SQLITE_GROUP_COMMIT must be a positive number, not {v:?}"),
        },
    };
    let size: u32 = match std::env::var("SQLITE_POOL_SIZE") {
        Err(_) => 1,
        Ok(v) => match v.parse() {
            Ok(n) if n > 0 => n,
            _ => anyhow::bail!("SQLITE_POOL_SIZE must be a positive number, not {v:?}"),
        },
    };
    let pool = SqlitePoolOptions::new()
        .max_connections(size)
        // A connection to a local file does not go stale: no ping (a round trip to the
        // connection's thread) before every transaction.
        .test_before_acquire(false)
        .connect_with(opts)
        .await?;
    outbox::sqlite::set_max_group(&pool, group);
    Ok(pool)
}

/// Make the database file at `path` readable and writable by its owner only (0600) —
/// created so if missing; SQLite gives its `-wal` and `-shm` files the database's mode
/// — and set those of an older run to 0600 too. The files hold password hashes, tokens'
/// revocations and money.
fn owner_only(path: &str) -> std::io::Result<()> {
    let path = path.split('?').next().unwrap_or(path);
    if path.is_empty() || path == ":memory:" {
        return Ok(());
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)?;
        for file in [
            path.to_owned(),
            format!("{path}-wal"),
            format!("{path}-shm"),
        ] {
            match std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                other => other?,
            }
        }
    }
    Ok(())
}

/// The idempotency keys of the service whose SQLite database `url` names, when there is
/// no Redis: a file of its own next to it (`…-idempotency.db`, see [`sibling_sqlite`]),
/// migrated. The keys are a fast path in front of a unique key of the real data, so the
/// file is a cache ([`connect_sqlite_cache`]), and its writes never queue behind the
/// service's own.
pub async fn sqlite_idempotency_keys(url: &str) -> anyhow::Result<sqlx::SqlitePool> {
    let keys = connect_sqlite_cache(&sibling_sqlite(url, "idempotency")).await?;
    outbox::sqlite::migrate(&keys).await?;
    Ok(keys)
}

/// [`sqlite_idempotency_keys`] as a store whose lookups of completed keys
/// ([`completed`](outbox::idempotency::IdempotencyStore::completed)) read on connections
/// of their own ([`connect_sqlite_readers`]): a handler asking inside its unit of work
/// waits neither for the keys' writes queued on the one writing connection nor for the
/// file's writer.
pub async fn sqlite_idempotency_store(
    url: &str,
) -> anyhow::Result<outbox::sqlite::SqliteIdempotencyStore> {
    let keys = sqlite_idempotency_keys(url).await?;
    let readers = connect_sqlite_readers(&sibling_sqlite(url, "idempotency")).await?;
    Ok(outbox::sqlite::SqliteIdempotencyStore::new(keys).with_readers(readers))
}

/// Read-only connections (`SQLITE_READERS`, default 2) to the SQLite database `url`
/// names, for reads outside transactions: in WAL mode a reader sees every committed
/// write and never waits for the writer, nor it for them. Open the writing pool
/// ([`connect_sqlite`]) first — it creates the file and switches it to WAL.
pub async fn connect_sqlite_readers(url: &str) -> anyhow::Result<sqlx::SqlitePool> {
    use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .ok_or_else(|| anyhow::anyhow!("not a sqlite URL: {url}"))?;
    let size: u32 = match std::env::var("SQLITE_READERS") {
        Err(_) => 2,
        Ok(v) => match v.parse() {
            Ok(n) if n > 0 => n,
            _ => anyhow::bail!("SQLITE_READERS must be a positive number, not {v:?}"),
        },
    };
    let opts = SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .busy_timeout(Duration::from_secs(5));
    Ok(SqlitePoolOptions::new()
        .max_connections(size)
        .test_before_acquire(false)
        .connect_with(opts)
        .await?)
}

/// Whether `url` names a SQLite database.
pub fn is_sqlite(url: &str) -> bool {
    url.starts_with("sqlite:")
}

/// A second SQLite file next to the one `url` names: `sqlite://data/payment.db` with
/// `"idempotency"` gives `sqlite://data/payment-idempotency.db`.
pub fn sibling_sqlite(url: &str, suffix: &str) -> String {
    match url.strip_suffix(".db") {
        Some(stem) => format!("{stem}-{suffix}.db"),
        None => format!("{url}-{suffix}"),
    }
}
