//! Run with `cargo run -p example-trip-booking`.
//!
//! Trip booking with parallel steps and versioned definitions, on one SQLite file and
//! across a deploy:
//!
//! - version 1 of the `trip` saga books the flight and the hotel **side by side**
//!   (`parallel`), then charges the card once both are booked;
//! - version 2 — today's deploy — also issues travel insurance after the charge.
//!
//! Yesterday's process (version 1 only) starts two trips and stops while their hotel
//! bookings are still out. Today's process registers both versions: the two old trips
//! finish on version 1 — Paris is booked and charged, Atlantis has no hotel room, so
//! its booked flight is cancelled — and a new trip to Lisbon runs version 2. Every
//! saga is printed as a Mermaid chart with where it stands.
//!
//! The partners (airline, hotel, card, insurer) are played in-process: they take the
//! commands from the outbox, where the orchestrator wrote them in the SDK's wire format
//! in the saga's own transaction, and answer them.

use std::time::Duration;

use outbox::sqlite::{SqliteOutbox, SqliteTx};
use outbox::sqlx::SqlitePool;
use outbox::{OutboxStore, Transactional};
use saga_core::sqlite::SqliteSagaStore;
use saga_core::wire::SagaReply;
use saga_core::{
    CommandSink, Dispatched, Orchestrator, SagaCommand, SagaDefinition, SagaId, SagaInstance,
    SagaStatus, SagaStore, Step,
};

type Error = Box<dyn std::error::Error>;
type Trips = Orchestrator<SqliteSagaStore, ToPartners>;

/// Every step is a partner's: its command goes into the outbox, in the saga's
/// transaction, with the trip's destination as the payload.
struct ToPartners(SqliteOutbox);

impl CommandSink<SqliteTx> for ToPartners {
    async fn dispatch(
        &self,
        tx: &mut SqliteTx,
        saga: &SagaInstance,
        cmd: &SagaCommand,
    ) -> saga_core::Result<Dispatched> {
        let msg = cmd.to_message("trip.commands", saga.id.to_string(), saga.data.clone());
        self.0.enqueue(tx, msg).await?;
        Ok(Dispatched::Sent)
    }
}

/// The `trip` saga, version 1 or 2.
fn trip(version: u32) -> Result<SagaDefinition, Error> {
    let booking = |name: &str, secs| {
        Step::new(name)
            .action(format!("{name}.book"))
            .compensate_with(format!("{name}.cancel"))
            .deadline(Duration::from_secs(secs))
    };
    let mut def = SagaDefinition::new("trip")
        .version(version)
        .parallel([booking("flight", 20), booking("hotel", 10)])
        .step(
            Step::new("charge")
                .action("card.charge")
                .compensate_with("card.refund"),
        );
    if version >= 2 {
        def = def.step(Step::new("insurance").action("insurance.issue"));
    }
    Ok(def.build()?)
}

/// A process start: the orchestrator over the file with the given versions registered.
fn process(pool: &SqlitePool, versions: &[u32]) -> Result<Trips, Error> {
    let mut orch = Orchestrator::new(
        SqliteSagaStore::new(pool.clone()),
        ToPartners(SqliteOutbox::new(pool.clone())),
    );
    for v in versions {
        orch = orch.register(trip(*v)?);
    }
    Ok(orch)
}

async fn book(orch: &Trips, destination: &str) -> Result<SagaId, Error> {
    let id = SagaId::new();
    let mut tx = orch.store().begin().await?;
    let started = orch
        .start(&mut tx, "trip", id, destination.to_owned().into())
        .await?;
    orch.store().commit(tx).await?;
    let sent: Vec<&str> = started.sent.iter().map(|c| c.name.as_str()).collect();
    println!(
        "{destination}: trip {id} on version {}, sent {sent:?} together",
        started.saga.definition_version
    );
    Ok(id)
}

/// The partners answer what waits in the outbox — all but the commands named in
/// `later` (left for another day). There is no room in Atlantis. Returns how many
/// commands were answered.
async fn partners(orch: &Trips, outbox: &SqliteOutbox, later: &[&str]) -> Result<usize, Error> {
    let mut answered = 0;
    for msg in outbox
        .claim("partners", 100, Duration::from_secs(60))
        .await?
    {
        let cmd = SagaCommand::from_headers(&msg.headers)?;
        if later.contains(&cmd.name.as_str()) {
            outbox.release(&[msg.id]).await?;
            continue;
        }
        let destination = String::from_utf8_lossy(&msg.payload);
        let reply = if cmd.name == "hotel.book" && destination == "Atlantis" {
            SagaReply::failed(&cmd, "no room in Atlantis")
        } else {
            SagaReply::succeeded(&cmd)
        };
        println!("  {destination}: {} -> {:?}", cmd.name, reply.outcome);
        orch.handle_and_commit(reply.saga_id, reply.event()).await?;
        outbox.mark_sent(&[msg.id]).await?;
        answered += 1;
    }
    Ok(answered)
}

/// The saga as stored, drawn where it stands, and checked against what should be.
async fn report(orch: &Trips, name: &str, id: SagaId, want: SagaStatus) -> Result<(), Error> {
    let saga = orch.store().get(id).await?.ok_or("saga not found")?;
    let def = orch.definition_of(&saga)?;
    println!(
        "\n{name}: {:?} on version {} ({} steps), reason {:?}\n```mermaid\n{}```",
        saga.state.status,
        saga.definition_version,
        def.steps().len(),
        saga.state.failure_reason,
        def.to_mermaid_at(&saga.state)
    );
    if saga.state.status != want || !saga.is_terminal() {
        return Err(format!("{name}: expected {want:?}, got {:?}", saga.state).into());
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let file = std::env::temp_dir().join(format!("example-trip-{}.db", std::process::id()));
    let pool = outbox::sqlite::connect(&file).await?;
    outbox::sqlite::migrate(&pool).await?;
    saga_core::sqlite::migrate(&pool).await?;

    println!("yesterday (version 1):");
    let yesterday = process(&pool, &[1])?;
    let paris = book(&yesterday, "Paris").await?;
    let atlantis = book(&yesterday, "Atlantis").await?;
    // The airline answers at once, the hotels only tomorrow; then the process stops.
    partners(
        &yesterday,
        &SqliteOutbox::new(pool.clone()),
        &["hotel.book"],
    )
    .await?;
    drop(yesterday);
    pool.close().await;

    println!("\ntoday (versions 1 and 2 registered):");
    let pool = outbox::sqlite::connect(&file).await?;
    let today = process(&pool, &[1, 2])?;
    let lisbon = book(&today, "Lisbon").await?;
    let outbox = SqliteOutbox::new(pool.clone());
    while partners(&today, &outbox, &[]).await? > 0 {}

    report(&today, "Paris", paris, SagaStatus::Completed).await?;
    report(&today, "Atlantis", atlantis, SagaStatus::Failed).await?;
    report(&today, "Lisbon", lisbon, SagaStatus::Completed).await?;
    let paris = today.store().get(paris).await?.ok_or("no Paris")?;
    let lisbon = today.store().get(lisbon).await?.ok_or("no Lisbon")?;
    // The old trip finished on its own version: no insurance step; the new one has it.
    assert_eq!((paris.definition_version, paris.state.steps.len()), (1, 3));
    assert_eq!(
        (lisbon.definition_version, lisbon.state.steps.len()),
        (2, 4)
    );

    pool.close().await;
    let _ = std::fs::remove_file(&file);
    Ok(())
}
