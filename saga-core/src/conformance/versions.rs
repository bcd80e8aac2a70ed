//! Versioned definitions across a deploy: instances finish on the version they started
//! on, new ones start on the newest, and an instance whose version is gone is left alone.

use super::OutboxSink;
use crate::{Error, Orchestrator, SagaDefinition, SagaEvent, SagaId, SagaStatus, SagaStore, Step};

/// `deploy` version 1: `a.do` then `b.do`; version 2 adds `check.do` between them.
fn deploy(version: u32) -> SagaDefinition {
    let steps = match version {
        1 => vec!["a.do", "b.do"],
        _ => vec!["a.do", "check.do", "b.do"],
    };
    steps
        .into_iter()
        .fold(SagaDefinition::new("deploy").version(version), |d, s| {
            d.step(Step::new(s.replace(".do", "")).action(s))
        })
        .build()
        .expect("valid definition")
}

/// Sagas started on version 1; the orchestrator "restarted" with versions 1 and 2: the
/// old ones go on with version 1's steps, new ones start on version 2; restarted again
/// with version 2 only: an instance of version 1 is refused with
/// [`Error::UnknownVersion`] and left exactly as it was. `store` and `outbox` must be
/// fresh and share their unit of work; clones must see the same data (a restart).
pub async fn versioned_sagas<S, O>(store: S, outbox: O)
where
    S: SagaStore + Clone,
    O: outbox::OutboxStore<Tx = S::Tx> + Clone,
{
    let orchestrator = |versions: &[u32]| {
        versions.iter().fold(
            Orchestrator::new(store.clone(), OutboxSink(outbox.clone())),
            |o, v| o.register(deploy(*v)),
        )
    };
    async fn start<S: SagaStore, K: crate::CommandSink<S::Tx>>(
        orch: &Orchestrator<S, K>,
    ) -> (SagaId, Vec<String>) {
        let id = SagaId::new();
        (id, super::start_committed(orch, "deploy", id).await)
    }
    async fn ok<S: SagaStore, K: crate::CommandSink<S::Tx>>(
        orch: &Orchestrator<S, K>,
        id: SagaId,
        step: usize,
    ) -> Vec<String> {
        let a = orch
            .handle_and_commit(id, SagaEvent::StepSucceeded { step })
            .await
            .expect("handle");
        assert!(a.changed);
        a.sent.into_iter().map(|c| c.name).collect()
    }

    let v1 = orchestrator(&[1]);
    let (old, sent) = start(&v1).await;
    assert_eq!(sent, ["a.do"]);
    let (orphan, _) = start(&v1).await;
    assert_eq!(store.get(old).await.unwrap().unwrap().definition_version, 1);
    drop(v1);

    // The deploy: both versions registered; new sagas run version 2.
    let both = orchestrator(&[2, 1]);
    assert_eq!(both.definition("deploy").unwrap().version(), 2);
    let (new, sent) = start(&both).await;
    assert_eq!(sent, ["a.do"]);
    assert_eq!(store.get(new).await.unwrap().unwrap().definition_version, 2);
    assert_eq!(
        ok(&both, old, 0).await,
        ["b.do"],
        "the old saga keeps version 1's steps"
    );
    assert_eq!(
        ok(&both, new, 0).await,
        ["check.do"],
        "the new one runs version 2"
    );
    assert_eq!(ok(&both, old, 1).await, Vec::<String>::new());
    assert_eq!(ok(&both, new, 1).await, ["b.do"]);
    assert_eq!(ok(&both, new, 2).await, Vec::<String>::new());
    for id in [old, new] {
        let s = store.get(id).await.unwrap().unwrap();
        assert_eq!(s.state.status, SagaStatus::Completed, "{id}");
    }
    drop(both);

    // Version 1 dropped while an instance of it still runs: refused, not corrupted.
    let v2 = orchestrator(&[2]);
    let before = store.get(orphan).await.unwrap().unwrap();
    match v2
        .handle_and_commit(orphan, SagaEvent::StepSucceeded { step: 0 })
        .await
    {
        Err(Error::UnknownVersion { saga_type, version }) => {
            assert_eq!((saga_type.as_str(), version), ("deploy", 1));
        }
        other => panic!("expected UnknownVersion, got {other:?}"),
    }
    assert_eq!(store.get(orphan).await.unwrap().unwrap(), before);
}
