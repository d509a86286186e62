//! Numbers as header values, without allocating on the hot path.
//!
//! `HeaderValue::from(u64)` allocates a fresh buffer every time. Numbers below
//! 10,000 (limits, remaining counts, most `Retry-After`s) come instead from a
//! static table; larger ones (Unix timestamps for `X-RateLimit-Reset`) from a
//! small per-thread cache, so a value is allocated once per thread and shared
//! by every response that carries it. Large limits are few (a policy's
//! windows, keys' own quotas): each is made once per process, up to 1,024 of
//! them, as a value that is never freed, whose copies cost nothing (a shared
//! value counts its references atomically).

use std::cell::RefCell;

use bytes::Bytes;
use http::HeaderValue;

const SMALL: usize = 10_000;
const WIDTH: usize = 4;

/// `0000`, `0001`, … `9999`, back to back.
static DIGITS: [u8; SMALL * WIDTH] = {
    let mut table = [0u8; SMALL * WIDTH];
    let mut n = 0;
    while n < SMALL {
        table[n * WIDTH] = b'0' + (n / 1000) as u8;
        table[n * WIDTH + 1] = b'0' + (n / 100 % 10) as u8;
        table[n * WIDTH + 2] = b'0' + (n / 10 % 10) as u8;
        table[n * WIDTH + 3] = b'0' + (n % 10) as u8;
        n += 1;
    }
    table
};

const CACHE: usize = 512;

/// A thread's large values: by number, and the last of each of the
/// `X-RateLimit-*` trio's three (a limit and a reset repeat from one
/// response to the next, and must not evict each other from the table).
struct Large {
    table: Vec<(u64, HeaderValue)>,
    last: [(u64, HeaderValue); 3],
}

impl Large {
    /// `n` (10,000 or more) from the cache, or made and cached; `role`
    /// says which of the trio's values it is.
    #[inline]
    fn get(&mut self, role: usize, n: u64) -> HeaderValue {
        if self.last[role].0 != n {
            self.refill(role, n);
        }
        self.last[role].1.clone()
    }

    /// Makes `n` the last value of `role`. A remaining count rarely
    /// repeats once its key has moved on, so it is not put in the table.
    #[cold]
    #[inline(never)]
    fn refill(&mut self, role: usize, n: u64) {
        let value = match role {
            LIMIT => cached(&mut self.table, n, limit),
            REMAINING => shared(n),
            _ => cached(&mut self.table, n, shared),
        };
        self.last[role] = (n, value);
    }
}

thread_local! {
    static LARGE: RefCell<Large> = const {
        RefCell::new(Large {
            table: Vec::new(),
            // Key 0 never reaches the cache (it is in the static table).
            last: [ZERO, ZERO, ZERO],
        })
    };
}

const ZERO: (u64, HeaderValue) = (0, HeaderValue::from_static("0"));

/// The trio's role of a limit.
const LIMIT: usize = 0;
/// The trio's role of a remaining count.
const REMAINING: usize = 1;

/// The most large limits made once per process.
const INTERNED: usize = 1_024;

/// The large limits made so far, as text that lives as long as the process.
static LIMITS: parking_lot::Mutex<Option<std::collections::HashMap<u64, &'static str>>> =
    parking_lot::const_mutex(None);

/// `n` (10,000 or more), a limit: made once per process while there is
/// room for it, and shared like other large values after.
fn limit(n: u64) -> HeaderValue {
    let mut limits = LIMITS.lock();
    let limits = limits.get_or_insert_with(Default::default);
    let text = match limits.get(&n) {
        Some(text) => *text,
        None if limits.len() < INTERNED => {
            let text: &'static str = Box::leak(n.to_string().into_boxed_str());
            limits.insert(n, text);
            text
        }
        None => return shared(n),
    };
    HeaderValue::from_static(text)
}

/// `n` as a header value.
pub(crate) fn number(n: u64) -> HeaderValue {
    if n < SMALL as u64 {
        return small(n);
    }
    LARGE.with(|cache| cached(&mut cache.borrow_mut().table, n, shared))
}

/// The `X-RateLimit-*` trio's values, looking at the per-thread cache once
/// for all three.
#[inline]
pub(crate) fn trio(limit: u64, remaining: u64, reset: u64) -> [HeaderValue; 3] {
    if limit < SMALL as u64 && remaining < SMALL as u64 && reset < SMALL as u64 {
        return [small(limit), small(remaining), small(reset)];
    }
    // A small closure, so that the thread-local access is inlined wherever
    // this is, and one call for the rest: left to the compiler, the whole
    // access was inlined in some builds and not in others (about 120
    // instructions apart, from changes far from this code).
    LARGE.with(|cache| large_trio(&mut cache.borrow_mut(), limit, remaining, reset))
}

/// [`trio`] with one of its numbers 10,000 or more, through `cache`.
#[inline(never)]
fn large_trio(cache: &mut Large, limit: u64, remaining: u64, reset: u64) -> [HeaderValue; 3] {
    let mut value = |role: usize, n: u64| {
        if n < SMALL as u64 {
            small(n)
        } else {
            cache.get(role, n)
        }
    };
    [value(0, limit), value(1, remaining), value(2, reset)]
}

/// `n` (10,000 or more) from the per-thread table, or made by `make` and
/// put there.
#[inline]
fn cached(
    cache: &mut Vec<(u64, HeaderValue)>,
    n: u64,
    make: fn(u64) -> HeaderValue,
) -> HeaderValue {
    if cache.is_empty() {
        cache.resize(CACHE, ZERO);
    }
    let slot = &mut cache[(n % CACHE as u64) as usize];
    if slot.0 != n {
        *slot = (n, make(n));
    }
    slot.1.clone()
}

/// `n` as a header value made once (one allocation, its digits and their
/// reference count together) and shared by every clone without another.
fn shared(n: u64) -> HeaderValue {
    let digits = Digits::of(n);
    HeaderValue::from_maybe_shared(Bytes::from_owner(digits))
        .unwrap_or_else(|_| HeaderValue::from(n))
}

/// The decimal digits of a `u64`, as the owner of a shared buffer.
struct Digits {
    start: u8,
    bytes: [u8; 20],
}

impl Digits {
    fn of(mut n: u64) -> Self {
        let mut bytes = [b'0'; 20];
        let mut start = 20;
        loop {
            start -= 1;
            bytes[start] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        Digits {
            start: start as u8,
            bytes,
        }
    }
}

impl AsRef<[u8]> for Digits {
    fn as_ref(&self) -> &[u8] {
        &self.bytes[usize::from(self.start)..]
    }
}

/// A header value of text and numbers composed on the stack (such as
/// `limit=60, remaining=59, reset=1`), then made a value with one allocation
/// and no copy; `None` if it would not fit.
pub(crate) struct Composed {
    len: u8,
    overflow: bool,
    bytes: [u8; COMPOSED],
}

/// Room for three `u64`s and their labels.
const COMPOSED: usize = 112;

impl Composed {
    pub(crate) fn new() -> Self {
        Composed {
            len: 0,
            overflow: false,
            bytes: [0; COMPOSED],
        }
    }

    /// Appends `text` (visible ASCII and spaces).
    pub(crate) fn text(&mut self, text: &str) -> &mut Self {
        self.push(text.as_bytes());
        self
    }

    /// Appends `n` in decimal.
    pub(crate) fn number(&mut self, n: u64) -> &mut Self {
        let digits = Digits::of(n);
        self.push(digits.as_ref());
        self
    }

    fn push(&mut self, part: &[u8]) {
        let start = usize::from(self.len);
        match self.bytes.get_mut(start..start + part.len()) {
            Some(room) if !self.overflow => {
                room.copy_from_slice(part);
                self.len = (start + part.len()) as u8;
            }
            _ => self.overflow = true,
        }
    }

    /// The composed value.
    pub(crate) fn value(self) -> Option<HeaderValue> {
        if self.overflow {
            return None;
        }
        HeaderValue::from_maybe_shared(Bytes::from_owner(self)).ok()
    }
}

impl AsRef<[u8]> for Composed {
    fn as_ref(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

const POLICIES: usize = 64;

thread_local! {
    static QUOTA_POLICIES: RefCell<Vec<Option<(u32, u64, HeaderValue)>>> =
        const { RefCell::new(Vec::new()) };
}

/// A quota policy of draft-ietf-httpapi-ratelimit-headers-07,
/// `{limit};w={window}` (`60;w=60`), from a small per-thread cache: a
/// policy's value is the same on every response of its routes.
pub(crate) fn quota_policy(limit: u32, window: u64) -> Option<HeaderValue> {
    QUOTA_POLICIES.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.is_empty() {
            cache.resize(POLICIES, None);
        }
        let slot = (u64::from(limit) ^ window.rotate_left(21)) % POLICIES as u64;
        let slot = &mut cache[slot as usize];
        match slot {
            Some((l, w, value)) if *l == limit && *w == window => Some(value.clone()),
            _ => {
                let mut composed = Composed::new();
                composed.number(u64::from(limit)).text(";w=").number(window);
                let value = composed.value()?;
                *slot = Some((limit, window, value.clone()));
                Some(value)
            }
        }
    })
}

/// `n` (below 10,000) from the static table.
#[inline]
fn small(n: u64) -> HeaderValue {
    let n = n as usize;
    let digits = match n {
        0..=9 => 1,
        10..=99 => 2,
        100..=999 => 3,
        _ => 4,
    };
    let end = (n + 1) * WIDTH;
    let text = std::str::from_utf8(&DIGITS[end - digits..end]).unwrap_or("0");
    HeaderValue::from_static(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_print_as_decimal() {
        for n in [
            0,
            7,
            10,
            99,
            100,
            999,
            1000,
            9999,
            10_000,
            1_700_000_000,
            u64::MAX - 1,
        ] {
            assert_eq!(number(n).to_str().unwrap(), n.to_string());
            assert_eq!(number(n).to_str().unwrap(), n.to_string(), "cached");
        }
    }

    #[test]
    fn large_limits_print_as_decimal_made_once_or_shared_past_the_room() {
        let n = |i: u64| 1_000_000_000_000 + i;
        for i in 0..(INTERNED as u64 + 100) {
            assert_eq!(limit(n(i)).to_str().unwrap(), n(i).to_string());
        }
        for i in [0, INTERNED as u64 + 99] {
            let [l, r, t] = trio(n(i), 12_345, 1_700_000_000);
            assert_eq!(
                (
                    l.to_str().unwrap(),
                    r.to_str().unwrap(),
                    t.to_str().unwrap()
                ),
                (&*n(i).to_string(), "12345", "1700000000")
            );
        }
        let interned = LIMITS.lock().as_ref().map_or(0, |l| l.len());
        assert_eq!(interned, INTERNED, "no more are kept than the room");
    }

    #[test]
    fn composed_values_hold_text_and_numbers_or_nothing_if_too_long() {
        let mut c = Composed::new();
        c.text("limit=")
            .number(u64::from(u32::MAX))
            .text(", remaining=")
            .number(0)
            .text(", reset=")
            .number(u64::MAX);
        assert_eq!(
            c.value().unwrap(),
            "limit=4294967295, remaining=0, reset=18446744073709551615"
        );
        let mut long = Composed::new();
        for _ in 0..6 {
            long.number(u64::MAX);
        }
        assert_eq!(long.value(), None);
    }

    #[test]
    fn quota_policies_print_and_are_cached_per_limit_and_window() {
        for _ in 0..2 {
            assert_eq!(quota_policy(60, 60).unwrap(), "60;w=60");
            assert_eq!(quota_policy(1000, 3600).unwrap(), "1000;w=3600");
            assert_eq!(quota_policy(60, 3600).unwrap(), "60;w=3600");
            assert_eq!(quota_policy(0, 0).unwrap(), "0;w=0");
        }
    }
}
