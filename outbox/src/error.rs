//! The crate's error type.

/// A boxed backend error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors of outbox stores, publishers, relays and consumers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The storage backend failed (connection, SQL, ...).
    #[error("outbox storage error: {0}")]
    Storage(#[source] BoxError),
    /// The broker did not acknowledge a message.
    #[error("publish to `{topic}` failed: {source}")]
    Publish {
        /// Destination topic.
        topic: String,
        /// The broker's error.
        #[source]
        source: BoxError,
    },
    /// A concurrent transaction changed the same data; the unit of work was not applied.
    #[error("conflicting concurrent write: {0}")]
    Conflict(String),
    /// The dead-letter destination refused a message.
    #[error("dead-lettering failed: {0}")]
    DeadLetter(#[source] BoxError),
    /// A message handler failed.
    #[error("handler failed: {0}")]
    Handler(#[source] BoxError),
}

impl Error {
    /// Wrap a storage backend error.
    pub fn storage(e: impl Into<BoxError>) -> Self {
        Self::Storage(e.into())
    }

    /// Wrap a broker error for `topic`.
    pub fn publish(topic: impl Into<String>, e: impl Into<BoxError>) -> Self {
        Self::Publish {
            topic: topic.into(),
            source: e.into(),
        }
    }
}

/// A SQL error is a [`Storage`](Error::Storage) error: `?` works on `sqlx` calls in a
/// handler or a store.
#[cfg(any(feature = "mysql", feature = "sqlite"))]
impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        Self::Storage(Box::new(e))
    }
}
