//! The custom-key registry: extractors registered in code under names that
//! policy files refer to.

use std::fmt;
use std::sync::Arc;

use super::KeyExtractor;

/// Key extractors registered in code, for policy files to name with
/// `key = { custom = "<name>" }`: keys that come from what an authentication
/// layer put in the request's extensions, or any extractor of your own.
///
/// ```
/// use tower_ratelimit::key::{CustomKeys, Extension, Key};
/// use tower_ratelimit::Policy;
///
/// struct Account { id: u64 }
///
/// let custom = CustomKeys::new().with("account", Extension::new(|a: &Account| Key::from(a.id)));
/// let policy = Policy::from_toml_with(r#"
/// [[limits]]
/// name = "per_account"
/// key = { custom = "account" }
/// routes = [{ windows = ["100/minute"] }]
/// "#, &custom).unwrap();
/// # let _ = policy;
///
/// let err = Policy::from_toml_with(r#"
/// [[limits]]
/// name = "per_account"
/// key = { custom = "acount" }
/// routes = [{ windows = ["100/minute"] }]
/// "#, &custom).unwrap_err();
/// assert_eq!(err.field(), "limits[0].key.custom");
/// assert_eq!(err.line(), Some(4));
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "toml")))]
#[derive(Clone, Default)]
pub struct CustomKeys {
    keys: Vec<(Box<str>, Arc<dyn KeyExtractor>)>,
}

impl CustomKeys {
    /// No custom keys yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `extractor` under `name`, replacing any extractor registered
    /// under that name before.
    #[must_use]
    pub fn with(self, name: impl Into<String>, extractor: impl KeyExtractor) -> Self {
        self.with_shared(name, Arc::new(extractor))
    }

    /// Registers a shared extractor under `name`, replacing any extractor
    /// registered under that name before.
    #[must_use]
    pub fn with_shared(
        mut self,
        name: impl Into<String>,
        extractor: Arc<dyn KeyExtractor>,
    ) -> Self {
        let name: Box<str> = name.into().into_boxed_str();
        match self.keys.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = extractor,
            None => self.keys.push((name, extractor)),
        }
        self
    }

    /// The extractor registered under `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn KeyExtractor>> {
        self.keys.iter().find(|(n, _)| &**n == name).map(|(_, e)| e)
    }

    /// The registered names, in the order they were first registered.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|(n, _)| &**n)
    }
}

impl fmt::Debug for CustomKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CustomKeys")
            .field(&self.names().collect::<Vec<_>>())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::Global;

    #[test]
    fn a_name_registered_again_keeps_its_place_and_takes_the_new_extractor() {
        let first: Arc<dyn KeyExtractor> = Arc::new(Global);
        let second: Arc<dyn KeyExtractor> = Arc::new(Global);
        let custom = CustomKeys::new()
            .with_shared("a", Arc::clone(&first))
            .with("b", Global)
            .with_shared("a", Arc::clone(&second));
        assert_eq!(custom.names().collect::<Vec<_>>(), ["a", "b"]);
        assert!(Arc::ptr_eq(custom.get("a").unwrap(), &second));
        assert!(custom.get("c").is_none());
        assert_eq!(format!("{custom:?}"), r#"CustomKeys(["a", "b"])"#);
    }
}
