//! A persisted saga instance.

use std::fmt;

use bytes::Bytes;
use uuid::Uuid;

use crate::{SagaDefinition, SagaState};

/// Identifier of a saga instance.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SagaId(pub Uuid);

impl SagaId {
    /// A new time-ordered id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }
}

impl Default for SagaId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for SagaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl From<Uuid> for SagaId {
    fn from(id: Uuid) -> Self {
        Self(id)
    }
}

impl From<SagaId> for Uuid {
    fn from(id: SagaId) -> Self {
        id.0
    }
}

/// Parses the hyphenated (or simple) UUID form that [`Display`](fmt::Display) writes.
///
/// ```
/// use saga_core::SagaId;
///
/// let id = SagaId::new();
/// let again: SagaId = id.to_string().parse().unwrap();
/// assert_eq!(again, id);
/// assert!("not-a-saga".parse::<SagaId>().is_err());
/// ```
impl std::str::FromStr for SagaId {
    type Err = uuid::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

impl fmt::Debug for SagaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SagaId({})", self.0)
    }
}

/// A saga instance as stored: its definition's name and version, state, the
/// application's data (opaque bytes, e.g. protobuf), per-step deadlines and an
/// optimistic-lock version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaInstance {
    /// Id.
    pub id: SagaId,
    /// Name of the [`SagaDefinition`].
    pub saga_type: String,
    /// Version of the [`SagaDefinition`] it was started with, and is driven by.
    pub definition_version: u32,
    /// State machine state.
    pub state: SagaState,
    /// Application data the commands are built from (order id, amount, ...).
    pub data: Bytes,
    /// Deadline per step, in unix milliseconds, for the command last sent for it.
    pub deadlines: Vec<Option<i64>>,
    /// Incremented on every update; updates check it (optimistic concurrency).
    pub version: u64,
    /// Creation time, unix milliseconds.
    pub created_at: i64,
    /// Last update, unix milliseconds.
    pub updated_at: i64,
}

impl SagaInstance {
    /// A new instance of `def` in the STARTED state (version 0).
    pub fn new(def: &SagaDefinition, id: SagaId, data: Bytes, now_ms: i64) -> Self {
        Self {
            id,
            saga_type: def.name().to_owned(),
            definition_version: def.version(),
            state: SagaState::new(def),
            data,
            deadlines: vec![None; def.steps().len()],
            version: 0,
            created_at: now_ms,
            updated_at: now_ms,
        }
    }

    /// Whether nothing more will happen to it ([`SagaState::is_terminal`]).
    pub fn is_terminal(&self) -> bool {
        self.state.is_terminal()
    }

    /// The earliest pending deadline (what a store indexes for the deadline sweep).
    pub fn next_deadline(&self) -> Option<i64> {
        self.deadlines.iter().flatten().min().copied()
    }

    /// The state and the deadlines as stored by SQL backends (JSON text).
    #[cfg(any(feature = "mysql", feature = "sqlite"))]
    pub(crate) fn json_columns(&self) -> crate::Result<(String, String)> {
        Ok((
            serde_json::to_string(&self.state).map_err(crate::Error::storage)?,
            serde_json::to_string(&self.deadlines).map_err(crate::Error::storage)?,
        ))
    }

    /// Rebuild from the columns SQL backends store.
    #[cfg(any(feature = "mysql", feature = "sqlite"))]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn from_columns(
        id: &[u8],
        saga_type: String,
        definition_version: u32,
        state: &str,
        data: Vec<u8>,
        deadlines: &str,
        version: u64,
        created_at: i64,
        updated_at: i64,
    ) -> crate::Result<Self> {
        Ok(Self {
            id: SagaId(Uuid::from_slice(id).map_err(crate::Error::storage)?),
            saga_type,
            definition_version,
            state: serde_json::from_str(state).map_err(crate::Error::storage)?,
            data: data.into(),
            deadlines: serde_json::from_str(deadlines).map_err(crate::Error::storage)?,
            version,
            created_at,
            updated_at,
        })
    }

    /// The deterministic idempotency key of a step command:
    /// `{saga_id}:{step}:{action|compensation}`. Resends use the same key, so the
    /// participant applies a command at most once.
    pub fn idempotency_key(&self, step: usize, kind: crate::CommandKind) -> String {
        format!("{}:{}:{}", self.id, step, kind.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CommandKind, SagaDefinition, Step};

    #[test]
    fn ids_convert_both_ways_and_print_as_the_uuid() {
        let uuid = Uuid::now_v7();
        let id = SagaId::from(uuid);
        assert_eq!(Uuid::from(id), uuid);
        assert_eq!(id.to_string(), uuid.to_string());
        assert_eq!(id.to_string().parse::<SagaId>().unwrap(), id);
        assert_eq!(format!("{id:?}"), format!("SagaId({uuid})"));
        assert_ne!(SagaId::new(), SagaId::default());
    }

    #[test]
    fn a_new_instance_its_next_deadline_and_its_keys() {
        let def = SagaDefinition::new("s")
            .step(Step::new("a"))
            .step(Step::new("b"))
            .step(Step::new("c"))
            .build()
            .unwrap();
        let id = SagaId::new();
        let mut saga = SagaInstance::new(&def, id, Bytes::from_static(b"d"), 42);
        assert_eq!(
            (saga.version, saga.created_at, saga.updated_at),
            (0, 42, 42)
        );
        assert_eq!(saga.saga_type, "s");
        assert_eq!(saga.deadlines, [None, None, None]);
        assert_eq!(saga.next_deadline(), None);
        saga.deadlines = vec![Some(900), None, Some(-5)];
        assert_eq!(saga.next_deadline(), Some(-5));
        saga.deadlines = vec![None, Some(7), Some(8)];
        assert_eq!(saga.next_deadline(), Some(7));
        assert_eq!(
            saga.idempotency_key(2, CommandKind::Compensation),
            format!("{id}:2:compensation")
        );
        assert_eq!(
            saga.idempotency_key(0, CommandKind::Action),
            format!("{id}:0:action")
        );
    }
}
