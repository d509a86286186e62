//! [`RetryPolicy`]: a `tower::retry` policy that retries 429 and 503 when
//! the server says to, and backs off with full jitter when it does not.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use http::header::RETRY_AFTER;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use tower::retry::budget::{Budget, TpsBudget};
use tower::retry::Policy;

use super::jitter::SplitMix;
use crate::clock::{Clock, SystemClock, NANOS};

/// Below this, an `X-RateLimit-Reset` value is delta seconds; from it on,
/// Unix seconds (10^9 s is about 31.7 years as a delta, and 2001-09-09 as a
/// Unix time: no server means either of the other).
const UNIX_RESET_FROM: u64 = 1_000_000_000;

/// Where the wait before a retry came from, most trusted first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Hint {
    /// `Retry-After`: the longest of its delta seconds and HTTP dates, over
    /// every line.
    RetryAfter,
    /// The IETF `RateLimit` field: the largest `t` of the windows with `r=0`
    /// (draft 10), or `reset` when `remaining` is 0 or absent (draft 7).
    RateLimit,
    /// `X-RateLimit-Reset` when `X-RateLimit-Remaining` is 0 or absent: Unix
    /// seconds, or delta seconds when under 10^9.
    XRateLimitReset,
    /// No usable hint (none, or one of no wait): exponential backoff with
    /// full jitter.
    Backoff,
}

/// One wait the policy made before retrying a request.
///
/// A response that was retried carries the waits before it, in order, as a
/// `Vec<Wait>` in its extensions (also when it is a 429 the policy gave up
/// on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wait {
    /// The status of the response that was retried.
    pub status: StatusCode,
    /// How long the policy waited.
    pub delay: Duration,
    /// Why that long.
    pub hint: Hint,
}

/// A [`tower::retry::Policy`] for HTTP clients of rate-limited APIs.
///
/// It retries a `429 Too Many Requests` or `503 Service Unavailable`,
/// waiting what the response says, in this order of trust:
///
/// 1. `Retry-After`, every line of it: a line that is an HTTP date (read
///    against the policy's clock) is one value, any other line is split at
///    commas into delta seconds; values it cannot read are skipped, and the
///    longest wait of the rest is the hint;
/// 2. the IETF `RateLimit` field, every line of it: the largest `t` among
///    the windows that have nothing left (`r=0`; draft 10), or the largest
///    `reset` (draft 7) when the lowest `remaining` is 0 or there is none;
/// 3. `X-RateLimit-Reset`, when the lowest `X-RateLimit-Remaining` is 0 or
///    there is none to read: the longest of its values, each delta seconds
///    under 10^9 and Unix seconds from it on;
/// 4. otherwise exponential backoff with full jitter: before retry `n`
///    (from 0), a uniformly random wait in `[0, min(base × 2^n, max_backoff)]`.
///
/// A reset of a window that still has room (`remaining` above 0) says
/// nothing about this response: it is no hint, and the next source
/// applies. A hint of no wait (`Retry-After: 0`, or a time in the past) is
/// no usable wait either: the policy waits the backoff instead (logged as
/// [`Hint::Backoff`]), so that a server that always says "now" is not sent
/// a burst.
///
/// It gives up, returning the last response, when the hint is longer than
/// [`RetryPolicy::max_wait`] (a `Retry-After: 86400` is not waited for),
/// after [`RetryPolicy::max_retries`] retries, or when the retry budget is
/// spent. Only requests whose method RFC 9110 defines as idempotent (GET,
/// HEAD, OPTIONS, TRACE, PUT, DELETE; methods are case-sensitive) are
/// retried, unless [`RetryPolicy::retry_non_idempotent`] allows every
/// method; errors of the inner service are never retried. A retry is a
/// copy of the request: its method, URI, version, headers, extensions and
/// body. The request must be clonable (`http::Request<B>` with `B: Clone`:
/// `String`, `Bytes`, `Full`…).
///
/// Clones share the budget and the random source, and so do policies
/// configured from one (`base.clone().max_retries(5)`): their waits are
/// drawn one after another, never the same; each request counts its own
/// retries.
#[derive(Clone)]
pub struct RetryPolicy {
    settings: Arc<Settings>,
    /// The waits so far of the request this clone retries.
    waits: Vec<Wait>,
}

struct Settings {
    max_retries: u32,
    base: Duration,
    max_backoff: Duration,
    max_wait: Duration,
    non_idempotent: bool,
    budget: Arc<dyn Budget + Send + Sync>,
    /// Shared by every policy configured from this one too, so that no two
    /// of them draw the same waits.
    rng: Arc<SplitMix>,
    clock: Arc<dyn Clock>,
}

impl Clone for Settings {
    fn clone(&self) -> Self {
        Settings {
            budget: Arc::clone(&self.budget),
            clock: Arc::clone(&self.clock),
            rng: Arc::clone(&self.rng),
            ..*self
        }
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self::new()
    }
}

impl RetryPolicy {
    /// A policy of at most 3 retries, backoff from 100 ms up to 10 s, hints
    /// honoured up to 60 s, and tower's default [`TpsBudget`] (10 retries a
    /// second, plus 20 % of requests, over 10 s).
    pub fn new() -> Self {
        RetryPolicy {
            settings: Arc::new(Settings {
                max_retries: 3,
                base: Duration::from_millis(100),
                max_backoff: Duration::from_secs(10),
                max_wait: Duration::from_secs(60),
                non_idempotent: false,
                budget: Arc::new(TpsBudget::default()),
                rng: Arc::new(SplitMix::from_os()),
                clock: Arc::new(SystemClock::new()),
            }),
            waits: Vec::new(),
        }
    }

    fn with(mut self, set: impl FnOnce(&mut Settings)) -> Self {
        set(Arc::make_mut(&mut self.settings));
        self
    }

    /// Retries a request at most `n` times (default 3).
    #[must_use]
    pub fn max_retries(self, n: u32) -> Self {
        self.with(|s| s.max_retries = n)
    }

    /// The backoff without a hint: before retry `n`, up to `base × 2^n`,
    /// never more than `max` (defaults 100 ms and 10 s).
    #[must_use]
    pub fn backoff(self, base: Duration, max: Duration) -> Self {
        self.with(|s| {
            s.base = base;
            s.max_backoff = max;
        })
    }

    /// The longest hint honoured (default 60 s): a response that asks for a
    /// longer wait is returned as it is.
    #[must_use]
    pub fn max_wait(self, max: Duration) -> Self {
        self.with(|s| s.max_wait = max)
    }

    /// Whether requests of every method are retried, not only those RFC
    /// 9110 defines as idempotent (GET, HEAD, OPTIONS, TRACE, PUT, DELETE)
    /// (default `false`). A refusal by a rate limiter did not run the
    /// request, but a 503 may have.
    #[must_use]
    pub fn retry_non_idempotent(self, retry: bool) -> Self {
        self.with(|s| s.non_idempotent = retry)
    }

    /// The budget retries are drawn from (each request deposits once);
    /// shared by the policy's clones.
    #[must_use]
    pub fn budget(self, budget: impl Budget + Send + Sync + 'static) -> Self {
        self.with(|s| s.budget = Arc::new(budget))
    }

    /// Seeds the jitter's random source (by default from the operating
    /// system), for reproducible waits.
    #[must_use]
    pub fn seed(self, seed: u64) -> Self {
        self.with(|s| s.rng = Arc::new(SplitMix::seeded(seed)))
    }

    /// The clock HTTP dates and Unix-time resets are read against (by
    /// default the system's, advanced by Tokio's clock).
    #[must_use]
    pub fn clock(self, clock: impl Clock) -> Self {
        self.with(|s| s.clock = Arc::new(clock))
    }

    /// The wait before retrying a response with these headers, and why; the
    /// backoff is for retry `retry` (from 0). A hint of no wait is no hint.
    fn delay(&self, headers: &HeaderMap, retry: u32) -> (Duration, Hint) {
        let now = self.settings.clock.now();
        let hint = retry_after(headers, now)
            .map(|d| (d, Hint::RetryAfter))
            .or_else(|| ratelimit_t(headers).map(|d| (d, Hint::RateLimit)))
            .or_else(|| x_ratelimit_reset(headers, now).map(|d| (d, Hint::XRateLimitReset)));
        if let Some((delay, hint)) = hint.filter(|(d, _)| !d.is_zero()) {
            return (delay, hint);
        }
        let s = &self.settings;
        let ceiling = s
            .base
            .saturating_mul(1u32.checked_shl(retry).unwrap_or(u32::MAX))
            .min(s.max_backoff);
        let ceiling = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        let nanos = s.rng.up_to(ceiling);
        (Duration::from_nanos(nanos), Hint::Backoff)
    }
}

impl fmt::Debug for RetryPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.settings;
        f.debug_struct("RetryPolicy")
            .field("max_retries", &s.max_retries)
            .field("base", &s.base)
            .field("max_backoff", &s.max_backoff)
            .field("max_wait", &s.max_wait)
            .field("non_idempotent", &s.non_idempotent)
            .field("waits", &self.waits)
            .finish_non_exhaustive()
    }
}

impl<B: Clone, ResB, E> Policy<Request<B>, Response<ResB>, E> for RetryPolicy {
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        _req: &mut Request<B>,
        result: &mut Result<Response<ResB>, E>,
    ) -> Option<Self::Future> {
        let retries = self.waits.len() as u32;
        if retries == 0 {
            self.settings.budget.deposit();
        }
        let response = result.as_mut().ok()?;
        let status = response.status();
        if status != StatusCode::TOO_MANY_REQUESTS && status != StatusCode::SERVICE_UNAVAILABLE {
            self.log_into(response);
            return None;
        }
        let (delay, hint) = self.delay(response.headers(), retries);
        let give_up = retries >= self.settings.max_retries
            || (hint != Hint::Backoff && delay > self.settings.max_wait)
            || !self.settings.budget.withdraw();
        if give_up {
            self.log_into(response);
            return None;
        }
        tracing::debug!(?status, ?delay, ?hint, "retrying a rate-limited request");
        self.waits.push(Wait {
            status,
            delay,
            hint,
        });
        Some(tokio::time::sleep(delay))
    }

    fn clone_request(&mut self, req: &Request<B>) -> Option<Request<B>> {
        // RFC 9110, section 9.2.2: the methods defined as idempotent.
        let idempotent = matches!(
            *req.method(),
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::TRACE
                | Method::PUT
                | Method::DELETE
        );
        if !idempotent && !self.settings.non_idempotent {
            return None;
        }
        let mut clone = Request::new(req.body().clone());
        *clone.method_mut() = req.method().clone();
        *clone.uri_mut() = req.uri().clone();
        *clone.version_mut() = req.version();
        *clone.headers_mut() = req.headers().clone();
        *clone.extensions_mut() = req.extensions().clone();
        Some(clone)
    }
}

impl RetryPolicy {
    /// Puts the waits before the final response in its extensions.
    fn log_into<ResB>(&mut self, response: &mut Response<ResB>) {
        if !self.waits.is_empty() {
            response
                .extensions_mut()
                .insert(std::mem::take(&mut self.waits));
        }
    }
}

/// Every line of the header `name` that is visible ASCII, trimmed.
fn lines<'h>(headers: &'h HeaderMap, name: &str) -> impl Iterator<Item = &'h str> {
    let values = headers.get_all(name).iter();
    values.filter_map(|v| v.to_str().ok()).map(str::trim)
}

/// The comma-separated numbers of every line of the header `name`, those
/// [`seconds`] reads.
fn numbers<'h>(headers: &'h HeaderMap, name: &str) -> impl Iterator<Item = u64> + 'h {
    lines(headers, name).flat_map(|line| line.split(',').filter_map(|v| seconds(v.trim())))
}

/// `Retry-After`: the longest wait of every line's values (`None` when no
/// value is readable). A line that is an HTTP date is one value (a date in
/// the past is no wait); any other line is delta seconds, split at commas.
fn retry_after(headers: &HeaderMap, now: u64) -> Option<Duration> {
    let mut longest = None;
    for line in lines(headers, RETRY_AFTER.as_str()) {
        if let Ok(date) = httpdate::parse_http_date(line) {
            let at = date.duration_since(UNIX_EPOCH).unwrap_or_default();
            longest = longest.max(Some(at.saturating_sub(Duration::from_nanos(now))));
            continue;
        }
        for value in line.split(',') {
            longest = longest.max(seconds(value.trim()).map(Duration::from_secs));
        }
    }
    longest
}

/// The IETF `RateLimit` field, over every line: draft 10's largest `t`
/// among items with `r=0`, or draft 7's largest `reset` when its lowest
/// `remaining` is 0 or there is none.
fn ratelimit_t(headers: &HeaderMap) -> Option<Duration> {
    let mut longest: Option<u64> = None;
    let mut reset: Option<u64> = None;
    let mut remaining: Option<u64> = None;
    for line in lines(headers, "ratelimit") {
        for item in split_outside_quotes(line, ',') {
            let item = item.trim();
            if let Some(value) = item.strip_prefix("reset=") {
                reset = reset.max(seconds(value.trim()));
                continue;
            }
            if let Some(value) = item.strip_prefix("remaining=") {
                remaining = lowest(remaining, seconds(value.trim()));
                continue;
            }
            let mut r = None;
            let mut t = None;
            for param in split_outside_quotes(item, ';').skip(1) {
                match param.trim().split_once('=') {
                    Some(("r", v)) => r = seconds(v),
                    Some(("t", v)) => t = seconds(v),
                    _ => {}
                }
            }
            if r == Some(0) {
                longest = longest.max(t);
            }
        }
    }
    if matches!(remaining, None | Some(0)) {
        longest = longest.max(reset);
    }
    longest.map(Duration::from_secs)
}

/// `X-RateLimit-Reset`, when the lowest `X-RateLimit-Remaining` is 0 or
/// none is readable: the longest wait of its values, each delta seconds
/// under 10^9 and Unix seconds from it on (a time in the past is no wait).
fn x_ratelimit_reset(headers: &HeaderMap, now: u64) -> Option<Duration> {
    let remaining = numbers(headers, "x-ratelimit-remaining").min();
    if remaining.is_some_and(|left| left > 0) {
        return None;
    }
    let wait = |value: u64| {
        if value < UNIX_RESET_FROM {
            return Duration::from_secs(value);
        }
        let at = value.saturating_mul(NANOS);
        Duration::from_nanos(at.saturating_sub(now))
    };
    numbers(headers, "x-ratelimit-reset").map(wait).max()
}

/// The lower of two counts, either of which may be missing.
fn lowest(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A whole number of seconds (or a count), as digits: one too large for a
/// `u64` is the largest (a server asking for longer than anyone waits, not
/// a value to ignore).
fn seconds(text: &str) -> Option<u64> {
    match text.parse::<u64>() {
        Ok(n) => Some(n),
        Err(e) if *e.kind() == std::num::IntErrorKind::PosOverflow => Some(u64::MAX),
        Err(_) => None,
    }
}

/// `text` split at `separator`s that are not inside a quoted string.
fn split_outside_quotes(text: &str, separator: char) -> impl Iterator<Item = &str> {
    let mut quoted = false;
    let mut escaped = false;
    text.split(move |c: char| {
        if escaped {
            escaped = false;
        } else if quoted && c == '\\' {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        }
        !quoted && c == separator
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (k.parse().unwrap(), v.parse().unwrap()))
            .collect()
    }

    const NOW: u64 = 1_700_000_000 * NANOS;

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let h = headers(&[("retry-after", "7")]);
        assert_eq!(retry_after(&h, NOW), Some(Duration::from_secs(7)));
        // 1_700_000_000 is Tue, 14 Nov 2023 22:13:20 GMT.
        let h = headers(&[("retry-after", "Tue, 14 Nov 2023 22:13:32 GMT")]);
        assert_eq!(retry_after(&h, NOW), Some(Duration::from_secs(12)));
        let h = headers(&[("retry-after", "Tue, 14 Nov 2023 22:13:00 GMT")]);
        assert_eq!(retry_after(&h, NOW), Some(Duration::ZERO));
        let h = headers(&[("retry-after", "soon")]);
        assert_eq!(retry_after(&h, NOW), None);
    }

    #[test]
    fn ratelimit_takes_the_longest_t_of_the_empty_windows() {
        let h = headers(&[(
            "ratelimit",
            r#""per_key.minute";r=0;t=12, "per_key.hour";r=5;t=40, "a,b";r=0;t=3"#,
        )]);
        assert_eq!(ratelimit_t(&h), Some(Duration::from_secs(12)));
        let h = headers(&[("ratelimit", r#""per_key.minute";r=3;t=12"#)]);
        assert_eq!(ratelimit_t(&h), None);
        let h = headers(&[("ratelimit", "limit=60, remaining=0, reset=9")]);
        assert_eq!(ratelimit_t(&h), Some(Duration::from_secs(9)));
    }

    #[test]
    fn x_ratelimit_reset_is_delta_below_a_billion_and_unix_above() {
        let h = headers(&[("x-ratelimit-reset", "30")]);
        assert_eq!(x_ratelimit_reset(&h, NOW), Some(Duration::from_secs(30)));
        let h = headers(&[("x-ratelimit-reset", "1700000045")]);
        assert_eq!(x_ratelimit_reset(&h, NOW), Some(Duration::from_secs(45)));
        let h = headers(&[("x-ratelimit-reset", "1600000000")]);
        assert_eq!(x_ratelimit_reset(&h, NOW), Some(Duration::ZERO));
    }

    #[test]
    fn a_hint_too_large_for_a_u64_is_the_longest_wait_not_none() {
        let huge = "99999999999999999999";
        let h = headers(&[("retry-after", huge)]);
        assert_eq!(retry_after(&h, NOW), Some(Duration::from_secs(u64::MAX)));
        let h = headers(&[("ratelimit", &*format!(r#""a";r=0;t={huge}"#))]);
        assert_eq!(ratelimit_t(&h), Some(Duration::from_secs(u64::MAX)));
        let h = headers(&[("ratelimit", &*format!("limit=1, remaining=0, reset={huge}"))]);
        assert_eq!(ratelimit_t(&h), Some(Duration::from_secs(u64::MAX)));
        let h = headers(&[("x-ratelimit-reset", huge)]);
        assert_eq!(
            x_ratelimit_reset(&h, NOW),
            Some(Duration::from_nanos(u64::MAX - NOW))
        );
        // Not digits: no hint at all (the backoff decides).
        for bad in ["-5", "1.5", "0x10", "9e99"] {
            let h = headers(&[("retry-after", bad)]);
            assert_eq!(retry_after(&h, NOW), None, "{bad}");
        }
    }

    #[test]
    fn every_retry_after_line_is_read_and_the_longest_wait_wins() {
        let both = [("retry-after", "1"), ("retry-after", "86400")];
        for pairs in [both, [both[1], both[0]]] {
            assert_eq!(
                retry_after(&headers(&pairs), NOW),
                Some(Duration::from_secs(86_400))
            );
        }
        let h = headers(&[("retry-after", "5, 7")]);
        assert_eq!(retry_after(&h, NOW), Some(Duration::from_secs(7)));
        // A date is one value, commas and all; what cannot be read is skipped.
        let h = headers(&[
            ("retry-after", "Tue, 14 Nov 2023 22:13:32 GMT"),
            ("retry-after", "soon, 3"),
        ]);
        assert_eq!(retry_after(&h, NOW), Some(Duration::from_secs(12)));
        let h = headers(&[("retry-after", "soon"), ("retry-after", ",")]);
        assert_eq!(retry_after(&h, NOW), None);
    }

    #[test]
    fn a_reset_is_a_hint_only_when_nothing_is_left() {
        let h = headers(&[("ratelimit", "limit=60, remaining=5, reset=9")]);
        assert_eq!(ratelimit_t(&h), None);
        let h = headers(&[
            ("ratelimit", "limit=60, remaining=5, reset=9"),
            ("ratelimit", "limit=600, remaining=0, reset=30"),
        ]);
        assert_eq!(ratelimit_t(&h), Some(Duration::from_secs(30)));
        let h = headers(&[("ratelimit", "limit=60, reset=9")]);
        assert_eq!(ratelimit_t(&h), Some(Duration::from_secs(9)));

        let h = headers(&[
            ("x-ratelimit-remaining", "999"),
            ("x-ratelimit-reset", "30"),
        ]);
        assert_eq!(x_ratelimit_reset(&h, NOW), None);
        let h = headers(&[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "30")]);
        assert_eq!(x_ratelimit_reset(&h, NOW), Some(Duration::from_secs(30)));
        // Several lines: the lowest remaining, the longest reset.
        let h = headers(&[
            ("x-ratelimit-remaining", "4"),
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "1700000045"),
            ("x-ratelimit-reset", "30"),
        ]);
        assert_eq!(x_ratelimit_reset(&h, NOW), Some(Duration::from_secs(45)));
        // No remaining to read: the reset is a hint, as without the header.
        let h = headers(&[
            ("x-ratelimit-remaining", "many"),
            ("x-ratelimit-reset", "30"),
        ]);
        assert_eq!(x_ratelimit_reset(&h, NOW), Some(Duration::from_secs(30)));
    }

    #[test]
    fn hints_are_trusted_in_order() {
        let policy =
            RetryPolicy::new().clock(crate::clock::ManualClock::at_unix_secs(1_700_000_000));
        let all = headers(&[
            ("retry-after", "5"),
            ("ratelimit", r#""a";r=0;t=6"#),
            ("x-ratelimit-reset", "7"),
        ]);
        assert_eq!(
            policy.delay(&all, 0),
            (Duration::from_secs(5), Hint::RetryAfter)
        );
        let two = headers(&[("ratelimit", r#""a";r=0;t=6"#), ("x-ratelimit-reset", "7")]);
        assert_eq!(
            policy.delay(&two, 0),
            (Duration::from_secs(6), Hint::RateLimit)
        );
        let one = headers(&[("x-ratelimit-reset", "7")]);
        assert_eq!(
            policy.delay(&one, 0),
            (Duration::from_secs(7), Hint::XRateLimitReset)
        );
    }
}
