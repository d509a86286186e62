//! The outbound half's random source, for jitter: SplitMix64 over an
//! atomic counter, seeded by the operating system.

use std::sync::atomic::{AtomicU64, Ordering};

/// A source of random numbers that many tasks may draw from at once.
#[derive(Debug)]
pub(crate) struct SplitMix(AtomicU64);

impl SplitMix {
    /// A source seeded with `seed`.
    pub(crate) fn seeded(seed: u64) -> Self {
        SplitMix(AtomicU64::new(seed))
    }

    /// A source seeded by the operating system.
    pub(crate) fn from_os() -> Self {
        Self::seeded(getrandom::u64().unwrap_or(0x5eed))
    }

    /// The next random number.
    pub(crate) fn next(&self) -> u64 {
        const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut z = self
            .0
            .fetch_add(GAMMA, Ordering::Relaxed)
            .wrapping_add(GAMMA);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A uniformly random number in `0..=max`.
    pub(crate) fn up_to(&self, max: u64) -> u64 {
        match max.checked_add(1) {
            Some(span) => self.next() % span,
            None => self.next(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_stay_in_range_and_reseeding_repeats_them() {
        let source = SplitMix::seeded(7);
        assert!((0..1_000).all(|_| source.up_to(9) <= 9));
        assert!((0..1_000).any(|_| source.up_to(9) == 9));
        assert_eq!(source.up_to(0), 0);
        let (a, b) = (SplitMix::seeded(7), SplitMix::seeded(7));
        assert_eq!(a.next(), b.next());
    }
}
