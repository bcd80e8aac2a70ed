//! Group commit of the SQLite unit of work (`outbox::sqlite::SqliteTx`): units queued
//! behind each other share one `COMMIT`, each commit returns once its writes are
//! committed, and a unit rolled back in the middle of a group takes only its own writes
//! with it.
#![cfg(feature = "sqlite")]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use outbox::conformance::sqlite::TempDbFile;
use outbox::sqlite::{begin, commit, SqliteTx};
use sqlx::SqlitePool;

/// One writer connection at `synchronous = FULL`, as the embedded services run it, and
/// a count of the `COMMIT`s it makes.
async fn writer() -> (SqlitePool, TempDbFile, Arc<AtomicUsize>) {
    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
    let file = TempDbFile::new("ordersys-group");
    let opts = SqliteConnectOptions::new()
        .filename(file.path())
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(sqlx::sqlite::SqliteSynchronous::Full);
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(opts)
        .await
        .unwrap();
    sqlx::query("CREATE TABLE t (n INTEGER PRIMARY KEY)")
        .execute(&pool)
        .await
        .unwrap();
    let commits = Arc::new(AtomicUsize::new(0));
    let c = commits.clone();
    let mut conn = pool.acquire().await.unwrap();
    conn.lock_handle().await.unwrap().set_commit_hook(move || {
        c.fetch_add(1, Ordering::SeqCst);
        true
    });
    drop(conn);
    (pool, file, commits)
}

async fn insert(tx: &mut SqliteTx, n: i64) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO t (n) VALUES (?)")
        .bind(n)
        .execute(&mut **tx)
        .await
        .map(drop)
}

async fn rows(pool: &SqlitePool) -> Vec<i64> {
    sqlx::query_scalar("SELECT n FROM t ORDER BY n")
        .fetch_all(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn units_queued_behind_each_other_commit_together() {
    let (pool, _file, commits) = writer().await;
    // Unit 0 holds the writer until all the others queue behind it.
    let mut first = begin(&pool).await.unwrap();
    insert(&mut first, 0).await.unwrap();
    let tasks: Vec<_> = (1..=40)
        .map(|n| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut tx = begin(&pool).await.unwrap();
                insert(&mut tx, n).await.unwrap();
                commit(tx).await.unwrap();
                // Acknowledged: on disk, visible to a reader on its own connection.
                let seen: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM t WHERE n = ?")
                    .bind(n)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
                assert_eq!(seen, 1, "unit {n} acknowledged but not committed");
            })
        })
        .collect();
    queued(&pool, 40).await;
    commit(first).await.unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(rows(&pool).await, (0..=40).collect::<Vec<_>>());
    let n = commits.load(Ordering::SeqCst);
    assert!(n < 10, "41 units took {n} commits: not grouped");
}

/// `set_max_group(pool, 2)`: five units queued behind each other commit as 2 + 2 + 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_holds_at_most_max_group_committed_units() {
    let (pool, _file, commits) = writer().await;
    outbox::sqlite::set_max_group(&pool, 2);
    let mut first = begin(&pool).await.unwrap();
    insert(&mut first, 1).await.unwrap();
    let mut tasks = Vec::new();
    for n in 2..=5 {
        let p = pool.clone();
        tasks.push(tokio::spawn(async move {
            let mut tx = begin(&p).await.unwrap();
            insert(&mut tx, n).await.unwrap();
            commit(tx).await.unwrap();
        }));
        queued(&pool, tasks.len()).await;
    }
    commit(first).await.unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(rows(&pool).await, [1, 2, 3, 4, 5]);
    assert_eq!(
        commits.load(Ordering::SeqCst),
        3,
        "groups of two: 2 + 2 + 1"
    );
}

/// Wait until `n` units wait for their turn on `pool`'s writer (queued behind the open
/// unit).
async fn queued(pool: &SqlitePool, n: usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while outbox::sqlite::writers_waiting(pool) < n {
        assert!(
            std::time::Instant::now() < deadline,
            "{n} units never queued"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unit_rolled_back_inside_a_group_takes_only_its_own_writes() {
    let (pool, _file, _) = writer().await;
    let mut first = begin(&pool).await.unwrap();
    insert(&mut first, 1).await.unwrap();
    let (pool2, pool3, pool4) = (pool.clone(), pool.clone(), pool.clone());
    let second = tokio::spawn(async move {
        let mut tx = begin(&pool2).await.unwrap();
        insert(&mut tx, 2).await.unwrap();
        commit(tx).await
    });
    let failing = tokio::spawn(async move {
        let mut tx = begin(&pool3).await.unwrap();
        insert(&mut tx, 3).await.unwrap();
        // A duplicate key: the statement fails and the unit is dropped (rolled back).
        assert!(insert(&mut tx, 1).await.is_err());
        drop(tx);
    });
    let dropped = tokio::spawn(async move {
        let mut tx = begin(&pool4).await.unwrap();
        insert(&mut tx, 4).await.unwrap();
        tx.rollback().await.unwrap();
    });
    queued(&pool, 3).await;
    commit(first).await.unwrap();
    second.await.unwrap().unwrap();
    failing.await.unwrap();
    dropped.await.unwrap();
    let mut tx = begin(&pool).await.unwrap();
    insert(&mut tx, 5).await.unwrap();
    commit(tx).await.unwrap();
    assert_eq!(rows(&pool).await, [1, 2, 5]);
}

/// Units in a fixed order behind an open one — rolled back, committed, dropped,
/// committed, rolled back: each later unit starts where the one before left the group
/// transaction, and the group — ended by a rolled-back unit — still commits once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn units_after_a_rolled_back_one_in_the_same_group_keep_their_writes() {
    let (pool, _file, commits) = writer().await;
    let mut first = begin(&pool).await.unwrap();
    insert(&mut first, 1).await.unwrap();
    let mut tasks = Vec::new();
    for (n, end) in [
        (2, "rollback"),
        (3, "commit"),
        (4, "drop"),
        (5, "commit"),
        (6, "rollback"),
    ] {
        let p = pool.clone();
        tasks.push(tokio::spawn(async move {
            let mut tx = begin(&p).await.unwrap();
            insert(&mut tx, n).await.unwrap();
            match end {
                "rollback" => tx.rollback().await.unwrap(),
                "drop" => drop(tx),
                _ => commit(tx).await.unwrap(),
            }
        }));
        // The writer's queue is first come, first served: this fixes the order.
        queued(&pool, tasks.len()).await;
    }
    commit(first).await.unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(rows(&pool).await, [1, 3, 5]);
    assert_eq!(
        commits.load(Ordering::SeqCst),
        1,
        "the group committed more than once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_unit_commits_at_once_and_a_dropped_one_leaves_nothing() {
    let (pool, _file, commits) = writer().await;
    let mut tx = begin(&pool).await.unwrap();
    insert(&mut tx, 1).await.unwrap();
    commit(tx).await.unwrap();
    assert_eq!(commits.load(Ordering::SeqCst), 1);
    let mut tx = begin(&pool).await.unwrap();
    insert(&mut tx, 2).await.unwrap();
    drop(tx);
    // The next unit runs on the same connection: the dropped one's transaction is gone.
    let mut tx = begin(&pool).await.unwrap();
    insert(&mut tx, 3).await.unwrap();
    commit(tx).await.unwrap();
    assert_eq!(rows(&pool).await, [1, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_group_transaction_is_lost_every_member_is_told_it_failed() {
    let (pool, _file, _) = writer().await;
    let mut first = begin(&pool).await.unwrap();
    insert(&mut first, 1).await.unwrap();
    let p = pool.clone();
    let breaker = tokio::spawn(async move {
        let mut tx = begin(&p).await.unwrap();
        insert(&mut tx, 2).await.unwrap();
        // A unit that ends the group transaction under everyone's feet.
        sqlx::query("ROLLBACK").execute(&mut *tx).await.unwrap();
        commit(tx).await
    });
    queued(&pool, 1).await;
    // The first unit hands the group on and waits for its COMMIT, which never comes.
    let first = commit(first).await;
    assert!(
        first.is_err(),
        "told committed, but its write was rolled back"
    );
    assert!(breaker.await.unwrap().is_err());
    assert_eq!(rows(&pool).await, Vec::<i64>::new());
    // The writer works again afterwards.
    let mut tx = begin(&pool).await.unwrap();
    insert(&mut tx, 3).await.unwrap();
    commit(tx).await.unwrap();
    assert_eq!(rows(&pool).await, [3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_caller_gives_up_still_ends_cleanly() {
    let (pool, _file, _) = writer().await;
    let mut tx = begin(&pool).await.unwrap();
    insert(&mut tx, 1).await.unwrap();
    // The caller is dropped right after its commit started (a client that hung up).
    tokio::select! {
        biased;
        _ = commit(tx) => panic!("a COMMIT does not finish within one poll"),
        () = std::future::ready(()) => {}
    }
    // The commit ran to its end: the next unit starts a transaction of its own and is
    // told the truth about it.
    let mut tx = begin(&pool).await.unwrap();
    insert(&mut tx, 2).await.unwrap();
    commit(tx).await.unwrap();
    assert_eq!(rows(&pool).await, [1, 2]);
}
