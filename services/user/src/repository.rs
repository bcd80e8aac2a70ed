//! Persistence of users: MySQL for the reference deployment, SQLite for the embedded mode.

use async_trait::async_trait;
use sqlx::{MySqlPool, Row};
use uuid::Uuid;

use crate::domain::{Email, User, UserId};

/// Repository failures.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    /// The e-mail address is taken.
    #[error("email already registered")]
    DuplicateEmail,
    /// The database failed.
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

/// Where users live.
#[async_trait]
pub trait UserRepository: Send + Sync {
    /// Insert a new user; [`RepoError::DuplicateEmail`] if the address is taken.
    async fn insert(&self, user: &User) -> Result<(), RepoError>;
    /// Find by address.
    async fn by_email(&self, email: &Email) -> Result<Option<User>, RepoError>;
    /// Find by id.
    async fn by_id(&self, id: UserId) -> Result<Option<User>, RepoError>;
}

/// The MySQL repository.
#[derive(Debug, Clone)]
pub struct MySqlUsers {
    pool: MySqlPool,
}

impl MySqlUsers {
    /// A repository over `pool`.
    pub fn new(pool: MySqlPool) -> Self {
        Self { pool }
    }

    /// Apply the service's migrations (coexisting with other crates' migrations in the
    /// same database, as the SDK's do).
    pub async fn migrate(&self) -> anyhow::Result<()> {
        let mut m = sqlx::migrate!("./migrations");
        m.set_ignore_missing(true);
        // Under the database's migration lock: replicas starting together take turns.
        Ok(outbox::mysql::migrate_all(&self.pool, &[m]).await?)
    }
}

fn decode<R: Row>(row: &R) -> Result<User, RepoError>
where
    for<'r> Vec<u8>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'c> &'c str: sqlx::ColumnIndex<R>,
{
    let id: Vec<u8> = row.try_get("id")?;
    let email: String = row.try_get("email")?;
    Ok(User {
        id: UserId(Uuid::from_slice(&id).map_err(|e| sqlx::Error::Decode(Box::new(e)))?),
        email: Email::parse(&email).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
        password_hash: row.try_get("password_hash")?,
        created_at: row.try_get("created_at_ms")?,
    })
}

/// The SQLite repository (embedded mode).
#[derive(Debug, Clone)]
pub struct SqliteUsers {
    pool: sqlx::SqlitePool,
}

impl SqliteUsers {
    /// A repository over `pool`.
    pub fn new(pool: sqlx::SqlitePool) -> Self {
        Self { pool }
    }

    /// Apply the service's SQLite migrations.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        let mut m = sqlx::migrate!("./migrations-sqlite");
        m.set_ignore_missing(true);
        m.run(&self.pool).await?;
        Ok(())
    }
}

macro_rules! sql_repository {
    ($name:ident) => {
        #[async_trait]
        impl UserRepository for $name {
            async fn insert(&self, user: &User) -> Result<(), RepoError> {
                let r = sqlx::query("INSERT INTO users (id, email, password_hash, created_at_ms) VALUES (?, ?, ?, ?)")
                    .bind(user.id.0.as_bytes().as_slice())
                    .bind(user.email.as_str())
                    .bind(&user.password_hash)
                    .bind(user.created_at)
                    .execute(&self.pool)
                    .await;
                match r {
                    Ok(_) => Ok(()),
                    Err(sqlx::Error::Database(d)) if d.is_unique_violation() => Err(RepoError::DuplicateEmail),
                    Err(e) => Err(e.into()),
                }
            }

            async fn by_email(&self, email: &Email) -> Result<Option<User>, RepoError> {
                let row = sqlx::query("SELECT id, email, password_hash, created_at_ms FROM users WHERE email = ?")
                    .bind(email.as_str())
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map(decode).transpose()
            }

            async fn by_id(&self, id: UserId) -> Result<Option<User>, RepoError> {
                let row = sqlx::query("SELECT id, email, password_hash, created_at_ms FROM users WHERE id = ?")
                    .bind(id.0.as_bytes().as_slice())
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map(decode).transpose()
            }
        }
    };
}

sql_repository!(MySqlUsers);
sql_repository!(SqliteUsers);
