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
    /// The saga was started on a version of its definition that is not registered
    /// (a deploy dropped it while instances of it still run): the instance is left as
    /// it is until the version is registered again.
    #[error("saga `{saga_type}` version {version} is not registered")]
    UnknownVersion {
        /// The saga type.
        saga_type: String,
        /// The version the instance was started on.
        version: u32,
    },
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

/// Keeps the kind: what failed to reach the broker or the dead-letter destination, or a
/// handler, is a [`Dispatch`](Error::Dispatch) error; the rest (the store, a conflicting
/// write) is [`Storage`](Error::Storage). The outbox error is the source either way.
impl From<outbox::Error> for Error {
    fn from(e: outbox::Error) -> Self {
        match e {
            outbox::Error::Publish { .. }
            | outbox::Error::DeadLetter(_)
            | outbox::Error::Handler(_) => Self::Dispatch(Box::new(e)),
            _ => Self::Storage(Box::new(e)),
        }
    }
}

/// A SQL error is a [`Storage`](Error::Storage) error: `?` works on `sqlx` calls in a
/// [`CommandSink`](crate::CommandSink) or a store.
#[cfg(any(feature = "mysql", feature = "sqlite"))]
impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        Self::Storage(Box::new(e))
    }
}

#[cfg(test)]
mod tests {
    use super::Error;

    #[test]
    fn an_outbox_error_keeps_its_kind() {
        let dispatch = [
            outbox::Error::publish("t", "broker down"),
            outbox::Error::DeadLetter("refused".into()),
            outbox::Error::Handler("failed".into()),
        ];
        for e in dispatch {
            let shown = e.to_string();
            let e = Error::from(e);
            assert!(
                matches!(&e, Error::Dispatch(s) if s.to_string() == shown),
                "{e:?}"
            );
        }
        for e in [
            outbox::Error::storage("disk full"),
            outbox::Error::Conflict("duplicate".into()),
        ] {
            let shown = e.to_string();
            let e = Error::from(e);
            assert!(
                matches!(&e, Error::Storage(s) if s.to_string() == shown),
                "{e:?}"
            );
        }
    }

    #[cfg(feature = "sqlite")]
    #[test]
    fn a_sql_error_is_a_storage_error() {
        let e: Error = sqlx::Error::RowNotFound.into();
        assert!(matches!(e, Error::Storage(_)));
    }
}
