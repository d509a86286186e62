//! Errors in a policy, from code or from a policy file.

use std::fmt;

/// What kind of mistake a [`ConfigError`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigErrorKind {
    /// The file is not valid TOML, or a field has the wrong type or is unknown.
    Syntax,
    /// A value is out of range or contradicts another (a zero limit, a cost
    /// larger than a window, two limits with one name …).
    InvalidValue,
    /// A route's path pattern cannot be compiled.
    BadPattern,
    /// A name refers to something that does not exist (a custom key extractor
    /// that was not registered, a capture the route does not have …).
    UnknownName,
    /// The policy file could not be read.
    Io,
}

/// A policy that cannot be enforced, with the field (and, for a policy file,
/// the line and column) at fault.
///
/// ```
/// use tower_ratelimit::{ConfigErrorKind, Policy};
///
/// let err = Policy::from_toml(r#"
/// [[limits]]
/// name = "per_key"
/// key = { header = "x-api-key" }
/// routes = [{ path = "/v1/{id", windows = ["60/minute"] }]
/// "#).unwrap_err();
/// assert_eq!(err.kind(), ConfigErrorKind::BadPattern);
/// assert_eq!(err.field(), "limits[0].routes[0].path");
/// assert_eq!(err.line(), Some(5));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    kind: ConfigErrorKind,
    field: String,
    message: String,
    position: Option<(usize, usize)>,
}

impl ConfigError {
    pub(crate) fn new(
        kind: ConfigErrorKind,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        ConfigError {
            kind,
            field: field.into(),
            message: message.into(),
            position: None,
        }
    }

    pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(ConfigErrorKind::InvalidValue, field, message)
    }

    /// Puts this error under a parent field: `routes[0]` inside `limits[1]`
    /// becomes `limits[1].routes[0]`.
    pub(crate) fn within(mut self, parent: impl fmt::Display) -> Self {
        self.field = if self.field.is_empty() {
            parent.to_string()
        } else if self.field.starts_with('[') {
            format!("{parent}{}", self.field)
        } else {
            format!("{parent}.{}", self.field)
        };
        self
    }

    /// The same error, under the key `key` of its parent (`plans.pro`,
    /// `plans."a.b"`: a key that is not bare is quoted).
    pub(crate) fn within_key(self, parent: &str, key: &str) -> Self {
        self.within(format!("{parent}.{}", key_segment(key)))
    }

    /// Sets the position in the policy file, unless one is set already.
    #[cfg(feature = "toml")]
    pub(crate) fn at(mut self, line: usize, column: usize) -> Self {
        self.position.get_or_insert((line, column));
        self
    }

    /// What kind of mistake this is.
    pub fn kind(&self) -> ConfigErrorKind {
        self.kind
    }

    /// The field at fault, as a path: `limits[0].routes[1].windows[0]`.
    pub fn field(&self) -> &str {
        &self.field
    }

    /// What is wrong, in words.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The 1-based line in the policy file, when the policy came from one.
    pub fn line(&self) -> Option<usize> {
        self.position.map(|p| p.0)
    }

    /// The 1-based column in the policy file, when the policy came from one.
    pub fn column(&self) -> Option<usize> {
        self.position.map(|p| p.1)
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid rate-limit policy")?;
        if let Some((line, column)) = self.position {
            write!(f, " at line {line}, column {column}")?;
        }
        if !self.field.is_empty() {
            write!(f, ", field `{}`", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// One key of a field's path: as it is if it is bare (letters, digits, `_`,
/// `-`), else quoted as `escape_debug` writes it.
pub(crate) fn key_segment(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        key.to_owned()
    } else {
        format!("\"{}\"", key.escape_debug())
    }
}
