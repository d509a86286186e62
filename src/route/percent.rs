//! Percent-decoding of raw path segments, for literals and keys alike: a
//! segment written `%6Beys` is `keys`.

/// Compares a raw path segment with a literal, decoding `%XX` in the segment.
pub(super) fn eq_percent_decoded(raw: &[u8], literal: &[u8]) -> bool {
    if !raw.contains(&b'%') {
        return raw == literal;
    }
    let mut decoded = PercentDecode::new(raw);
    literal.iter().all(|&b| decoded.next() == Some(b)) && decoded.next().is_none()
}

/// Decodes `%XX` escapes byte by byte; a `%` not followed by two hex digits
/// stands for itself.
#[derive(Debug, Clone)]
pub(crate) struct PercentDecode<'a> {
    bytes: &'a [u8],
}

impl<'a> PercentDecode<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        PercentDecode { bytes }
    }
}

impl Iterator for PercentDecode<'_> {
    type Item = u8;

    fn next(&mut self) -> Option<u8> {
        let (&first, rest) = self.bytes.split_first()?;
        if first == b'%' {
            if let [h, l, tail @ ..] = rest {
                if let (Some(h), Some(l)) = (hex(*h), hex(*l)) {
                    self.bytes = tail;
                    return Some(h << 4 | l);
                }
            }
        }
        self.bytes = rest;
        Some(first)
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(raw: &str) -> Vec<u8> {
        PercentDecode::new(raw.as_bytes()).collect()
    }

    #[test]
    fn escapes_decode_and_broken_ones_stand_for_themselves() {
        assert_eq!(decode("%6Beys"), b"keys");
        assert_eq!(decode("a%2fb%2F"), b"a/b/");
        assert_eq!(decode("%"), b"%");
        assert_eq!(decode("%4"), b"%4");
        assert_eq!(decode("%zz%41"), b"%zzA");
        assert!(eq_percent_decoded(b"%6b%65ys", b"keys"));
        assert!(!eq_percent_decoded(b"%6Bey", b"keys"));
    }
}
