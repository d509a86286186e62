//! Path patterns: `/v1/calls/{call_id}/control`, `/v2/accounts/{sid}/legs/*`, `*`.
//!
//! A pattern is a sequence of segments separated by `/`: a literal, a
//! `{capture}` that matches any one segment, or a final `*` that matches
//! whatever is left (including nothing). Matching ignores empty segments
//! (`//`, a trailing `/`) and compares literals against the percent-decoded
//! request segment, so `/v1/%6Beys` cannot slip past a `/v1/keys` route.

use std::cell::OnceCell;
use std::fmt;

use smallvec::SmallVec;

use super::percent::eq_percent_decoded;
use crate::error::{ConfigError, ConfigErrorKind};

/// A compiled path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PathPattern {
    source: Box<str>,
    segments: Box<[Segment]>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// A literal, and whether it holds no `%` (a request segment equal to
    /// it then holds none either, and matches without decoding).
    Literal(Box<str>, bool),
    Capture(Box<str>),
    Rest,
}

/// The longest pattern accepted, in bytes.
const MAX_PATTERN_LEN: usize = 1024;

impl PathPattern {
    /// Compiles a pattern. Errors name the pattern and what is wrong with it.
    pub(crate) fn parse(pattern: &str) -> Result<Self, ConfigError> {
        let bad = |reason: String| {
            ConfigError::new(
                ConfigErrorKind::BadPattern,
                "",
                format!("path pattern `{}`: {reason}", pattern.escape_debug()),
            )
        };
        if pattern.len() > MAX_PATTERN_LEN {
            return Err(bad(format!("longer than {MAX_PATTERN_LEN} bytes")));
        }
        let body = if pattern == "*" {
            "*"
        } else if let Some(rest) = pattern.strip_prefix('/') {
            rest
        } else {
            return Err(bad("must start with `/` (or be `*` for every path)".into()));
        };
        let mut segments = Vec::new();
        let parts: Vec<&str> = body.split('/').filter(|s| !s.is_empty()).collect();
        for (i, part) in parts.iter().enumerate() {
            let segment = if *part == "*" {
                if i + 1 != parts.len() {
                    return Err(bad("`*` may only be the last segment".into()));
                }
                Segment::Rest
            } else if let Some(inner) = part.strip_prefix('{') {
                let Some(name) = inner.strip_suffix('}') else {
                    return Err(bad(format!(
                        "segment `{part}` opens `{{` without closing it"
                    )));
                };
                if name.is_empty()
                    || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    || name.starts_with(|c: char| c.is_ascii_digit())
                {
                    return Err(bad(format!(
                        "capture `{{{name}}}` must be a name of letters, digits and `_`"
                    )));
                }
                if segments
                    .iter()
                    .any(|s| matches!(s, Segment::Capture(n) if &**n == name))
                {
                    return Err(bad(format!("capture `{{{name}}}` appears twice")));
                }
                Segment::Capture(name.into())
            } else {
                if part.contains(['{', '}', '*']) {
                    return Err(bad(format!(
                        "segment `{part}`: `{{`, `}}` and `*` must stand alone in a segment"
                    )));
                }
                if part
                    .chars()
                    .any(|c| c.is_control() || c == ' ' || c == '?' || c == '#')
                {
                    return Err(bad(format!(
                        "segment `{}` has a character paths cannot hold",
                        part.escape_debug()
                    )));
                }
                Segment::Literal((*part).into(), !part.contains('%'))
            };
            segments.push(segment);
        }
        Ok(PathPattern {
            source: pattern.into(),
            segments: segments.into(),
        })
    }

    /// The pattern as written.
    #[cfg(test)]
    pub(crate) fn as_str(&self) -> &str {
        &self.source
    }

    /// The names of the pattern's captures, in order.
    pub(crate) fn capture_names(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Capture(n) => Some(&**n),
            _ => None,
        })
    }

    /// Matches a request path; on success, its captures.
    #[inline(never)]
    /// Whether this pattern matches every path `other` matches: segment by
    /// segment, a final `*` takes whatever is left, a capture any one
    /// segment but a `*`, a literal the same literal.
    pub(crate) fn covers(&self, other: &PathPattern) -> bool {
        let mut theirs = other.segments.iter();
        for mine in self.segments.iter() {
            if *mine == Segment::Rest {
                return true;
            }
            let covered = match (mine, theirs.next()) {
                (Segment::Capture(_), Some(Segment::Literal(..) | Segment::Capture(_))) => true,
                (Segment::Literal(a, _), Some(Segment::Literal(b, _))) => a == b,
                _ => false,
            };
            if !covered {
                return false;
            }
        }
        theirs.next().is_none()
    }

    pub(crate) fn matches<'p>(&'p self, path: &'p PathSegments<'p>) -> Option<Captures<'p>> {
        let mut i = 0;
        for segment in self.segments.iter() {
            match segment {
                Segment::Rest => {
                    return Some(Captures {
                        pattern: self,
                        path,
                    })
                }
                Segment::Literal(lit, plain) => {
                    let raw = path.get(i)?.as_bytes();
                    let equal = *plain && raw == lit.as_bytes();
                    if !equal && !eq_percent_decoded(raw, lit.as_bytes()) {
                        return None;
                    }
                }
                Segment::Capture(_) => {
                    path.get(i)?;
                }
            }
            i += 1;
        }
        (i == path.len()).then_some(Captures {
            pattern: self,
            path,
        })
    }
}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// A request path, split into its non-empty segments the first time a
/// pattern needs them (a `*` route never does), once for every route of every
/// limit.
#[derive(Debug, Clone)]
pub(crate) struct PathSegments<'a> {
    path: &'a str,
    spans: OnceCell<SmallVec<[(u32, u32); 12]>>,
}

impl<'a> PathSegments<'a> {
    /// Wraps `path` (the request URI's path, without the query).
    pub(crate) fn new(path: &'a str) -> Self {
        PathSegments {
            path,
            spans: OnceCell::new(),
        }
    }

    fn spans(&self) -> &SmallVec<[(u32, u32); 12]> {
        self.spans.get_or_init(|| {
            // http caps URIs at 64 KiB, so every offset fits in a u32; a
            // longer path would only be cut short, never misread.
            let bytes = &self.path.as_bytes()[..self.path.len().min(u32::MAX as usize)];
            let mut spans = SmallVec::new();
            let mut start = 0;
            for (end, &b) in bytes.iter().enumerate() {
                if b == b'/' {
                    if end > start {
                        spans.push((start as u32, end as u32));
                    }
                    start = end + 1;
                }
            }
            if bytes.len() > start {
                spans.push((start as u32, bytes.len() as u32));
            }
            spans
        })
    }

    /// The number of segments.
    pub(crate) fn len(&self) -> usize {
        self.spans().len()
    }

    /// The `i`th segment, raw (still percent-encoded).
    pub(crate) fn get(&self, i: usize) -> Option<&'a str> {
        let &(a, b) = self.spans().get(i)?;
        self.path.get(a as usize..b as usize)
    }
}

/// The captures of one matched pattern.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Captures<'p> {
    pattern: &'p PathPattern,
    path: &'p PathSegments<'p>,
}

impl<'p> Captures<'p> {
    /// The raw (percent-encoded) value of capture `name`.
    pub(crate) fn get(&self, name: &str) -> Option<&'p str> {
        let i = self
            .pattern
            .segments
            .iter()
            .position(|s| matches!(s, Segment::Capture(n) if &**n == name))?;
        self.path.get(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(pattern: &str, path: &str) -> bool {
        PathPattern::parse(pattern)
            .unwrap()
            .matches(&PathSegments::new(path))
            .is_some()
    }

    #[test]
    fn literals_captures_and_rest() {
        assert!(matches("*", "/"));
        assert!(matches("*", "/anything/at/all"));
        assert!(matches("/v1/keys", "/v1/keys"));
        assert!(matches("/v1/keys", "//v1//keys/"));
        assert!(!matches("/v1/keys", "/v1/keys/extra"));
        assert!(!matches("/v1/keys", "/v1/Keys"));
        assert!(matches("/v2/accounts/{sid}/legs/*", "/v2/accounts/A1/legs"));
        assert!(matches(
            "/v2/accounts/{sid}/legs/*",
            "/v2/accounts/A1/legs/L1/actions"
        ));
        assert!(!matches(
            "/v2/accounts/{sid}/legs/*",
            "/v2/accounts/A1/bridges"
        ));
        assert!(matches("/", "/"));
        assert!(!matches("/", "/x"));
    }

    #[test]
    fn percent_encoded_literals_cannot_bypass_a_route() {
        assert!(matches("/v1/keys", "/v1/%6Beys"));
        assert!(matches("/v1/keys", "/v1/%6b%65ys"));
        assert!(!matches("/v1/keys", "/v1/%6Bey"));
        assert!(!matches("/v1/keys", "/v1/%zzeys"));
    }

    #[test]
    fn a_literal_with_a_percent_sign_matches_the_decoded_request_segment() {
        // The request's `a%41` means `aA`; `a%2541` means `a%41`.
        assert!(matches("/files/a%41", "/files/a%2541"));
        assert!(!matches("/files/a%41", "/files/a%41"));
        assert!(matches("/files/aA", "/files/a%41"));
        // A `%` without two hex digits stands for itself, in both.
        assert!(matches("/files/100%", "/files/100%"));
        assert!(matches("/files/100%", "/files/100%25"));
    }

    #[test]
    fn bad_patterns_name_the_pattern_and_the_reason() {
        for (pattern, reason) in [
            ("v1/keys", "must start with `/`"),
            ("/v1/{id", "without closing"),
            ("/v1/{}", "must be a name"),
            ("/v1/{a-b}", "must be a name"),
            ("/v1/{id}/{id}", "appears twice"),
            ("/v1/*/x", "last segment"),
            ("/v1/x*", "stand alone"),
            ("/v1/a b", "cannot hold"),
        ] {
            let err = PathPattern::parse(pattern).unwrap_err();
            assert_eq!(err.kind(), ConfigErrorKind::BadPattern);
            assert!(err.message().contains(pattern), "{err}");
            assert!(err.message().contains(reason), "{pattern}: {err}");
        }
    }

    /// Any text: a pattern or a sensible error, and matching never panics.
    /// (Policy files and their parsers are fed arbitrary input in
    /// `tests/policy_files/parsers_never_panic.rs`; the patterns are private, so here.)
    mod arbitrary {
        use proptest::prelude::*;

        use super::super::{PathPattern, PathSegments};
        use crate::route::Methods;
        use crate::ConfigErrorKind;

        proptest! {
            #[test]
            fn path_patterns_parse_or_fail_and_match_without_panicking(pattern in any::<String>(), paths in prop::collection::vec(any::<String>(), 0..4)) {
                match PathPattern::parse(&pattern) {
                    Ok(compiled) => {
                        prop_assert_eq!(compiled.as_str(), pattern.as_str());
                        for path in &paths {
                            let segments = PathSegments::new(path);
                            if let Some(captures) = compiled.matches(&segments) {
                                for name in compiled.capture_names() {
                                    prop_assert!(captures.get(name).is_some());
                                }
                            }
                        }
                        if compiled.capture_names().next().is_none() && !pattern.ends_with('*') {
                            // A pattern of literals matches itself.
                            let segments = PathSegments::new(&pattern);
                            prop_assert!(compiled.matches(&segments).is_some(), "{:?}", pattern);
                        }
                    }
                    Err(err) => {
                        prop_assert_eq!(err.kind(), ConfigErrorKind::BadPattern);
                        prop_assert!(!err.message().is_empty());
                    }
                }
            }

            #[test]
            fn patterns_from_path_like_text(pattern in "(/(\\{[a-z_0-9]{0,4}\\}?|[a-z%0-9]{0,3}|\\*)){0,6}", path in "(/[a-z%0-9A-F]{0,4}){0,8}") {
                if let Ok(compiled) = PathPattern::parse(&pattern) {
                    let segments = PathSegments::new(&path);
                    let _ = compiled.matches(&segments);
                    prop_assert!(PathPattern::parse("*").unwrap().matches(&segments).is_some());
                }
            }

            /// A pattern that covers another matches every path the other
            /// matches (so that a route it shadows is rightly refused).
            #[test]
            fn a_covering_pattern_matches_whatever_the_covered_one_does(
                a in "(/(\\{[ab]\\}|[xy]|\\*)){0,3}",
                b in "(/(\\{[cd]\\}|[xy]|\\*)){0,3}",
                paths in prop::collection::vec("(/[xyz]){0,4}", 1..8),
            ) {
                let (Ok(a), Ok(b)) = (PathPattern::parse(&a), PathPattern::parse(&b)) else {
                    return Ok(());
                };
                if a.covers(&b) {
                    for path in &paths {
                        let segments = PathSegments::new(path);
                        if b.matches(&segments).is_some() {
                            prop_assert!(a.matches(&segments).is_some(), "{:?} {:?} {:?}", a, b, path);
                        }
                    }
                }
            }

            #[test]
            fn methods_parse_or_fail(text in any::<String>()) {
                let _ = text.parse::<Methods>();
            }
        }
    }

    #[test]
    fn which_patterns_cover_which() {
        let covers = |a: &str, b: &str| {
            PathPattern::parse(a)
                .unwrap()
                .covers(&PathPattern::parse(b).unwrap())
        };
        assert!(covers("*", "/v1/calls/{id}"));
        assert!(covers("*", "*"));
        assert!(covers("/v1/*", "/v1/calls/{id}/control"));
        assert!(covers("/v1/*", "/v1"));
        assert!(covers("/v1/{any}", "/v1/calls"));
        assert!(covers("/v1/{a}/x", "/v1/{b}/x"));
        assert!(!covers("/v1/calls", "/v1/*"));
        assert!(!covers("/v1/{a}", "/v1/*"));
        assert!(!covers("/v1/{a}", "/v1/calls/x"));
        assert!(!covers("/v1/calls", "/v1/keys"));
        assert!(!covers("/v1/calls/*", "*"));
    }

    #[test]
    fn a_pattern_matches_its_paths_and_captures_their_segments() {
        let pattern = PathPattern::parse("/v1/calls/{call_id}/control").unwrap();
        let path = PathSegments::new("/v1/calls/c_42/control");
        let captures = pattern.matches(&path).unwrap();
        assert_eq!(captures.get("call_id"), Some("c_42"));
        assert!(pattern
            .matches(&PathSegments::new("/v1/calls/c_42"))
            .is_none());
        assert!(PathPattern::parse("/v1/{call_id").is_err());
    }
}
