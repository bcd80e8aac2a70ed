//! Redis [`Blacklist`]s (feature `redis`): `SET jwt:blacklist:{jti} 1 EX {ttl}` on
//! revoke (unless the entry already lives longer) and a message on the channel
//! `jwt:blacklist:revoked`; entries vanish when the token would have expired.
//!
//! - [`RedisBlacklist`] asks Redis (`EXISTS`) on every validation.
//! - [`MirroredBlacklist`] keeps the revoked set in memory — loaded on (re)connect, kept
//!   current by the channel — and answers without a round trip; while its subscription is
//!   not known to be working it asks Redis like [`RedisBlacklist`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

// Tokio's clock (the system's unless a test pauses it).
use tokio::time::Instant;

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::AsyncCommands as _;

use crate::{Blacklist, Error, Result};

/// Blacklist in Redis, shared by every instance that validates tokens.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let client = redis::Client::open("redis://127.0.0.1:6379/")?;
/// let blacklist = authz::redis::RedisBlacklist::new(client.get_connection_manager().await?);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisBlacklist {
    conn: ConnectionManager,
    prefix: String,
}

impl std::fmt::Debug for RedisBlacklist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBlacklist")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisBlacklist {
    /// Keys `jwt:blacklist:{jti}`.
    pub fn new(conn: ConnectionManager) -> Self {
        Self {
            conn,
            prefix: "jwt:blacklist:".into(),
        }
    }

    /// Use another key prefix (tests, several issuers on one Redis).
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }
}

/// `SET key 1 EX secs`, unless the key already lives longer: revoking twice keeps the
/// longer life (a second, shorter revocation must not bring a token back early). Then
/// `PUBLISH channel "{secs} {jti}"` for the mirrors ([`MirroredBlacklist`]).
static REVOKE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r#"
        local left = redis.call('PTTL', KEYS[1])
        if left == -1 or left >= tonumber(ARGV[1]) * 1000 then return 0 end
        redis.call('SET', KEYS[1], 1, 'EX', ARGV[1])
        redis.call('PUBLISH', ARGV[2], ARGV[1] .. ' ' .. ARGV[3])
        return 1
        "#,
    )
});

impl RedisBlacklist {
    /// The channel revocations are announced on: `{prefix}revoked`.
    fn channel(&self) -> String {
        format!("{}revoked", self.prefix)
    }
}

#[async_trait]
impl Blacklist for RedisBlacklist {
    async fn revoke(&self, jti: &str, ttl: Duration) -> Result<()> {
        // Whole seconds, rounded up, at least one: never shorter than asked.
        let secs = ttl.as_millis().div_ceil(1000).max(1) as u64;
        let mut conn = self.conn.clone();
        REVOKE
            .key(format!("{}{jti}", self.prefix))
            .arg(secs)
            .arg(self.channel())
            .arg(jti)
            .invoke_async::<i64>(&mut conn)
            .await
            .map(drop)
            .map_err(Error::blacklist)
    }

    async fn is_revoked(&self, jti: &str) -> Result<bool> {
        let mut conn = self.conn.clone();
        redis::cmd("EXISTS")
            .arg(format!("{}{jti}", self.prefix))
            .query_async::<bool>(&mut conn)
            .await
            .map_err(Error::blacklist)
    }
}

/// A [`Blacklist`] over Redis that answers from memory.
///
/// A background task subscribes to the revocation channel, then loads every revoked
/// `jti` (`SCAN` + `PTTL`) — subscribing first, so nothing revoked in between is missed —
/// and applies each announced revocation. Every `heartbeat` it publishes a beat on the
/// channel; the subscription counts as working once its first beat came back, and while
/// something (a beat or a revocation) comes through within three heartbeats and each
/// beat is accepted within one. While it works, [`is_revoked`](Blacklist::is_revoked)
/// is a memory lookup; otherwise — before the first load, after a disconnect, on a
/// silent subscription — it asks Redis (`EXISTS`), and the task reconnects and reloads.
///
/// **Consistency.** A revocation made anywhere (any [`RedisBlacklist`] or mirror on the
/// same Redis and prefix) reaches a working mirror with the channel's delivery, well
/// under a millisecond on one network; a revocation made through this value is applied
/// to it at once. A subscription that breaks silently is noticed within three
/// heartbeats — the longest a revoked token can still pass here.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// let client = redis::Client::open("redis://127.0.0.1:6379/")?;
/// let blacklist = authz::redis::RedisBlacklist::new(client.get_connection_manager().await?)
///     .mirrored(client, Duration::from_secs(1));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct MirroredBlacklist {
    redis: RedisBlacklist,
    mirror: Arc<Mirror>,
    _task: Arc<AbortOnDrop>,
}

impl std::fmt::Debug for MirroredBlacklist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MirroredBlacklist")
            .field("prefix", &self.redis.prefix)
            .field("live", &self.is_live())
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Mirror {
    /// The set below is complete and current.
    live: AtomicBool,
    /// Revoked `jti` → when its entry expires.
    revoked: RwLock<HashMap<String, Instant>>,
}

impl Mirror {
    fn insert(&self, jti: &str, until: Instant) {
        let mut map = self.revoked.write().unwrap_or_else(|p| p.into_inner());
        map.entry(jti.to_owned())
            .and_modify(|e| *e = (*e).max(until))
            .or_insert(until);
    }

    fn is_revoked(&self, jti: &str) -> bool {
        let map = self.revoked.read().unwrap_or_else(|p| p.into_inner());
        map.get(jti).is_some_and(|until| *until > Instant::now())
    }

    fn purge(&self) {
        let now = Instant::now();
        let mut map = self.revoked.write().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, until| *until > now);
    }

    fn set_live(&self, live: bool) {
        self.live.store(live, Ordering::Release);
        metrics::gauge!("authz_blacklist_mirror_live").set(if live { 1.0 } else { 0.0 });
    }
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl RedisBlacklist {
    /// Mirror this blacklist in memory (see [`MirroredBlacklist`]): `client` opens the
    /// subscription (the same server as this blacklist's connection), `heartbeat` is how
    /// often the subscription proves it works. Spawns the mirror's task: call it inside
    /// a Tokio runtime.
    pub fn mirrored(self, client: redis::Client, heartbeat: Duration) -> MirroredBlacklist {
        let mirror = Arc::new(Mirror::default());
        mirror.set_live(false);
        let task = tokio::spawn(keep_mirror(
            client,
            self.clone(),
            Arc::downgrade(&mirror),
            heartbeat.max(Duration::from_millis(10)),
        ));
        MirroredBlacklist {
            redis: self,
            mirror,
            _task: Arc::new(AbortOnDrop(task.abort_handle())),
        }
    }
}

impl MirroredBlacklist {
    /// Whether lookups are answered from memory (the subscription works and the set is
    /// loaded), rather than by Redis.
    pub fn is_live(&self) -> bool {
        self.mirror.live.load(Ordering::Acquire)
    }
}

#[async_trait]
impl Blacklist for MirroredBlacklist {
    async fn revoke(&self, jti: &str, ttl: Duration) -> Result<()> {
        self.redis.revoke(jti, ttl).await?;
        self.mirror.insert(jti, Instant::now() + ttl);
        Ok(())
    }

    async fn is_revoked(&self, jti: &str) -> Result<bool> {
        if self.is_live() {
            return Ok(self.mirror.is_revoked(jti));
        }
        self.redis.is_revoked(jti).await
    }
}

/// Keep `mirror` current until it is dropped: subscribe, load, follow; on any failure
/// mark it not live, wait a little and start over.
async fn keep_mirror(
    client: redis::Client,
    redis: RedisBlacklist,
    mirror: Weak<Mirror>,
    heartbeat: Duration,
) {
    let mut backoff = Backoff::default();
    loop {
        let started = Instant::now();
        let _ = follow(&client, &redis, &mirror, heartbeat).await;
        match mirror.upgrade() {
            Some(m) => m.set_live(false),
            None => return,
        }
        tokio::time::sleep(backoff.after(started.elapsed())).await;
    }
}

/// The wait before the mirror subscribes again: 100 ms, doubling up to 5 s after each
/// failure in a row; a subscription that held for more than 10 s starts over at 100 ms.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: Self::FIRST }
    }
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);
    /// A subscription that held this long was not part of a run of failures.
    const HELD: Duration = Duration::from_secs(10);

    /// The wait after a subscription that lasted `held`.
    fn after(&mut self, held: Duration) -> Duration {
        if held > Self::HELD {
            self.next = Self::FIRST;
        }
        let wait = self.next;
        self.next = (wait * 2).min(Self::MAX);
        wait
    }
}

async fn follow(
    client: &redis::Client,
    redis: &RedisBlacklist,
    mirror: &Weak<Mirror>,
    heartbeat: Duration,
) -> redis::RedisResult<()> {
    use futures_util::StreamExt as _;
    let channel = redis.channel();
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(&channel).await?;
    let mut messages = pubsub.into_on_message();
    // Subscribed: whatever is revoked from now on arrives as a message; load the rest.
    let mut conn = redis.conn.clone();
    let mut keys: Vec<String> = Vec::new();
    {
        let mut iter: redis::AsyncIter<'_, String> = conn
            .scan_match(format!("{}*", escape_glob(&redis.prefix)))
            .await?;
        while let Some(k) = iter.next_item().await {
            keys.push(k?);
        }
    }
    let now = Instant::now();
    for chunk in keys.chunks(500) {
        let mut pipe = redis::pipe();
        for k in chunk {
            pipe.cmd("PTTL").arg(k);
        }
        let ttls: Vec<i64> = pipe.query_async(&mut conn).await?;
        let Some(m) = mirror.upgrade() else {
            return Ok(());
        };
        for (k, ms) in chunk.iter().zip(ttls) {
            // No TTL (-1) or gone (-2): not a revocation of ours.
            if let Ok(ms) = u64::try_from(ms) {
                let jti = &k[redis.prefix.len()..];
                m.insert(jti, now + Duration::from_millis(ms));
            }
        }
    }
    // Live once a beat of our own came back through the channel: the subscription is
    // proven end to end, not just opened.
    let publish_beat = |mut conn: ConnectionManager| {
        let channel = channel.clone();
        async move {
            match tokio::time::timeout(
                heartbeat,
                redis::cmd("PUBLISH")
                    .arg(&channel)
                    .arg("beat")
                    .query_async::<i64>(&mut conn),
            )
            .await
            {
                Ok(r) => r.map(drop),
                Err(_) => Err(redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "heartbeat not acknowledged in time",
                ))),
            }
        }
    };
    publish_beat(conn.clone()).await?;
    let mut live = false;
    let mut last_heard = Instant::now();
    let mut beat = tokio::time::interval(heartbeat);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = messages.next() => {
                let Some(msg) = msg else {
                    return Ok(()); // disconnected
                };
                last_heard = Instant::now();
                let Some(m) = mirror.upgrade() else {
                    return Ok(());
                };
                let payload: String = msg.get_payload().unwrap_or_default();
                if let Some((secs, jti)) = payload.split_once(' ') {
                    if let Ok(secs) = secs.parse::<u64>() {
                        m.insert(jti, Instant::now() + Duration::from_secs(secs));
                    }
                }
                if !live {
                    live = true;
                    m.set_live(true);
                }
            }
            _ = beat.tick() => {
                let Some(m) = mirror.upgrade() else {
                    return Ok(());
                };
                if last_heard.elapsed() > heartbeat * 3 {
                    return Ok(()); // silent: start over
                }
                m.purge();
                // A beat that cannot be published within a heartbeat (a server that
                // stopped answering) ends this subscription too.
                publish_beat(conn.clone()).await?;
            }
        }
    }
}

/// `prefix` with the glob characters of `SCAN MATCH` escaped.
fn escape_glob(prefix: &str) -> String {
    let mut out = String::with_capacity(prefix.len());
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_resubscription_backoff_doubles_to_five_seconds_and_resets_after_a_long_hold() {
        let mut b = Backoff::default();
        let quick = Duration::from_millis(50);
        let waits: Vec<_> = (0..8).map(|_| b.after(quick).as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(
            b.after(Duration::from_secs(10)).as_millis(),
            5000,
            "10 s is not long"
        );
        assert_eq!(b.after(Duration::from_secs(11)).as_millis(), 100);
        assert_eq!(b.after(quick).as_millis(), 200);
    }

    /// A revocation answers up to the instant it ends, not at it.
    #[tokio::test(start_paused = true)]
    async fn the_mirror_answers_until_the_end() {
        let mirror = Mirror::default();
        mirror.insert("a", Instant::now() + Duration::from_secs(10));
        tokio::time::advance(Duration::from_secs(10) - Duration::from_millis(1)).await;
        assert!(mirror.is_revoked("a"));
        assert!(!mirror.is_revoked("b"));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!mirror.is_revoked("a"));
    }

    /// A purge drops the entries that have ended (one ending this instant included).
    #[tokio::test(start_paused = true)]
    async fn a_purge_drops_what_has_ended() {
        let mirror = Mirror::default();
        let now = Instant::now();
        mirror.insert("ends", now + Duration::from_secs(10));
        mirror.insert("stays", now + Duration::from_secs(11));
        tokio::time::advance(Duration::from_secs(10) - Duration::from_millis(1)).await;
        mirror.purge();
        assert_eq!(mirror.revoked.read().unwrap().len(), 2);
        tokio::time::advance(Duration::from_millis(1)).await;
        mirror.purge();
        let left: Vec<_> = mirror.revoked.read().unwrap().keys().cloned().collect();
        assert_eq!(left, ["stays"]);
    }

    /// The mirror keeps the later end of a token revoked twice, whatever the order.
    #[test]
    fn the_mirror_keeps_the_later_end() {
        let mirror = Mirror::default();
        let now = Instant::now();
        let (soon, later) = (now + Duration::from_secs(5), now + Duration::from_secs(50));
        mirror.insert("a", soon);
        mirror.insert("a", later);
        mirror.insert("b", later);
        mirror.insert("b", soon);
        let map = mirror.revoked.read().unwrap();
        assert_eq!((map["a"], map["b"]), (later, later));
    }
}

/// Unit tests against the test Redis (`make test-unit` skips `with_redis`).
#[cfg(test)]
mod with_redis {
    use super::*;

    /// A token this mirror revokes is in its memory as soon as `revoke` returns, for
    /// its whole TTL (read-your-writes: not waiting for the channel to echo it).
    #[tokio::test]
    async fn a_revocation_is_in_the_mirror_at_once() {
        let prefix = format!("test:{}:jwt:blacklist:", rand_suffix());
        let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into());
        let mirror = RedisBlacklist::new(ordersys_testkit::redis().await)
            .with_prefix(&prefix)
            .mirrored(redis::Client::open(url).unwrap(), Duration::from_secs(3600));
        mirror
            .revoke("mine", Duration::from_secs(60))
            .await
            .unwrap();
        let until = mirror.mirror.revoked.read().unwrap()["mine"];
        assert!(until > Instant::now() + Duration::from_secs(59));
    }

    /// Dropping the last handle of a mirror ends its subscription at once, not at its
    /// next heartbeat.
    #[tokio::test]
    async fn dropping_the_mirror_unsubscribes_at_once() {
        let mut conn = ordersys_testkit::redis().await;
        let prefix = format!("test:{}:jwt:blacklist:", rand_suffix());
        let channel = format!("{prefix}revoked");
        let subscribers = |mut conn: ConnectionManager, channel: String| async move {
            let (_, n): (String, i64) = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(&channel)
                .query_async(&mut conn)
                .await
                .unwrap();
            n
        };
        let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into());
        let mirror = RedisBlacklist::new(conn.clone())
            .with_prefix(&prefix)
            .mirrored(redis::Client::open(url).unwrap(), Duration::from_secs(3600));
        ordersys_testkit::eventually("the mirror to subscribe", Duration::from_secs(5), || {
            let (conn, channel) = (conn.clone(), channel.clone());
            async move { (subscribers(conn, channel).await == 1).then_some(()) }
        })
        .await;
        drop(mirror);
        ordersys_testkit::eventually("the subscription to end", Duration::from_secs(5), || {
            let (conn, channel) = (conn.clone(), channel.clone());
            async move { (subscribers(conn, channel).await == 0).then_some(()) }
        })
        .await;
        let _: () = redis::cmd("PING").query_async(&mut conn).await.unwrap();
    }

    fn rand_suffix() -> String {
        format!(
            "{:x}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        )
    }
}
