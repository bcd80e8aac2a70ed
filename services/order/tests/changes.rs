//! Orders' change notices across replicas, on a real Redis (`REDIS_URL`, default the
//! local one): a change told by one replica wakes the reader waiting in another.

use std::time::Duration;

use ordersys_order::changes::Changes;
use uuid::Uuid;

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into())
}

async fn replica() -> (Changes, redis::Client) {
    let client = redis::Client::open(redis_url()).expect("REDIS_URL");
    let conn = client
        .get_connection_manager()
        .await
        .expect("Redis is running (make services-up)");
    (Changes::redis(conn), client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_told_by_one_replica_wakes_the_reader_waiting_in_another() {
    let (a, _) = replica().await;
    let (b, client) = replica().await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let following = tokio::spawn(b.clone().follow(client, async {
        let _ = stopped.await;
    }));
    let order = Uuid::new_v4();
    let watch = b.watch(order);
    // Told until heard: the subscription may not be in place yet when the first is sent.
    ordersys_testkit::eventually(
        "replica b to hear replica a's notice",
        Duration::from_secs(10),
        || {
            let (a, watch) = (a.clone(), &watch);
            async move {
                let notified = watch.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                a.changed(order).await;
                tokio::time::timeout(Duration::from_millis(200), notified)
                    .await
                    .ok()
            }
        },
    )
    .await;
    let _ = stop.send(());
    following.await.unwrap().unwrap();
}
