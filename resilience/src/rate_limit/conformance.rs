use super::*;

/// `limiter` must allow `limit` requests per `window` per client (the suite uses
/// `limit = 3` and a short window, e.g. 500 ms), then refuse with a reset time within
/// the window, keep clients apart, and open a new window after it ends.
pub async fn rate_limiter_all<L: RateLimiter>(limiter: &L, limit: u32, window: Duration) {
    let a = format!("client-a-{}", uuid_like());
    let b = format!("client-b-{}", uuid_like());
    for i in 1..=limit {
        let d = limiter.check(&a).await.unwrap();
        assert!(d.allowed, "request {i} refused");
        assert_eq!(d.remaining, limit - i);
        assert_eq!(d.limit, limit);
    }
    let refused = limiter.check(&a).await.unwrap();
    assert!(!refused.allowed);
    assert_eq!(refused.remaining, 0);
    assert!(refused.reset_after <= window && refused.reset_after > Duration::ZERO);
    assert!(
        limiter.check(&b).await.unwrap().allowed,
        "clients must not share a window"
    );
    tokio::time::sleep(window + Duration::from_millis(100)).await;
    let fresh = limiter.check(&a).await.unwrap();
    assert!(
        fresh.allowed,
        "a new window must start after the old one ends"
    );
    assert_eq!(fresh.remaining, limit - 1);
    // The new window is limited like the first one.
    for i in 2..=limit {
        let d = limiter.check(&a).await.unwrap();
        assert!(d.allowed, "request {i} of the second window refused");
        assert_eq!(d.remaining, limit - i);
    }
    let refused = limiter.check(&a).await.unwrap();
    assert!(
        !refused.allowed,
        "the second window must refuse past the limit too"
    );
    assert_eq!(refused.remaining, 0);
    assert!(refused.reset_after <= window && refused.reset_after > Duration::ZERO);
}

fn uuid_like() -> String {
    use rand::Rng;
    format!("{:016x}", rand::rng().random::<u64>())
}
