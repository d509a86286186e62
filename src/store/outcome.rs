//! What a store says about a request.

use smallvec::SmallVec;

use super::algorithm::Step;
use crate::decision::Basis;

/// The state of one window after a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowStatus {
    /// Which check (in the order they were given) this window belongs to.
    pub check: u8,
    /// Which window of that check's quota.
    pub window: u8,
    /// The window's limit.
    pub limit: u32,
    /// What is left: after this request if admitted, as it stands if refused.
    pub remaining: u32,
    /// Nanoseconds until the window is full again (GCRA) or ends (fixed).
    pub reset_after: u64,
    /// Nanoseconds until this window would admit the request; 0 if it does.
    pub retry_after: u64,
}

/// Makes the statuses of a decision tell the truth about the windows that
/// are not charged: on a refusal, none is (and a shadow window never makes
/// the client wait); on an admission whose shadow checks would have refused,
/// the shadow ones are not. Those report what they have now, not what they
/// would have had: `as_is(i, status)` is window `i`'s step at cost 0, and
/// `shadow(check)` whether a check is a shadow one. Every store settles its
/// statuses with this, so all report alike.
pub(crate) fn settle_uncharged(
    statuses: &mut [WindowStatus],
    admitted: bool,
    shadow_admitted: bool,
    shadow: impl Fn(usize) -> bool,
    as_is: impl Fn(usize, &WindowStatus) -> Step,
) {
    if admitted && shadow_admitted {
        return;
    }
    for (i, status) in statuses.iter_mut().enumerate() {
        let is_shadow = shadow(usize::from(status.check));
        if !admitted && is_shadow {
            status.retry_after = 0;
        }
        let charged = admitted && (shadow_admitted || !is_shadow);
        if !charged && status.retry_after == 0 {
            let now = as_is(i, status);
            status.remaining = now.remaining;
            status.reset_after = now.reset_after;
        }
    }
}

/// A ban that refused a request, or that a refusal started (see
/// [`Store`](super::Store) on penalties).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ban {
    /// Which check's penalty it is.
    pub check: u8,
    /// Nanoseconds until it lifts.
    pub left: u64,
    /// Whether this request's refusal started it (rather than finding it in
    /// force).
    pub started: bool,
}

/// A store's decision about one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    admitted: bool,
    ban: Option<Ban>,
    /// The checks (bit `i` for check `i` < 32) whose penalties this
    /// refusal started a ban of; `ban` is the longest.
    bans_started: u32,
    /// Nanoseconds until the request would be admitted, when a refusal is
    /// due to the store's memory cap (an estimate made for a key it has no
    /// room for) rather than an exact count.
    capacity_retry_after: Option<u64>,
    shadow_refused: bool,
    basis: Basis,
    windows: SmallVec<[WindowStatus; 4]>,
}

impl Outcome {
    /// An outcome from its parts.
    pub fn new(admitted: bool, windows: impl IntoIterator<Item = WindowStatus>) -> Self {
        Self::from_statuses(admitted, windows.into_iter().collect())
    }

    pub(crate) fn from_statuses(admitted: bool, windows: SmallVec<[WindowStatus; 4]>) -> Self {
        Outcome {
            admitted,
            ban: None,
            bans_started: 0,
            capacity_retry_after: None,
            shadow_refused: false,
            basis: Basis::Counted,
            windows,
        }
    }

    /// An admitted outcome with no window yet, to be filled in place (an
    /// outcome is large: built where it is returned, it is never copied).
    pub(crate) fn building() -> Self {
        Outcome {
            admitted: true,
            ban: None,
            bans_started: 0,
            capacity_retry_after: None,
            shadow_refused: false,
            basis: Basis::Counted,
            windows: SmallVec::new(),
        }
    }

    /// The window statuses, to fill in place.
    pub(crate) fn windows_mut(&mut self) -> &mut SmallVec<[WindowStatus; 4]> {
        &mut self.windows
    }

    /// Sets the verdict of an outcome being built: admitted or not, and
    /// whether its shadow checks would have refused.
    pub(crate) fn decide(&mut self, admitted: bool, shadow_refused: bool) {
        self.admitted = admitted;
        self.shadow_refused = admitted && shadow_refused;
    }

    /// Makes an outcome being built, whose windows are filled, a refusal
    /// for the memory cap (see [`Outcome::at_capacity`]), to be retried when
    /// its windows say.
    pub(crate) fn refuse_at_capacity(&mut self) {
        let retry_after = self.windows.iter().map(|w| w.retry_after).max();
        self.admitted = false;
        self.shadow_refused = false;
        self.capacity_retry_after = Some(retry_after.unwrap_or(0).max(1));
    }

    /// Marks an admitted outcome whose shadow checks would have refused.
    #[must_use]
    pub fn with_shadow_refusal(mut self, refused: bool) -> Self {
        self.shadow_refused = refused;
        self
    }

    /// The same outcome, made on `basis` rather than by counting.
    #[must_use]
    pub fn on_basis(mut self, basis: Basis) -> Self {
        self.basis = basis;
        self
    }

    /// What made this outcome (see [`Basis`]).
    #[inline]
    pub fn basis(&self) -> Basis {
        self.basis
    }

    /// Whether a shadow check would have refused the request.
    #[inline]
    pub fn shadow_refused(&self) -> bool {
        self.shadow_refused
    }

    /// A refusal because the store is at its memory cap: the request's key
    /// has no room and its estimate refused it (it may be early, never
    /// late); it would be admitted in `retry_after` ns.
    pub fn at_capacity(retry_after: u64, windows: impl IntoIterator<Item = WindowStatus>) -> Self {
        Outcome {
            capacity_retry_after: Some(retry_after.max(1)),
            ..Self::from_statuses(false, windows.into_iter().collect())
        }
    }

    /// A refusal because check `check`'s penalty key is banned for `left`
    /// more nanoseconds; no window was looked at.
    pub fn banned(check: u8, left: u64) -> Self {
        Outcome {
            ban: Some(Ban {
                check,
                left: left.max(1),
                started: false,
            }),
            ..Self::from_statuses(false, SmallVec::new())
        }
    }

    /// Marks a refusal whose count started a ban of check `check`'s penalty
    /// key, lasting `ban` nanoseconds. Marked once for each ban a refusal
    /// started, the outcome reports the longest as its [`Outcome::ban`].
    #[must_use]
    pub fn with_ban_started(mut self, check: u8, ban: u64) -> Self {
        self.mark_ban_started(check, ban);
        self
    }

    /// Marks this refusal as the start of a ban (see
    /// [`Outcome::with_ban_started`]).
    pub(crate) fn mark_ban_started(&mut self, check: u8, ban: u64) {
        if self.admitted {
            return;
        }
        self.note_ban_started(check);
        let ban = Ban {
            check,
            left: ban.max(1),
            started: true,
        };
        // The longest answers; of equal ones, the first check's.
        let longer = |b: Ban| {
            (ban.left, std::cmp::Reverse(ban.check)) > (b.left, std::cmp::Reverse(b.check))
        };
        if self.ban.is_none_or(|b| b.started && longer(b)) {
            self.ban = Some(ban);
        }
    }

    /// Notes that this refusal started a ban of check `check`'s penalty key
    /// too, one no longer than [`Outcome::ban`].
    pub(crate) fn note_ban_started(&mut self, check: u8) {
        if !self.admitted && check < 32 {
            self.bans_started |= 1 << check;
        }
    }

    /// The checks whose penalties this refusal started a ban of, in order.
    pub(crate) fn bans_started(&self) -> impl Iterator<Item = u8> + '_ {
        (0..32u8).filter(move |&c| self.bans_started & (1 << c) != 0)
    }

    /// The ban that refused the request, or that its refusal started.
    #[inline]
    pub fn ban(&self) -> Option<Ban> {
        self.ban
    }

    /// Whether every window admitted the request (and was charged).
    #[inline]
    pub fn admitted(&self) -> bool {
        self.admitted
    }

    /// Whether a refusal came from the store's memory cap.
    #[inline]
    pub fn is_capacity_refusal(&self) -> bool {
        self.capacity_retry_after.is_some()
    }

    /// The state of every window that was checked.
    #[inline]
    pub fn windows(&self) -> &[WindowStatus] {
        &self.windows
    }

    /// Nanoseconds until the request would be admitted, absent other traffic:
    /// the longest wait of any window (or of the memory cap); 0 if admitted.
    #[inline]
    pub fn retry_after(&self) -> u64 {
        if self.admitted {
            return 0;
        }
        let windows = self
            .windows
            .iter()
            .map(|w| w.retry_after)
            .max()
            .unwrap_or(0);
        let ban = self.ban.map_or(0, |b| b.left);
        windows.max(self.capacity_retry_after.unwrap_or(0)).max(ban)
    }
}
