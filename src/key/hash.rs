//! Keyed hashing of keys into bucket ids.

use std::fmt;
use std::hash::Hasher;

use siphasher::sip::SipHasher13;

use super::Key;

/// The secret under which keys are hashed (SipHash-1-3, 128-bit key).
///
/// A layer keeps only `hash(secret, limit, route, key)`, never the key. The
/// default secret is random per process (every policy of the process that
/// sets none hashes under the same one, so a reloaded policy keeps its
/// counts); give every process the same secret when processes share a store.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeySecret {
    k0: u64,
    k1: u64,
}

impl KeySecret {
    /// A secret from the operating system's random source (falls back to a
    /// time- and address-derived value if the source is unavailable).
    pub fn random() -> Self {
        let pair = getrandom::u64().and_then(|a| getrandom::u64().map(|b| (a, b)));
        match pair {
            Ok((k0, k1)) => KeySecret { k0, k1 },
            Err(_) => {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64);
                let here = &nanos as *const u64 as u64;
                KeySecret {
                    k0: nanos,
                    k1: here.rotate_left(17) ^ u64::from(std::process::id()),
                }
            }
        }
    }

    /// The process's own random secret, drawn once: the default of every
    /// policy that sets none.
    pub(crate) fn of_process() -> Self {
        static SECRET: std::sync::OnceLock<KeySecret> = std::sync::OnceLock::new();
        *SECRET.get_or_init(KeySecret::random)
    }

    /// A secret from 16 bytes (shared by the processes of one deployment).
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        let mut k0 = [0u8; 8];
        let mut k1 = [0u8; 8];
        let mut i = 0;
        while i < 8 {
            k0[i] = bytes[i];
            k1[i] = bytes[i + 8];
            i += 1;
        }
        KeySecret {
            k0: u64::from_le_bytes(k0),
            k1: u64::from_le_bytes(k1),
        }
    }

    /// The id of `key` under `domain` (a limit's [`key_domain`]): the one
    /// full hash of a request's key per limit, the same for every limit
    /// keyed the same way.
    #[inline]
    pub(crate) fn id(&self, domain: u64, key: &Key<'_>) -> u64 {
        if let Some((tag, bytes)) = key.contiguous() {
            return match tag {
                0 => sip13(self.k0, self.k1, [domain], bytes),
                tag => sip13(self.k0, self.k1, [domain, tag], bytes),
            };
        }
        let mut h = SipHasher13::new_with_keys(self.k0, self.k1);
        h.write_u64(domain);
        key.hash_into(&mut h);
        h.finish()
    }
}

impl fmt::Debug for KeySecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeySecret(<hidden>)")
    }
}

impl KeySecret {
    /// The id, in `domain` (a route, a limit's penalties or in-flight
    /// count), of the key whose id is `id`: distinct ids stay distinct in
    /// each domain (the mix is a bijection), and, `id` being a keyed hash,
    /// ids of different domains do not meet but by chance.
    pub(crate) fn derive(id: u64, domain: u64) -> u64 {
        crate::shard::mix(id ^ domain)
    }
}

/// The hash domain of the keys a key extractor described as `description`
/// extracts: the same for every limit keyed the same way, so a request's key
/// has one id (its principal) across those limits, and its buckets, penalty
/// keys and in-flight counts stay apart through their own domains. The
/// description is compared without regard to ASCII case (`X-API-Key header`
/// and `x-api-key header` are one source).
pub(crate) fn key_domain(description: &str) -> u64 {
    let mut h = SipHasher13::new_with_keys(0x7261_7465_6c69_6d69, 0x7420_6b65_7973_7263);
    for b in description.bytes() {
        h.write_u8(b.to_ascii_lowercase());
    }
    h.write_u8(0xff);
    h.finish()
}

/// A stable id for the route of limit `limit` whose text is `route`
/// (its methods and pattern, as [`Display`](std::fmt::Display) writes
/// them): the same in every process, so processes that share a secret share
/// buckets, and the same whatever the route's place in its limit, so a
/// reloaded policy that adds, removes or moves routes keeps the others'
/// counts. `nth` tells apart routes of one limit with the same text (0 for
/// the first).
pub(crate) fn route_id(limit: &str, route: &str, nth: usize) -> u64 {
    let mut h = hasher();
    h.write(limit.as_bytes());
    h.write_u8(0xff);
    h.write(route.as_bytes());
    h.write_u8(0xff);
    h.write_u64(nth as u64);
    h.finish()
}

/// A stable id for one of limit `limit`'s own hash domains (its penalties,
/// overrides, in-flight counts), numbered by `domain` (the ids of earlier
/// releases, where routes were numbered from 0 and domains from the top).
pub(crate) fn domain_id(limit: &str, domain: u8) -> u64 {
    let mut h = hasher();
    h.write(limit.as_bytes());
    h.write_u8(0xff);
    h.write_u64(u64::MAX - u64::from(domain));
    h.finish()
}

fn hasher() -> SipHasher13 {
    SipHasher13::new_with_keys(0x7261_7465_6c69_6d69, 0x7420_726f_7574_6573)
}

/// SipHash-1-3 under `(k0, k1)` of the words `prefix` (little-endian, as
/// `Hasher::write_u64` feeds them) followed by `bytes`, in one pass over
/// whole words: the same value as [`SipHasher13`] fed the same, for a
/// fraction of its bookkeeping.
#[inline(always)]
fn sip13<const P: usize>(k0: u64, k1: u64, prefix: [u64; P], bytes: &[u8]) -> u64 {
    let mut v = Sip {
        v0: k0 ^ 0x736f_6d65_7073_6575,
        v1: k1 ^ 0x646f_7261_6e64_6f6d,
        v2: k0 ^ 0x6c79_6765_6e65_7261,
        v3: k1 ^ 0x7465_6462_7974_6573,
    };
    for m in prefix {
        v.compress(m);
    }
    let whole = bytes.len() & !7;
    let (words, rest) = bytes.split_at(whole);
    for word in words.chunks_exact(8) {
        v.compress(u64::from_le_bytes(word.try_into().unwrap_or([0; 8])));
    }
    // The last word: the bytes left (fewer than eight), then the length's
    // low byte on top.
    let mut last = ((P * 8 + bytes.len()) as u64) << 56;
    for (i, &b) in rest.iter().enumerate() {
        last |= u64::from(b) << (8 * i);
    }
    v.compress(last);
    v.v2 ^= 0xff;
    v.round();
    v.round();
    v.round();
    v.v0 ^ v.v1 ^ v.v2 ^ v.v3
}

/// SipHash's state.
struct Sip {
    v0: u64,
    v1: u64,
    v2: u64,
    v3: u64,
}

impl Sip {
    /// One word of the message, with SipHash-1-3's one round.
    #[inline(always)]
    fn compress(&mut self, m: u64) {
        self.v3 ^= m;
        self.round();
        self.v0 ^= m;
    }

    #[inline(always)]
    fn round(&mut self) {
        self.v0 = self.v0.wrapping_add(self.v1);
        self.v1 = self.v1.rotate_left(13) ^ self.v0;
        self.v0 = self.v0.rotate_left(32);
        self.v2 = self.v2.wrapping_add(self.v3);
        self.v3 = self.v3.rotate_left(16) ^ self.v2;
        self.v0 = self.v0.wrapping_add(self.v3);
        self.v3 = self.v3.rotate_left(21) ^ self.v0;
        self.v2 = self.v2.wrapping_add(self.v1);
        self.v1 = self.v1.rotate_left(17) ^ self.v2;
        self.v2 = self.v2.rotate_left(32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_pass_ids_equal_the_streaming_hasher() {
        let secret = KeySecret::from_bytes(*b"0123456789abcdef");
        let bytes: Vec<u8> = (0..80u8).map(|b| b.wrapping_mul(37)).collect();
        for len in 0..bytes.len() {
            for tag in [0, 1, 0x0002_0001] {
                let key = Key::borrowed(&bytes[..len]).with_tag(tag);
                let mut h = SipHasher13::new_with_keys(secret.k0, secret.k1);
                h.write_u64(42);
                key.hash_into(&mut h);
                assert_eq!(secret.id(42, &key), h.finish(), "{len} bytes, tag {tag}");
            }
        }
    }
}
