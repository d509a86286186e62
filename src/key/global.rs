//! One bucket for every request.

use std::borrow::Cow;

use super::{Key, KeyError, KeyExtractor, RequestView};

/// Every request has the same key: the limit is global (a whole-API ceiling).
/// Choose it on purpose; a missing key never falls into it by accident.
#[derive(Debug, Clone, Copy, Default)]
pub struct Global {
    _private: (),
}

impl Global {
    /// The global key.
    pub fn new() -> Self {
        Global { _private: () }
    }
}

impl KeyExtractor for Global {
    fn extract<'a>(&self, _request: &RequestView<'a>) -> Result<Key<'a>, KeyError> {
        Ok(Key::borrowed(b"global"))
    }

    fn describe(&self) -> Cow<'_, str> {
        Cow::Borrowed("global key")
    }
}
