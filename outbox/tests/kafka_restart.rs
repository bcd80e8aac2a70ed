//! The Kafka publisher against a broker of their own that is killed and
//! restarted (Tansu with memory storage: the restarted broker has lost every topic,
//! offset, group and producer id — like a cluster that expired the producer's state).
//! The binary comes from `TANSU_BIN` or where `scripts/kafka-up` installs it.
#![cfg(feature = "kafka")]

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use outbox::kafka::{ensure_topics, KafkaPublisher};
use outbox::{OutboxMessage, Publisher};

fn tansu() -> PathBuf {
    if let Ok(p) = std::env::var("TANSU_BIN") {
        return p.into();
    }
    let tools = std::env::var("ORDERSYS_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
                .join(".cache/ordersys")
        });
    let bin = tools.join("tansu-calfkit-0.1.2/tansu");
    assert!(
        bin.exists(),
        "{} is missing: run scripts/kafka-up (or set TANSU_BIN)",
        bin.display()
    );
    bin
}

/// A broker process of this test's own.
struct Broker {
    port: u16,
    child: Option<Child>,
}

impl Broker {
    fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut b = Self { port, child: None };
        b.spawn();
        b
    }

    fn spawn(&mut self) {
        let p = self.port;
        let child = Command::new(tansu())
            .arg("broker")
            .arg(format!("--listener-url=tcp://127.0.0.1:{p}"))
            .arg(format!("--advertised-listener-url=tcp://127.0.0.1:{p}"))
            .arg("--storage-engine=memory://tansu/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", p)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not open port {p}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn url(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Publish until the broker acknowledges, for at most `within`; how many tries it took.
async fn publish_until_acked(
    p: &KafkaPublisher,
    msg: &OutboxMessage,
    within: Duration,
) -> Result<u32, String> {
    let deadline = Instant::now() + within;
    let mut tries = 0;
    loop {
        tries += 1;
        match p.publish(msg).await {
            Ok(()) => return Ok(tries),
            Err(e) if Instant::now() < deadline => {
                eprintln!("publish failed ({e}), again");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(format!("still failing after {tries} tries: {e}")),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publisher_recovers_from_a_broker_that_lost_its_producer_state() {
    let mut broker = Broker::start();
    let topic = "restart.commands";
    ensure_topics(&broker.url(), &[(topic, 1)]).await.unwrap();
    let publisher = KafkaPublisher::new(&broker.url()).unwrap();
    assert_eq!(publisher.recreations(), 0);
    for i in 0..5 {
        let m = OutboxMessage::new(topic, "k", format!("before-{i}"));
        publish_until_acked(&publisher, &m, Duration::from_secs(30))
            .await
            .unwrap();
    }

    broker.restart();
    ensure_topics(&broker.url(), &[(topic, 1)]).await.unwrap();

    // The same publisher: the new broker knows nothing of its producer id. It must get
    // through by itself (re-creating its producer if need be), not time out forever.
    let m = OutboxMessage::new(topic, "k", "after");
    let tries = publish_until_acked(&publisher, &m, Duration::from_secs(60)).await;
    assert!(
        tries.is_ok(),
        "the publisher never recovered: {}",
        tries.unwrap_err()
    );
    // It got through by replacing its producer (what its metrics and logs report).
    let recreated = publisher.recreations();
    assert!(
        recreated >= 1,
        "recovered without a new producer? {recreated}"
    );
    for i in 0..20 {
        let m = OutboxMessage::new(topic, "k", format!("after-{i}"));
        publisher
            .publish(&m)
            .await
            .expect("publishing goes on normally after recovery");
    }
}
