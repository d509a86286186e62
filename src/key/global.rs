//! One bucket for every request.

use std::borrow::Cow;

use super::{Key, KeyError, KeyExtractor, RequestView};

/// Every request has the same key: the key of a global limit
/// ([`Limit::global`](crate::Limit::global), `key = "global"` in a policy
/// file).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Global;

impl KeyExtractor for Global {
    fn extract<'a>(&self, _request: &RequestView<'a>) -> Result<Key<'a>, KeyError> {
        Ok(Key::borrowed(b"global"))
    }

    fn describe(&self) -> Cow<'_, str> {
        Cow::Borrowed("global key")
    }
}
