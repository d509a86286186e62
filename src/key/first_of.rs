//! Fallbacks between extractors.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use super::{Key, KeyError, KeyErrorKind, KeyExtractor, RequestView};
use crate::error::ConfigError;

/// The first alternative that finds a key: an API key, else the client IP.
///
/// Only a *missing* key falls through to the next alternative; a key that is
/// present but bad (empty, conflicting, too long …) is an error, so a client
/// cannot escape its own bucket by sending a broken key. Keys from different
/// alternatives never collide, even with equal bytes. A key an operator
/// writes (in the admin API, in an override or an exemption) is read by the
/// first alternative that can read it ([`KeyExtractor::key_from_text`]),
/// as that alternative's key only: a client that sends the same bytes
/// through another alternative gets neither its override nor its
/// exemption. A header reads any text, so the alternatives after one are
/// reached only by texts it refuses (exempt addresses with
/// [`Limit::exempt_ips`](crate::Limit::exempt_ips)).
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
    /// No alternative would find no key in any request: an error.
    fn check(&self) -> Result<(), ConfigError> {
        if self.alternatives.is_empty() {
            return Err(ConfigError::invalid(
                "first_of",
                "list at least one alternative (`FirstOf::new().or(...)`)",
            ));
        }
        for (k, alternative) in self.alternatives.iter().enumerate() {
            alternative
                .check()
                .map_err(|e| e.within(format!("first_of[{k}]")))?;
        }
        Ok(())
    }

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

    /// The key of the first alternative that reads `text` (see
    /// [`KeyExtractor::key_from_text`]), marked as that alternative's; if
    /// none does, the first alternative's error.
    fn key_from_text<'t>(&self, text: &'t str) -> Result<Key<'t>, KeyError> {
        let mut first_error = None;
        for (i, alternative) in self.alternatives.iter().enumerate() {
            match alternative.key_from_text(text) {
                Ok(key) => return Ok(key.tagged(i)),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        Err(first_error
            .unwrap_or_else(|| KeyError::new(KeyErrorKind::Missing, self.describe().into_owned())))
    }

    /// Every alternative's source, joined with "or".
    fn describe(&self) -> Cow<'_, str> {
        let sources: Vec<Cow<'_, str>> = self.alternatives.iter().map(|a| a.describe()).collect();
        Cow::Owned(sources.join(" or "))
    }

    /// Every alternative's settings, in order.
    fn settings(&self) -> Cow<'_, str> {
        let settings: Vec<Cow<'_, str>> = self.alternatives.iter().map(|a| a.settings()).collect();
        Cow::Owned(settings.join(" or "))
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::key::{Header, KeySecret, PeerIp};

    #[test]
    fn an_operator_s_key_is_the_alternative_s_that_reads_it() {
        let secret = KeySecret::from_bytes([7; 16]);
        let id = |key: &Key<'_>| secret.id(1, key);
        let first_of = FirstOf::new()
            .or(Header::bearer())
            .or(PeerIp::new())
            .or(Header::parse("x-api-key").unwrap());
        let mut req = http::Request::new(());
        req.extensions_mut()
            .insert("2001:db8::1".parse::<IpAddr>().unwrap());
        req.headers_mut()
            .insert("x-api-key", " a b ".parse().unwrap());
        let from_ip = first_of.extract(&RequestView::from_request(&req)).unwrap();
        let text = first_of.key_from_text("[2001:db8::2]").unwrap();
        assert_eq!(id(&text), id(&from_ip), "the address, as `PeerIp`'s");
        assert_ne!(
            id(&text),
            id(&PeerIp::new().key_from_text("2001:db8::2").unwrap()),
            "marked as the second alternative's"
        );
        // Neither a token nor an address: the header's.
        let inner = FirstOf::new()
            .or(PeerIp::new())
            .or(Header::parse("x-api-key").unwrap());
        let mut keyed = http::Request::new(());
        keyed
            .headers_mut()
            .insert("x-api-key", " a b ".parse().unwrap());
        let from_header = inner.extract(&RequestView::from_request(&keyed)).unwrap();
        assert_eq!(id(&inner.key_from_text("a b ").unwrap()), id(&from_header));
        // Read by none: the first alternative's error.
        let err = first_of.key_from_text("  ").unwrap_err();
        assert_eq!(err.kind(), KeyErrorKind::Empty);
        assert!(FirstOf::new().key_from_text("k").is_err());
    }
}
