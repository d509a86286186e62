//! Keys from headers: a named header (`X-API-Key`) or a bearer token.

use std::borrow::Cow;

use http::header::{HeaderName, AUTHORIZATION};
use http::{HeaderMap, HeaderValue};

use super::{Key, KeyError, KeyErrorKind, KeyExtractor, RequestView};
use crate::error::ConfigError;

/// The value of a named header, such as `X-API-Key`, or the token of an
/// `Authorization: Bearer <token>` header ([`Header::bearer`]).
///
/// The header may appear more than once only with the same value; different
/// values are a [`KeyErrorKind::Conflicting`] error, never "the first one".
/// A comma in the value is read the same way, because a proxy may fold
/// duplicated header lines into one, comma-separated: `X-API-Key: k_1, k_2`
/// is a conflict and `X-API-Key: k_1, k_1` is `k_1`. Keys that may hold
/// commas need [`Header::allow_commas`].
#[derive(Debug, Clone)]
pub struct Header {
    name: HeaderName,
    display: Box<str>,
    commas: Commas,
    /// Whether the value is `Bearer <token>` and the key the token.
    bearer: bool,
}

impl Header {
    /// The header `name`.
    pub fn new(name: HeaderName) -> Self {
        let display = format!("{name} header").into_boxed_str();
        Header {
            name,
            display,
            commas: Commas::Separate,
            bearer: false,
        }
    }

    /// The token of an `Authorization: Bearer <token>` header.
    ///
    /// The scheme is case-insensitive and followed by one or more spaces; the
    /// token must be an RFC 6750 `b64token`: letters, digits, `-._~+/`, then
    /// optional `=` padding. Anything else (a tab, a space or a comma inside,
    /// `=` before the end, another scheme) is a [`KeyErrorKind::Malformed`]
    /// error, not a new key. Duplicated `Authorization` lines, or lines a
    /// proxy folded into one with a comma, are one token only when they
    /// agree, as for any header.
    pub fn bearer() -> Self {
        Header {
            name: AUTHORIZATION,
            display: BEARER_SOURCE.into(),
            commas: Commas::Separate,
            bearer: true,
        }
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
            commas: Commas::Separate,
            bearer: false,
        })
    }

    /// Reads a comma as part of the key: `X-API-Key: k_1, k_2` is the one key
    /// `k_1, k_2` instead of a [`KeyErrorKind::Conflicting`] error. Header
    /// lines with different values are still a conflict. Use it only when
    /// keys may hold commas and no proxy in front of the service folds
    /// duplicated header lines into one (a client could then send two keys
    /// and be counted as a third). A bearer token never holds a comma, so
    /// this does nothing to [`Header::bearer`].
    #[must_use]
    pub fn allow_commas(mut self) -> Self {
        if !self.bearer {
            self.commas = Commas::InKey;
        }
        self
    }

    /// The header's name.
    pub fn name(&self) -> &HeaderName {
        &self.name
    }
}

impl KeyExtractor for Header {
    fn extract<'a>(&self, request: &RequestView<'a>) -> Result<Key<'a>, KeyError> {
        let (value, ascii) =
            single_value(request.headers(), &self.name, &self.display, self.commas)?;
        if self.bearer {
            bearer_token(value)
        } else {
            text_key(value, ascii, &self.display)
        }
    }

    fn describe(&self) -> Cow<'_, str> {
        Cow::Borrowed(&self.display)
    }

    fn settings(&self) -> Cow<'_, str> {
        Cow::Owned(format!("{self:?}"))
    }

    /// `text` trimmed of spaces and tabs, as a header line is: the token,
    /// for [`Header::bearer`]. A text that no header line could carry
    /// (control characters, or a comma where commas separate values) is
    /// an error.
    fn key_from_text<'t>(&self, text: &'t str) -> Result<Key<'t>, KeyError> {
        let bytes = trim_spaces(text.as_bytes());
        if self.bearer {
            return token_key(bytes);
        }
        let malformed = |detail: &'static str| {
            KeyError::new(KeyErrorKind::Malformed, self.display.to_string()).with_detail(detail)
        };
        if HeaderValue::from_bytes(bytes).is_err() {
            return Err(malformed("A header cannot hold control characters."));
        }
        if self.commas == Commas::Separate && bytes.contains(&b',') {
            return Err(malformed(
                "Its commas separate values, so a key read from it never holds one.",
            ));
        }
        // UTF-8 already, as a `str`: no need to check it again.
        text_key(bytes, true, &self.display)
    }
}

const BEARER_SOURCE: &str = "Bearer token in the Authorization header";

/// The token of an `Authorization` header's `credentials`: `Bearer <token>`.
fn bearer_token(credentials: &[u8]) -> Result<Key<'_>, KeyError> {
    let (scheme, token) = match credentials.iter().position(|&b| b == b' ') {
        Some(i) => (&credentials[..i], &credentials[i + 1..]),
        None => (credentials, &b""[..]),
    };
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return Err(
            KeyError::new(KeyErrorKind::Malformed, "Authorization header")
                .with_detail("Expected `Authorization: Bearer <token>`."),
        );
    }
    let start = token.iter().position(|&b| b != b' ').unwrap_or(token.len());
    token_key(&token[start..])
}

/// The key of a bearer token: a non-empty RFC 6750 `b64token`.
#[inline]
fn token_key(token: &[u8]) -> Result<Key<'_>, KeyError> {
    let key = text_key(token, false, BEARER_SOURCE)?;
    if !is_b64token(token) {
        return Err(
            KeyError::new(KeyErrorKind::Malformed, BEARER_SOURCE).with_detail(
                "A bearer token is letters, digits and `-._~+/`, then optional `=` padding.",
            ),
        );
    }
    Ok(key)
}

/// Whether a comma in a key header separates values or is part of the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Commas {
    /// A comma separates values, as between folded header lines.
    Separate,
    /// A comma is part of the key.
    InKey,
}

/// The one value of header `name`, trimmed, and whether it is known to be
/// ASCII; or why there is none: no line at all, or lines (with
/// [`Commas::Separate`], comma-separated elements of lines) that differ.
fn single_value<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
    source: &str,
    commas: Commas,
) -> Result<(&'a [u8], bool), KeyError> {
    let Some((line, more)) = first_line(headers, name) else {
        return Err(KeyError::new(KeyErrorKind::Missing, source.to_owned()));
    };
    // The common case: one line, one element, read once for both commas
    // and non-ASCII bytes.
    let bytes = line.as_bytes();
    if !more {
        let (comma, ascii) = scan(bytes);
        if commas == Commas::InKey || !comma {
            return Ok((trim_spaces(bytes), ascii));
        }
    }
    let mut values = headers.get_all(name).iter().flat_map(|value| {
        let bytes = value.as_bytes();
        let separator = move |b: &u8| commas == Commas::Separate && *b == b',';
        bytes.split(separator).map(trim_spaces)
    });
    let Some(first) = values.next() else {
        return Err(KeyError::new(KeyErrorKind::Missing, source.to_owned()));
    };
    if values.any(|other| other != first) {
        return Err(KeyError::new(KeyErrorKind::Conflicting, source.to_owned()));
    }
    Ok((first, false))
}

/// The most header lines read one by one rather than looked up by name:
/// comparing a few names is quicker than hashing one (by instruction
/// count, up to about seven lines of common headers).
const SCANNED: usize = 6;

/// The first line of header `name`, and whether there is another.
#[inline]
fn first_line<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<(&'a HeaderValue, bool)> {
    fn first_of<'a>(
        mut lines: impl Iterator<Item = &'a HeaderValue>,
    ) -> Option<(&'a HeaderValue, bool)> {
        let first = lines.next()?;
        Some((first, lines.next().is_some()))
    }
    if headers.len() <= SCANNED {
        first_of(headers.iter().filter(|(n, _)| *n == name).map(|(_, v)| v))
    } else {
        first_of(headers.get_all(name).iter())
    }
}

/// Whether `bytes` hold a comma, and whether they are all ASCII: one pass,
/// eight bytes at a time.
fn scan(bytes: &[u8]) -> (bool, bool) {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    const COMMAS: u64 = u64::from_ne_bytes([b','; 8]);
    let (mut comma, mut high) = (0, 0);
    let mut word = |w: u64| {
        // A byte of `x` is zero where `w` has a comma.
        let x = w ^ COMMAS;
        comma |= x.wrapping_sub(ONES) & !x & HIGH;
        high |= w & HIGH;
    };
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let mut w = [0; 8];
        w.copy_from_slice(chunk);
        word(u64::from_ne_bytes(w));
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        // Padded with spaces: neither a comma nor a high byte.
        let mut w = [b' '; 8];
        w[..rest.len()].copy_from_slice(rest);
        word(u64::from_ne_bytes(w));
    }
    (comma != 0, high == 0)
}

/// A key from trimmed header bytes: non-empty, UTF-8 (`ascii`: known to be
/// ASCII already).
#[inline]
fn text_key<'a>(bytes: &'a [u8], ascii: bool, source: &str) -> Result<Key<'a>, KeyError> {
    if bytes.is_empty() {
        return Err(KeyError::new(KeyErrorKind::Empty, source.to_owned()));
    }
    if !ascii && std::str::from_utf8(bytes).is_err() {
        return Err(KeyError::new(KeyErrorKind::NotUtf8, source.to_owned()));
    }
    Ok(Key::borrowed(bytes))
}

/// RFC 6750 `b64token`: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" /
/// "/" ) *"="`.
fn is_b64token(token: &[u8]) -> bool {
    let body = token.len() - token.iter().rev().take_while(|&&b| b == b'=').count();
    body > 0
        && token[..body].iter().all(|&b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        })
}

/// The bytes without leading and trailing spaces and tabs.
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

#[cfg(test)]
mod tests {
    use super::scan;

    #[test]
    fn scan_finds_commas_and_non_ascii_bytes_anywhere() {
        for len in 0..40 {
            let plain = vec![b'k'; len];
            assert_eq!(scan(&plain), (false, true), "{len}");
            for at in 0..len {
                let mut comma = plain.clone();
                comma[at] = b',';
                assert_eq!(scan(&comma), (true, true), "{len} {at}");
                let mut high = plain.clone();
                high[at] = 0xC3;
                assert_eq!(scan(&high), (false, false), "{len} {at}");
                // Bytes next to a comma's value must not pass for one.
                for b in [b'+', b'-', 0x2C ^ 0x80, 0x2C ^ 0x01, 0x2D, 0x00] {
                    let mut near = plain.clone();
                    near[at] = b;
                    assert!(!scan(&near).0, "{len} {at} {b}");
                }
            }
        }
    }
}
