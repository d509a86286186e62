//! The decision script: what is sent (keys and arguments, one group of
//! checks sharing a principal at a time), what comes back (the state each
//! window was decided on), the [`Outcome`] built from the groups' answers
//! with the same integer arithmetic as the memory store, and the refunds of
//! a request that a later group refused.

use smallvec::SmallVec;

use super::failure_policy::FailurePolicy;
use super::keys::{bucket_key, penalty_keys};
use crate::penalty::Penalty;
use crate::policy::{Algorithm, Window};
use crate::store::algorithm::step;
use crate::store::outcome::settle_uncharged;
use crate::store::protocol::{Check, Outcome, WindowStatus};

/// The Lua source of the decision, with the exact big integers of its rare
/// paths spliced in where it builds them.
pub(crate) fn source() -> String {
    include_str!("decide.lua").replacen("-- @bignum", include_str!("bignum.lua"), 1)
}

/// The Lua source of the refund of a request refused by a later group.
pub(crate) const REFUND: &str = include_str!("refund.lua");

const NS_PER_S: u64 = 1_000_000_000;
const NS_PER_MS: u64 = 1_000_000;

/// One check, owned (the store's future outlives the borrowed [`Check`]).
#[derive(Debug, Clone)]
pub(crate) struct Planned {
    pub(crate) bucket: u64,
    /// Whose key: the hash tag of the check's Redis keys.
    pub(crate) principal: u64,
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
            principal: check.principal,
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

    /// The tag of window `window` in the bucket's stored value: algorithm,
    /// period and, for GCRA, the interval it is charged with.
    fn tag(&self, window: &Window) -> String {
        match self.algorithm {
            Algorithm::Gcra => format!("g{}@{}=", window.period_ns(), window.interval_ns()),
            Algorithm::FixedWindow => format!("f{}=", window.period_ns()),
        }
    }
}

/// The checks of a request grouped by principal, groups in the order of
/// their principals (the same order on every node), checks in their order.
pub(crate) fn groups(checks: &[Planned]) -> Vec<SmallVec<[usize; 4]>> {
    let first = checks.first().map(|c| c.principal);
    if checks.iter().all(|c| Some(c.principal) == first) {
        return vec![(0..checks.len()).collect()];
    }
    let mut order: SmallVec<[usize; 4]> = (0..checks.len()).collect();
    order.sort_by_key(|&i| checks[i].principal);
    let mut groups: Vec<SmallVec<[usize; 4]>> = Vec::new();
    for i in order {
        match groups.last_mut() {
            Some(group) if checks[group[0]].principal == checks[i].principal => group.push(i),
            _ => groups.push(SmallVec::from_slice(&[i])),
        }
    }
    groups
}

/// A duration or moment in ns as the script's pair: seconds, nanoseconds.
fn pair(ns: u64) -> [String; 2] {
    [(ns / NS_PER_S).to_string(), (ns % NS_PER_S).to_string()]
}

/// The keys and argument of one group's decision (see `decide.lua`);
/// `now` is `None` to use Redis's clock. The argument sets no moment after
/// which the call writes nothing ([`set_until`] sets one). `charge`: whether the group may
/// charge (no earlier group refused); `shadows`: whether its shadow checks
/// may be charged (no earlier group's shadow check refused). The one
/// argument holds every number as a little-endian double and every text (a
/// value's layout, a window's tag) as its length then its bytes.
pub(crate) fn invocation(
    prefix: &str,
    now: Option<u64>,
    checks: &[Planned],
    group: &[usize],
    charge: bool,
    shadows: bool,
) -> (Vec<String>, Vec<Vec<u8>>) {
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    // Every number is an integer below 2^53: exact as a double.
    let split = |ns: u64| [(ns / NS_PER_S) as f64, (ns % NS_PER_S) as f64];
    let put = |arg: &mut Vec<u8>, numbers: &[f64]| {
        for n in numbers {
            arg.extend_from_slice(&n.to_le_bytes());
        }
    };
    let put_text = |arg: &mut Vec<u8>, text: &[u8]| {
        put(arg, &[text.len() as f64]);
        arg.extend_from_slice(text);
    };
    let penalties = group
        .iter()
        .filter(|&&i| checks[i].penalty.is_some())
        .count();
    let mut keys = Vec::with_capacity(group.len() + 2 * penalties);
    let mut arg = Vec::with_capacity(64 + 128 * group.len() + 48 * penalties);
    put(&mut arg, &now.map_or([-1.0, 0.0], split));
    put(&mut arg, &[-1.0, 0.0]);
    // Where the penalties start is set once it is known.
    let header = [flag(charge), flag(shadows), group.len() as f64];
    put(&mut arg, &header);
    put(&mut arg, &[penalties as f64, 0.0]);
    for &i in group {
        let check = &checks[i];
        keys.push(bucket_key(prefix, check.principal, check.bucket));
    }
    for &i in group {
        let check = &checks[i];
        let mut layout = String::from("<");
        let mut length = 0;
        let mut slack = 0;
        let mut exotic = false;
        let mut windows: SmallVec<[(String, [f64; 4]); 2]> = SmallVec::new();
        for window in &check.windows {
            let tag = check.tag(window);
            layout.push_str(&format!("c{}dd", tag.len()));
            length += tag.len() + 16;
            let numbers = match check.algorithm {
                Algorithm::Gcra => {
                    let t = window.interval_ns();
                    let capacity = t.saturating_mul(u64::from(window.limit()));
                    slack = slack.max(capacity.div_ceil(NS_PER_MS));
                    let [cs, cn] = split(capacity);
                    let [is, in_] = split(t.saturating_mul(u64::from(check.cost)));
                    [cs, cn, is, in_]
                }
                Algorithm::FixedWindow => {
                    let period = window.period_ns();
                    let whole_ms = if period % NS_PER_MS == 0 {
                        period / NS_PER_MS
                    } else {
                        exotic = true;
                        0
                    };
                    slack = slack.max(period.div_ceil(NS_PER_MS));
                    [
                        whole_ms as f64,
                        f64::from(window.limit()),
                        f64::from(check.cost),
                        0.0,
                    ]
                }
            };
            windows.push((tag, numbers));
        }
        // On the layer's clock a state's expiry is a moment of the layer's
        // clock, which may run at another rate than Redis's (a test's
        // manual clock): its TTL gets the longest period and a second more.
        let slack = if now.is_some() { slack + 1000 } else { 0 };
        let kind = match check.algorithm {
            Algorithm::Gcra => 0.0,
            Algorithm::FixedWindow => 1.0,
        };
        put(
            &mut arg,
            &[
                kind,
                flag(check.shadow),
                check.windows.len() as f64,
                slack as f64,
                length as f64,
                flag(exotic),
            ],
        );
        put_text(&mut arg, layout.as_bytes());
        for (tag, numbers) in &windows {
            put_text(&mut arg, tag.as_bytes());
            put(&mut arg, numbers);
        }
    }
    // The penalties last, where the header says (1-based, in bytes).
    let q = (1 + arg.len()) as f64;
    arg[Q_AT..Q_AT + 8].copy_from_slice(&q.to_le_bytes());
    for (nth, &i) in group.iter().enumerate() {
        let check = &checks[i];
        if let Some((key, penalty)) = &check.penalty {
            keys.extend(penalty_keys(prefix, check.principal, *key));
            put(&mut arg, &[(nth + 1) as f64, f64::from(penalty.refusals())]);
            put(&mut arg, &split(penalty.within_ns()));
            put(&mut arg, &split(penalty.ban_ns()));
        }
    }
    (keys, vec![arg])
}

/// Where the argument holds the moment after which the call writes
/// nothing (in bytes): after the layer's time.
const UNTIL_AT: usize = 2 * 8;

/// Where the argument says where the penalties start (in bytes): after
/// the two moments, and the group's flags and counts.
const Q_AT: usize = 8 * 8;

/// Sets, in an argument [`invocation`] made, the moment on Redis's clock
/// after which the call must write nothing.
pub(crate) fn set_until(arg: &mut [u8], until: u64) {
    let moment = [(until / NS_PER_S) as f64, (until % NS_PER_S) as f64];
    for (i, n) in moment.iter().enumerate() {
        let at = UNTIL_AT + 8 * i;
        if let Some(bytes) = arg.get_mut(at..at + 8) {
            bytes.copy_from_slice(&n.to_le_bytes());
        }
    }
}

/// The verdict of a call that came after its caller stopped waiting.
const TOO_LATE: u64 = 12;

/// What the script answered for one group.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Reply {
    /// The time the script decided at (ns since the Unix epoch).
    pub(crate) now: u64,
    /// Whether the group's enforced windows admit the request.
    pub(crate) admitted: bool,
    /// Whether the group's shadow windows admit it.
    pub(crate) shadow_admitted: bool,
    /// Each window's state before the request (the group's windows in
    /// order), in the memory store's encoding (GCRA: the arrival time;
    /// fixed window: index << 32 | count).
    pub(crate) states: Vec<u64>,
    /// A ban that refused the request or that its refusal started: the
    /// check (its index among all the request's checks), the ns left, and
    /// whether it started now (of several started, the longest).
    pub(crate) ban: Option<(u8, u64, bool)>,
    /// The checks (bit `i` for check `i` < 64) whose bans this refusal
    /// started.
    pub(crate) bans_started: u64,
}

/// If the script's answer says it ran after its caller stopped waiting for
/// it, and wrote nothing (see `decide.lua`), the time on Redis's clock when
/// it ran (ns since the Unix epoch).
pub(crate) fn too_late(reply: &[u8]) -> Option<u64> {
    let number = |i: usize| {
        let bytes: [u8; 8] = reply.get(8 * i..8 * i + 8)?.try_into().ok()?;
        Some(f64::from_le_bytes(bytes))
    };
    if reply.len() != 24 || number(2)? != TOO_LATE as f64 {
        return None;
    }
    let (s, n) = (number(0)?, number(1)?);
    let valid = |x: f64| x.fract() == 0.0 && (0.0..1e15).contains(&x);
    (valid(s) && valid(n) && n < NS_PER_S as f64).then(|| s as u64 * NS_PER_S + n as u64)
}

/// Reads the script's answer (little-endian doubles, see `decide.lua`) for
/// the checks `group` of `checks`.
pub(crate) fn parse_reply(
    checks: &[Planned],
    group: &[usize],
    reply: &[u8],
) -> Result<Reply, String> {
    if reply.len() % 8 != 0 {
        return Err(format!("the script answered {} bytes", reply.len()));
    }
    let windows: usize = group.iter().map(|&i| checks[i].windows.len()).sum();
    // Each number: a whole number from 0 to 2^53 (exact in a double).
    let at = |i: usize| -> Result<u64, String> {
        let bytes = reply
            .get(8 * i..8 * i + 8)
            .ok_or("the script answered too little")?;
        let x = f64::from_le_bytes(bytes.try_into().map_err(|_| "not 8 bytes")?);
        if x.fract() == 0.0 && (0.0..=9_007_199_254_740_992.0).contains(&x) {
            Ok(x as u64)
        } else {
            Err(format!("the script answered {x}, not a whole number"))
        }
    };
    let time = |i: usize| -> Result<u64, String> {
        let (s, n) = (at(i)?, at(i + 1)?);
        if n >= NS_PER_S {
            return Err(format!("the script answered {n} ns, not below a second"));
        }
        s.checked_mul(NS_PER_S)
            .and_then(|s| s.checked_add(n))
            .ok_or_else(|| format!("the script answered {s} s, past 64 bits of ns"))
    };
    let now = time(0)?;
    let verdict = at(2)?;
    let (admitted, shadow_admitted) = (verdict & 1 != 0, verdict & 2 != 0);
    let kind = verdict >> 2;
    if kind > 2 {
        return Err(format!("the script answered {verdict}, not a verdict"));
    }
    // A ban in force: only the ban follows; else the states, then any ban
    // this refusal started.
    let states_at = 3;
    let ban_at = if kind == 1 { 3 } else { 3 + 2 * windows };
    let expected = if kind == 0 { ban_at } else { ban_at + 3 };
    if reply.len() != 8 * expected {
        return Err(format!(
            "the script answered {} values for {windows} windows",
            reply.len() / 8
        ));
    }
    // A check of the group (1-based) that has a penalty, as an index among
    // all the request's checks.
    let penalized = |nth: usize| {
        nth.checked_sub(1)
            .and_then(|n| group.get(n))
            .copied()
            .filter(|&i| checks[i].penalty.is_some())
            .ok_or_else(|| format!("the script named check {nth}, which has no penalty"))
    };
    let mut bans_started = 0u64;
    let ban = match kind {
        0 => None,
        _ => {
            let named = at(ban_at)?;
            let check = penalized(usize::try_from(named % 256).unwrap_or(0))?;
            // Above the longest's check: the bits of every check whose ban
            // this refusal started (none for a ban in force).
            let mut bits = named / 256;
            while bits != 0 {
                let nth = bits.trailing_zeros() as usize + 1;
                bits &= bits - 1;
                let i = penalized(nth)?;
                if i < 64 {
                    bans_started |= 1 << i;
                }
            }
            Some((check as u8, time(ban_at + 1)?, kind == 2))
        }
    };
    let mut states = Vec::with_capacity(windows);
    if kind != 1 {
        let mut i = states_at;
        for &c in group {
            let check = &checks[c];
            for _ in &check.windows {
                states.push(match check.algorithm {
                    Algorithm::Gcra => time(i)?,
                    Algorithm::FixedWindow => {
                        let index =
                            u32::try_from(at(i)?).map_err(|_| "a window index out of 32 bits")?;
                        let count = u32::try_from(at(i + 1)?)
                            .map_err(|_| "a window count out of 32 bits")?;
                        (u64::from(index) << 32) | u64::from(count)
                    }
                });
                i += 2;
            }
        }
    }
    Ok(Reply {
        now,
        admitted,
        shadow_admitted,
        states,
        ban,
        bans_started,
    })
}

/// One group's part of a decision: its checks, whether it was allowed to
/// charge and to charge its shadow checks, and the script's answer.
#[derive(Debug)]
pub(crate) struct Decided<'g> {
    pub(crate) group: &'g [usize],
    pub(crate) charge: bool,
    pub(crate) shadows: bool,
    pub(crate) reply: Reply,
}

impl Decided<'_> {
    /// Whether the script charged check `check` of this group.
    fn charged(&self, check: &Planned) -> bool {
        let reply = &self.reply;
        self.charge
            && reply.admitted
            && reply.ban.is_none_or(|(_, _, started)| started)
            && (!check.shadow || (self.shadows && reply.shadow_admitted))
    }
}

/// The outcome of the decisions the script made, group by group: every
/// status is computed here from the states they were made on, exactly as
/// the memory store computes them, and each group's verdict must agree.
pub(crate) fn outcome(checks: &[Planned], decided: &[Decided<'_>]) -> Result<Outcome, String> {
    // Of the bans in force the groups found, the longest answers.
    if let Some((check, left, _)) = decided
        .iter()
        .filter_map(|d| d.reply.ban.filter(|&(_, _, started)| !started))
        .max_by_key(|&(check, left, _)| (left, std::cmp::Reverse(check)))
    {
        return Ok(Outcome::banned(check, left));
    }
    // Where each check's states and time are: (group, first state).
    let mut place: SmallVec<[(usize, usize); 4]> = SmallVec::from_elem((0, 0), checks.len());
    for (g, d) in decided.iter().enumerate() {
        let mut at = 0;
        for &c in d.group {
            place[c] = (g, at);
            at += checks[c].windows.len();
        }
    }
    let mut statuses: SmallVec<[WindowStatus; 4]> = SmallVec::new();
    let mut state_of: SmallVec<[(u64, u64); 4]> = SmallVec::new();
    let mut verdicts: SmallVec<[(bool, bool); 4]> =
        SmallVec::from_elem((true, true), decided.len());
    for (ci, check) in checks.iter().enumerate() {
        let (g, first) = place[ci];
        let reply = &decided[g].reply;
        for (wi, window) in check.windows.iter().enumerate() {
            let state = *reply
                .states
                .get(first + wi)
                .ok_or("fewer states than windows")?;
            let s = step(check.algorithm, window, state, reply.now, check.cost);
            let verdict = &mut verdicts[g];
            if check.shadow {
                verdict.1 &= s.admits;
            } else {
                verdict.0 &= s.admits;
            }
            state_of.push((state, reply.now));
            statuses.push(s.status(ci, wi, window.limit()));
        }
    }
    for (d, &(admitted, shadow_admitted)) in decided.iter().zip(&verdicts) {
        if (admitted, shadow_admitted) != (d.reply.admitted, d.reply.shadow_admitted) {
            return Err(format!(
                "the script decided admitted={} shadow_admitted={}, the same states say {admitted} and {shadow_admitted}",
                d.reply.admitted, d.reply.shadow_admitted
            ));
        }
    }
    let admitted = verdicts.iter().all(|v| v.0);
    let shadow_admitted = verdicts.iter().all(|v| v.1);
    settle_uncharged(
        &mut statuses,
        admitted,
        shadow_admitted,
        |check| checks[check].shadow,
        |i, status| {
            let check = &checks[usize::from(status.check)];
            let window = &check.windows[usize::from(status.window)];
            let (state, now) = state_of[i];
            step(check.algorithm, window, state, now, 0)
        },
    );
    let mut started = decided.iter().filter_map(|d| d.reply.ban).peekable();
    if !admitted {
        let mut outcome = Outcome::from_statuses(false, statuses);
        // Each group's longest ban; the longest of those answers.
        for (check, left, _) in started.filter(|&(_, _, started)| started) {
            outcome.mark_ban_started(check, left);
        }
        for d in decided {
            let bits = d.reply.bans_started;
            for check in (0..64u8).filter(|&c| bits & (1 << c) != 0) {
                outcome.note_ban_started(check);
            }
        }
        return Ok(outcome);
    }
    if started.peek().is_some() {
        return Err("the script started a ban for an admitted request".into());
    }
    Ok(Outcome::from_statuses(true, statuses).with_shadow_refusal(!shadow_admitted))
}

/// The refunds a decision over several groups needs, one call per group
/// that charged something it must give back: the charges of a request that
/// a group refused, or of shadow checks when a shadow check of another
/// group refused (or of every group, with `all`: a request that Redis did
/// not decide to the end). Each call's keys and arguments follow
/// `refund.lua`.
pub(crate) fn refunds(
    prefix: &str,
    checks: &[Planned],
    decided: &[Decided<'_>],
    all: bool,
) -> Vec<(Vec<String>, Vec<String>)> {
    let banned = decided
        .iter()
        .any(|d| d.reply.ban.is_some_and(|(_, _, started)| !started));
    let admitted = !all && !banned && decided.iter().all(|d| d.reply.admitted);
    let shadow_admitted = decided.iter().all(|d| d.reply.shadow_admitted);
    if admitted && shadow_admitted {
        return Vec::new();
    }
    let mut calls = Vec::new();
    for d in decided {
        let mut keys = Vec::new();
        let mut args = Vec::new();
        let mut first = 0;
        for &c in d.group {
            let check = &checks[c];
            let states = d.reply.states.get(first..first + check.windows.len());
            first += check.windows.len();
            let Some(states) = states.filter(|_| d.charged(check)) else {
                continue;
            };
            if admitted && !check.shadow {
                continue;
            }
            keys.push(bucket_key(prefix, check.principal, check.bucket));
            args.push(check.windows.len().to_string());
            for (window, &state) in check.windows.iter().zip(states) {
                args.push(check.tag(window));
                let next = step(check.algorithm, window, state, d.reply.now, check.cost).next;
                match check.algorithm {
                    Algorithm::Gcra => {
                        args.extend(pair(next));
                        args.extend(pair(state));
                    }
                    Algorithm::FixedWindow => {
                        args.push((next >> 32).to_string());
                        args.push(check.cost.to_string());
                    }
                }
            }
        }
        if !keys.is_empty() {
            calls.push((keys, args));
        }
    }
    calls
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Quota;

    #[test]
    fn arguments_carry_exact_numbers_and_no_key() {
        let quota = Quota::new(Window::per_minute(60)).and(Window::per_hour(1000));
        let fixed = Quota::new(Window::per_second(10))
            .cost(2)
            .algorithm(Algorithm::FixedWindow);
        let checks = [
            Planned::new(&Check::new(7, &quota).of_principal(5), FailurePolicy::Open),
            Planned::new(
                &Check::shadow(8, &fixed).of_principal(5),
                FailurePolicy::Open,
            ),
        ];
        let groups = groups(&checks);
        assert_eq!(groups.len(), 1);
        let (keys, args) = invocation("rl", None, &checks, &groups[0], true, true);
        assert_eq!(
            keys,
            [
                "rl:{0000000000000005}:0000000000000007",
                "rl:{0000000000000005}:0000000000000008",
            ]
        );
        /// A number or a text of the argument.
        #[derive(Debug, PartialEq)]
        enum Item {
            N(f64),
            T(&'static str),
        }
        use Item::{N, T};
        // Reads `arg` as `shape` says: `d` a number, `t` a text.
        let read = |arg: &[u8], shape: &str| -> Vec<Item> {
            let mut at = 0;
            let number = |at: &mut usize| {
                let n = f64::from_le_bytes(arg[*at..*at + 8].try_into().unwrap());
                *at += 8;
                n
            };
            let items: Vec<Item> = shape
                .chars()
                .map(|c| match c {
                    'd' => N(number(&mut at)),
                    _ => {
                        let len = number(&mut at) as usize;
                        let text = std::str::from_utf8(&arg[at..at + len]).unwrap();
                        at += len;
                        T(text.to_owned().leak())
                    }
                })
                .collect();
            assert_eq!(at, arg.len(), "all of it read");
            items
        };
        assert_eq!(args.len(), 1, "one argument");
        #[rustfmt::skip]
        let expected = [
            N(-1.0), N(0.0), N(-1.0), N(0.0), // Redis's clock, no moment to give up
            N(1.0), N(1.0), N(2.0), N(0.0), N(384.0), // charge, 2 checks
            N(0.0), N(0.0), N(2.0), N(0.0), N(82.0), N(0.0), T("<c24ddc26dd"), // GCRA, 2 windows
            T("g60000000000@1000000000="), N(60.0), N(0.0), N(1.0), N(0.0), // 60 s, 1 s
            T("g3600000000000@3600000000="), N(3600.0), N(0.0), N(3.0), N(600_000_000.0),
            N(1.0), N(1.0), N(1.0), N(0.0), N(28.0), N(0.0), T("<c12dd"), // fixed, shadow
            T("f1000000000="), N(1000.0), N(10.0), N(2.0), N(0.0), // 1000 ms, limit 10, cost 2
        ];
        let shape = "dddddddddddddddttddddtdddd".to_owned() + "ddddddttdddd";
        assert_eq!(read(&args[0], &shape), expected);
        let now = 1_700_000_000_123_456_789;
        let until = now + 50_000_000;
        let (_, mut args) = invocation("rl", Some(now), &checks, &[0], false, true);
        set_until(&mut args[0], until);
        assert_eq!(
            read(&args[0], "dddddddddddddddttddddtdddd")[..13],
            [
                N(1_700_000_000.0),
                N(123_456_789.0),
                N(1_700_000_000.0),
                N(173_456_789.0),
                N(0.0),
                N(1.0),
                N(1.0),
                N(0.0),
                N(270.0),
                N(0.0),
                N(0.0),
                N(2.0),
                N(3_601_000.0)
            ],
            "the longest period and a second of TTL slack"
        );
    }

    #[test]
    fn checks_group_by_principal_in_principal_order() {
        let quota = Quota::new(Window::per_minute(1));
        let checks: Vec<Planned> = [9, 3, 9, 1]
            .iter()
            .map(|&p| Planned::new(&Check::new(p, &quota).of_principal(p), FailurePolicy::Open))
            .collect();
        let groups: Vec<Vec<usize>> = groups(&checks).into_iter().map(|g| g.to_vec()).collect();
        assert_eq!(groups, [vec![3], vec![1], vec![0, 2]]);
    }

    #[test]
    fn a_reply_that_does_not_fit_the_checks_is_an_error() {
        let quota = Quota::new(Window::per_minute(1));
        let checks = [Planned::new(&Check::new(1, &quota), FailurePolicy::Open)];
        let group = [0];
        let parse = |reply: &[f64]| {
            let bytes: Vec<u8> = reply.iter().flat_map(|x| x.to_le_bytes()).collect();
            parse_reply(&checks, &group, &bytes)
        };
        assert!(parse(&[1.0, 1.0]).is_err());
        assert!(
            parse_reply(&checks, &group, &[0; 7]).is_err(),
            "not doubles"
        );
        assert!(parse(&[5.0, 0.0, 3.0]).is_err(), "no state");
        assert!(parse(&[-5.0, 0.0, 3.0, 0.0, 0.0]).is_err());
        assert!(parse(&[5.5, 0.0, 3.0, 0.0, 0.0]).is_err());
        assert!(parse(&[f64::NAN, 0.0, 3.0, 0.0, 0.0]).is_err());
        assert!(parse(&[5.0, 1e9, 3.0, 0.0, 0.0]).is_err());
        assert!(
            parse(&[5.0, 0.0, 16.0, 0.0, 0.0]).is_err(),
            "no such verdict"
        );
        assert!(parse(&[5.0, 0.0, 3.0, 1e15, 0.0]).is_err(), "past 64 bits");
        assert!(parse(&[5.0, 0.0, 3.0, 0.0, 0.0, 0.0]).is_err());
        // A ban of a check that has no penalty is nonsense.
        assert!(parse(&[5.0, 0.0, 4.0, 1.0, 1.0, 0.0]).is_err());
        assert!(parse(&[5.0, 0.0, 8.0, 0.0, 0.0, 1.0, 1.0, 0.0]).is_err());
        let ok = parse(&[5.0, 7.0, 3.0, 0.0, 0.0]).unwrap();
        assert_eq!(ok.now, 5_000_000_007);
        assert_eq!(ok.states, [0]);
        assert!(ok.admitted && ok.shadow_admitted && ok.ban.is_none());
        // A verdict the states contradict is refused, not believed.
        let lying = Reply {
            admitted: false,
            ..ok
        };
        let decided = [Decided {
            group: &group,
            charge: true,
            shadows: true,
            reply: lying,
        }];
        assert!(outcome(&checks, &decided).is_err());
    }

    #[test]
    fn a_late_answer_gives_redis_time_and_nothing_else_passes_for_one() {
        let answer =
            |numbers: &[f64]| -> Vec<u8> { numbers.iter().flat_map(|n| n.to_le_bytes()).collect() };
        let late = answer(&[1_700_000_000.0, 5.0, 12.0]);
        assert_eq!(too_late(&late), Some(1_700_000_000_000_000_005));
        // An admission with no window, a refusal, a verdict 12 with more.
        assert_eq!(too_late(&answer(&[1_700_000_000.0, 5.0, 1.0])), None);
        assert_eq!(too_late(&answer(&[1_700_000_000.0, 5.0, 0.0])), None);
        assert_eq!(too_late(&answer(&[1.0, 5.0, 12.0, 0.0])), None);
        assert_eq!(too_late(&answer(&[1.0, 2e9, 12.0])), None, "not a time");
    }
}
