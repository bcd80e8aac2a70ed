//! The [`Inbox`] contract.

use std::time::Duration;

use crate::store::Inbox;
use crate::MessageId;

/// Inbox contract: a record is visible only after commit, a second record of the same
/// message by the same consumer is refused (in the same unit of work too), other
/// consumers are independent.
pub async fn inbox_all<I: Inbox>(inbox: &I) {
    let id = MessageId::new();
    let mut tx = inbox.begin().await.unwrap();
    assert!(inbox.try_record(&mut tx, "c1", id).await.unwrap());
    assert!(
        !inbox.try_record(&mut tx, "c1", id).await.unwrap(),
        "a second record in the same unit of work must be refused"
    );
    drop(tx); // rollback
    let mut tx = inbox.begin().await.unwrap();
    assert!(
        inbox.try_record(&mut tx, "c1", id).await.unwrap(),
        "rolled back record must not count"
    );
    inbox.commit(tx).await.unwrap();
    let mut tx = inbox.begin().await.unwrap();
    assert!(!inbox.try_record(&mut tx, "c1", id).await.unwrap());
    assert!(inbox.try_record(&mut tx, "c2", id).await.unwrap());
    inbox.commit(tx).await.unwrap();

    // Purging keeps records younger than the retention and forgets older ones.
    assert_eq!(inbox.purge(Duration::from_secs(3600)).await.unwrap(), 0);
    let mut tx = inbox.begin().await.unwrap();
    assert!(
        !inbox.try_record(&mut tx, "c1", id).await.unwrap(),
        "a record inside its retention was purged"
    );
    drop(tx);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(inbox.purge(Duration::from_secs(1)).await.unwrap(), 2);
    let mut tx = inbox.begin().await.unwrap();
    assert!(
        inbox.try_record(&mut tx, "c1", id).await.unwrap(),
        "a record past its retention was kept"
    );
}
