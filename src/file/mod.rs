//! Policy files: policies written in TOML (feature `toml`, on by default).
//!
//! A policy file says in TOML what [`Policy::builder`] says in code, and is
//! compiled through the same builder, so a file and the equivalent code mean
//! exactly the same thing. The format is described in the crate's README.
//!
//! ```
//! use tower_ratelimit::Policy;
//!
//! let policy = Policy::from_toml(r#"
//! refusal = "talkpilot"
//! report = "minute"
//!
//! [[limits]]
//! name = "per_key"
//! key = { header = "X-API-Key" }
//!
//! [[limits.routes]]
//! windows = ["60/minute", "1000/hour"]
//! "#).unwrap();
//! assert_eq!(policy.limit_names().collect::<Vec<_>>(), ["per_key"]);
//! ```
//!
//! Every mistake is a [`ConfigError`] naming the field as a path
//! (`limits[1].routes[0].windows[2]`) and its line and column in the file:
//! TOML syntax, wrong types and unknown fields ([`ConfigErrorKind::Syntax`])
//! as well as values that make no sense (a window of `0/minute`, a cost
//! larger than a window, a custom key nobody registered …).
//!
//! The work is split by concern: `spec` is the file's shape as serde reads
//! it, `convert` turns that shape into a [`PolicyBuilder`] (and `keys` turns
//! key tables into extractors), and `locate` holds the parsed document and
//! gives every error the line and column of the value it names.

mod convert;
mod keys;
mod locate;
mod spec;

use std::path::Path;

use self::locate::{line_column, Document};
use self::spec::FileSpec;
use crate::error::{ConfigError, ConfigErrorKind};
use crate::key::CustomKeys;
use crate::policy::{Policy, PolicyBuilder};

impl Policy {
    /// Loads a policy from TOML text (the format is in the crate's README).
    ///
    /// Errors name the field (`limits[0].routes[1].windows[0]`) and carry the
    /// line and column of the value at fault.
    ///
    /// ```
    /// use tower_ratelimit::{ConfigErrorKind, Policy};
    ///
    /// let policy = Policy::from_toml(r#"
    /// [[limits]]
    /// name = "per_key"
    /// key = { header = "X-API-Key" }
    ///
    /// [[limits.routes]]
    /// methods = ["POST"]
    /// path = "/v1/keys"
    /// windows = ["10/hour"]
    ///
    /// [[limits.routes]]
    /// windows = ["60/minute", { limit = 1000, period = "1h" }]
    /// "#).unwrap();
    /// assert_eq!(policy.limit_names().collect::<Vec<_>>(), ["per_key"]);
    ///
    /// let err = Policy::from_toml(r#"
    /// [[limits]]
    /// name = "per_key"
    /// key = { header = "X-API-Key" }
    /// routes = [{ windows = ["60/minute", "0/hour"] }]
    /// "#).unwrap_err();
    /// assert_eq!(err.kind(), ConfigErrorKind::InvalidValue);
    /// assert_eq!(err.field(), "limits[0].routes[0].windows[1]");
    /// assert_eq!((err.line(), err.column()), (Some(5), Some(37)));
    /// ```
    #[cfg_attr(docsrs, doc(cfg(feature = "toml")))]
    pub fn from_toml(text: &str) -> Result<Policy, ConfigError> {
        Self::from_toml_with(text, &CustomKeys::new())
    }

    /// Loads a policy from TOML text whose `key = { custom = "<name>" }`
    /// tables name extractors registered in `custom`.
    #[cfg_attr(docsrs, doc(cfg(feature = "toml")))]
    pub fn from_toml_with(text: &str, custom: &CustomKeys) -> Result<Policy, ConfigError> {
        let document = Document::parse(text)?;
        let spec: FileSpec = document.deserialize()?;
        spec.into_builder(custom)
            .and_then(PolicyBuilder::build)
            .map_err(|error| document.locate(error))
    }

    /// Loads a policy from a TOML file. A file that cannot be read is a
    /// [`ConfigErrorKind::Io`] error naming the path.
    #[cfg_attr(docsrs, doc(cfg(feature = "toml")))]
    pub fn from_toml_file(path: impl AsRef<Path>) -> Result<Policy, ConfigError> {
        Self::from_toml_file_with(path, &CustomKeys::new())
    }

    /// Loads a policy from a TOML file whose `key = { custom = "<name>" }`
    /// tables name extractors registered in `custom`.
    #[cfg_attr(docsrs, doc(cfg(feature = "toml")))]
    pub fn from_toml_file_with(
        path: impl AsRef<Path>,
        custom: &CustomKeys,
    ) -> Result<Policy, ConfigError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| {
            ConfigError::new(
                ConfigErrorKind::Io,
                "",
                format!("cannot read the policy file `{}`: {e}", path.display()),
            )
        })?;
        let text = String::from_utf8(bytes).map_err(|e| {
            let bytes = e.as_bytes();
            let (line, column) = line_column(bytes, e.utf8_error().valid_up_to());
            ConfigError::new(
                ConfigErrorKind::Syntax,
                "",
                format!("the policy file `{}` is not valid UTF-8", path.display()),
            )
            .at(line, column)
        })?;
        Self::from_toml_with(&text, custom)
    }
}
