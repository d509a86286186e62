//! Fallbacks between extractors.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use super::{Key, KeyError, KeyErrorKind, KeyExtractor, RequestView};

/// The first alternative that finds a key: an API key, else the client IP.
///
/// Only a *missing* key falls through to the next alternative; a key that is
/// present but bad (empty, conflicting, too long …) is an error, so a client
/// cannot escape its own bucket by sending a broken key. Keys from different
/// alternatives never collide, even with equal bytes.
#[derive(Clone, Default)]
pub struct FirstOf {
    alternatives: Vec<Arc<dyn KeyExtractor>>,
}

impl FirstOf {
    /// No alternatives yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an alternative, tried after the ones before it.
    #[must_use]
    pub fn or(mut self, extractor: impl KeyExtractor) -> Self {
        self.alternatives.push(Arc::new(extractor));
        self
    }

    /// Adds a shared alternative.
    #[must_use]
    pub fn or_shared(mut self, extractor: Arc<dyn KeyExtractor>) -> Self {
        self.alternatives.push(extractor);
        self
    }
}

impl fmt::Debug for FirstOf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FirstOf({} alternatives)", self.alternatives.len())
    }
}

impl KeyExtractor for FirstOf {
    fn extract<'a>(&self, request: &RequestView<'a>) -> Result<Key<'a>, KeyError> {
        for (i, alternative) in self.alternatives.iter().enumerate() {
            match alternative.extract(request) {
                Ok(key) => return Ok(key.tagged(i)),
                Err(e) if e.kind() == KeyErrorKind::Missing => {}
                Err(e) => return Err(e),
            }
        }
        Err(KeyError::new(
            KeyErrorKind::Missing,
            self.describe().into_owned(),
        ))
    }

    /// Every alternative's source, joined with "or".
    fn describe(&self) -> Cow<'_, str> {
        let sources: Vec<Cow<'_, str>> = self.alternatives.iter().map(|a| a.describe()).collect();
        Cow::Owned(sources.join(" or "))
    }
}
