//! The trip-booking case a newcomer builds from the docs alone, on SQLite (one file, no
//! server): a traveller authenticated by a JWT books flight → hotel → charge. The saga's
//! commands and replies travel in the SDK's wire format (`saga_core::wire`) through a
//! SQLite outbox and the in-process bus; each participant consumes idempotently and
//! replies through the outbox in its own unit of work; the hotel's flaky API is called
//! behind retry + a circuit breaker. A trip to a full hotel is compensated (the flight
//! cancelled). Only the SDK's crates are dependencies: `sqlx` is the one they re-export.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use authz::{Authenticator, MemoryBlacklist, SigningKey, TokenIssuer, TokenValidator};
use outbox::local::LocalBus;
use outbox::memory::MemoryDeadLetters;
use outbox::sqlite::{SqliteInbox, SqliteOutbox, SqliteTx};
use outbox::sqlx; // the SDK's own sqlx: no version of ours to keep in step
use outbox::{
    Delivery, HandlerError, IdempotentConsumer, MessageHandler, OutboxStore, Relay, RelayConfig,
    Transactional,
};
use resilience::{CircuitBreaker, Retry};
use saga_core::sqlite::SqliteSagaStore;
use saga_core::wire::{ReplyHandler, SagaReply};
use saga_core::{
    CommandSink, Dispatched, Orchestrator, SagaCommand, SagaDefinition, SagaId, SagaInstance,
    SagaStatus, SagaStore, Step,
};
use tokio::sync::oneshot;

const COMMANDS: &str = "trip.commands";
const REPLIES: &str = "trip.replies";

fn book_trip() -> SagaDefinition {
    SagaDefinition::new("book_trip")
        .step(
            Step::new("flight")
                .action("flight.book")
                .compensate_with("flight.cancel")
                .deadline(Duration::from_secs(30)),
        )
        .step(
            Step::new("hotel")
                .action("hotel.reserve")
                .compensate_with("hotel.release")
                .deadline(Duration::from_secs(30)),
        )
        .step(Step::new("charge"))
        .build()
        .expect("a valid definition")
}

/// The orchestrator's sink: remote steps into the outbox in the wire format (the
/// destination city as the payload), the local `charge` as a row in our own table — all
/// in the saga's unit of work.
struct Sink {
    outbox: SqliteOutbox,
}

impl CommandSink<SqliteTx> for Sink {
    async fn dispatch(
        &self,
        tx: &mut SqliteTx,
        saga: &SagaInstance,
        cmd: &SagaCommand,
    ) -> saga_core::Result<Dispatched> {
        if cmd.name == "charge" {
            sqlx::query("INSERT INTO charges (saga_id, amount) VALUES (?, 420)")
                .bind(saga.id.to_string())
                .execute(&mut **tx)
                .await?;
            return Ok(Dispatched::Succeeded);
        }
        let msg = cmd.to_message(COMMANDS, saga.id.to_string(), saga.data.clone());
        self.outbox.enqueue(tx, msg).await?;
        Ok(Dispatched::Sent)
    }
}

/// A hotel API that fails its first call of each reservation, then answers.
#[derive(Default)]
struct FlakyHotel {
    calls: Mutex<HashMap<String, u32>>,
}

impl FlakyHotel {
    async fn reserve(&self, city: &str, key: &str) -> Result<bool, &'static str> {
        let mut calls = self.calls.lock().unwrap();
        let n = calls.entry(key.to_owned()).or_default();
        *n += 1;
        if *n == 1 {
            return Err("503 from the hotel API");
        }
        Ok(city != "Atlantis") // Atlantis is full
    }
}

/// The airline and the hotel: each command answered once, its reply written to the
/// outbox in the same unit of work as the inbox record.
struct Participants {
    outbox: SqliteOutbox,
    hotel: FlakyHotel,
    breaker: CircuitBreaker,
    hotel_calls: AtomicU32,
}

impl MessageHandler<SqliteTx> for Participants {
    type Output = ();

    async fn handle(&self, tx: &mut SqliteTx, msg: &Delivery) -> Result<(), HandlerError> {
        let cmd = SagaCommand::from_delivery(msg).map_err(HandlerError::permanent)?;
        let reply = match cmd.name.as_str() {
            "hotel.reserve" => {
                let city = String::from_utf8_lossy(&msg.payload).into_owned();
                let reserved = Retry::default()
                    .call_with_breaker(&self.breaker, || {
                        self.hotel_calls.fetch_add(1, Ordering::SeqCst);
                        self.hotel.reserve(&city, &cmd.idempotency_key)
                    })
                    .await
                    .map_err(|e| HandlerError::transient(e.to_string()))?;
                if reserved {
                    SagaReply::succeeded(&cmd)
                } else {
                    SagaReply::failed(&cmd, format!("no rooms left in {city}"))
                }
            }
            "flight.book" | "flight.cancel" | "hotel.release" => SagaReply::succeeded(&cmd),
            other => return Err(HandlerError::permanent(format!("unknown command {other}"))),
        };
        let out = reply.to_message(REPLIES, msg.key.clone(), "");
        self.outbox
            .enqueue(tx, out)
            .await
            .map_err(HandlerError::infrastructure)
    }
}

type Waiting = Arc<Mutex<HashMap<SagaId, oneshot::Sender<SagaStatus>>>>;

pub async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::temp_dir().join(format!("outside-user-trip-{}.db", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let pool = outbox::sqlite::connect(&path).await?;
    outbox::sqlite::migrate(&pool).await?;
    saga_core::sqlite::migrate(&pool).await?;
    sqlx::query("CREATE TABLE charges (saga_id TEXT PRIMARY KEY, amount INTEGER NOT NULL)")
        .execute(&pool)
        .await?;

    let outbox = SqliteOutbox::new(pool.clone());
    let store = SqliteSagaStore::new(pool.clone());
    let orchestrator = Arc::new(
        Orchestrator::new(
            store.clone(),
            Sink {
                outbox: outbox.clone(),
            },
        )
        .register(book_trip()),
    );

    // Each saga's end, announced by the reply handler once its unit of work committed.
    let waiting: Waiting = Arc::default();
    let announce = waiting.clone();
    let replies = ReplyHandler::new(orchestrator.clone()).on_applied(move |applied| {
        if applied.saga.is_terminal() {
            if let Some(tx) = announce.lock().unwrap().remove(&applied.saga.id) {
                let _ = tx.send(applied.saga.state.status);
            }
        }
    });
    let participants = Arc::new(Participants {
        outbox: outbox.clone(),
        hotel: FlakyHotel::default(),
        breaker: CircuitBreaker::builder("hotel-api")
            .failure_threshold(5)
            .build(),
        hotel_calls: AtomicU32::new(0),
    });
    let dead = MemoryDeadLetters::new();
    let bus = LocalBus::new();
    let inbox = || SqliteInbox::new(pool.clone());
    bus.subscribe(
        COMMANDS,
        IdempotentConsumer::new("participants", inbox(), dead.clone()),
        participants.clone(),
    );
    bus.subscribe(
        REPLIES,
        IdempotentConsumer::new("trips", inbox(), dead.clone()),
        replies,
    );

    // The relay wakes on each commit that enqueued (no poll to wait for).
    let (stop, stopped) = oneshot::channel::<()>();
    let relay = tokio::spawn(
        Relay::new(outbox.clone(), bus, RelayConfig::with_id("trip-relay")).run(async {
            let _ = stopped.await;
        }),
    );

    // Only an authenticated traveller books.
    let key = SigningKey::hs256(b"an-example-secret-of-at-least-32-bytes!")?;
    let issuer = TokenIssuer::new(key.clone(), "trips", "trips-api");
    let auth = Authenticator::new(
        TokenValidator::new(key.verifying_key(), "trips", "trips-api"),
        Arc::new(MemoryBlacklist::new()),
    );
    let token = issuer.issue("traveller-7")?.token;

    let book = |city: &'static str| {
        let (orchestrator, store, waiting, auth, token) = (
            orchestrator.clone(),
            store.clone(),
            waiting.clone(),
            &auth,
            token.clone(),
        );
        async move {
            let claims = auth.authenticate(&token).await?;
            assert_eq!(claims.sub, "traveller-7");
            let id = SagaId::new();
            let (tx_end, end) = oneshot::channel();
            waiting.lock().unwrap().insert(id, tx_end);
            let mut tx = store.begin().await?;
            orchestrator
                .start(&mut tx, "book_trip", id, city.into())
                .await?;
            store.commit(tx).await?;
            let status = tokio::time::timeout(Duration::from_secs(30), end).await??;
            Ok::<_, Box<dyn std::error::Error>>((id, status))
        }
    };

    let (lisbon, status) = book("Lisbon").await?;
    assert_eq!(status, SagaStatus::Completed);
    let (atlantis, status) = book("Atlantis").await?;
    assert_eq!(
        status,
        SagaStatus::Failed,
        "a full hotel: the flight is cancelled"
    );
    let failed = store.get(atlantis).await?.expect("the saga");
    assert_eq!(
        failed.state.failure_reason.as_deref(),
        Some("no rooms left in Atlantis")
    );

    // Charged once, for the trip that went through; each hotel call retried once.
    let charged: Vec<(String,)> = sqlx::query_as("SELECT saga_id FROM charges")
        .fetch_all(&pool)
        .await?;
    assert_eq!(charged, vec![(lisbon.to_string(),)]);
    assert_eq!(participants.hotel_calls.load(Ordering::SeqCst), 4);
    assert!(dead.parked().is_empty());

    stop.send(()).ok();
    relay.await??;
    pool.close().await;
    let _ = std::fs::remove_file(&path);
    println!("outside-user: a trip booked and one compensated — saga over the wire format, SQLite outbox, bus, JWT, breaker");
    Ok(())
}
