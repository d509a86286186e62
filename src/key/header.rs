//! Keys from headers: a named header (`X-API-Key`) or a bearer token.

use std::borrow::Cow;

use http::header::{HeaderName, AUTHORIZATION};
use http::{HeaderMap, HeaderValue};

use super::{Key, KeyError, KeyErrorKind, KeyExtractor, RequestView};
use crate::error::ConfigError;

/// The value of a named header, such as `X-API-Key`.
///
/// The header may appear more than once only with the same value; different
/// values are a [`KeyErrorKind::Conflicting`] error, never "the first one".
#[derive(Debug, Clone)]
pub struct Header {
    name: HeaderName,
    display: Box<str>,
}

impl Header {
    /// The header `name`.
    pub fn new(name: HeaderName) -> Self {
        let display = format!("{name} header").into_boxed_str();
        Header { name, display }
    }

    /// The header named `name` (case-insensitive), or an error if `name` is
    /// not a valid header name. Error messages use `name` as written.
    pub fn parse(name: &str) -> Result<Self, ConfigError> {
        let parsed = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            ConfigError::invalid(
                "header",
                format!("`{}` is not a valid header name", name.escape_debug()),
            )
        })?;
        Ok(Header {
            name: parsed,
            display: format!("{name} header").into_boxed_str(),
        })
    }

    /// The header's name.
    pub fn name(&self) -> &HeaderName {
        &self.name
    }
}

impl KeyExtractor for Header {
    fn extract<'a>(&self, request: &RequestView<'a>) -> Result<Key<'a>, KeyError> {
        let value = single_value(request.headers(), &self.name, &self.display)?;
        text_key(value.as_bytes(), &self.display)
    }

    fn describe(&self) -> Cow<'_, str> {
        Cow::Borrowed(&self.display)
    }
}

/// The token of an `Authorization: Bearer <token>` header (the scheme is
/// case-insensitive).
#[derive(Debug, Clone, Copy, Default)]
pub struct Bearer {
    _private: (),
}

impl Bearer {
    /// The bearer token extractor.
    pub fn new() -> Self {
        Bearer { _private: () }
    }
}

const BEARER_SOURCE: &str = "Bearer token in the Authorization header";

impl KeyExtractor for Bearer {
    fn extract<'a>(&self, request: &RequestView<'a>) -> Result<Key<'a>, KeyError> {
        let value = single_value(request.headers(), &AUTHORIZATION, BEARER_SOURCE)?;
        let bytes = value.as_bytes();
        let (scheme, token) = match bytes.iter().position(|&b| b == b' ') {
            Some(i) => (&bytes[..i], &bytes[i + 1..]),
            None => (bytes, &b""[..]),
        };
        if !scheme.eq_ignore_ascii_case(b"bearer") {
            return Err(
                KeyError::new(KeyErrorKind::Malformed, "Authorization header")
                    .with_detail("Expected `Authorization: Bearer <token>`."),
            );
        }
        let token = trim_spaces(token);
        if token.contains(&b' ') {
            return Err(KeyError::new(KeyErrorKind::Malformed, BEARER_SOURCE)
                .with_detail("A bearer token has no spaces."));
        }
        text_key(token, BEARER_SOURCE)
    }

    fn describe(&self) -> Cow<'_, str> {
        Cow::Borrowed(BEARER_SOURCE)
    }
}

/// The one value of header `name`, or an error if it is missing or given
/// twice with different values.
fn single_value<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
    source: &str,
) -> Result<&'a HeaderValue, KeyError> {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return Err(KeyError::new(KeyErrorKind::Missing, source.to_owned()));
    };
    if values.any(|other| other != first) {
        return Err(KeyError::new(KeyErrorKind::Conflicting, source.to_owned()));
    }
    Ok(first)
}

/// A key from header bytes: trimmed, non-empty, UTF-8.
fn text_key<'a>(bytes: &'a [u8], source: &str) -> Result<Key<'a>, KeyError> {
    let bytes = trim_spaces(bytes);
    if bytes.is_empty() {
        return Err(KeyError::new(KeyErrorKind::Empty, source.to_owned()));
    }
    if std::str::from_utf8(bytes).is_err() {
        return Err(KeyError::new(KeyErrorKind::NotUtf8, source.to_owned()));
    }
    Ok(Key::borrowed(bytes))
}

fn trim_spaces(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(start, |e| e + 1);
    &bytes[start..end]
}
