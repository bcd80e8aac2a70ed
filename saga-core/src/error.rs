//! The crate's error type.

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors of saga definitions, stores and the orchestrator.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No saga with this id.
    #[error("saga {0} not found")]
    NotFound(crate::SagaId),
    /// A saga with this id exists already.
    #[error("saga {0} already exists")]
    AlreadyExists(crate::SagaId),
    /// No definition is registered under this saga type.
    #[error("unknown saga type `{0}`")]
    UnknownType(String),
    /// The definition is unusable (no steps, duplicate names, ...).
    #[error("invalid saga definition: {0}")]
    InvalidDefinition(String),
    /// Someone else changed the saga since it was loaded (optimistic concurrency).
    #[error("saga {0} was modified concurrently")]
    Conflict(crate::SagaId),
    /// The storage backend failed.
    #[error("saga storage error: {0}")]
    Storage(#[source] outbox::BoxError),
    /// Dispatching a command failed (e.g. the outbox write).
    #[error("dispatching a saga command failed: {0}")]
    Dispatch(#[source] outbox::BoxError),
}

impl Error {
    /// Wrap a storage backend error.
    pub fn storage(e: impl Into<outbox::BoxError>) -> Self {
        Self::Storage(e.into())
    }

    /// Wrap a dispatch error.
    pub fn dispatch(e: impl Into<outbox::BoxError>) -> Self {
        Self::Dispatch(e.into())
    }
}

impl From<outbox::Error> for Error {
    fn from(e: outbox::Error) -> Self {
        Self::Storage(Box::new(e))
    }
}
