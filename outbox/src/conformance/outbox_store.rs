//! The [`OutboxStore`] contract.

use std::future::Future;
use std::time::Duration;

use crate::store::OutboxStore;
use crate::MessageId;

use super::{enqueue_committed, msg};

/// Run every outbox-store check, each on a fresh store from `fresh`.
pub async fn outbox_store_all<S, F, Fut>(fresh: F)
where
    S: OutboxStore,
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
{
    rollback_enqueues_nothing(&fresh().await).await;
    claim_leases_in_order_and_round_trips_fields(&fresh().await).await;
    per_key_order_across_relays(&fresh().await).await;
    failure_counts_attempts_and_releases(&fresh().await).await;
    failed_message_holds_back_its_key_only(&fresh().await).await;
    expired_lease_is_reclaimed(&fresh().await).await;
    own_lease_is_reclaimed_after_restart(&fresh().await).await;
    purge_removes_only_old_sent(&fresh().await).await;
}

/// The same message enqueued twice is [`Error::Conflict`](crate::Error::Conflict) (its
/// id is taken), not a storage error. Not part of [`outbox_store_all`]: the memory
/// outbox applies enqueues at commit and may take a repeated id as the same message.
pub async fn enqueueing_twice_is_a_conflict<S: OutboxStore>(store: &S) {
    let msg = msg("t", "k", 1);
    enqueue_committed(store, vec![msg.clone()]).await;
    let mut tx = store.begin().await.unwrap();
    let again = store.enqueue(&mut tx, msg).await;
    assert!(
        matches!(again, Err(crate::Error::Conflict(_))),
        "a repeated id must be a conflict: {again:?}"
    );
}

/// An enqueue that fails for another reason — the storage broken by `break_storage`
/// (say, its table dropped) — is an error but never [`Error::Conflict`](crate::Error::Conflict):
/// a caller must not take it for "already enqueued".
pub async fn a_failed_enqueue_is_not_a_conflict<S, F>(store: &S, break_storage: F)
where
    S: OutboxStore,
    F: Future<Output = ()>,
{
    break_storage.await;
    let mut tx = store.begin().await.unwrap();
    let broken = store.enqueue(&mut tx, msg("t", "k", 2)).await;
    assert!(
        matches!(broken, Err(ref e) if !matches!(e, crate::Error::Conflict(_))),
        "a broken write must be an error other than a conflict: {broken:?}"
    );
}

/// A unit of work that is dropped leaves nothing in the outbox.
pub async fn rollback_enqueues_nothing<S: OutboxStore>(store: &S) {
    let mut tx = store.begin().await.unwrap();
    store.enqueue(&mut tx, msg("t", "k", 1)).await.unwrap();
    drop(tx);
    let claimed = store
        .claim("r1", 10, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(claimed.is_empty(), "rolled-back message was claimed");
}

/// Claims return messages oldest first, with every field intact, and a leased message
/// is not claimed again.
pub async fn claim_leases_in_order_and_round_trips_fields<S: OutboxStore>(store: &S) {
    let msgs: Vec<_> = (0..5)
        .map(|i| msg("saga.commands", &format!("k{i}"), i))
        .collect();
    let ids: Vec<MessageId> = msgs.iter().map(|m| m.id).collect();
    enqueue_committed(store, msgs.clone()).await;

    let first = store.claim("r1", 3, Duration::from_secs(30)).await.unwrap();
    assert_eq!(first.iter().map(|m| m.id).collect::<Vec<_>>(), ids[..3]);
    for (got, want) in first.iter().zip(&msgs) {
        assert_eq!(got.topic, want.topic);
        assert_eq!(got.key, want.key);
        assert_eq!(got.payload, want.payload);
        assert_eq!(got.headers, want.headers);
        assert_eq!(got.attempts, 0);
    }
    let second = store
        .claim("r2", 10, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(second.iter().map(|m| m.id).collect::<Vec<_>>(), ids[3..]);
    assert!(store
        .claim("r3", 10, Duration::from_secs(30))
        .await
        .unwrap()
        .is_empty());

    store.mark_sent(&ids).await.unwrap();
    store.release(&ids).await.unwrap(); // releasing sent messages must not resurrect them
    assert!(store
        .claim("r1", 10, Duration::from_secs(30))
        .await
        .unwrap()
        .is_empty());
}

/// While one relay holds a key's earlier message, another relay gets none of that key's
/// later messages; other keys are unaffected.
pub async fn per_key_order_across_relays<S: OutboxStore>(store: &S) {
    let a1 = msg("t", "a", 1);
    let a2 = msg("t", "a", 2);
    let b1 = msg("t", "b", 1);
    enqueue_committed(store, vec![a1.clone(), a2.clone(), b1.clone()]).await;

    let r1 = store.claim("r1", 1, Duration::from_secs(30)).await.unwrap();
    assert_eq!(r1.iter().map(|m| m.id).collect::<Vec<_>>(), vec![a1.id]);
    let r2 = store
        .claim("r2", 10, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        r2.iter().map(|m| m.id).collect::<Vec<_>>(),
        vec![b1.id],
        "a#2 must wait for a#1"
    );
    store.mark_sent(&[a1.id]).await.unwrap();
    // (A third relay: r2 itself would also take back its own lease on b#1.)
    let r3 = store
        .claim("r3", 10, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(r3.iter().map(|m| m.id).collect::<Vec<_>>(), vec![a2.id]);
}

/// A failed publish counts an attempt, keeps the error and makes the message claimable.
pub async fn failure_counts_attempts_and_releases<S: OutboxStore>(store: &S) {
    let m = msg("t", "k", 1);
    enqueue_committed(store, vec![m.clone()]).await;
    for expected in 1..=2 {
        let c = store
            .claim("r1", 10, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(c.len(), 1);
        store
            .record_failure(m.id, "broker down", Duration::ZERO)
            .await
            .unwrap();
        let again = store
            .claim("r1", 10, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].attempts, expected);
        store.release(&[m.id]).await.unwrap();
    }
}

/// A failed message is held back for its retry delay — from every relay, its own
/// included — with the later messages of its key; other keys are claimed as usual.
pub async fn failed_message_holds_back_its_key_only<S: OutboxStore>(store: &S) {
    let (p1, p2, a1) = (msg("t", "p", 1), msg("t", "p", 2), msg("t", "a", 1));
    enqueue_committed(store, vec![p1.clone(), p2.clone(), a1.clone()]).await;
    let c = store
        .claim("r1", 10, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(c.len(), 3);
    store
        .record_failure(p1.id, "message too large", Duration::from_secs(3600))
        .await
        .unwrap();
    store.release(&[p2.id]).await.unwrap();
    store.mark_sent(&[a1.id]).await.unwrap();
    let a2 = msg("t", "a", 2);
    enqueue_committed(store, vec![a2.clone()]).await;
    for relay in ["r1", "r2"] {
        let c = store
            .claim(relay, 10, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(
            c.iter().map(|m| m.id).collect::<Vec<_>>(),
            vec![a2.id],
            "{relay}: a held-back message (and its key) was claimed, or another key was not"
        );
        store.release(&[a2.id]).await.unwrap();
    }
}

/// A relay that died keeps its lease only until it expires. (The live lease is an hour
/// long and the expiring one is waited out generously, so a slow machine can neither
/// fake a respected lease nor an expired one.)
pub async fn expired_lease_is_reclaimed<S: OutboxStore>(store: &S) {
    let (live, expiring) = (msg("t", "j", 1), msg("t", "k", 1));
    enqueue_committed(store, vec![live.clone(), expiring.clone()]).await;
    let c = store
        .claim("live-relay", 1, Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(c.iter().map(|m| m.id).collect::<Vec<_>>(), vec![live.id]);
    let c = store
        .claim("dead-relay", 1, Duration::from_millis(200))
        .await
        .unwrap();
    assert_eq!(
        c.iter().map(|m| m.id).collect::<Vec<_>>(),
        vec![expiring.id]
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let c = store
        .claim("r2", 10, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        c.iter().map(|m| m.id).collect::<Vec<_>>(),
        vec![expiring.id],
        "the expired lease must be taken over, the live one respected"
    );
}

/// A relay restarted under the same id takes its own leases back at once; another relay
/// still waits for them to expire.
pub async fn own_lease_is_reclaimed_after_restart<S: OutboxStore>(store: &S) {
    let m = msg("t", "k", 1);
    enqueue_committed(store, vec![m.clone()]).await;
    let first = store
        .claim("order-relay", 10, Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(first.len(), 1);
    // The process dies; a new run of the same relay comes up.
    let again = store
        .claim("order-relay", 10, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        again.iter().map(|m| m.id).collect::<Vec<_>>(),
        vec![m.id],
        "own lease not taken back"
    );
    assert!(
        store
            .claim("other-relay", 10, Duration::from_secs(30))
            .await
            .unwrap()
            .is_empty(),
        "another relay ignored a live lease"
    );
}

/// Purging deletes sent messages past retention and nothing else.
pub async fn purge_removes_only_old_sent<S: OutboxStore>(store: &S) {
    let sent = msg("t", "k", 1);
    let unsent = msg("t", "j", 1);
    enqueue_committed(store, vec![sent.clone(), unsent.clone()]).await;
    store.claim("r1", 1, Duration::from_secs(30)).await.unwrap();
    store.mark_sent(&[sent.id]).await.unwrap();
    assert_eq!(
        store.purge_sent(Duration::from_secs(3600)).await.unwrap(),
        0
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(store.purge_sent(Duration::from_secs(1)).await.unwrap(), 1);
    store.release(&[unsent.id]).await.unwrap();
    let left = store
        .claim("r1", 10, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        left.iter().map(|m| m.id).collect::<Vec<_>>(),
        vec![unsent.id]
    );
}
