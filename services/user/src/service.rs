//! Use cases: register, login, logout, get user.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use authz::{Authenticator, IssuedToken, TokenIssuer};

use crate::domain::{Email, Password, User, UserId, ValidationError};
use crate::repository::{RepoError, UserRepository};

/// Why a use case failed.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// Bad input.
    #[error(transparent)]
    Validation(#[from] ValidationError),
    /// The e-mail address is registered already.
    #[error("email already registered")]
    DuplicateEmail,
    /// Wrong e-mail or password (deliberately not saying which).
    #[error("invalid email or password")]
    InvalidCredentials,
    /// The presented token is not acceptable.
    #[error("invalid token: {0}")]
    Unauthenticated(authz::Error),
    /// No such user.
    #[error("user not found")]
    NotFound,
    /// Too many password hashes queued already (each argon2 run takes ≈ 19 MiB and a
    /// core for tens of milliseconds): try again shortly.
    #[error("too many logins and registrations at once")]
    Busy,
    /// A dependency (database, Redis) is down.
    #[error("dependency unavailable: {0}")]
    Unavailable(String),
    /// A bug or an impossible state.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<RepoError> for UserError {
    fn from(e: RepoError) -> Self {
        match e {
            RepoError::DuplicateEmail => Self::DuplicateEmail,
            RepoError::Db(e) => Self::Unavailable(e.to_string()),
        }
    }
}

/// The user service's logic.
#[derive(Clone)]
pub struct UserService {
    repo: Arc<dyn UserRepository>,
    issuer: TokenIssuer,
    auth: Authenticator,
    /// Verified against when the e-mail is unknown, so both paths cost one argon2 run.
    dummy_hash: Arc<String>,
    hashing: Arc<HashGate>,
}

/// Bounds argon2 work: `running` hashes at once (one per core), at most `queue` more
/// waiting; beyond that, [`UserError::Busy`] at once instead of a growing pile of
/// blocking threads and memory.
#[derive(Debug)]
pub struct HashGate {
    running: tokio::sync::Semaphore,
    waiting: std::sync::atomic::AtomicUsize,
    queue: usize,
}

impl HashGate {
    /// `running` hashes at once, `queue` more waiting.
    pub fn new(running: usize, queue: usize) -> Self {
        Self {
            running: tokio::sync::Semaphore::new(running.max(1)),
            waiting: std::sync::atomic::AtomicUsize::new(0),
            queue,
        }
    }

    /// One per core, and four per core waiting.
    pub fn per_core() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::new(cores, 4 * cores)
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, UserError> {
        use std::sync::atomic::Ordering;
        let permit = match self.running.try_acquire() {
            Ok(p) => p,
            Err(_) => {
                if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.queue {
                    self.waiting.fetch_sub(1, Ordering::SeqCst);
                    return Err(UserError::Busy);
                }
                let p = self.running.acquire().await;
                self.waiting.fetch_sub(1, Ordering::SeqCst);
                p.map_err(|e| UserError::Internal(e.to_string()))?
            }
        };
        let r = blocking(f).await;
        drop(permit);
        r
    }
}

impl std::fmt::Debug for UserService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserService").finish_non_exhaustive()
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn hash(password: &str) -> Result<String, UserError> {
    crate::passwords::hash(password.as_bytes()).map_err(|e| UserError::Internal(e.to_string()))
}

fn verify(password: &str, phc: &str) -> bool {
    crate::passwords::verify(password.as_bytes(), phc)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, UserError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| UserError::Internal(e.to_string()))
}

impl UserService {
    /// Assemble the service (computes the dummy hash once).
    pub async fn new(
        repo: Arc<dyn UserRepository>,
        issuer: TokenIssuer,
        auth: Authenticator,
    ) -> Result<Self, UserError> {
        let dummy_hash = blocking(|| hash("not-a-real-password-0000")).await??;
        Ok(Self {
            repo,
            issuer,
            auth,
            dummy_hash: Arc::new(dummy_hash),
            hashing: Arc::new(HashGate::per_core()),
        })
    }

    /// Use another bound on concurrent password hashing.
    pub fn with_hash_gate(mut self, gate: HashGate) -> Self {
        self.hashing = Arc::new(gate);
        self
    }

    /// Create an account.
    pub async fn register(&self, email: &str, password: &str) -> Result<User, UserError> {
        let email = Email::parse(email)?;
        let password = Password::new(password)?;
        // Cheap pre-check; the unique key is the guarantee.
        if self.repo.by_email(&email).await?.is_some() {
            return Err(UserError::DuplicateEmail);
        }
        let password_hash = self.hashing.run(move || hash(password.expose())).await??;
        let user = User {
            id: UserId::new(),
            email,
            password_hash,
            created_at: now_ms(),
        };
        self.repo.insert(&user).await?;
        tracing::info!(user_id = %user.id, "пользователь зарегистрирован");
        Ok(user)
    }

    /// Check credentials and issue a token.
    pub async fn login(&self, email: &str, password: &str) -> Result<IssuedToken, UserError> {
        // Malformed input gets the same answer as wrong credentials.
        let email = Email::parse(email).ok();
        let user = match &email {
            Some(e) => self.repo.by_email(e).await?,
            None => None,
        };
        let phc = user
            .as_ref()
            .map(|u| u.password_hash.clone())
            .unwrap_or_else(|| (*self.dummy_hash).clone());
        let pw = password.to_owned();
        let ok = self.hashing.run(move || verify(&pw, &phc)).await?;
        match user {
            Some(u) if ok => {
                let token = self
                    .issuer
                    .issue(u.id.to_string())
                    .map_err(|e| UserError::Internal(e.to_string()))?;
                tracing::info!(user_id = %u.id, jti = %token.claims.jti, "вход выполнен");
                Ok(token)
            }
            _ => {
                tracing::info!("неудачная попытка входа");
                Err(UserError::InvalidCredentials)
            }
        }
    }

    /// Revoke `token` for the rest of its life. Logging out twice is fine.
    pub async fn logout(&self, token: &str) -> Result<(), UserError> {
        let claims = match self.auth.authenticate(token).await {
            Ok(c) => c,
            Err(authz::Error::Revoked) => return Ok(()),
            Err(e @ authz::Error::BlacklistUnavailable(_)) => {
                return Err(UserError::Unavailable(e.to_string()))
            }
            Err(e) => return Err(UserError::Unauthenticated(e)),
        };
        self.auth
            .revoke(&claims)
            .await
            .map_err(|e| UserError::Unavailable(e.to_string()))?;
        tracing::info!(user_id = %claims.sub, jti = %claims.jti, "выход выполнен, токен отозван");
        Ok(())
    }

    /// The account behind `id`.
    pub async fn get(&self, id: &str) -> Result<User, UserError> {
        let id = UserId::parse(id)?;
        self.repo.by_id(id).await?.ok_or(UserError::NotFound)
    }

    /// Seconds until tokens issued now expire.
    pub fn token_ttl_secs(&self) -> i64 {
        self.issuer.ttl().as_secs() as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use authz::{MemoryBlacklist, SigningKey, TokenValidator};
    use std::sync::Mutex;

    /// A repository double with the real one's uniqueness rule.
    #[derive(Default)]
    struct Users(Mutex<Vec<User>>);

    #[async_trait]
    impl UserRepository for Users {
        async fn insert(&self, user: &User) -> Result<(), RepoError> {
            let mut v = self.0.lock().unwrap();
            if v.iter().any(|u| u.email == user.email) {
                return Err(RepoError::DuplicateEmail);
            }
            v.push(user.clone());
            Ok(())
        }
        async fn by_email(&self, email: &Email) -> Result<Option<User>, RepoError> {
            Ok(self
                .0
                .lock()
                .unwrap()
                .iter()
                .find(|u| &u.email == email)
                .cloned())
        }
        async fn by_id(&self, id: UserId) -> Result<Option<User>, RepoError> {
            Ok(self.0.lock().unwrap().iter().find(|u| u.id == id).cloned())
        }
    }

    async fn service() -> UserService {
        let key = SigningKey::hs256(b"0123456789abcdef0123456789abcdef-test").unwrap();
        let issuer = TokenIssuer::new(key.clone(), "ordersys", "api");
        let auth = Authenticator::new(
            TokenValidator::new(key.verifying_key(), "ordersys", "api"),
            Arc::new(MemoryBlacklist::new()),
        );
        UserService::new(Arc::new(Users::default()), issuer, auth)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn register_login_logout() {
        let s = service().await;
        let u = s
            .register("Bob@Example.com", "hunter2hunter2")
            .await
            .unwrap();
        assert_eq!(u.email.as_str(), "bob@example.com");
        assert!(u.password_hash.starts_with("$argon2id$"));
        assert!(matches!(
            s.register("bob@example.com", "another-password").await,
            Err(UserError::DuplicateEmail)
        ));

        let t = s.login("bob@example.com", "hunter2hunter2").await.unwrap();
        assert_eq!(t.claims.sub, u.id.to_string());
        s.auth.authenticate(&t.token).await.unwrap();
        s.logout(&t.token).await.unwrap();
        assert!(matches!(
            s.auth.authenticate(&t.token).await,
            Err(authz::Error::Revoked)
        ));
        s.logout(&t.token).await.unwrap(); // idempotent
        assert!(matches!(
            s.logout("garbage").await,
            Err(UserError::Unauthenticated(_))
        ));
    }

    #[tokio::test]
    async fn login_failures_look_alike() {
        let s = service().await;
        s.register("carol@example.com", "correct-horse")
            .await
            .unwrap();
        for (email, pw) in [
            ("carol@example.com", "wrong-horse"),
            ("nobody@example.com", "correct-horse"),
            ("not-an-email", "correct-horse"),
        ] {
            let err = s.login(email, pw).await.unwrap_err();
            assert!(matches!(err, UserError::InvalidCredentials), "{email}");
            assert_eq!(err.to_string(), "invalid email or password");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn password_hashing_is_bounded_and_sheds_load_beyond_its_queue() {
        use std::sync::atomic::Ordering;
        let gate = Arc::new(HashGate::new(1, 1));
        let (release, hold) = std::sync::mpsc::channel::<()>();
        // One hash running (held until released)…
        let running = {
            let g = gate.clone();
            tokio::spawn(async move { g.run(move || hold.recv().is_ok()).await })
        };
        while gate.running.available_permits() > 0 {
            tokio::task::yield_now().await;
        }
        // …one waiting…
        let queued = {
            let g = gate.clone();
            tokio::spawn(async move { g.run(|| true).await })
        };
        while gate.waiting.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        // …and the next is turned away at once.
        assert!(matches!(gate.run(|| true).await, Err(UserError::Busy)));
        release.send(()).unwrap();
        assert!(running.await.unwrap().unwrap());
        assert!(queued.await.unwrap().unwrap());
        // Room again.
        assert!(gate.run(|| true).await.unwrap());
        assert_eq!(
            tonic::Status::from(UserError::Busy).code(),
            tonic::Code::ResourceExhausted
        );
    }

    #[tokio::test]
    async fn validation_errors() {
        let s = service().await;
        assert!(matches!(
            s.register("bad", "long-enough-pw").await,
            Err(UserError::Validation(ValidationError::BadEmail))
        ));
        assert!(matches!(
            s.register("a@b.co", "short").await,
            Err(UserError::Validation(ValidationError::ShortPassword))
        ));
    }
}
