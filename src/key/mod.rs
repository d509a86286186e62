//! Who a request counts against: key extractors and keys.
//!
//! A [`KeyExtractor`] reads a [`Key`] from a request (through a
//! [`RequestView`]): an API key header, a bearer token, an account an auth
//! layer put in the request's extensions, a path capture, the client's IP.
//! Closures `Fn(&RequestView<'_>) -> Option<K>` with `K: AsRef<[u8]>` are
//! extractors too.
//!
//! A key that is missing, empty, not UTF-8, longer than the policy's cap
//! (4 KiB by default), not in its expected form or given twice with
//! different values (in two header lines, or in one line a proxy folded with
//! a comma) is a [`KeyError`]. The request is then answered with a 401 JSON
//! error, is not counted and never reaches the inner service (unless its
//! key is missing and the limit skips such requests:
//! [`Limit::skip_missing_key`](crate::Limit::skip_missing_key)); no request
//! ever falls into a shared anonymous bucket by accident.
//!
//! Keys are never stored: the layer keeps only a keyed hash
//! (SipHash-1-3 under a secret, [`KeySecret`]) of the limit, route and key.
//!
//! ```
//! use tower_ratelimit::key::{Extension, FirstOf, Header, Key, KeyExtractor, PathCapture, PeerIp};
//!
//! struct Account { id: String }
//!
//! let api_key = Header::parse("X-API-Key").unwrap();
//! let token = Header::bearer();
//! let account = Extension::new(|a: &Account| Key::from(a.id.as_str()));
//! let call = PathCapture::new("call_id");
//! let key_or_ip = FirstOf::new().or(Header::parse("X-API-Key").unwrap()).or(PeerIp::new());
//! let custom = |req: &tower_ratelimit::key::RequestView<'_>| {
//!     req.headers().get("x-tenant").map(|v| v.as_bytes().to_vec())
//! };
//! # fn is_extractor(_: impl KeyExtractor) {}
//! # is_extractor(api_key); is_extractor(token); is_extractor(account);
//! # is_extractor(call); is_extractor(key_or_ip); is_extractor(custom);
//! ```

#[cfg(feature = "toml")]
mod custom;
mod error;
mod extension;
mod first_of;
mod global;
mod hash;
mod header;
mod ip;
mod path;
mod view;

use std::borrow::Cow;
use std::fmt;
use std::hash::Hasher;
use std::net::IpAddr;

#[cfg(feature = "toml")]
pub use custom::CustomKeys;
pub use error::{KeyError, KeyErrorKind};
pub use extension::Extension;
pub use first_of::FirstOf;
pub(crate) use global::Global;
pub use hash::KeySecret;
pub(crate) use hash::{domain_id, key_domain, route_id};
pub use header::Header;
pub(crate) use ip::{parse_net, peer_ip};
pub use ip::{ForwardedIp, PeerIp};
pub use path::PathCapture;
pub use view::RequestView;

use crate::error::ConfigError;
use crate::route::PercentDecode;

/// Reads the key a request counts against.
///
/// Implement it for your own types, or use a closure
/// `Fn(&RequestView<'_>) -> Option<K>` where `K: AsRef<[u8]>` (`None` means
/// the key is missing).
pub trait KeyExtractor: Send + Sync + 'static {
    /// The request's key, or why it has none.
    fn extract<'a>(&self, request: &RequestView<'a>) -> Result<Key<'a>, KeyError>;

    /// Where the key is sought, in words for error messages: `X-API-Key
    /// header`, `Bearer token in the Authorization header`.
    fn describe(&self) -> Cow<'_, str> {
        Cow::Borrowed("request's key")
    }

    /// Everything that decides which key a request gets, as text: compared
    /// when a reload replaces a policy, to say whether a limit's key
    /// changed ([`Changes`](crate::Changes)). The default is
    /// [`describe`](KeyExtractor::describe); an extractor with options that
    /// change the key (which proxies are trusted, how commas are read)
    /// names them too.
    fn settings(&self) -> Cow<'_, str> {
        self.describe()
    }

    /// The path captures this extractor needs from every route of its limit.
    /// The policy refuses to build when a route lacks one.
    fn required_captures(&self) -> Vec<&str> {
        Vec::new()
    }

    /// Checks the extractor when a policy with it is built: an error (its
    /// field under the limit's `key`) refuses the policy, for an extractor
    /// that could never find a key ([`FirstOf`] with no alternative). The
    /// default accepts.
    fn check(&self) -> Result<(), ConfigError> {
        Ok(())
    }

    /// The key this extractor reads from a request whose key, as an
    /// operator writes it (in the admin API's paths, in a key's override),
    /// is `text`: the same bytes, and for a [`FirstOf`] the same
    /// alternative, so that it names that request's buckets and override.
    ///
    /// [`PeerIp`] and [`ForwardedIp`] read an address (`192.0.2.1`,
    /// `2001:db8::1`, `[2001:db8::1]:443`, `::ffff:192.0.2.1`) as a
    /// request's, IPv4-mapped addresses as IPv4 and IPv6 grouped by the
    /// extractor's prefix; a [`Header`] trims the text as it trims a header
    /// line, and [`Header::bearer`] reads the token; a global limit's one
    /// key is `global`; a [`FirstOf`] reads it as the first of its
    /// alternatives that can. A text that no request could carry (empty,
    /// not an address …) is a [`KeyError`]. Only operators' texts are read
    /// this way, never requests. The default is `text`'s bytes, refused
    /// only when empty.
    fn key_from_text<'t>(&self, text: &'t str) -> Result<Key<'t>, KeyError> {
        if text.is_empty() {
            return Err(KeyError::new(
                KeyErrorKind::Empty,
                self.describe().into_owned(),
            ));
        }
        Ok(Key::from(text))
    }
}

/// The key a request of a limit keyed by `extractor` carries when an
/// operator writes it as `text` (see [`KeyExtractor::key_from_text`]), 1 to
/// `max_len` bytes like a request's; or why no request carries it, in words
/// that never repeat the key.
pub(crate) fn operator_key<'t>(
    extractor: &dyn KeyExtractor,
    text: &'t str,
    max_len: usize,
) -> Result<Key<'t>, String> {
    let key = extractor
        .key_from_text(text)
        .map_err(|e| format!("no request of this limit has this key: {e}"))?;
    if key.is_empty() || key.len() > max_len {
        return Err(format!("a key is 1 to {max_len} bytes"));
    }
    Ok(key)
}

impl<F, K> KeyExtractor for F
where
    F: Fn(&RequestView<'_>) -> Option<K> + Send + Sync + 'static,
    K: AsRef<[u8]>,
{
    fn extract<'a>(&self, request: &RequestView<'a>) -> Result<Key<'a>, KeyError> {
        match self(request) {
            Some(key) => Ok(Key::copied(key.as_ref())),
            None => Err(KeyError::new(KeyErrorKind::Missing, "the request's key")),
        }
    }
}

/// The key a request counts against: borrowed from the request where it can
/// be, copied inline when short, so extracting a key does not allocate.
#[derive(Clone, PartialEq, Eq)]
pub struct Key<'a> {
    repr: Repr<'a>,
    /// Which alternative of a [`FirstOf`] produced the key (16 bits per
    /// nesting level), so that equal bytes from different sources stay
    /// different keys.
    tag: u64,
}

const INLINE: usize = 32;

#[derive(Clone, PartialEq, Eq)]
enum Repr<'a> {
    Borrowed(&'a [u8]),
    /// A raw path segment: hashed percent-decoded, so `%61` and `a` are one key.
    PercentEncoded(&'a [u8]),
    Inline {
        len: u8,
        bytes: [u8; INLINE],
    },
    Owned(Box<[u8]>),
}

impl<'a> Key<'a> {
    /// A key borrowed from the request.
    pub fn borrowed(bytes: &'a [u8]) -> Self {
        Key {
            repr: Repr::Borrowed(bytes),
            tag: 0,
        }
    }

    /// A key copied from `bytes` (inline, without allocating, up to 32 bytes).
    pub fn copied(bytes: &[u8]) -> Self {
        let repr = if bytes.len() <= INLINE {
            let mut inline = [0; INLINE];
            inline[..bytes.len()].copy_from_slice(bytes);
            Repr::Inline {
                len: bytes.len() as u8,
                bytes: inline,
            }
        } else {
            Repr::Owned(bytes.into())
        };
        Key { repr, tag: 0 }
    }

    /// A raw (percent-encoded) path segment, compared decoded.
    pub fn path_segment(raw: &'a str) -> Self {
        Key {
            repr: Repr::PercentEncoded(raw.as_bytes()),
            tag: 0,
        }
    }

    /// Marks the key as coming from alternative `index` of a [`FirstOf`];
    /// an inner `FirstOf`'s mark is kept beneath the outer one's.
    pub(crate) fn tagged(mut self, index: usize) -> Self {
        self.tag = self.tag.rotate_left(16) ^ (index as u64 % 0xffff + 1);
        self
    }

    /// Which alternatives of [`FirstOf`]s produced the key (0: none).
    pub(crate) fn tag(&self) -> u64 {
        self.tag
    }

    /// The key's length in bytes (decoded, for a path segment).
    #[inline]
    pub fn len(&self) -> usize {
        match &self.repr {
            Repr::Borrowed(b) => b.len(),
            Repr::PercentEncoded(b) => PercentDecode::new(b).count(),
            Repr::Inline { len, .. } => usize::from(*len),
            Repr::Owned(b) => b.len(),
        }
    }

    /// Whether the key has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Feeds the key into a hasher.
    pub(crate) fn hash_into(&self, hasher: &mut impl Hasher) {
        if self.tag != 0 {
            hasher.write_u64(self.tag);
        }
        self.hash_bytes_into(hasher);
    }

    /// Feeds the key's bytes (not its tag) into a hasher.
    fn hash_bytes_into(&self, hasher: &mut impl Hasher) {
        match &self.repr {
            Repr::Borrowed(b) => hasher.write(b),
            Repr::Inline { len, bytes } => hasher.write(&bytes[..usize::from(*len)]),
            Repr::Owned(b) => hasher.write(b),
            Repr::PercentEncoded(b) => {
                let mut buf = [0u8; 64];
                let mut n = 0;
                for byte in PercentDecode::new(b) {
                    buf[n] = byte;
                    n += 1;
                    if n == buf.len() {
                        hasher.write(&buf);
                        n = 0;
                    }
                }
                hasher.write(&buf[..n]);
            }
        }
    }

    /// The key's tag and bytes, if they are held as they are hashed (all
    /// but a percent-encoded path segment's).
    #[inline]
    pub(crate) fn contiguous(&self) -> Option<(u64, &[u8])> {
        let bytes = match &self.repr {
            Repr::Borrowed(b) => b,
            Repr::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Repr::Owned(b) => &**b,
            Repr::PercentEncoded(_) => return None,
        };
        Some((self.tag, bytes))
    }

    /// The same key with the tag `tag` (see [`Key::tagged`]).
    #[cfg(test)]
    pub(crate) fn with_tag(mut self, tag: u64) -> Self {
        self.tag = tag;
        self
    }

    /// Appends the key's bytes (decoded, for a path segment) to `out`.
    pub(crate) fn extend_into(&self, out: &mut impl Extend<u8>) {
        match &self.repr {
            Repr::PercentEncoded(b) => out.extend(PercentDecode::new(b)),
            _ => out.extend(self.to_bytes().iter().copied()),
        }
    }

    /// The key's bytes (decoded, for a path segment).
    pub fn to_bytes(&self) -> Cow<'_, [u8]> {
        match &self.repr {
            Repr::Borrowed(b) => Cow::Borrowed(b),
            Repr::Inline { len, bytes } => Cow::Borrowed(&bytes[..usize::from(*len)]),
            Repr::Owned(b) => Cow::Borrowed(b),
            Repr::PercentEncoded(b) => Cow::Owned(PercentDecode::new(b).collect()),
        }
    }
}

impl fmt::Debug for Key<'_> {
    /// Keys are secrets (API keys, tokens): `Debug` shows only their length.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key(<{} bytes>)", self.len())
    }
}

impl<'a> From<&'a str> for Key<'a> {
    fn from(s: &'a str) -> Self {
        Key::borrowed(s.as_bytes())
    }
}

impl<'a> From<&'a [u8]> for Key<'a> {
    fn from(b: &'a [u8]) -> Self {
        Key::borrowed(b)
    }
}

impl From<u64> for Key<'_> {
    fn from(n: u64) -> Self {
        Key::copied(&n.to_be_bytes())
    }
}

impl From<IpAddr> for Key<'_> {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Key::copied(&v4.octets()),
            IpAddr::V6(v6) => Key::copied(&v6.octets()),
        }
    }
}
