//! Keys from the request path: `{call_id}` in `/v1/calls/{call_id}/control`.

use std::borrow::Cow;

use super::{Key, KeyError, KeyErrorKind, KeyExtractor, RequestView};

/// The value of a capture of the route that matched, percent-decoded (so
/// `/calls/c%31` and `/calls/c1` are the same call).
///
/// Every route of a limit keyed by a capture must have that capture; the
/// policy refuses to build otherwise.
#[derive(Debug, Clone)]
pub struct PathCapture {
    name: Box<str>,
}

impl PathCapture {
    /// The capture `name` (without braces).
    pub fn new(name: impl Into<Box<str>>) -> Self {
        PathCapture { name: name.into() }
    }
}

impl KeyExtractor for PathCapture {
    fn extract<'a>(&self, request: &RequestView<'a>) -> Result<Key<'a>, KeyError> {
        match request.capture(&self.name) {
            Some(raw) => Ok(Key::path_segment(raw)),
            None => Err(KeyError::new(
                KeyErrorKind::Missing,
                self.describe().into_owned(),
            )),
        }
    }

    fn describe(&self) -> Cow<'_, str> {
        Cow::Owned(format!("`{}` path segment", self.name))
    }

    fn required_capture(&self) -> Option<&str> {
        Some(&self.name)
    }
}
