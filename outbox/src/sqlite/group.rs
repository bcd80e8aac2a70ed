//! Group commit for the SQLite unit of work: one writer transaction, one `COMMIT` — one
//! disk flush — for the units of work queued behind each other.
//!
//! SQLite has one writer per file. Units of work of one pool take turns on one
//! connection: the first opens the transaction (`BEGIN IMMEDIATE`); when it commits while
//! others wait for their turn, it does not `COMMIT` but hands the open transaction to the
//! next one and waits. Each later unit runs inside a savepoint of that transaction (its
//! rollback undoes only its own work; the unit handing on opens it for the next, in the
//! same round trip to the connection as its own release) and, at its commit, releases
//! the savepoint and hands on or — when nobody waits, or [`MAX_GROUP`] units wait for the flush — commits
//! the whole group. Every member's `commit` returns only after that `COMMIT` returned:
//! what a commit acknowledges is on disk exactly as before (at the file's `synchronous`
//! level), and a failed group `COMMIT` fails every member's commit (none of them took
//! effect).

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

use sqlx::pool::PoolConnection;
use sqlx::{Executor, Sqlite, SqliteConnection, SqlitePool};
use tokio::sync::{oneshot, Mutex as AsyncMutex, Notify, OwnedMutexGuard};

use crate::{Error, Result};

/// At most this many committed units wait for one group `COMMIT`, unless
/// [`set_max_group`] says otherwise for a pool.
pub const MAX_GROUP: usize = 64;

/// The writer of one pool: whose turn it is, and the group transaction if one is open.
struct Group {
    slot: Arc<AsyncMutex<Slot>>,
    /// Units (and flushes) waiting for their turn.
    waiting: AtomicUsize,
    /// The most committed units one `COMMIT` may wait for.
    max: AtomicUsize,
}

impl Default for Group {
    fn default() -> Self {
        Self {
            slot: Default::default(),
            waiting: AtomicUsize::new(0),
            max: AtomicUsize::new(MAX_GROUP),
        }
    }
}

/// Let at most `max` committed units of `pool` wait for one group `COMMIT` (default
/// [`MAX_GROUP`]); `1` (or `0`) turns group commit off for the pool: every unit commits
/// alone, as a plain transaction. Fewer per group: a commit waits for fewer others;
/// more: fewer disk flushes under load.
///
/// ```no_run
/// # async fn demo() -> outbox::Result<()> {
/// let pool = outbox::sqlite::connect("data/orders.db").await?;
/// outbox::sqlite::set_max_group(&pool, 16);
/// # Ok(()) }
/// ```
pub fn set_max_group(pool: &SqlitePool, max: usize) {
    group_of(pool).max.store(max.max(1), Ordering::SeqCst);
}

#[derive(Default)]
struct Slot {
    /// The connection while a group transaction is open on it.
    conn: Option<PoolConnection<Sqlite>>,
    /// A savepoint is open on it, fresh, for the next unit.
    savepoint: bool,
    /// Committed units waiting for the group's `COMMIT`.
    members: Vec<oneshot::Sender<std::result::Result<(), String>>>,
}

/// The writers, by pool (the address of the pool's shared connect options). An entry is
/// a few bytes and idle between units, so entries are never removed.
static GROUPS: LazyLock<Mutex<HashMap<usize, Arc<Group>>>> = LazyLock::new(Default::default);

fn group_of(pool: &SqlitePool) -> Arc<Group> {
    let key = Arc::as_ptr(&pool.connect_options()) as usize;
    let mut groups = GROUPS.lock().unwrap_or_else(|p| p.into_inner());
    groups.entry(key).or_default().clone()
}

/// How many units of work (and flushes) wait for their turn on `pool`'s writer right
/// now — the queue a group commit drains.
pub fn waiting(pool: &SqlitePool) -> usize {
    group_of(pool).waiting.load(Ordering::SeqCst)
}

/// Counts a waiter while it waits for its turn. A waiter that gives up before its turn
/// (its future dropped) may have been the one a finishing unit handed the group to:
/// it flushes the group instead.
struct Waiting {
    group: Arc<Group>,
    served: bool,
}

impl Waiting {
    fn new(group: &Arc<Group>) -> Self {
        group.waiting.fetch_add(1, Ordering::SeqCst);
        Self {
            group: group.clone(),
            served: false,
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.group.waiting.fetch_sub(1, Ordering::SeqCst);
        if !self.served {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(flush(self.group.clone()));
            }
        }
    }
}

/// Take a turn only to finish the group: commit it unless someone else waits.
async fn flush(group: Arc<Group>) {
    let guard = {
        let mut waiting = Waiting::new(&group);
        let guard = group.slot.clone().lock_owned().await;
        waiting.served = true;
        guard
    };
    finish(guard, &group).await;
}

/// The unit of work of the SQLite backends: statements run on it as on a
/// `SqliteConnection` (`&mut **tx` is one, as with a `sqlx::Transaction`); end it with
/// [`commit`](Self::commit) (or a store's `Transactional::commit`) — dropped, it is
/// rolled back. Units of one pool commit in groups (module docs of
/// [`sqlite`](crate::sqlite)).
pub struct SqliteTx {
    unit: Option<Unit>,
}

struct Unit {
    guard: OwnedMutexGuard<Slot>,
    group: Arc<Group>,
    /// It opened the group transaction (so it has no savepoint: until it hands on, the
    /// transaction is its own).
    first: bool,
    /// Signalled once the unit's commit succeeded.
    on_commit: Vec<Arc<Notify>>,
}

impl std::fmt::Debug for SqliteTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteTx")
            .field("open", &self.unit.is_some())
            .finish_non_exhaustive()
    }
}

fn storage(e: impl std::fmt::Display) -> Error {
    Error::storage(e.to_string())
}

impl Unit {
    fn conn(&mut self) -> &mut PoolConnection<Sqlite> {
        self.guard
            .conn
            .as_mut()
            .expect("a unit of work holds the group transaction's connection")
    }
}

impl Deref for SqliteTx {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        let unit = self.unit.as_ref().expect("unit of work still open");
        unit.guard.conn.as_ref().expect("connection held")
    }
}

impl DerefMut for SqliteTx {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        self.unit.as_mut().expect("unit of work still open").conn()
    }
}

/// Begin a unit of work on `pool` (see [`SqliteTx`]).
pub(crate) async fn begin(pool: &SqlitePool) -> Result<SqliteTx> {
    let group = group_of(pool);
    let mut guard = {
        let mut waiting = Waiting::new(&group);
        let guard = group.slot.clone().lock_owned().await;
        waiting.served = true;
        guard
    };
    if guard.conn.is_some() {
        // A group transaction is open: the unit before opened this one's savepoint in
        // it (`finish` never hands on without one), nothing to run.
        debug_assert!(guard.savepoint, "a group handed on without a savepoint");
        guard.savepoint = false;
        return Ok(SqliteTx::new(guard, group, false));
    }
    // Once it is this unit's turn, opening the group transaction runs to its end even if the caller gives
    // up half way (a dropped future must not leave the group transaction in between):
    // a unit opened for nobody is dropped, which rolls it back.
    let pool = pool.clone();
    tokio::spawn(open(guard, group, pool))
        .await
        .unwrap_or_else(|e| Err(Error::storage(format!("beginning a unit of work: {e}"))))
}

/// Open the group transaction, for its first unit.
async fn open(
    mut guard: OwnedMutexGuard<Slot>,
    group: Arc<Group>,
    pool: SqlitePool,
) -> Result<SqliteTx> {
    let mut conn = pool.acquire().await.map_err(storage)?;
    if let Err(e) = conn.execute("BEGIN IMMEDIATE").await {
        // Nothing was opened: the connection goes back as it came.
        return Err(storage(e));
    }
    guard.conn = Some(conn);
    Ok(SqliteTx::new(guard, group, true))
}

impl SqliteTx {
    fn new(guard: OwnedMutexGuard<Slot>, group: Arc<Group>, first: bool) -> Self {
        Self {
            unit: Some(Unit {
                guard,
                group,
                first,
                on_commit: Vec::new(),
            }),
        }
    }

    /// Signal `signal` (`notify_one`) once this unit's commit has succeeded — never on
    /// a rollback; the same signal given twice is signalled once.
    pub(crate) fn notify_on_commit(&mut self, signal: &Arc<Notify>) {
        let unit = self.unit.as_mut().expect("unit of work still open");
        if !unit.on_commit.iter().any(|s| Arc::ptr_eq(s, signal)) {
            unit.on_commit.push(signal.clone());
        }
    }

    /// Commit: returns once the unit's writes are committed (with the group it joined,
    /// see the module docs of [`sqlite`](crate::sqlite)). An error means none of them
    /// took effect.
    pub async fn commit(mut self) -> Result<()> {
        let Some(unit) = self.unit.take() else {
            return Ok(());
        };
        // Runs to its end even if the caller gives up waiting: the group's members
        // must all be told, and the transaction never left half way.
        tokio::spawn(commit_unit(unit))
            .await
            .unwrap_or_else(|e| Err(Error::storage(format!("committing a unit of work: {e}"))))
    }

    /// Roll back: none of the unit's writes take effect.
    pub async fn rollback(mut self) -> Result<()> {
        let Some(unit) = self.unit.take() else {
            return Ok(());
        };
        tokio::spawn(roll_back(unit))
            .await
            .unwrap_or_else(|e| Err(Error::storage(format!("rolling back a unit of work: {e}"))))
    }
}

impl Drop for SqliteTx {
    fn drop(&mut self) {
        let Some(mut unit) = self.unit.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    let _ = roll_back(unit).await;
                });
            }
            // No runtime left to roll back on: the connection is closed instead (its
            // open transaction dies with it), and the members waiting learn it failed.
            Err(_) => {
                unit.guard.savepoint = false;
                if let Some(mut conn) = unit.guard.conn.take() {
                    conn.close_on_drop();
                }
                for m in unit.guard.members.drain(..) {
                    let _ = m.send(Err("the unit of work was dropped without a runtime".into()));
                }
            }
        }
    }
}

async fn commit_unit(mut unit: Unit) -> Result<()> {
    let (tx, rx) = oneshot::channel();
    unit.guard.members.push(tx);
    if !unit.first {
        // Someone waits: open their savepoint in the same round trip (`finish` opens it
        // if the guess was wrong; an unused one is committed or rolled back with the
        // group).
        let sql = if hand_on(&unit.guard, &unit.group) {
            unit.guard.savepoint = true;
            "RELEASE ordersys_unit; SAVEPOINT ordersys_unit"
        } else {
            "RELEASE ordersys_unit"
        };
        if let Err(e) = unit.conn().execute(sql).await {
            // Tells every member, this unit too.
            fail(&mut unit.guard, &e).await;
            return Err(storage(e));
        }
    }
    finish(unit.guard, &unit.group).await;
    match rx.await {
        Ok(Ok(())) => {
            for signal in unit.on_commit {
                signal.notify_one();
            }
            Ok(())
        }
        Ok(Err(e)) => Err(Error::storage(e)),
        Err(_) => Err(Error::storage("the group commit was abandoned")),
    }
}

async fn roll_back(mut unit: Unit) -> Result<()> {
    if unit.first {
        // Its own transaction (nobody joined it yet): roll it all back.
        let result = unit.conn().execute("ROLLBACK").await;
        let mut conn = unit.guard.conn.take().expect("connection held");
        if result.is_err() {
            conn.close_on_drop();
        }
        return result.map(drop).map_err(storage);
    }
    // `ROLLBACK TO` leaves the savepoint open: fresh again, for the next unit.
    let result = unit.conn().execute("ROLLBACK TO ordersys_unit").await;
    unit.guard.savepoint = true;
    if let Err(e) = result {
        fail(&mut unit.guard, &e).await;
        return Err(storage(e));
    }
    finish(unit.guard, &unit.group).await;
    Ok(())
}

/// After a unit's turn: hand the open transaction on if someone waits and the group has
/// room, else commit the group and tell its members.
async fn finish(mut guard: OwnedMutexGuard<Slot>, group: &Group) {
    if guard.conn.is_none() {
        return;
    }
    if hand_on(&guard, group) {
        if !guard.savepoint {
            let opened = guard
                .conn
                .as_mut()
                .expect("open group")
                .execute("SAVEPOINT ordersys_unit")
                .await;
            if let Err(e) = opened {
                fail(&mut guard, &e).await;
                return;
            }
            guard.savepoint = true;
        }
        // The next unit takes the lock (a waiter that gives up flushes, see `flush`).
        return;
    }
    guard.savepoint = false;
    if guard.members.is_empty() {
        // Only rolled-back work in it: nothing to commit.
        let conn = guard.conn.as_mut().expect("open group");
        if conn.execute("ROLLBACK").await.is_err() {
            conn.close_on_drop();
        }
        guard.conn = None;
        return;
    }
    let result = guard
        .conn
        .as_mut()
        .expect("open group")
        .execute("COMMIT")
        .await;
    match result {
        Ok(_) => {
            guard.conn = None;
            for m in guard.members.drain(..) {
                let _ = m.send(Ok(()));
            }
        }
        Err(e) => fail(&mut guard, &e).await,
    }
}

/// Whether the group goes on to a waiting unit: someone waits, and it has room for
/// more committed units than it holds.
fn hand_on(slot: &Slot, group: &Group) -> bool {
    let room = slot.members.len() < group.max.load(Ordering::SeqCst);
    group.waiting.load(Ordering::SeqCst) > 0 && room
}

/// The group transaction failed: roll back what is left of it, close its connection
/// and fail every member waiting for it.
async fn fail(slot: &mut Slot, e: &sqlx::Error) {
    slot.savepoint = false;
    if let Some(mut conn) = slot.conn.take() {
        let _ = conn.execute("ROLLBACK").await;
        conn.close_on_drop();
    }
    let why = format!("the group commit failed: {e}");
    for m in slot.members.drain(..) {
        let _ = m.send(Err(why.clone()));
    }
}
