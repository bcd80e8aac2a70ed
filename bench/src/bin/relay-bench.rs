//! The outbox relay, MariaDB → Kafka, measured beside what it is meant to beat and to
//! approach (docs/BENCHMARKS.md, `make bench`), on a MariaDB and a broker of its own:
//!
//! 1. a plain rdkafka producer sending N messages (the ceiling: no database at all);
//! 2. our `Relay` (`MySqlOutbox` + `KafkaPublisher`) draining N pre-filled outbox rows;
//! 3. a naive relay — select the oldest unsent row, publish it, mark it sent, repeat —
//!    for a fixed time (it would take too long to drain N);
//! 4. commit → consumer-visible latency: one message enqueued and committed every few
//!    milliseconds while the relay runs, timed until a consumer receives it.
//!
//! ```text
//! relay-bench [--rows 100000] [--keys 1000] [--naive-seconds 10] [--latency-messages 500]
//!             [--profile-rounds 0]   (time claim / publish / mark-sent of that many rounds
//!                                     before the relay run)
//!             [--stream-batches 1000,5000] (the streaming relay, once per batch size)
//!             [--fetch-wait-ms 20,5] (the latency consumer's `fetch.wait.max.ms`: one
//!                                     latency run per value; 20 is the services' default)
//! ```

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use futures::StreamExt as _;
use ordersys_e2e::infra::{Daemon, Kind};
use outbox::kafka::{ensure_topics, KafkaPublisher};
use outbox::mysql::{migrate, MySqlOutbox, MySqlStreamingOutbox};
use outbox::{OutboxMessage, OutboxStore, Publisher, Relay, RelayConfig, Transactional};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;
use sqlx::{MySqlPool, Row};

struct Args {
    rows: usize,
    keys: usize,
    naive_seconds: u64,
    latency_messages: usize,
    profile_rounds: usize,
    fetch_waits: Vec<u64>,
    stream_batches: Vec<usize>,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        rows: 100_000,
        keys: 1000,
        naive_seconds: 10,
        latency_messages: 500,
        profile_rounds: 0,
        fetch_waits: vec![20, 5],
        stream_batches: vec![1000, 5000],
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--rows" => a.rows = val()?.parse()?,
            "--keys" => a.keys = val()?.parse()?,
            "--naive-seconds" => a.naive_seconds = val()?.parse()?,
            "--latency-messages" => a.latency_messages = val()?.parse()?,
            "--profile-rounds" => a.profile_rounds = val()?.parse()?,
            "--stream-batches" => {
                a.stream_batches = val()?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?
            }
            "--fetch-wait-ms" => {
                a.fetch_waits = val()?
                    .split(',')
                    .map(|v| v.trim().parse())
                    .collect::<Result<_, _>>()?
            }
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    anyhow::ensure!(
        a.rows > 0 && a.keys > 0,
        "--rows and --keys must be positive"
    );
    Ok(a)
}

fn message(topic: &str, i: usize, keys: usize) -> OutboxMessage {
    // 200 bytes of payload, like a saga command.
    OutboxMessage::new(topic, format!("key-{}", i % keys), format!("{i:0>200}"))
}

/// Pre-fill the outbox with `n` messages, 1000 per transaction.
async fn fill(outbox: &MySqlOutbox, topic: &str, n: usize, keys: usize) -> anyhow::Result<()> {
    let mut i = 0;
    while i < n {
        let mut tx = outbox.begin().await?;
        for _ in 0..1000.min(n - i) {
            outbox.enqueue(&mut tx, message(topic, i, keys)).await?;
            i += 1;
        }
        outbox.commit(tx).await?;
    }
    Ok(())
}

async fn unsent(pool: &MySqlPool) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT COUNT(*) FROM outbox_messages WHERE sent_at IS NULL")
            .fetch_one(pool)
            .await?,
    )
}

/// A publisher whose connection and topic metadata are warm, as the plain producer's
/// are when it is timed (the first publish of a new producer waits ≈ 1 s for them).
async fn warm_publisher(brokers: &str, topic: &str) -> anyhow::Result<KafkaPublisher> {
    let p = KafkaPublisher::new(brokers)?;
    for i in 0..100 {
        p.publish(&message(topic, i, 100)).await?;
    }
    Ok(p)
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = args()?;
    let dir = std::env::temp_dir().join(format!(
        "ordersys-relay-bench-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir)?;
    let mariadb = Daemon::start(Kind::MariaDb, &dir)?;
    let broker = Daemon::start(Kind::Broker, &dir)?;
    let brokers = broker.url();
    let server: MySqlPool = MySqlPool::connect(&mariadb.url()).await?;
    sqlx::query("CREATE DATABASE bench")
        .execute(&server)
        .await?;
    let pool = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(16)
        .connect(&format!("{}/bench", mariadb.url()))
        .await?;
    migrate(&pool).await?;
    let outbox = MySqlOutbox::new(pool.clone());
    let topics = ["bench.plain", "bench.relay", "bench.naive", "bench.latency"];
    ordersys_kit::retry::until_up(
        "bench_topics",
        Duration::from_secs(60),
        "relay-bench: waiting for the broker",
        || async { Ok(ensure_topics(&brokers, &topics.map(|t| (t, 3))).await?) },
    )
    .await?;

    // 1. Plain producer: every message handed to librdkafka, then all acknowledgements.
    let producer: FutureProducer = outbox::kafka::producer_config(&brokers).create()?;
    let msgs: Vec<OutboxMessage> = (0..a.rows)
        .map(|i| message("bench.plain", i, a.keys))
        .collect();
    // Warm the connection and the topic's partitions.
    for m in msgs.iter().take(100) {
        send(&producer, m).await?;
    }
    let t = Instant::now();
    let acks = futures::stream::iter(msgs.iter().map(|m| send(&producer, m)))
        .buffer_unordered(10_000)
        .collect::<Vec<_>>()
        .await;
    let plain = t.elapsed();
    anyhow::ensure!(
        acks.iter().all(Result::is_ok),
        "plain producer: a send failed"
    );
    println!(
        "relay-bench: plain producer: {} messages in {:.2} s = {:.0}/s",
        a.rows,
        plain.as_secs_f64(),
        rate(a.rows, plain)
    );

    // 1b. The same producer keeping the relay's promise of per-key order under failures:
    //     a key's next message only after its previous one was acknowledged (all keys at
    //     once). What a relay with that promise can approach at best.
    let mut by_key: HashMap<&str, Vec<&OutboxMessage>> = HashMap::new();
    for m in &msgs {
        by_key.entry(m.key.as_str()).or_default().push(m);
    }
    let t = Instant::now();
    let chains = futures::future::join_all(by_key.values().map(|chain| {
        let producer = &producer;
        async move {
            for m in chain {
                send(producer, m).await?;
            }
            anyhow::Ok(())
        }
    }))
    .await;
    let keyed = t.elapsed();
    anyhow::ensure!(
        chains.iter().all(Result::is_ok),
        "plain producer in key order: a send failed"
    );
    println!(
        "relay-bench: plain producer, a key's next message after its previous ack ({} keys): {} messages in {:.2} s = {:.0}/s",
        by_key.len(),
        a.rows,
        keyed.as_secs_f64(),
        rate(a.rows, keyed)
    );

    // 2. Our relay on N pre-filled rows.
    fill(&outbox, "bench.relay", a.rows, a.keys).await?;
    if a.profile_rounds > 0 {
        // Where a round's time goes: the same steps as `Relay::run_once`, timed.
        let p = KafkaPublisher::new(&brokers)?;
        for _ in 0..a.profile_rounds {
            let t0 = Instant::now();
            let batch = outbox.claim("prof", 1000, Duration::from_secs(30)).await?;
            let t1 = Instant::now();
            let r = futures::future::join_all(batch.iter().map(|m| p.publish(m))).await;
            anyhow::ensure!(r.iter().all(Result::is_ok));
            let t2 = Instant::now();
            let ids: Vec<_> = batch.iter().map(|m| m.id).collect();
            outbox.mark_sent(&ids).await?;
            let t3 = Instant::now();
            println!(
                "relay-bench: profile of a {}-message round: claim {:.1} ms, publish {:.1} ms, mark sent {:.1} ms",
                batch.len(),
                (t1 - t0).as_secs_f64() * 1000.0,
                (t2 - t1).as_secs_f64() * 1000.0,
                (t3 - t2).as_secs_f64() * 1000.0
            );
        }
    }
    let relay = Relay::new(
        outbox.clone(),
        warm_publisher(&brokers, "bench.relay").await?,
        RelayConfig::with_id("bench").with_batch_size(1000),
    );
    let t = Instant::now();
    let mut rounds = 0;
    loop {
        let r = relay.run_once().await?;
        rounds += 1;
        if r.claimed == 0 {
            break;
        }
        anyhow::ensure!(r.failed == 0, "relay: publishes failed");
    }
    let ours = t.elapsed();
    anyhow::ensure!(unsent(&pool).await? == 0, "relay left rows unsent");
    println!(
        "relay-bench: relay (batch 1000): {} rows in {:.2} s = {:.0}/s, {rounds} rounds; {:.0} % of the plain producer",
        a.rows,
        ours.as_secs_f64(),
        rate(a.rows, ours),
        rate(a.rows, ours) * 100.0 / rate(a.rows, plain)
    );

    // 2b. The streaming relay (`MySqlStreamingOutbox`: one relay, a position instead of
    //     per-row leases) on N pre-filled rows, at each batch size.
    for batch in &a.stream_batches {
        // Each stream starts after the rows the relays before it sent (else its first
        // claims would read through them, skipping each).
        for name in [format!("bench-{batch}"), format!("prof-{batch}")] {
            sqlx::query(
                "INSERT INTO outbox_relay_position (name, position) \
                 SELECT ?, COALESCE(MAX(seq), 0) FROM outbox_messages \
                 ON DUPLICATE KEY UPDATE position = VALUES(position)",
            )
            .bind(name)
            .execute(&pool)
            .await?;
        }
        fill(&outbox, "bench.relay", a.rows, a.keys).await?;
        let stream = MySqlStreamingOutbox::new(pool.clone()).with_name(format!("bench-{batch}"));
        if a.profile_rounds > 0 {
            let p = KafkaPublisher::new(&brokers)?;
            let prof = MySqlStreamingOutbox::new(pool.clone()).with_name(format!("prof-{batch}"));
            for _ in 0..a.profile_rounds {
                let t0 = Instant::now();
                let batch = prof.claim("prof", *batch, Duration::from_secs(30)).await?;
                let t1 = Instant::now();
                let r = futures::future::join_all(batch.iter().map(|m| p.publish(m))).await;
                anyhow::ensure!(r.iter().all(Result::is_ok));
                let t2 = Instant::now();
                prof.mark_sent(&batch.iter().map(|m| m.id).collect::<Vec<_>>())
                    .await?;
                let t3 = Instant::now();
                println!(
                    "relay-bench: streaming profile of a {}-message round: claim {:.1} ms (the read of this batch overlapped the previous round), publish {:.1} ms, mark sent {:.1} ms",
                    batch.len(),
                    (t1 - t0).as_secs_f64() * 1000.0,
                    (t2 - t1).as_secs_f64() * 1000.0,
                    (t3 - t2).as_secs_f64() * 1000.0
                );
            }
        }
        let relay = Relay::new(
            stream.clone(),
            warm_publisher(&brokers, "bench.relay").await?,
            RelayConfig::with_id("bench").with_batch_size(*batch),
        );
        // As a service runs it (`Relay::run`), timed until the persisted position
        // reaches the last row.
        let last: u64 = sqlx::query_scalar("SELECT MAX(seq) FROM outbox_messages")
            .fetch_one(&pool)
            .await?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let t = Instant::now();
        let task = tokio::spawn(relay.run(async move {
            let _ = stopped.await;
        }));
        while stream.position().await? != Some(last) {
            anyhow::ensure!(
                t.elapsed() < Duration::from_secs(120),
                "streaming relay: not done in 120 s"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let took = t.elapsed();
        let _ = stop.send(());
        task.await??;
        anyhow::ensure!(
            stream.pending().await? == 0,
            "streaming relay left rows unpublished"
        );
        println!(
            "relay-bench: streaming relay (Relay::run, batch {batch}): {} rows in {:.2} s = {:.0}/s; {:.0} % of the plain producer, {:.0} % of it in key order",
            a.rows,
            took.as_secs_f64(),
            rate(a.rows, took),
            rate(a.rows, took) * 100.0 / rate(a.rows, plain),
            rate(a.rows, took) * 100.0 / rate(a.rows, keyed)
        );
        // For the naive relay below, which reads `sent_at`.
        sqlx::query("UPDATE outbox_messages SET sent_at = NOW(6) WHERE sent_at IS NULL")
            .execute(&pool)
            .await?;
    }

    // 3. Naive relay: one row at a time, for a fixed time.
    fill(&outbox, "bench.naive", a.rows.min(20_000), a.keys).await?;
    let naive_publisher = warm_publisher(&brokers, "bench.naive").await?;
    let t = Instant::now();
    let mut naive = 0usize;
    while t.elapsed() < Duration::from_secs(a.naive_seconds) {
        let Some(row) = sqlx::query(
            "SELECT seq, topic, msg_key, payload FROM outbox_messages WHERE sent_at IS NULL ORDER BY seq LIMIT 1",
        )
        .fetch_optional(&pool)
        .await?
        else {
            break;
        };
        let seq: u64 = row.try_get("seq")?;
        let payload: Vec<u8> = row.try_get("payload")?;
        let m = OutboxMessage::new(
            row.try_get::<String, _>("topic")?,
            row.try_get::<String, _>("msg_key")?,
            payload,
        );
        naive_publisher.publish(&m).await?;
        sqlx::query("UPDATE outbox_messages SET sent_at = NOW(6) WHERE seq = ?")
            .bind(seq)
            .execute(&pool)
            .await?;
        naive += 1;
    }
    let naive_took = t.elapsed();
    println!(
        "relay-bench: naive relay (select one, publish, update one): {naive} rows in {:.2} s = {:.0}/s; ours is {:.1}×",
        naive_took.as_secs_f64(),
        rate(naive, naive_took),
        rate(a.rows, ours) / rate(naive, naive_took).max(1e-9)
    );
    sqlx::query("UPDATE outbox_messages SET sent_at = NOW(6) WHERE sent_at IS NULL")
        .execute(&pool)
        .await?;

    // 4. Commit → consumer-visible latency, with the relay running as a service runs it
    //    (woken by the committing code), once per consumer `fetch.wait.max.ms`.
    for (run, wait) in a.fetch_waits.iter().enumerate() {
        latency(&a, &brokers, &outbox, run, *wait).await?;
    }

    drop(mariadb);
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

async fn send(producer: &FutureProducer, m: &OutboxMessage) -> anyhow::Result<()> {
    producer
        .send(
            FutureRecord::to(&m.topic)
                .key(&m.key)
                .payload(m.payload.as_ref()),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| anyhow::anyhow!("{e}"))?;
    Ok(())
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Commit → consumer-visible latency with a consumer at `fetch.wait.max.ms = wait`, on a
/// topic of this run's own.
async fn latency(
    a: &Args,
    brokers: &str,
    outbox: &MySqlOutbox,
    run: usize,
    wait: u64,
) -> anyhow::Result<()> {
    let topic = if run == 0 {
        "bench.latency".to_owned()
    } else {
        format!("bench.latency.{run}")
    };
    let brokers = brokers.to_owned();
    ensure_topics(&brokers, &[(topic.as_str(), 3)]).await?;
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", format!("bench-latency-{run}"))
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", wait.to_string())
        .create()?;
    consumer.subscribe(&[topic.as_str()])?;
    let relay = Relay::new(
        outbox.clone(),
        KafkaPublisher::new(&brokers)?,
        RelayConfig::with_id(format!("bench-latency-{run}")),
    );
    let wake = relay.handle();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let relay_task = tokio::spawn(relay.run(async move {
        let _ = stop_rx.await;
    }));
    // Wait for the consumer to join: one message through first.
    let probe = OutboxMessage::new(&topic, "probe", "probe");
    let mut tx = outbox.begin().await?;
    outbox.enqueue(&mut tx, probe).await?;
    outbox.commit(tx).await?;
    wake.wake();
    tokio::time::timeout(Duration::from_secs(60), consumer.recv())
        .await
        .context("the latency consumer never got the probe")??;

    let received = tokio::spawn({
        let n = a.latency_messages;
        async move {
            let mut lat: HashMap<String, Duration> = HashMap::new();
            while lat.len() < n {
                let m = consumer.recv().await?;
                let got = now_us();
                let sent: u64 = std::str::from_utf8(m.payload().unwrap_or_default())?.parse()?;
                lat.insert(
                    String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                    Duration::from_micros(got.saturating_sub(sent)),
                );
            }
            Ok::<_, anyhow::Error>(lat)
        }
    });
    for i in 0..a.latency_messages {
        let mut tx = outbox.begin().await?;
        let stamp = now_us();
        outbox
            .enqueue(
                &mut tx,
                OutboxMessage::new(&topic, format!("m{i}"), stamp.to_string()),
            )
            .await?;
        outbox.commit(tx).await?;
        // The stamp was taken before the commit: the latency includes it (the commit is
        // what a caller waits for anyway).
        wake.wake();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let lat = tokio::time::timeout(Duration::from_secs(60), received).await???;
    let _ = stop_tx.send(());
    relay_task.await??;
    let mut v: Vec<Duration> = lat.into_values().collect();
    v.sort();
    let pct = |p: f64| v[((v.len() - 1) as f64 * p) as usize].as_secs_f64() * 1000.0;
    println!(
        "relay-bench: enqueue+commit → consumer received (fetch.wait.max.ms={wait}), {} messages one every 5 ms: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms",
        v.len(),
        pct(0.5),
        pct(0.9),
        pct(0.99)
    );

    Ok(())
}
