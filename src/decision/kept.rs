//! What a response future keeps of its request's decision, for
//! [`Decision::current`]: the decision itself, or, for a plain admission,
//! the figures it is made from (most handlers never ask for it).

use super::{Basis, Decision, WindowReport};
use crate::clock::NANOS;

/// The decision a response future keeps for [`Decision::current`]: built,
/// or a plain admission's figures, built into one only when asked for.
#[derive(Debug)]
pub(crate) enum Kept {
    Built(Decision),
    Admission(Admission),
}

impl Kept {
    /// The decision.
    pub(super) fn decision(&self) -> Decision {
        match self {
            Kept::Built(decision) => decision.clone(),
            Kept::Admission(admission) => admission.decision(),
        }
    }
}

/// One counted window, as its report is made from it: the store's status
/// of it, where it belongs in the policy, and its period.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CountedWindow {
    /// The limit and route it belongs to.
    pub(crate) origin: (u16, u16),
    /// Its index in the route's quota.
    pub(crate) window: u8,
    pub(crate) limit: u32,
    /// What is left, as reported (none on a refusal).
    pub(crate) remaining: u32,
    /// Nanoseconds until the window is full again or ends.
    pub(crate) reset_after: u64,
    /// The window's period, in nanoseconds.
    pub(crate) period: u64,
}

impl CountedWindow {
    /// What the headers say about the window, at `now`.
    #[inline]
    pub(crate) fn report(&self, now: u64) -> WindowReport {
        WindowReport {
            limit_index: self.origin.0,
            route_index: self.origin.1,
            window_index: self.window,
            limit: self.limit,
            remaining: self.remaining,
            reset: reset_at(now, self.reset_after),
            reset_after: self.reset_after.div_ceil(NANOS),
            period: self.period.div_ceil(NANOS),
            concurrent: false,
        }
    }
}

/// When a window `reset_after` ns from `now` resets, in Unix seconds
/// (rounded up: never before it does).
#[inline]
pub(crate) fn reset_at(now: u64, reset_after: u64) -> u64 {
    (now + reset_after).div_ceil(NANOS)
}

/// The decision of a plain admission (every window admitted the request,
/// no shadow limit would have refused it, no in-flight cap), kept as the
/// figures it is made from.
#[derive(Debug)]
pub(crate) struct Admission {
    now: u64,
    basis: Basis,
    /// Index in `windows`.
    reported: u8,
    len: u8,
    windows: [CountedWindow; Admission::WINDOWS],
}

impl Admission {
    /// The most windows an admission holds (a request counted in more has
    /// its decision built at once).
    pub(crate) const WINDOWS: usize = 4;

    /// An admission at `now` on `basis`, whose reported window will be
    /// window `reported`, with no window yet.
    #[inline]
    pub(crate) fn new(now: u64, basis: Basis, reported: usize) -> Self {
        Admission {
            now,
            basis,
            reported: reported as u8,
            len: 0,
            windows: [CountedWindow::default(); Self::WINDOWS],
        }
    }

    /// Adds the next window (at most [`Admission::WINDOWS`] in all).
    #[inline]
    pub(crate) fn push(&mut self, window: CountedWindow) {
        self.windows[usize::from(self.len)] = window;
        self.len += 1;
    }

    /// The decision.
    fn decision(&self) -> Decision {
        let windows = &self.windows[..usize::from(self.len)];
        Decision {
            refusal: None,
            basis: self.basis,
            shadow_refused: false,
            retry_after: 0,
            reported: u16::from(self.reported),
            windows: windows.iter().map(|w| w.report(self.now)).collect(),
        }
    }
}
