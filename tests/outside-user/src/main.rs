//! Each SDK crate's README quick start, in one program, compiled against the crates as
//! a dependent sees them (package names, default features plus the one backend the
//! trip-booking case needs, no workspace settings) — then that case ([`trip`]).

use std::{sync::Arc, time::Duration};

use authz::{Authenticator, MemoryBlacklist, SigningKey, TokenIssuer, TokenValidator};
use outbox::memory::{MemoryBroker, MemoryOutbox};
use outbox::{OutboxMessage, OutboxStore, Relay, RelayConfig, Transactional};
use resilience::{BreakerError, CircuitBreaker, Retry, RetryError};
use saga_core::bytes::Bytes;
use saga_core::outbox::memory::MemoryTx;
use saga_core::{
    CommandSink, Dispatched, MemorySagaStore, Orchestrator, SagaCommand, SagaDefinition, SagaEvent,
    SagaId, SagaInstance, SagaStatus, Step,
};

struct Sink;

impl CommandSink<MemoryTx> for Sink {
    async fn dispatch(
        &self,
        _tx: &mut MemoryTx,
        _saga: &SagaInstance,
        cmd: &SagaCommand,
    ) -> saga_core::Result<Dispatched> {
        Ok(if cmd.name.starts_with("payment.") {
            Dispatched::Sent
        } else {
            Dispatched::Succeeded
        })
    }
}

mod trip;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // ordersys-resilience
    let breaker = CircuitBreaker::builder("user-service")
        .failure_threshold(5)
        .build();
    let r: Result<u32, RetryError<BreakerError<&str>>> = Retry::default()
        .call_with_breaker(&breaker, || async { Ok::<_, &str>(42) })
        .await;
    assert_eq!(r.unwrap(), 42);

    // ordersys-authz
    let key = SigningKey::hs256(b"an-example-secret-of-at-least-32-bytes!")?;
    let issuer = TokenIssuer::new(key.clone(), "me", "my-api").with_ttl(Duration::from_secs(900));
    let auth = Authenticator::new(
        TokenValidator::new(key.verifying_key(), "me", "my-api"),
        Arc::new(MemoryBlacklist::new()),
    );
    let issued = issuer.issue("user-42")?;
    let claims = auth.authenticate(&issued.token).await?;
    auth.revoke(&claims).await?;
    assert!(auth.authenticate(&issued.token).await.is_err());
    // Claims of the application's own, read back through the issuer's own validator.
    let scoped = issuer.issue_with(
        "user-42",
        [
            ("scope", authz::serde_json::json!("orders:read")),
            ("tenant", "acme".into()),
        ],
    )?;
    let claims = issuer.validator().validate(&scoped.token)?;
    assert!(claims.has_scope("orders:read"));
    assert_eq!(claims.claim::<String>("tenant")?.as_deref(), Some("acme"));

    // ordersys-outbox
    let store = MemoryOutbox::new();
    let mut tx = store.begin().await?;
    store
        .enqueue(&mut tx, OutboxMessage::new("orders", "order-1", "created"))
        .await?;
    store.commit(tx).await?;
    let broker = MemoryBroker::new();
    let config = RelayConfig::with_id("outside-user-0").with_batch_size(10);
    let relay = Relay::new(store.clone(), broker.clone(), config);
    assert_eq!(relay.run_once().await?.published, 1);

    // ordersys-saga
    let def = SagaDefinition::new("create_order")
        .step(Step::new("create_order").compensate_with("cancel_order"))
        .step(
            Step::new("payment")
                .action("payment.debit")
                .compensate_with("payment.refund"),
        )
        .step(Step::new("confirm_order"))
        .build()?;
    let orch = Orchestrator::new(MemorySagaStore::new(), Sink).register(def);
    let id = SagaId::new();
    let mut tx = MemoryTx::new();
    orch.start(&mut tx, "create_order", id, Bytes::new())
        .await?;
    tx.commit()?;
    let done = orch
        .handle_and_commit(id, SagaEvent::StepSucceeded { step: 1 })
        .await?;
    assert_eq!(done.saga.state.status, SagaStatus::Completed);

    println!("outside-user: all four crates work from their READMEs");

    trip::run().await
}
