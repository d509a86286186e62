//! Windows and durations written as text: `60/minute`, `1000/hour`,
//! `100/10s`, `500ms`, `1h30m`. Policy files read them; windows' `Display`
//! and the IETF headers' window names write periods.

use std::fmt;
use std::time::Duration;

#[cfg(any(feature = "toml", feature = "admin"))]
use super::Window;

#[cfg(any(feature = "toml", feature = "admin"))]
const UNITS: [(&[&str], u64); 7] = [
    (&["ns", "nanosecond", "nanoseconds"], 1),
    (&["us", "µs", "microsecond", "microseconds"], 1_000),
    (&["ms", "msec", "millisecond", "milliseconds"], 1_000_000),
    (&["s", "sec", "secs", "second", "seconds"], 1_000_000_000),
    (&["m", "min", "mins", "minute", "minutes"], 60_000_000_000),
    (&["h", "hr", "hour", "hours"], 3_600_000_000_000),
    (&["d", "day", "days"], 86_400_000_000_000),
];

/// Parses a duration: one or more `<number><unit>` groups, largest unit
/// first and each unit once (`90s`, `1m30s`, `500ms`, `2h`, `1500us`),
/// or a bare unit meaning one of it (`minute`).
#[cfg(any(feature = "toml", feature = "admin"))]
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration".into());
    }
    if let Some(unit) = unit_nanos(text) {
        return Ok(Duration::from_nanos(unit));
    }
    let mut total: u64 = 0;
    let mut last_unit = u64::MAX;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(if rest.starts_with(|c: char| c.is_alphabetic()) {
                format!("`{text}`: unknown unit `{rest}` (ms, s, m, h or d; ns, us)")
            } else {
                format!("`{text}`: expected a number before `{rest}`")
            });
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("`{text}`: number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = rest[..unit_len].trim();
        let nanos = unit_nanos(unit).ok_or_else(|| {
            if unit.is_empty() {
                format!("`{text}`: missing unit (ms, s, m, h or d)")
            } else {
                format!("`{text}`: unknown unit `{unit}` (ms, s, m, h or d; ns, us)")
            }
        })?;
        if nanos >= last_unit {
            return Err(format!(
                "`{text}`: give each unit once, the largest first (such as `1m30s`)"
            ));
        }
        last_unit = nanos;
        total = number
            .checked_mul(nanos)
            .and_then(|n| total.checked_add(n))
            .ok_or_else(|| format!("`{text}`: duration too large"))?;
        rest = &rest[unit_len..];
    }
    Ok(Duration::from_nanos(total))
}

#[cfg(any(feature = "toml", feature = "admin"))]
fn unit_nanos(unit: &str) -> Option<u64> {
    UNITS
        .iter()
        .find(|(names, _)| names.iter().any(|n| n.eq_ignore_ascii_case(unit)))
        .map(|(_, nanos)| *nanos)
}

/// Parses a window: `<limit>/<duration>` such as `60/minute`, `10/s`,
/// `100/10s`.
#[cfg(any(feature = "toml", feature = "admin"))]
pub(crate) fn parse_window(text: &str) -> Result<Window, String> {
    let (limit, period) = text
        .split_once('/')
        .ok_or_else(|| format!("`{text}`: expected `<limit>/<period>`, such as `60/minute`"))?;
    let limit = limit.trim();
    // Digits, with single underscores between them (`1_000`), as numbers
    // are written in TOML: no sign, no stray underscore.
    let written = !limit.is_empty()
        && limit
            .split('_')
            .all(|group| !group.is_empty() && group.bytes().all(|b| b.is_ascii_digit()));
    let limit: u32 = written
        .then(|| limit.replace('_', "").parse().ok())
        .flatten()
        .ok_or_else(|| {
            format!("`{text}`: the limit must be a whole number from 1 to 4294967295")
        })?;
    let period = parse_duration(period)?;
    Window::new(limit, period).map_err(|e| format!("`{text}`: {}", e.message()))
}

/// Writes a period the way a person would: `minute`, `hour`, `10s`, `500ms`
/// (`1500us`, `1000001ns` for the rare period that is not whole
/// milliseconds).
pub(crate) fn fmt_period(period: Duration, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    let nanos = period.as_nanos() as u64;
    for (name, unit) in [
        ("day", 86_400),
        ("hour", 3600),
        ("minute", 60),
        ("second", 1),
    ] {
        if nanos == unit * 1_000_000_000 {
            return f.write_str(name);
        }
    }
    if nanos % 1_000_000_000 == 0 {
        write!(f, "{}s", nanos / 1_000_000_000)
    } else if nanos % 1_000_000 == 0 {
        write!(f, "{}ms", nanos / 1_000_000)
    } else if nanos % 1_000 == 0 {
        write!(f, "{}us", nanos / 1_000)
    } else {
        write!(f, "{nanos}ns")
    }
}

#[cfg(all(test, feature = "toml"))]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("minute"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2 hours"), Ok(Duration::from_secs(7200)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("10").unwrap_err().contains("missing unit"));
        assert!(parse_duration("10 fortnights")
            .unwrap_err()
            .contains("unknown unit"));
        assert!(parse_duration("99999999999999999999s").is_err());
        for text in ["1m1m", "30s1m", "1s1000ms0s"] {
            assert!(
                parse_duration(text).unwrap_err().contains("each unit once"),
                "{text}"
            );
        }
        assert_eq!(parse_duration("1500us"), Ok(Duration::from_micros(1500)));
        assert!(parse_duration("999999999999d")
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn windows_round_trip_through_display() {
        for (text, shown) in [
            ("60/minute", "60/minute"),
            ("1_000/hour", "1000/hour"),
            ("10/s", "10/second"),
            ("100/10s", "100/10s"),
            ("5/250ms", "5/250ms"),
        ] {
            let w = parse_window(text).unwrap();
            assert_eq!(w.to_string(), shown);
            assert_eq!(parse_window(shown).unwrap(), w);
        }
        // A window's text reads back whatever its period.
        let odd = Window::new(7, Duration::from_micros(1500)).unwrap();
        assert_eq!(parse_window(&odd.to_string()).unwrap(), odd);
        for text in [
            "+5/minute",
            "_5/minute",
            "5_/minute",
            "5__0/minute",
            " /minute",
        ] {
            assert!(parse_window(text).is_err(), "{text}");
        }
        assert!(parse_window("0/minute").unwrap_err().contains("at least 1"));
        assert!(parse_window("60").is_err());
        assert!(parse_window("-1/minute").is_err());
    }
}
