//! Conformance suite for [`Blacklist`] backends (feature `conformance`).

use std::time::Duration;

use crate::Blacklist;

/// A revoked `jti` is reported revoked until its TTL passes, others never are, and
/// revoking twice keeps the longer life.
pub async fn blacklist_all<B: Blacklist + ?Sized>(bl: &B) {
    let jti = format!("jti-{}", uuid::Uuid::new_v4());
    let other = format!("jti-{}", uuid::Uuid::new_v4());
    assert!(!bl.is_revoked(&jti).await.unwrap());
    bl.revoke(&jti, Duration::from_secs(1)).await.unwrap();
    assert!(bl.is_revoked(&jti).await.unwrap());
    assert!(!bl.is_revoked(&other).await.unwrap());

    let long = format!("jti-{}", uuid::Uuid::new_v4());
    bl.revoke(&long, Duration::from_secs(30)).await.unwrap();
    // A second, shorter revocation must not shorten the first.
    bl.revoke(&long, Duration::from_secs(1)).await.unwrap();

    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !bl.is_revoked(&jti).await.unwrap(),
        "entry must expire with the token"
    );
    assert!(
        bl.is_revoked(&long).await.unwrap(),
        "revoking again with a shorter life shortened the first revocation"
    );
}
