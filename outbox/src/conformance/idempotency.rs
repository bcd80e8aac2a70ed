//! The [`IdempotencyStore`](crate::idempotency::IdempotencyStore) and
//! [`Cache`](crate::idempotency::Cache) contracts.

use std::time::Duration;

/// [`IdempotencyStore`](crate::idempotency::IdempotencyStore) contract: reserve once,
/// in-progress while pending, the stored result after completion, release re-opens a
/// pending key but never a completed one, expiry frees the key, `completed` reads a
/// live result only and disturbs no reservation. Concurrent reserves: exactly one wins.
pub async fn idempotency_all<S: crate::idempotency::IdempotencyStore>(store: &S) {
    use crate::idempotency::Reservation;
    let day = Duration::from_secs(86_400);
    let key = format!("k-{}", uuid::Uuid::new_v4());
    assert_eq!(
        store.reserve(&key, day).await.unwrap(),
        Reservation::Reserved
    );
    assert_eq!(
        store.reserve(&key, day).await.unwrap(),
        Reservation::InProgress
    );
    store.release(&key).await.unwrap();
    assert_eq!(
        store.reserve(&key, day).await.unwrap(),
        Reservation::Reserved
    );
    store.complete(&key, b"\x00result\xff", day).await.unwrap();
    store.release(&key).await.unwrap(); // must not drop a completed result
    assert_eq!(
        store.reserve(&key, day).await.unwrap(),
        Reservation::Completed(bytes::Bytes::from_static(b"\x00result\xff"))
    );

    let race = format!("k-{}", uuid::Uuid::new_v4());
    let outcomes = futures::future::join_all((0..16).map(|_| store.reserve(&race, day))).await;
    let winners = outcomes
        .iter()
        .filter(|o| *o.as_ref().unwrap() == Reservation::Reserved)
        .count();
    assert_eq!(winners, 1);

    // `completed` reads the result only, and leaves a reservation as it is.
    let read = format!("k-{}", uuid::Uuid::new_v4());
    assert_eq!(store.completed(&read).await.unwrap(), None, "a free key");
    assert_eq!(
        store.reserve(&read, day).await.unwrap(),
        Reservation::Reserved
    );
    assert_eq!(
        store.completed(&read).await.unwrap(),
        None,
        "a reserved key"
    );
    assert_eq!(
        store.reserve(&read, day).await.unwrap(),
        Reservation::InProgress,
        "completed() released someone's reservation"
    );
    store.complete(&read, b"\x00read\xff", day).await.unwrap();
    assert_eq!(
        store.completed(&read).await.unwrap(),
        Some(bytes::Bytes::from_static(b"\x00read\xff"))
    );
    let ended = format!("k-{}", uuid::Uuid::new_v4());
    store
        .complete(&ended, b"gone", Duration::from_millis(300))
        .await
        .unwrap();

    let short = format!("k-{}", uuid::Uuid::new_v4());
    store
        .reserve(&short, Duration::from_millis(300))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        store.completed(&ended).await.unwrap(),
        None,
        "an expired result"
    );
    assert_eq!(
        store.reserve(&short, day).await.unwrap(),
        Reservation::Reserved
    );

    // Purging expired keys leaves live ones alone (what it deletes is backend-specific:
    // Redis expires keys itself).
    store.purge_expired().await.unwrap();
    assert_eq!(
        store.reserve(&key, day).await.unwrap(),
        Reservation::Completed(bytes::Bytes::from_static(b"\x00result\xff")),
        "purge removed a live completed key"
    );
    assert_eq!(
        store.reserve(&short, day).await.unwrap(),
        Reservation::InProgress,
        "purge removed a live reservation"
    );
}

/// [`Cache`](crate::idempotency::Cache) contract: set/get round trip (binary safe),
/// delete invalidates, entries expire.
pub async fn cache_all<C: crate::idempotency::Cache>(cache: &C) {
    let key = format!("c-{}", uuid::Uuid::new_v4());
    assert!(cache.get(&key).await.unwrap().is_none());
    cache
        .set(&key, b"\x01v1", Duration::from_secs(600))
        .await
        .unwrap();
    assert_eq!(
        cache.get(&key).await.unwrap().as_deref(),
        Some(&b"\x01v1"[..])
    );
    cache
        .set(&key, b"v2", Duration::from_secs(600))
        .await
        .unwrap();
    assert_eq!(cache.get(&key).await.unwrap().as_deref(), Some(&b"v2"[..]));
    cache.delete(&key).await.unwrap();
    assert!(cache.get(&key).await.unwrap().is_none());
    assert!(cache
        .set_if_absent(&key, b"first", Duration::from_secs(600))
        .await
        .unwrap());
    assert!(!cache
        .set_if_absent(&key, b"second", Duration::from_secs(600))
        .await
        .unwrap());
    assert_eq!(
        cache.get(&key).await.unwrap().as_deref(),
        Some(&b"first"[..])
    );
    cache.delete(&key).await.unwrap();
    cache
        .set(&key, b"short", Duration::from_millis(300))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(cache.get(&key).await.unwrap().is_none());
}
