//! Where the gateway keeps revoked tokens and rate-limit counters (Redis, or in process
//! for the one-process system), and how it reaches the services (gRPC, or in process).

use std::sync::Arc;
use std::time::Duration;

use authz::redis::RedisBlacklist;
use authz::Blacklist;
use ordersys_kit::local_grpc::LocalGrpc;
use resilience::rate_limit::{BatchedRedisRateLimiter, RedisRateLimiter};
use resilience::RateLimiter;

use crate::Config;

/// Where the gateway keeps revoked tokens and rate-limit counters.
pub struct Backends {
    /// Revoked tokens (shared with the user service).
    pub blacklist: Arc<dyn Blacklist>,
    /// Per-client counters.
    pub limiter: Arc<dyn RateLimiter>,
    /// Per-account login attempts (`LOGIN_ATTEMPTS_PER_ACCOUNT`).
    pub login_limiter: Arc<dyn RateLimiter>,
    /// Redis, when used (for the readiness check).
    pub redis: Option<redis::aio::ConnectionManager>,
    /// The services in this process, called without a socket (the one-process system);
    /// `None`: over gRPC at the configured URLs.
    pub in_process: Option<InProcess>,
}

/// The three services' in-process gRPC (see [`ordersys_kit::local_grpc`]).
#[derive(Debug, Clone, Default)]
pub struct InProcess {
    /// The user service.
    pub user: LocalGrpc,
    /// The order service.
    pub order: LocalGrpc,
    /// The payment service.
    pub payment: LocalGrpc,
}

impl std::fmt::Debug for Backends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backends").finish_non_exhaustive()
    }
}

impl Backends {
    /// Redis for both (`REDIS_URL`): every gateway instance shares them. The blacklist
    /// is mirrored in memory unless `BLACKLIST_HEARTBEAT_MS` is 0
    /// ([`authz::redis::MirroredBlacklist`]); the rate limit is decided in process and
    /// settled in batches unless `RATE_LIMIT_SETTLE_MS` is 0
    /// ([`BatchedRedisRateLimiter`]).
    pub async fn redis(config: &Config) -> anyhow::Result<Self> {
        let client = ordersys_kit::redis_client::client(&config.redis_url)?;
        let conn = client.get_connection_manager().await?;
        let (limit, minute) = (config.rate_limit_per_minute, Duration::from_secs(60));
        let limiter: Arc<dyn RateLimiter> = match config.rate_limit_settle_ms {
            0 => Arc::new(
                RedisRateLimiter::new(conn.clone(), limit, minute)
                    .with_prefix(config.rate_limit_key_prefix.clone()),
            ),
            ms => Arc::new(
                BatchedRedisRateLimiter::new(conn.clone(), limit, minute)
                    .with_prefix(config.rate_limit_key_prefix.clone())
                    .start(Duration::from_millis(ms)),
            ),
        };
        let blacklist: Arc<dyn Blacklist> = match config.blacklist_heartbeat_ms {
            0 => Arc::new(RedisBlacklist::new(conn.clone())),
            ms => Arc::new(
                RedisBlacklist::new(conn.clone()).mirrored(client, Duration::from_millis(ms)),
            ),
        };
        // Shared by every gateway (one Redis counter per account and window): a guesser
        // spreading over the gateways is counted once.
        let login_limiter: Arc<dyn RateLimiter> = Arc::new(
            RedisRateLimiter::new(
                conn.clone(),
                config.login_attempts_per_account,
                Duration::from_secs(config.login_window_secs.max(1)),
            )
            .with_prefix(format!("{}login:", config.rate_limit_key_prefix)),
        );
        Ok(Self {
            blacklist,
            limiter,
            login_limiter,
            redis: Some(conn),
            in_process: None,
        })
    }

    /// A given blacklist and an in-process limiter (the embedded mode: one gateway).
    pub fn local(config: &Config, blacklist: Arc<dyn Blacklist>) -> Self {
        Self {
            blacklist,
            limiter: Arc::new(resilience::MemoryRateLimiter::new(
                config.rate_limit_per_minute,
                Duration::from_secs(60),
            )),
            login_limiter: Arc::new(resilience::MemoryRateLimiter::new(
                config.login_attempts_per_account,
                Duration::from_secs(config.login_window_secs.max(1)),
            )),
            redis: None,
            in_process: None,
        }
    }

    /// Call the services in this process instead of over the network.
    pub fn in_process(mut self, services: InProcess) -> Self {
        self.in_process = Some(services);
        self
    }
}
