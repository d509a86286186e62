//! Redis key names: a prefix in a hash tag, the bucket's keyed hash, and the
//! window's algorithm and period. Never a raw key.

use crate::policy::Algorithm;

/// The longest prefix accepted, in bytes.
pub(crate) const MAX_PREFIX_LEN: usize = 64;

/// Whether `prefix` can name keys: 1 to 64 printable ASCII characters,
/// without the braces of a hash tag or whitespace.
pub(crate) fn valid_prefix(prefix: &str) -> bool {
    !prefix.is_empty()
        && prefix.len() <= MAX_PREFIX_LEN
        && prefix
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'{' && b != b'}')
}

/// The key of one window of one bucket: `{prefix}:<bucket, 16 hex
/// digits>:<gcra|fixed>:<period in ns>`.
///
/// The braces make `prefix` a hash tag: in a Redis Cluster every key of the
/// store lives in one hash slot, so one script can decide a whole request.
pub(crate) fn window_key(
    prefix: &str,
    bucket: u64,
    algorithm: Algorithm,
    period_ns: u64,
) -> String {
    let algorithm = match algorithm {
        Algorithm::Gcra => "gcra",
        Algorithm::FixedWindow => "fixed",
    };
    format!("{{{prefix}}}:{bucket:016x}:{algorithm}:{period_ns}")
}

/// The keys of one penalty key's ban and refusals: `{prefix}:<key, 16 hex
/// digits>:ban` and `…:refusals`.
pub(crate) fn penalty_keys(prefix: &str, key: u64) -> [String; 2] {
    [
        format!("{{{prefix}}}:{key:016x}:ban"),
        format!("{{{prefix}}}:{key:016x}:refusals"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_names_the_bucket_hash_and_the_window_only() {
        assert_eq!(
            window_key("rl", 0xab, Algorithm::Gcra, 60_000_000_000),
            "{rl}:00000000000000ab:gcra:60000000000"
        );
        assert_eq!(
            window_key("app.v1", u64::MAX, Algorithm::FixedWindow, 1_000_000),
            "{app.v1}:ffffffffffffffff:fixed:1000000"
        );
        assert_eq!(
            penalty_keys("rl", 0xab),
            [
                "{rl}:00000000000000ab:ban",
                "{rl}:00000000000000ab:refusals"
            ]
        );
    }

    #[test]
    fn prefixes_with_braces_spaces_or_no_text_are_refused() {
        assert!(valid_prefix("ratelimit"));
        assert!(valid_prefix("my-app:limits"));
        for bad in ["", "a{b", "a}", "with space", "tab\t", &"x".repeat(65)] {
            assert!(!valid_prefix(bad), "{bad:?}");
        }
    }
}
