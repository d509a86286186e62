//! The decision script: what is sent (keys and arguments), what comes back
//! (the state each window was decided on), and the [`Outcome`] built from it
//! with the same integer arithmetic as the memory store.

use smallvec::SmallVec;

use super::failure_policy::FailurePolicy;
use super::keys::{penalty_keys, window_key};
use crate::penalty::Penalty;
use crate::policy::{Algorithm, Window};
use crate::store::algorithm::{step, Step};
use crate::store::outcome::settle_uncharged;
use crate::store::protocol::{Check, Outcome, WindowStatus};

/// The Lua source: exact integer helpers, then the decision.
pub(crate) const SOURCE: &str = concat!(
    include_str!("limbs.lua"),
    "\n",
    include_str!("bignum.lua"),
    "\n",
    include_str!("decide.lua")
);

/// One check, owned (the store's future outlives the borrowed [`Check`]).
#[derive(Debug, Clone)]
pub(crate) struct Planned {
    pub(crate) bucket: u64,
    pub(crate) algorithm: Algorithm,
    pub(crate) cost: u32,
    pub(crate) shadow: bool,
    pub(crate) windows: SmallVec<[Window; 2]>,
    /// What to do for this check when Redis cannot decide.
    pub(crate) on_failure: FailurePolicy,
    /// The penalty of an enforced check: its key and rule.
    pub(crate) penalty: Option<(u64, Penalty)>,
}

impl Planned {
    pub(crate) fn new(check: &Check<'_>, on_failure: FailurePolicy) -> Self {
        Planned {
            bucket: check.bucket,
            algorithm: check.quota.algorithm_kind(),
            cost: check.quota.request_cost(),
            shadow: check.shadow,
            windows: check.quota.windows().iter().copied().collect(),
            on_failure,
            penalty: check
                .penalty
                .filter(|_| !check.shadow)
                .map(|(key, penalty)| (key, *penalty)),
        }
    }
}

/// A u64 as three 24-bit limbs, most significant first: each an exact Lua
/// number.
fn limbs(x: u64) -> [u64; 3] {
    [x >> 48, (x >> 24) & 0xFF_FFFF, x & 0xFF_FFFF]
}

/// The keys and arguments of one decision; `now` is `None` to use Redis's
/// clock.
pub(crate) fn invocation(
    prefix: &str,
    now: Option<u64>,
    checks: &[Planned],
) -> (Vec<String>, Vec<String>) {
    let windows: usize = checks.iter().map(|c| c.windows.len()).sum();
    let penalties = checks.iter().filter(|c| c.penalty.is_some()).count();
    let mut keys = Vec::with_capacity(windows + 2 * penalties);
    let mut args = Vec::with_capacity(6 + 11 * windows + 9 * penalties);
    args.push(if now.is_some() { "l" } else { "r" }.to_owned());
    args.extend(limbs(now.unwrap_or(0)).iter().map(u64::to_string));
    args.push(windows.to_string());
    args.push(penalties.to_string());
    for check in checks {
        let shadow = if check.shadow { "1" } else { "0" };
        for window in &check.windows {
            keys.push(window_key(
                prefix,
                check.bucket,
                check.algorithm,
                window.period_ns(),
            ));
            let numbers = match check.algorithm {
                Algorithm::Gcra => {
                    let t = window.interval_ns();
                    [
                        t,
                        t.saturating_mul(u64::from(window.limit())),
                        t.saturating_mul(u64::from(check.cost)),
                    ]
                }
                Algorithm::FixedWindow => [
                    window.period_ns(),
                    u64::from(window.limit()),
                    u64::from(check.cost),
                ],
            };
            args.push(
                if check.algorithm == Algorithm::Gcra {
                    "g"
                } else {
                    "f"
                }
                .to_owned(),
            );
            args.push(shadow.to_owned());
            for n in numbers {
                args.extend(limbs(n).iter().map(u64::to_string));
            }
        }
    }
    let mut first = 1;
    for check in checks {
        if let Some((key, penalty)) = &check.penalty {
            keys.extend(penalty_keys(prefix, *key));
            args.push(first.to_string());
            args.push(check.windows.len().to_string());
            args.push(penalty.refusals().to_string());
            for n in [penalty.within_ns(), penalty.ban_ns()] {
                args.extend(limbs(n).iter().map(u64::to_string));
            }
        }
        first += check.windows.len();
    }
    (keys, args)
}

/// What the script answered.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Reply {
    /// The time the script decided at (ns since the Unix epoch).
    pub(crate) now: u64,
    pub(crate) admitted: bool,
    pub(crate) shadow_admitted: bool,
    /// Each window's state before the request, in the memory store's
    /// encoding (GCRA: the arrival time; fixed window: index << 32 | count).
    pub(crate) states: Vec<u64>,
    /// A ban that refused the request or that its refusal started: the
    /// check, the ns left, and whether it started now.
    pub(crate) ban: Option<(u8, u64, bool)>,
}

/// Reads the script's answer for `checks`.
pub(crate) fn parse_reply(checks: &[Planned], reply: &[i64]) -> Result<Reply, String> {
    let windows: usize = checks.iter().map(|c| c.windows.len()).sum();
    if reply.len() != 10 + 3 * windows {
        return Err(format!(
            "the script answered {} values for {windows} windows",
            reply.len()
        ));
    }
    let limb = |i: usize| -> Result<u64, String> {
        u64::try_from(reply[i])
            .ok()
            .filter(|&l| l < 1 << 24)
            .ok_or_else(|| format!("the script answered {}, not a 24-bit limb", reply[i]))
    };
    let number = |i: usize| -> Result<u64, String> {
        let (a, b, c) = (limb(i)?, limb(i + 1)?, limb(i + 2)?);
        if a >= 1 << 16 {
            return Err(format!(
                "the script answered a number over 64 bits ({a}:{b}:{c})"
            ));
        }
        Ok((a << 48) | (b << 24) | c)
    };
    let flag = |i: usize| -> Result<bool, String> {
        match reply[i] {
            1 => Ok(true),
            0 => Ok(false),
            other => Err(format!("the script answered {other}, not a flag")),
        }
    };
    let mut states = Vec::with_capacity(windows);
    let mut at = 5;
    for check in checks {
        for _ in &check.windows {
            states.push(match check.algorithm {
                Algorithm::Gcra => number(at)?,
                Algorithm::FixedWindow => {
                    let index = u32::try_from(reply[at + 1])
                        .map_err(|_| "a window index out of 32 bits")?;
                    let count = u32::try_from(reply[at + 2])
                        .map_err(|_| "a window count out of 32 bits")?;
                    (u64::from(index) << 32) | u64::from(count)
                }
            });
            at += 3;
        }
    }
    let ban = match reply[at] {
        0 => None,
        kind @ (1 | 2) => {
            let nth = usize::try_from(reply[at + 1]).unwrap_or(0);
            let check = checks
                .iter()
                .enumerate()
                .filter(|(_, c)| c.penalty.is_some())
                .nth(nth.wrapping_sub(1))
                .map(|(i, _)| i as u8)
                .ok_or_else(|| format!("the script named penalty {nth}, which was not sent"))?;
            Some((check, number(at + 2)?, kind == 2))
        }
        other => return Err(format!("the script answered {other}, not a ban kind")),
    };
    Ok(Reply {
        now: number(0)?,
        admitted: flag(3)?,
        shadow_admitted: flag(4)?,
        states,
        ban,
    })
}

/// The outcome of the decision the script made: every status is computed
/// here from the states it was made on, exactly as the memory store computes
/// them, and the script's verdict must agree.
pub(crate) fn outcome(checks: &[Planned], reply: &Reply) -> Result<Outcome, String> {
    let now = reply.now;
    if let Some((check, left, false)) = reply.ban {
        return Ok(Outcome::banned(check, left));
    }
    let mut statuses: SmallVec<[WindowStatus; 4]> = SmallVec::new();
    let mut admitted = true;
    let mut shadow_admitted = true;
    let mut states = reply.states.iter().copied();
    let mut state_of: SmallVec<[u64; 4]> = SmallVec::new();
    for (ci, check) in checks.iter().enumerate() {
        for (wi, window) in check.windows.iter().enumerate() {
            let state = states.next().ok_or("fewer states than windows")?;
            let s: Step = step(check.algorithm, window, state, now, check.cost);
            if check.shadow {
                shadow_admitted &= s.admits;
            } else {
                admitted &= s.admits;
            }
            state_of.push(state);
            statuses.push(s.status(ci, wi, window.limit()));
        }
    }
    if (admitted, shadow_admitted) != (reply.admitted, reply.shadow_admitted) {
        return Err(format!(
            "the script decided admitted={} shadow_admitted={}, the same states say {admitted} and {shadow_admitted}",
            reply.admitted, reply.shadow_admitted
        ));
    }
    settle_uncharged(
        &mut statuses,
        admitted,
        shadow_admitted,
        |check| checks[check].shadow,
        |i, status| {
            let check = &checks[usize::from(status.check)];
            let window = &check.windows[usize::from(status.window)];
            step(check.algorithm, window, state_of[i], now, 0)
        },
    );
    if !admitted {
        let outcome = Outcome::from_statuses(false, statuses);
        return Ok(match reply.ban {
            Some((check, left, true)) => outcome.with_ban_started(check, left),
            _ => outcome,
        });
    }
    if reply.ban.is_some() {
        return Err("the script started a ban for an admitted request".into());
    }
    Ok(Outcome::from_statuses(true, statuses).with_shadow_refusal(!shadow_admitted))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Quota;

    #[test]
    fn arguments_carry_exact_durations_as_limbs_and_no_key() {
        let quota = Quota::new(Window::per_minute(60)).and(Window::per_hour(1000));
        let fixed = Quota::new(Window::per_second(10))
            .cost(2)
            .algorithm(Algorithm::FixedWindow);
        let checks = [
            Planned::new(&Check::new(7, &quota), FailurePolicy::Open),
            Planned::new(&Check::shadow(8, &fixed), FailurePolicy::Open),
        ];
        let (keys, args) = invocation("rl", None, &checks);
        assert_eq!(
            keys,
            [
                "{rl}:0000000000000007:gcra:60000000000",
                "{rl}:0000000000000007:gcra:3600000000000",
                "{rl}:0000000000000008:fixed:1000000000",
            ]
        );
        let l = |x: u64| limbs(x).map(|n| n.to_string());
        let mut expected: Vec<String> = vec!["r".into(), "0".into(), "0".into(), "0".into()];
        expected.extend(["3".into(), "0".into()]);
        for (kind, shadow, numbers) in [
            ("g", "0", [1_000_000_000, 60_000_000_000, 1_000_000_000]),
            ("g", "0", [3_600_000_000, 3_600_000_000_000, 3_600_000_000]),
            ("f", "1", [1_000_000_000, 10, 2]),
        ] {
            expected.push(kind.into());
            expected.push(shadow.into());
            for n in numbers {
                expected.extend(l(n));
            }
        }
        assert_eq!(args, expected);
        let now = 1_700_000_000_000_000_000;
        let (_, args) = invocation("rl", Some(now), &checks[..1]);
        assert_eq!(args[0], "l");
        let back: Vec<u64> = args[1..4].iter().map(|a| a.parse().unwrap()).collect();
        assert_eq!((back[0] << 48) | (back[1] << 24) | back[2], now);
    }

    #[test]
    fn a_reply_that_does_not_fit_the_checks_is_an_error() {
        let quota = Quota::new(Window::per_minute(1));
        let checks = [Planned::new(&Check::new(1, &quota), FailurePolicy::Open)];
        let none = [0, 0, 0, 0, 0];
        let reply = |head: [i64; 8]| [&head[..], &none[..]].concat();
        assert!(parse_reply(&checks, &[1, 1]).is_err());
        assert!(parse_reply(&checks, &reply([0, 0, -5, 1, 1, 0, 0, 0])).is_err());
        assert!(parse_reply(&checks, &reply([0, 0, 5, 2, 1, 0, 0, 0])).is_err());
        assert!(parse_reply(&checks, &reply([0, 1 << 24, 5, 1, 1, 0, 0, 0])).is_err());
        // A ban of a penalty that was not sent is nonsense.
        let mut banned = reply([0, 1, 5, 0, 1, 0, 0, 0]);
        banned[8] = 1;
        banned[9] = 1;
        assert!(parse_reply(&checks, &banned).is_err());
        let ok = parse_reply(&checks, &reply([0, 1, 5, 1, 1, 0, 0, 0])).unwrap();
        assert_eq!(ok.now, (1 << 24) + 5);
        assert_eq!(ok.states, [0]);
        // A verdict the states contradict is refused, not believed.
        let lying = Reply {
            admitted: false,
            ..ok
        };
        assert!(outcome(&checks, &lying).is_err());
    }
}
