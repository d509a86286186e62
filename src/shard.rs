//! Pieces shared by the sharded, per-key state of the memory store, the
//! penalty box and the concurrency limiter.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Keeps each shard on its own cache lines, so two threads locking two
/// shards do not slow each other down.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Padded<T>(pub(crate) T);

/// A map from keys that are already well spread (keyed SipHash output, or
/// passed through [`mix`]): hashing them again would only cost time.
pub(crate) type KeyMap<V> = HashMap<u64, V, BuildHasherDefault<PassThrough>>;

/// A map from keys that may not be hashes (small integers): each key is
/// spread by [`mix`] on the way in.
pub(crate) type MixedKeyMap<V> = HashMap<u64, V, BuildHasherDefault<Mixing>>;

/// The hasher of [`KeyMap`]: a `u64` key is its own hash.
#[derive(Default)]
pub(crate) struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// The hasher of [`MixedKeyMap`]: a `u64` key's hash is [`mix`] of it.
#[derive(Default)]
pub(crate) struct Mixing(u64);

impl Hasher for Mixing {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = mix(self.0.rotate_left(8) ^ u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = mix(n);
    }
}

/// Whether a collection holds so few of its slots that it should give
/// memory back (to twice its length).
pub(crate) fn sparse(len: usize, capacity: usize) -> bool {
    capacity > 64 && len * 4 < capacity
}

/// A bijection on `u64` that spreads every input bit over the output
/// (splitmix64's finalizer), so that keys which are not hashes still fill
/// every shard and table evenly, and distinct keys stay distinct.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
