//! One bucket for every request.

use std::borrow::Cow;

use super::{Key, KeyError, KeyErrorKind, KeyExtractor, RequestView};

/// Every request has the same key: the key of a global limit
/// ([`Limit::global`](crate::Limit::global), `key = { global = true }` in a policy
/// file).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Global;

/// The key of every request of a global limit, and its name for operators.
const GLOBAL: &str = "global";

impl KeyExtractor for Global {
    fn extract<'a>(&self, _request: &RequestView<'a>) -> Result<Key<'a>, KeyError> {
        Ok(Key::borrowed(GLOBAL.as_bytes()))
    }

    /// The one key, `global`; any other text names no request's key.
    fn key_from_text<'t>(&self, text: &'t str) -> Result<Key<'t>, KeyError> {
        if text == GLOBAL {
            Ok(Key::borrowed(GLOBAL.as_bytes()))
        } else {
            Err(KeyError::new(KeyErrorKind::Malformed, "global key")
                .with_detail("A global limit has one key: `global`."))
        }
    }

    fn describe(&self) -> Cow<'_, str> {
        Cow::Borrowed("global key")
    }
}
