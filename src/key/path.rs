//! Keys from the request path: `{call_id}` in `/v1/calls/{call_id}/control`,
//! alone or within another key (the caller's API key, the path's account).

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use smallvec::SmallVec;

use super::{Key, KeyError, KeyErrorKind, KeyExtractor, RequestView};
use crate::error::ConfigError;

/// The value of a capture of the route that matched, percent-decoded (so
/// `/calls/c%31` and `/calls/c1` are the same call).
///
/// [`PathCapture::within`] counts the capture within another key: a call's
/// commands per API key, a leg's actions per account. Then whoever names a
/// call or a leg that is not theirs spends their own budget of it, never the
/// owner's.
///
/// Every route of a limit keyed by a capture must have that capture (and
/// the captures of its scope); the policy refuses to build otherwise.
///
/// ```
/// use tower_ratelimit::key::{Header, PathCapture};
///
/// // Each API key's own commands to each call.
/// let per_call = PathCapture::new("call_id").within(Header::bearer());
/// # let _ = per_call;
/// ```
#[derive(Clone)]
pub struct PathCapture {
    name: Box<str>,
    /// The key the capture is counted within, if any.
    scope: Option<Arc<dyn KeyExtractor>>,
}

impl PathCapture {
    /// The capture `name` (without braces).
    pub fn new(name: impl Into<Box<str>>) -> Self {
        PathCapture {
            name: name.into(),
            scope: None,
        }
    }

    /// The capture counted within the key `scope` reads: one count for each
    /// pair of that key and the capture's value. A request without the
    /// scope's key has no key (as `scope` says: missing, or an error). The
    /// pair is a key of its own, copied: over 32 bytes, it costs one
    /// allocation per request. In the admin API it is written as the
    /// scope's key and the value joined by `/`, so a value with a `/` (sent
    /// as `%2F`) cannot be named there.
    #[must_use]
    pub fn within(self, scope: impl KeyExtractor) -> Self {
        self.within_shared(Arc::new(scope))
    }

    /// The same as [`PathCapture::within`], with a shared scope.
    #[must_use]
    pub fn within_shared(mut self, scope: Arc<dyn KeyExtractor>) -> Self {
        self.scope = Some(scope);
        self
    }
}

impl fmt::Debug for PathCapture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PathCapture")
            .field("name", &self.name)
            .field("within", &self.scope.as_ref().map(|s| s.describe()))
            .finish()
    }
}

/// The key of `inner` within `outer`: the outer key's tag and length, then
/// both keys' bytes, so that no two pairs make one key. Built on the stack;
/// a pair of more than 32 bytes in all is then copied to the heap.
fn scoped(outer: &Key<'_>, inner: &Key<'_>) -> Key<'static> {
    let mut bytes: SmallVec<[u8; 192]> = SmallVec::new();
    bytes.extend_from_slice(&outer.tag().to_le_bytes());
    bytes.extend_from_slice(&(outer.len() as u32).to_le_bytes());
    outer.extend_into(&mut bytes);
    inner.extend_into(&mut bytes);
    Key::copied(&bytes)
}

impl PathCapture {
    /// The key of a captured segment: decoded, it must be UTF-8, as every
    /// key (`%FF` is a 401, as axum's `Path<String>` refuses it too).
    fn segment<'a>(&self, raw: &'a str) -> Result<Key<'a>, KeyError> {
        let key = Key::path_segment(raw);
        let decoded = |key: &Key<'_>| {
            let mut bytes: SmallVec<[u8; 128]> = SmallVec::new();
            key.extend_into(&mut bytes);
            std::str::from_utf8(&bytes).is_ok()
        };
        if raw.contains('%') && !decoded(&key) {
            return Err(KeyError::new(
                KeyErrorKind::NotUtf8,
                self.describe().into_owned(),
            ));
        }
        Ok(key)
    }
}

impl KeyExtractor for PathCapture {
    fn extract<'a>(&self, request: &RequestView<'a>) -> Result<Key<'a>, KeyError> {
        let Some(raw) = request.capture(&self.name) else {
            return Err(KeyError::new(
                KeyErrorKind::Missing,
                self.describe().into_owned(),
            ));
        };
        let segment = self.segment(raw)?;
        match &self.scope {
            None => Ok(segment),
            Some(scope) => Ok(scoped(&scope.extract(request)?, &segment)),
        }
    }

    fn describe(&self) -> Cow<'_, str> {
        match &self.scope {
            None => Cow::Owned(format!("`{}` path segment", self.name)),
            Some(scope) => Cow::Owned(format!(
                "`{}` path segment within the {}",
                self.name,
                scope.describe()
            )),
        }
    }

    fn settings(&self) -> Cow<'_, str> {
        match &self.scope {
            None => self.describe(),
            Some(scope) => Cow::Owned(format!("{} within {}", self.name, scope.settings())),
        }
    }

    fn required_captures(&self) -> Vec<&str> {
        let mut names = vec![&*self.name];
        if let Some(scope) = &self.scope {
            names.extend(scope.required_captures());
        }
        names
    }

    fn check(&self) -> Result<(), ConfigError> {
        match &self.scope {
            Some(scope) => scope.check().map_err(|e| e.within("within")),
            None => Ok(()),
        }
    }

    /// The capture's value; within a scope, the scope's key and the value
    /// joined by the last `/` (`tp_key/call_42`).
    fn key_from_text<'t>(&self, text: &'t str) -> Result<Key<'t>, KeyError> {
        let Some(scope) = &self.scope else {
            return match text {
                "" => Err(KeyError::new(
                    KeyErrorKind::Empty,
                    self.describe().into_owned(),
                )),
                text => Ok(Key::from(text)),
            };
        };
        let Some((outer, value)) = text.rsplit_once('/').filter(|(_, v)| !v.is_empty()) else {
            return Err(KeyError::new(
                KeyErrorKind::Missing,
                format!(
                    "{}: write the scope's key and the value, joined by `/`",
                    self.describe()
                ),
            ));
        };
        Ok(scoped(&scope.key_from_text(outer)?, &Key::from(value)))
    }
}
