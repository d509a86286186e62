//! Why a request has no usable key.

use std::borrow::Cow;
use std::fmt;

/// What is wrong with a request's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeyErrorKind {
    /// The request does not carry the key at all.
    Missing,
    /// The key is present but empty.
    Empty,
    /// The key is not valid UTF-8 (or holds bytes a header cannot).
    NotUtf8,
    /// The key is longer than the policy's cap.
    TooLong,
    /// The key is given more than once, with different values.
    Conflicting,
    /// The key is present but not in the expected form (a non-Bearer
    /// `Authorization`, an address that does not parse …).
    Malformed,
}

impl KeyErrorKind {
    /// A stable, machine-readable code for error bodies and logs.
    pub const fn code(self) -> &'static str {
        match self {
            KeyErrorKind::Missing => "missing_key",
            KeyErrorKind::Empty => "empty_key",
            KeyErrorKind::NotUtf8 => "invalid_key_encoding",
            KeyErrorKind::TooLong => "key_too_long",
            KeyErrorKind::Conflicting => "conflicting_keys",
            KeyErrorKind::Malformed => "malformed_key",
        }
    }
}

/// A request has no usable key: what is wrong, and where the key was sought
/// (`the X-API-Key header`). Never holds the key itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError {
    kind: KeyErrorKind,
    source: Cow<'static, str>,
    detail: Option<Cow<'static, str>>,
}

impl KeyError {
    /// A key error of `kind` for the key sought in `source`.
    pub fn new(kind: KeyErrorKind, source: impl Into<Cow<'static, str>>) -> Self {
        KeyError {
            kind,
            source: source.into(),
            detail: None,
        }
    }

    /// Adds what was expected, for [`KeyErrorKind::Malformed`] and
    /// [`KeyErrorKind::TooLong`].
    #[must_use]
    pub fn with_detail(mut self, detail: impl Into<Cow<'static, str>>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// What is wrong.
    pub fn kind(&self) -> KeyErrorKind {
        self.kind
    }

    /// Where the key was sought, in words.
    pub fn source_name(&self) -> &str {
        &self.source
    }
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let source = &self.source;
        match self.kind {
            KeyErrorKind::Missing => write!(f, "The request has no {source}."),
            KeyErrorKind::Empty => write!(f, "The {source} is empty."),
            KeyErrorKind::NotUtf8 => write!(f, "The {source} is not valid UTF-8."),
            KeyErrorKind::TooLong => write!(f, "The {source} is too long."),
            KeyErrorKind::Conflicting => write!(
                f,
                "The request has more than one {source}, with different values."
            ),
            KeyErrorKind::Malformed => write!(f, "The {source} is malformed."),
        }?;
        if let Some(detail) = &self.detail {
            write!(f, " {detail}")?;
        }
        Ok(())
    }
}

impl std::error::Error for KeyError {}
