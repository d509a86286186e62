//! Temporary bans after repeated refusals: the penalty box.
//!
//! A [`Penalty`] says when a key has misbehaved long enough to be shut out:
//! after `refusals` refusals within `within`, every request of that key is
//! refused for `ban`. Exotel's "an account refused 20 times within 60 s is
//! throttled for 300 s" is `Penalty::new(20, 60 s, 300 s)`.
//! A limit takes one with [`Limit::penalty`](crate::Limit::penalty); its
//! store keeps, per key, what the rule needs and nothing more, on the key's
//! keyed hash and the layer's clock, so the rule below holds to the
//! nanosecond.
//!
//! # The counting rule
//!
//! A refusal recorded at `t` **counts** at every instant of `[t, t + within)`:
//! `within` nanoseconds, the start included and the end excluded, just as a
//! ban of length `ban` started at `s` is in force over `[s, s + ban)`.
//! A ban starts at the refusal that makes `refusals` counted refusals, that
//! is, at a refusal at `now` when the key's last `refusals` refusals
//! `t_1 <= … <= t_N = now` have `now - t_1 < within`. Two refusals exactly
//! `within` apart are *not* within `within` of each other.
//!
//! * **Refusals during a ban are ignored**: they neither extend the ban nor
//!   count towards the next one. A ban is a fixed sentence, so the
//!   `Retry-After` given with the first refused request stays true: a client
//!   that retries during the ban (as clients do) is not kept out forever, and
//!   a request sent when the ban's `Retry-After` runs out is not refused by
//!   the ban.
//! * **After a ban the count starts fresh**: the refusals that led to it are
//!   forgotten when it starts, so it takes `refusals` new refusals within
//!   `within` after the ban ends to start another.
//! * **A key's time never runs backwards**: two threads may read the clock
//!   and then record in the other order; a refusal whose `now` is earlier
//!   than the key's latest counted refusal is counted at that latest time.
//!   When calls come in time order, as they do from one clock, everything
//!   above is exact to the nanosecond.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tower_ratelimit::{key::Header, penalty::Penalty, Limit, Quota, Window};
//!
//! // Exotel: refused 20 times within 60 s, throttled for 300 s.
//! let exotel = Penalty::new(20, Duration::from_secs(60), Duration::from_secs(300)).unwrap();
//! let limit = Limit::new("per_account", Header::parse("X-Account").unwrap())
//!     .quota(Quota::new(Window::per_second(10)))
//!     .penalty(exotel);
//! # let _ = limit;
//! ```

mod bans;
mod rule;

pub(crate) use bans::{PenaltyBox, Recorded};
pub use rule::Penalty;
