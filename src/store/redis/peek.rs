//! The store's answers off a request's path, for operators (the admin API):
//! where buckets stand, read by a script that writes nothing and computed
//! here with the memory store's arithmetic, and the reset of buckets and
//! their penalties (`admin.lua`).

use smallvec::SmallVec;

use super::failure_policy::FailurePolicy;
use super::keys::{bucket_key, penalty_keys, slot_keys};
use super::script::Planned;
use crate::policy::{Algorithm, Window};
use crate::store::algorithm::{carry_over, step};
use crate::store::protocol::{Ban, Check, Peeked, WindowStatus};

/// The Lua source of the operators' script.
pub(crate) const SOURCE: &str = include_str!("admin.lua");

const NS_PER_S: u64 = 1_000_000_000;

/// The checks owned, for a call off a request's path: unlike a decision's,
/// a shadow check's penalty is looked at too, as the memory store does.
pub(crate) fn planned(checks: &[Check<'_>]) -> Vec<Planned> {
    checks
        .iter()
        .map(|check| Planned {
            penalty: check.penalty.map(|(key, penalty)| (key, *penalty)),
            // Not used off a request's path.
            ..Planned::new(check, FailurePolicy::Open)
        })
        .collect()
}

/// The keys and arguments of a peek of the checks `group` (one principal):
/// their buckets, then the ban of each check with a penalty.
pub(crate) fn peek_call(
    prefix: &str,
    checks: &[Planned],
    group: &[usize],
) -> (Vec<String>, Vec<String>) {
    let mut keys: Vec<String> = group
        .iter()
        .map(|&i| bucket_key(prefix, checks[i].principal, checks[i].bucket))
        .collect();
    for &i in group {
        if let Some((key, _)) = checks[i].penalty {
            let [ban, _] = penalty_keys(prefix, checks[i].principal, key);
            keys.push(ban);
        }
    }
    let read = keys.len().to_string();
    (keys, vec!["p".into(), read])
}

/// The keys and arguments of the count of one in-flight key's live slots.
pub(crate) fn in_flight_call(prefix: &str, principal: u64, key: u64) -> (Vec<String>, Vec<String>) {
    let [held, ..] = slot_keys(prefix, principal, key);
    (vec![held], vec!["p".into(), "0".into()])
}

/// The keys and arguments of the reset of the checks `group` (one
/// principal): their buckets, and the bans and refusals of their penalties.
pub(crate) fn forget_call(
    prefix: &str,
    checks: &[Planned],
    group: &[usize],
) -> (Vec<String>, Vec<String>) {
    let mut keys = Vec::with_capacity(3 * group.len());
    for &i in group {
        let check = &checks[i];
        keys.push(bucket_key(prefix, check.principal, check.bucket));
        if let Some((key, _)) = check.penalty {
            keys.extend(penalty_keys(prefix, check.principal, key));
        }
    }
    let channel = super::resets::channel(prefix);
    let message = super::resets::message(group.iter().map(|&i| &checks[i]));
    (keys, vec!["f".into(), channel, message])
}

/// The moment in Redis's `TIME` reply (seconds, microseconds), in ns.
pub(crate) fn redis_time(reply: &[Option<Vec<u8>>]) -> Result<u64, String> {
    let number = |i: usize| -> Result<u64, String> {
        reply
            .get(i)
            .and_then(Option::as_deref)
            .and_then(|b| std::str::from_utf8(b).ok()?.parse().ok())
            .ok_or_else(|| "the script answered no time".to_string())
    };
    let (s, us) = (number(0)?, number(1)?);
    s.checked_mul(NS_PER_S)
        .and_then(|ns| ns.checked_add(us.checked_mul(1000)?))
        .ok_or_else(|| format!("the script answered {s} s, past 64 bits of ns"))
}

/// The live slots in the script's answer to [`in_flight_call`].
pub(crate) fn in_flight_of(reply: &[Option<Vec<u8>>]) -> Result<u32, String> {
    reply
        .get(2)
        .and_then(Option::as_deref)
        .and_then(|b| std::str::from_utf8(b).ok()?.parse().ok())
        .ok_or_else(|| "the script answered no count".to_string())
}

/// Where the checks `group` stand at `now`, from the script's answer to
/// [`peek_call`]: each check's windows and ban, by check.
pub(crate) fn read_group(
    checks: &[Planned],
    group: &[usize],
    reply: &[Option<Vec<u8>>],
    now: u64,
    into: &mut [Option<CheckRead>],
) -> Result<(), String> {
    let penalties = group
        .iter()
        .filter(|&&i| checks[i].penalty.is_some())
        .count();
    if reply.len() != 2 + group.len() + penalties {
        return Err(format!("the script answered {} values", reply.len()));
    }
    let mut bans = reply[2 + group.len()..].iter();
    for (nth, &i) in group.iter().enumerate() {
        let check = &checks[i];
        let stored = match &reply[2 + nth] {
            Some(raw) => entries(raw)?,
            None => Vec::new(),
        };
        let windows = check
            .windows
            .iter()
            .enumerate()
            .map(|(wi, window)| {
                let state = state_of(check.algorithm, window, &stored, now)?;
                let s = step(check.algorithm, window, state, now, 0);
                Ok(s.status(i, wi, window.limit()))
            })
            .collect::<Result<_, String>>()?;
        let ban = match check.penalty {
            Some(_) => match bans.next().and_then(Option::as_deref) {
                Some(raw) => ban_left(raw, now)?.map(|left| Ban {
                    check: i as u8,
                    left,
                    started: false,
                }),
                None => None,
            },
            None => None,
        };
        into[i] = Some(CheckRead { windows, ban });
    }
    Ok(())
}

/// One check's windows and ban, as a peek finds them.
#[derive(Debug)]
pub(crate) struct CheckRead {
    windows: SmallVec<[WindowStatus; 2]>,
    ban: Option<Ban>,
}

/// The [`Peeked`] of checks whose every [`CheckRead`] was read, in order.
pub(crate) fn peeked(reads: Vec<Option<CheckRead>>) -> Result<Peeked, String> {
    let mut peeked = Peeked::default();
    for read in reads {
        let read = read.ok_or("a check was not read")?;
        peeked.windows.extend(read.windows);
        peeked.bans.extend(read.ban);
    }
    Ok(peeked)
}

/// One window in a bucket's stored value: its id (`g<period>` or
/// `f<period>`), the interval a GCRA window was charged at, and its two
/// numbers (see `decide.lua`).
#[derive(Debug, PartialEq, Eq)]
struct Entry<'a> {
    id: &'a [u8],
    interval: Option<u64>,
    x: u64,
    y: u64,
}

/// The windows of a bucket's stored value, or why it is not one of ours.
fn entries(raw: &[u8]) -> Result<Vec<Entry<'_>>, String> {
    let bad = || "a bucket holds a value that is not one of ours".to_string();
    let digits = |d: &[u8]| !d.is_empty() && d.iter().all(u8::is_ascii_digit);
    let mut out = Vec::new();
    let mut rest = raw;
    while !rest.is_empty() {
        let eq = rest.iter().position(|&b| b == b'=').ok_or_else(bad)?;
        let tag = &rest[..eq];
        let (id, interval) = match tag.iter().position(|&b| b == b'@') {
            Some(at) => (&tag[..at], Some(&tag[at + 1..])),
            None => (tag, None),
        };
        let gcra = match id.first() {
            Some(b'g') => true,
            Some(b'f') => false,
            _ => return Err(bad()),
        };
        if !digits(&id[1..]) || gcra != interval.is_some() {
            return Err(bad());
        }
        let interval = match interval {
            Some(d) if digits(d) => Some(
                std::str::from_utf8(d)
                    .ok()
                    .and_then(|d| d.parse().ok())
                    .ok_or_else(bad)?,
            ),
            Some(_) => return Err(bad()),
            None => None,
        };
        let numbers = rest.get(eq + 1..eq + 17).ok_or_else(bad)?;
        let (x, y) = pair(numbers).ok_or_else(bad)?;
        out.push(Entry { id, interval, x, y });
        rest = &rest[eq + 17..];
    }
    Ok(out)
}

/// Two little-endian doubles, each a whole number from 0 to 2^53.
fn pair(bytes: &[u8]) -> Option<(u64, u64)> {
    let whole = |bytes: &[u8]| {
        let x = f64::from_le_bytes(bytes.try_into().ok()?);
        (x.fract() == 0.0 && (0.0..=9_007_199_254_740_992.0).contains(&x)).then_some(x as u64)
    };
    match bytes.len() {
        16 => Some((whole(&bytes[..8])?, whole(&bytes[8..])?)),
        _ => None,
    }
}

/// The state `window` is decided on at `now`, in the memory store's
/// encoding, from a bucket's stored windows: a GCRA window charged at
/// another interval is rescaled as the decision script would (rounded up,
/// up to the latest arrival time a conversion keeps); a window the value
/// does not hold is fresh (0).
fn state_of(
    algorithm: Algorithm,
    window: &Window,
    stored: &[Entry<'_>],
    now: u64,
) -> Result<u64, String> {
    let id = match algorithm {
        Algorithm::Gcra => format!("g{}", window.period_ns()),
        Algorithm::FixedWindow => format!("f{}", window.period_ns()),
    };
    let Some(entry) = stored.iter().find(|e| e.id == id.as_bytes()) else {
        return Ok(0);
    };
    match algorithm {
        Algorithm::Gcra => {
            let tat = time(entry.x, entry.y)?;
            let (from, to) = (entry.interval.unwrap_or(0), window.interval_ns());
            if tat > now && from != 0 && from != to {
                Ok(carry_over(from, to, tat, now))
            } else {
                Ok(tat)
            }
        }
        Algorithm::FixedWindow => {
            let index = u32::try_from(entry.x).map_err(|_| "a window index out of 32 bits")?;
            let count = u32::try_from(entry.y).map_err(|_| "a window count out of 32 bits")?;
            Ok((u64::from(index) << 32) | u64::from(count))
        }
    }
}

/// A moment stored as seconds and nanoseconds, in ns.
fn time(s: u64, n: u64) -> Result<u64, String> {
    if n >= NS_PER_S {
        return Err(format!("a stored moment of {n} ns, not below a second"));
    }
    s.checked_mul(NS_PER_S)
        .and_then(|s| s.checked_add(n))
        .ok_or_else(|| format!("a stored moment of {s} s, past 64 bits of ns"))
}

/// The ns left at `now` of the ban stored as `raw` (its end), if in force.
fn ban_left(raw: &[u8], now: u64) -> Result<Option<u64>, String> {
    let (s, n) = pair(raw).ok_or("a ban holds a value that is not one of ours")?;
    let end = time(s, n)?;
    Ok((end > now).then(|| end - now))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(entries: &[(&str, f64, f64)]) -> Vec<u8> {
        let mut raw = Vec::new();
        for (tag, x, y) in entries {
            raw.extend(tag.as_bytes());
            raw.extend(x.to_le_bytes());
            raw.extend(y.to_le_bytes());
        }
        raw
    }

    #[test]
    fn stored_values_are_read_window_by_window() {
        let raw = value(&[("g60000000000@1000000000=", 5.0, 7.0), ("f1000=", 3.0, 2.0)]);
        let read = entries(&raw).unwrap();
        assert_eq!(
            read,
            [
                Entry {
                    id: b"g60000000000",
                    interval: Some(1_000_000_000),
                    x: 5,
                    y: 7
                },
                Entry {
                    id: b"f1000",
                    interval: None,
                    x: 3,
                    y: 2
                },
            ]
        );
        for bad in [
            value(&[("x1=", 0.0, 0.0)]),
            value(&[("g1=", 0.0, 0.0)]),
            value(&[("f1@2=", 0.0, 0.0)]),
            value(&[("g1@=", 0.0, 0.0)]),
            value(&[("f1=", 0.5, 0.0)]),
            value(&[("f1=", -1.0, 0.0)]),
            b"f1=short".to_vec(),
        ] {
            assert!(entries(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_gcra_window_charged_at_another_interval_is_rescaled_up() {
        let now = 1_700_000_000 * NS_PER_S;
        // 3 of 60 a minute used (3 s of debt), read at 120 a minute.
        let stored = [Entry {
            id: b"g60000000000",
            interval: Some(1_000_000_000),
            x: 1_700_000_003,
            y: 0,
        }];
        let doubled = Window::per_minute(120);
        let state = state_of(Algorithm::Gcra, &doubled, &stored, now).unwrap();
        assert_eq!(state, now + 1_500_000_000);
        let same = Window::per_minute(60);
        let state = state_of(Algorithm::Gcra, &same, &stored, now).unwrap();
        assert_eq!(state, now + 3 * NS_PER_S);
        let other = Window::per_hour(60);
        assert_eq!(state_of(Algorithm::Gcra, &other, &stored, now), Ok(0));
    }
}
