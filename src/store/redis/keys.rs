//! Redis key names: the store's prefix, the principal's hash tag, and the
//! bucket's (or penalty key's, or in-flight count's) keyed hash. Never a raw
//! key.

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

/// The key of a bucket, all its windows in one value: `prefix:{<principal,
/// 16 hex digits>}:<bucket, 16 hex digits>`.
///
/// The braces make the principal a hash tag: in a Redis Cluster every key
/// of one principal (one request's key for the limits it keys) lives in one
/// hash slot, so one script decides all of its checks, and different
/// principals spread over the slots.
pub(crate) fn bucket_key(prefix: &str, principal: u64, bucket: u64) -> String {
    format!("{prefix}:{{{principal:016x}}}:{bucket:016x}")
}

/// The keys of one penalty key's ban and refusals, in its principal's hash
/// slot: `prefix:{<principal>}:<key, 16 hex digits>:ban` and `…:refusals`.
pub(crate) fn penalty_keys(prefix: &str, principal: u64, key: u64) -> [String; 2] {
    [
        format!("{prefix}:{{{principal:016x}}}:{key:016x}:ban"),
        format!("{prefix}:{{{principal:016x}}}:{key:016x}:refusals"),
    ]
}

/// The keys of one in-flight count's slots, in its principal's hash slot:
/// `prefix:{<principal>}:<key, 16 hex digits>:inflight:<held|line|wait|cap>`.
pub(crate) fn slot_keys(prefix: &str, principal: u64, key: u64) -> [String; 4] {
    ["held", "line", "wait", "cap"]
        .map(|part| format!("{prefix}:{{{principal:016x}}}:{key:016x}:inflight:{part}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_names_the_principal_tag_and_the_hashes_only() {
        assert_eq!(
            bucket_key("rl", 0x12, 0xab),
            "rl:{0000000000000012}:00000000000000ab"
        );
        assert_eq!(
            bucket_key("app.v1", 1, u64::MAX),
            "app.v1:{0000000000000001}:ffffffffffffffff"
        );
        assert_eq!(
            penalty_keys("rl", 0x12, 0xab),
            [
                "rl:{0000000000000012}:00000000000000ab:ban",
                "rl:{0000000000000012}:00000000000000ab:refusals"
            ]
        );
        assert_eq!(
            slot_keys("rl", 0x12, 0xab),
            [
                "rl:{0000000000000012}:00000000000000ab:inflight:held",
                "rl:{0000000000000012}:00000000000000ab:inflight:line",
                "rl:{0000000000000012}:00000000000000ab:inflight:wait",
                "rl:{0000000000000012}:00000000000000ab:inflight:cap",
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
