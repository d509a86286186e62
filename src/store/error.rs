//! Why a store could not decide.

use std::error::Error;
use std::fmt;

/// What kind of failure a [`StoreError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// The store's settings are unusable (the source is the
    /// [`ConfigError`](crate::ConfigError) that says why).
    Config,
    /// The store could not be reached, or the connection failed.
    Connection,
    /// The store did not answer in time.
    Timeout,
    /// The store answered, but not as the protocol expects: a script or
    /// protocol error, or a reply that is not a decision.
    Protocol,
}

impl fmt::Display for StoreErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StoreErrorKind::Config => "unusable settings",
            StoreErrorKind::Connection => "connection failed",
            StoreErrorKind::Timeout => "timed out",
            StoreErrorKind::Protocol => "unexpected answer",
        })
    }
}

/// A store could not decide, or could not be set up: its [`kind`](Self::kind),
/// a message for logs and, when there is one, the underlying error as its
/// [`source`](Error::source). The layer never turns this into the inner
/// service's error.
///
/// ```
/// use std::error::Error;
/// use tower_ratelimit::store::{StoreError, StoreErrorKind};
///
/// let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
/// let error = StoreError::caused_by(StoreErrorKind::Connection, "no answer", io);
/// assert_eq!(error.kind(), StoreErrorKind::Connection);
/// assert_eq!(error.to_string(), "rate-limit store failed (connection failed): no answer");
/// assert!(error.source().is_some());
/// ```
#[derive(Debug)]
pub struct StoreError {
    kind: StoreErrorKind,
    message: Box<str>,
    source: Option<Box<dyn Error + Send + Sync + 'static>>,
}

impl StoreError {
    /// An error of `kind` with a message for logs.
    pub fn new(kind: StoreErrorKind, message: impl Into<String>) -> Self {
        StoreError {
            kind,
            message: message.into().into_boxed_str(),
            source: None,
        }
    }

    /// An error of `kind` with a message for logs, caused by `source`.
    pub fn caused_by(
        kind: StoreErrorKind,
        message: impl Into<String>,
        source: impl Into<Box<dyn Error + Send + Sync + 'static>>,
    ) -> Self {
        StoreError {
            source: Some(source.into()),
            ..Self::new(kind, message)
        }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rate-limit store failed ({}): {}",
            self.kind, self.message
        )
    }
}

impl Error for StoreError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn Error + 'static))
    }
}
