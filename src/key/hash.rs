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

    /// The id of `key`'s bytes under `domain`, whichever alternative of a
    /// [`FirstOf`](super::FirstOf) produced it: how keys that an operator
    /// names (allowlists, overrides) are matched.
    pub(crate) fn named(&self, domain: u64, key: &Key<'_>) -> u64 {
        let mut h = SipHasher13::new_with_keys(self.k0, self.k1);
        h.write_u64(domain);
        key.hash_bytes_into(&mut h);
        h.finish()
    }

    /// The id of `key` under `domain` (a limit's [`key_domain`]): the one
    /// full hash of a request's key per limit, the same for every limit
    /// keyed the same way.
    pub(crate) fn id(&self, domain: u64, key: &Key<'_>) -> u64 {
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
