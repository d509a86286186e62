//! Why a store could not decide.

use std::error::Error;
use std::fmt;

/// What kind of failure a [`StoreError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Config,
    Connection,
    Timeout,
    Protocol,
    Unsupported,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Config => "unusable settings",
            Kind::Connection => "connection failed",
            Kind::Timeout => "timed out",
            Kind::Protocol => "unexpected answer",
            Kind::Unsupported => "not supported",
        })
    }
}

/// A store could not decide, or could not be set up: what kind of failure
/// it is (asked with [`is_connection`](Self::is_connection),
/// [`is_timeout`](Self::is_timeout), [`is_protocol`](Self::is_protocol),
/// [`is_config`](Self::is_config) and [`is_unsupported`](Self::is_unsupported)), a message for logs and, when there is
/// one, the underlying error as its [`source`](Error::source). The layer
/// never turns this into the inner service's error.
///
/// ```
/// use std::error::Error;
/// use tower_ratelimit::store::StoreError;
///
/// let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
/// let error = StoreError::connection("no answer").with_source(io);
/// assert!(error.is_connection() && !error.is_timeout());
/// assert_eq!(error.to_string(), "rate-limit store failed (connection failed): no answer");
/// assert!(error.source().is_some());
/// ```
#[derive(Debug)]
pub struct StoreError {
    kind: Kind,
    message: Box<str>,
    source: Option<Box<dyn Error + Send + Sync + 'static>>,
}

impl StoreError {
    fn new(kind: Kind, message: impl Into<String>) -> Self {
        StoreError {
            kind,
            message: message.into().into_boxed_str(),
            source: None,
        }
    }

    /// The store cannot do what it was asked (such as
    /// [`Store::peek`](super::Store::peek) on a store that does not
    /// implement it).
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(Kind::Unsupported, message)
    }

    /// The store's settings are unusable (the source, if any, is the
    /// [`ConfigError`](crate::ConfigError) that says why).
    pub fn config(message: impl Into<String>) -> Self {
        Self::new(Kind::Config, message)
    }

    /// The store could not be reached, or the connection failed.
    pub fn connection(message: impl Into<String>) -> Self {
        Self::new(Kind::Connection, message)
    }

    /// The store did not answer in time.
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(Kind::Timeout, message)
    }

    /// The store answered, but not as the protocol expects: a script or
    /// protocol error, or a reply that is not a decision.
    pub fn protocol(message: impl Into<String>) -> Self {
        Self::new(Kind::Protocol, message)
    }

    /// Sets the underlying error, returned by [`Error::source`].
    #[must_use]
    pub fn with_source(
        mut self,
        source: impl Into<Box<dyn Error + Send + Sync + 'static>>,
    ) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Whether the store cannot do what it was asked
    /// ([`StoreError::unsupported`]).
    pub fn is_unsupported(&self) -> bool {
        self.kind == Kind::Unsupported
    }

    /// Whether the store's settings are unusable ([`StoreError::config`]).
    pub fn is_config(&self) -> bool {
        self.kind == Kind::Config
    }

    /// Whether the store could not be reached, or the connection failed
    /// ([`StoreError::connection`]).
    pub fn is_connection(&self) -> bool {
        self.kind == Kind::Connection
    }

    /// Whether the store did not answer in time ([`StoreError::timeout`]).
    pub fn is_timeout(&self) -> bool {
        self.kind == Kind::Timeout
    }

    /// Whether the store's answer was not one the protocol expects
    /// ([`StoreError::protocol`]).
    pub fn is_protocol(&self) -> bool {
        self.kind == Kind::Protocol
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
