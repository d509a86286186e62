//! Where the memory store counts the windows it has no room for: a
//! fixed-size, conservative count-min sketch of window states.
//!
//! Each bucket owns one cell in each of [`ROWS`] rows, placed by its keyed
//! hash (so a client cannot choose whom it shares cells with). A cell holds a
//! window state like an exact entry's, but shared: it is raised to at least
//! every state charged to any bucket placed there. A bucket is decided by the
//! least of its cells, read as a fresh key's state once expired. So a cell is
//! never below the true state of any bucket counted in it: a bucket counted
//! here is never admitted past its quota, and may be refused early by what
//! the buckets sharing its cells used (in each row at once).

use super::algorithm::expires_at;
use crate::policy::Algorithm;

/// Cells per bucket.
const ROWS: usize = 2;

/// The fewest cells in a row.
const MIN_WIDTH: usize = 32;

/// One odd multiplier per row: a row's cell is the top bits of the product.
const SEEDS: [u64; ROWS] = [0x9E37_79B9_7F4A_7C15, 0xC2B2_AE3D_27D4_EB4F];

/// The sketch of one algorithm and window period in one shard.
#[derive(Debug)]
pub(super) struct Overflow {
    /// `ROWS` rows of `1 << bits` states, one after the other.
    cells: Box<[u64]>,
    bits: u32,
}

impl Overflow {
    /// A sketch of about `cells` cells (at least `ROWS × MIN_WIDTH`; rows
    /// are rounded up to a power of two), every one a fresh key's state.
    pub(super) fn new(cells: usize) -> Self {
        let width = (cells / ROWS).next_power_of_two().max(MIN_WIDTH);
        Overflow {
            cells: vec![0; ROWS * width].into_boxed_slice(),
            bits: width.trailing_zeros(),
        }
    }

    /// The cell of `bucket` in row `row`.
    fn index(&self, row: usize, bucket: u64) -> usize {
        let mixed = (bucket ^ (bucket >> 32)).wrapping_mul(SEEDS[row]);
        (row << self.bits) + (mixed >> (64 - self.bits)) as usize
    }

    /// The state to decide `bucket` by at `now`: the least of its cells, an
    /// expired one counting as a fresh key's state (0).
    pub(super) fn estimate(
        &self,
        algorithm: Algorithm,
        period_ns: u64,
        bucket: u64,
        now: u64,
    ) -> u64 {
        (0..ROWS)
            .map(|row| {
                live(
                    algorithm,
                    period_ns,
                    self.cells[self.index(row, bucket)],
                    now,
                )
            })
            .min()
            .unwrap_or(0)
    }

    /// Charges `bucket` with `state`, the state its estimate stepped to:
    /// each of its cells is raised to it, if below.
    pub(super) fn charge(
        &mut self,
        algorithm: Algorithm,
        period_ns: u64,
        bucket: u64,
        state: u64,
        now: u64,
    ) {
        for row in 0..ROWS {
            let i = self.index(row, bucket);
            let cell = live(algorithm, period_ns, self.cells[i], now);
            self.cells[i] = cell.max(state);
        }
    }

    /// When every cell will be a fresh key's state (a time `<= now`: it
    /// is), so that the sketch can be dropped losslessly.
    pub(super) fn expires_at(&self, algorithm: Algorithm, period_ns: u64, now: u64) -> u64 {
        self.cells
            .iter()
            .map(|&cell| expires_at(algorithm, period_ns, cell, now))
            .max()
            .unwrap_or(0)
    }
}

/// `state` as it stands at `now`: itself, or 0 once it equals a fresh key's.
fn live(algorithm: Algorithm, period_ns: u64, state: u64, now: u64) -> u64 {
    if expires_at(algorithm, period_ns, state, now) > now {
        state
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::algorithm::step;
    use crate::Window;

    const S: u64 = 1_000_000_000;
    const T0: u64 = 1_700_000_000 * S;

    #[test]
    fn a_cell_shared_with_other_buckets_never_reads_below_any_of_them() {
        let window = Window::per_minute(10);
        let (algorithm, period) = (Algorithm::Gcra, window.period_ns());
        let mut sketch = Overflow::new(0);
        assert_eq!(sketch.cells.len(), ROWS * MIN_WIDTH);
        // Far more buckets than cells: every cell is shared.
        let mut states = Vec::new();
        for bucket in 0..1000u64 {
            let bucket = bucket.wrapping_mul(0x2545_F491_4F6C_DD1D);
            let est = sketch.estimate(algorithm, period, bucket, T0);
            let s = step(algorithm, &window, est, T0, 1);
            if s.admits {
                sketch.charge(algorithm, period, bucket, s.next, T0);
                states.push((bucket, s.next));
            }
        }
        for (bucket, state) in states {
            assert!(sketch.estimate(algorithm, period, bucket, T0) >= state);
        }
        // A minute on, every cell is fresh again, and the sketch can go.
        assert_eq!(sketch.expires_at(algorithm, period, T0), T0 + 60 * S);
        assert_eq!(sketch.estimate(algorithm, period, 5, T0 + 60 * S), 0);
    }

    #[test]
    fn a_fixed_window_cell_restarts_with_the_window() {
        let window = Window::per_minute(3);
        let (algorithm, period) = (Algorithm::FixedWindow, window.period_ns());
        let mut sketch = Overflow::new(64);
        let now = T0 - T0 % period;
        let mut state = 0;
        for _ in 0..3 {
            let s = step(
                algorithm,
                &window,
                sketch.estimate(algorithm, period, 9, now),
                now,
                1,
            );
            assert!(s.admits);
            sketch.charge(algorithm, period, 9, s.next, now);
            state = s.next;
        }
        assert_eq!(sketch.estimate(algorithm, period, 9, now), state);
        let refused = step(algorithm, &window, state, now, 1);
        assert!(!refused.admits);
        assert_eq!(sketch.estimate(algorithm, period, 9, now + period), 0);
    }
}
