//! Key tables: from `key = { header = "X-API-Key" }` (and `plan = { … }`)
//! to an extractor, and the `key_secret` to a [`KeySecret`].

use std::sync::Arc;

use super::convert::{int_in, invalid, quoted};
use super::spec::{ForwardedIpSpec, KeySecretEnv, KeySecretSpec, KeySpec, PeerIpSpec};
use crate::error::{ConfigError, ConfigErrorKind};
use crate::key::{
    CustomKeys, FirstOf, ForwardedIp, Header, KeyExtractor, KeySecret, PathCapture, PeerIp,
};

/// The most alternatives one `first_of` key may list.
const MAX_FIRST_OF: usize = 16;

impl KeySpec {
    /// The names of the sources this table sets.
    fn sources(&self) -> Vec<&'static str> {
        let mut set = Vec::new();
        let mut add = |present: bool, name| {
            if present {
                set.push(name);
            }
        };
        add(self.header.is_some(), "header");
        add(self.bearer.is_some(), "bearer");
        add(self.path.is_some(), "path");
        add(self.peer_ip.is_some(), "peer_ip");
        add(self.forwarded_ip.is_some(), "forwarded_ip");
        add(self.global.is_some(), "global");
        add(self.custom.is_some(), "custom");
        add(self.first_of.is_some(), "first_of");
        set
    }

    /// The extractor the table describes; `top` is false inside a
    /// `first_of`, which cannot nest.
    pub(super) fn extractor(
        &self,
        custom: &CustomKeys,
        top: bool,
    ) -> Result<Arc<dyn KeyExtractor>, ConfigError> {
        match self.sources()[..] {
            [] => {
                return Err(invalid(
                    "",
                    "a key table needs one of header, bearer, path, peer_ip, forwarded_ip, global, custom or first_of",
                ))
            }
            [_] => {}
            [a, b, ..] => {
                return Err(invalid(
                    "",
                    format!(
                        "`{a}` and `{b}` are both set, but a key table has exactly one source \
                         (use `first_of = [...]` for fallbacks)"
                    ),
                ))
            }
        }
        let flag = |value: bool, name: &str| {
            if value {
                Ok(())
            } else {
                Err(invalid(
                    name,
                    format!("`{name} = false` is not a key source: write `{name} = true`, or choose another source"),
                ))
            }
        };
        if self.within.is_some() && self.path.is_none() {
            return Err(invalid(
                "within",
                "`within` goes with `path`: only a path capture is counted within another key",
            ));
        }
        if let Some(allow) = self.allow_commas {
            if self.header.is_none() {
                return Err(invalid(
                    "allow_commas",
                    "`allow_commas` goes with `header`: only a header key reads commas",
                ));
            }
            if let (Some(name), true) = (&self.header, allow) {
                return Ok(Arc::new(Header::parse(name)?.allow_commas()));
            }
        }
        if let Some(name) = &self.header {
            return Ok(Arc::new(Header::parse(name)?));
        }
        if let Some(bearer) = self.bearer {
            flag(bearer, "bearer")?;
            return Ok(Arc::new(Header::bearer()));
        }
        if let Some(capture) = &self.path {
            let valid = !capture.is_empty()
                && capture
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !capture.starts_with(|c: char| c.is_ascii_digit());
            if !valid {
                return Err(invalid(
                    "path",
                    format!(
                        "{}: the name of a path capture, without braces (`call_id` for `{{call_id}}`)",
                        quoted(capture)
                    ),
                ));
            }
            let capture = PathCapture::new(capture.as_str());
            return Ok(Arc::new(match &self.within {
                Some(scope) => {
                    let scope = scope
                        .extractor(custom, top)
                        .map_err(|e| e.within("within"))?;
                    capture.within_shared(scope)
                }
                None => capture,
            }));
        }
        if let Some(peer) = &self.peer_ip {
            let extractor = match peer {
                PeerIpSpec::Flag(value) => {
                    flag(*value, "peer_ip")?;
                    PeerIp::new()
                }
                PeerIpSpec::Options(options) => match options.ipv6_prefix {
                    Some(prefix) => int_in(prefix, 1, 128, "ipv6_prefix")
                        .and_then(|prefix| PeerIp::new().ipv6_prefix(prefix))
                        .map_err(|e| e.within("peer_ip"))?,
                    None => PeerIp::new(),
                },
            };
            return Ok(Arc::new(extractor));
        }
        if let Some(forwarded) = &self.forwarded_ip {
            return forwarded.extractor().map_err(|e| e.within("forwarded_ip"));
        }
        if let Some(global) = self.global {
            flag(global, "global")?;
            return Ok(Arc::new(crate::key::Global));
        }
        if let Some(name) = &self.custom {
            return custom.get(name).cloned().ok_or_else(|| {
                let known: Vec<_> = custom.names().map(quoted).collect();
                let known = if known.is_empty() {
                    "none are registered (pass them with Policy::from_toml_with)".to_owned()
                } else {
                    format!("registered: {}", known.join(", "))
                };
                ConfigError::new(
                    ConfigErrorKind::UnknownName,
                    "custom",
                    format!("no custom key is registered as {}; {known}", quoted(name)),
                )
            });
        }
        if let Some(alternatives) = &self.first_of {
            if !top {
                return Err(invalid(
                    "first_of",
                    "`first_of` cannot nest: list every alternative in one `first_of`",
                ));
            }
            if alternatives.is_empty() {
                return Err(invalid("first_of", "list at least one alternative"));
            }
            if alternatives.len() > MAX_FIRST_OF {
                return Err(invalid(
                    "first_of",
                    format!("at most {MAX_FIRST_OF} alternatives"),
                ));
            }
            let mut first_of = FirstOf::new();
            for (k, alternative) in alternatives.iter().enumerate() {
                let extractor = alternative
                    .extractor(custom, false)
                    .map_err(|e| e.within(format!("first_of[{k}]")))?;
                first_of = first_of.or_shared(extractor);
            }
            return Ok(Arc::new(first_of));
        }
        Err(invalid("", "a key table needs a source"))
    }
}

impl KeySecretSpec {
    /// The secret: from the file, or from the environment variable it names.
    /// No message repeats the secret or any part of it.
    pub(super) fn resolve(&self) -> Result<KeySecret, ConfigError> {
        match self {
            KeySecretSpec::Hex(hex) => {
                secret_from_hex(hex).ok_or_else(|| invalid("key_secret", "expected 32 hex digits"))
            }
            KeySecretSpec::Env(KeySecretEnv { env: name }) => {
                let field = "key_secret.env";
                if name.is_empty() || name.contains(['=', '\0']) {
                    return Err(invalid(
                        field,
                        format!("{} is not an environment variable name", quoted(name)),
                    ));
                }
                let problem = |what: &str| {
                    let name = quoted(name);
                    invalid(
                        field,
                        format!("the environment variable {name} (the key secret) {what}"),
                    )
                };
                let value = std::env::var(name).map_err(|e| match e {
                    std::env::VarError::NotPresent => problem("is not set"),
                    std::env::VarError::NotUnicode(_) => {
                        problem("is not valid Unicode: expected 32 hex digits")
                    }
                })?;
                secret_from_hex(value.trim()).ok_or_else(|| problem("does not hold 32 hex digits"))
            }
        }
    }
}

/// A secret from exactly 32 hex digits (either case).
fn secret_from_hex(hex: &str) -> Option<KeySecret> {
    fn digit(c: u8) -> Option<u8> {
        (c as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
    }
    let hex: &[u8; 32] = hex.as_bytes().try_into().ok()?;
    let mut bytes = [0u8; 16];
    for (byte, pair) in bytes.iter_mut().zip(hex.chunks_exact(2)) {
        *byte = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(KeySecret::from_bytes(bytes))
}

impl ForwardedIpSpec {
    fn extractor(&self) -> Result<Arc<dyn KeyExtractor>, ConfigError> {
        if self.trusted.is_empty() {
            return Err(invalid(
                "trusted",
                "list the trusted proxies (addresses or CIDR ranges); without any, use `peer_ip = true`",
            ));
        }
        // A bad entry is named `trusted[k]`, as in the file.
        let mut extractor = ForwardedIp::new(&self.trusted)?;
        if let Some(header) = &self.header {
            extractor = match header.to_ascii_lowercase().as_str() {
                "x-forwarded-for" => extractor.x_forwarded_for(),
                "forwarded" => extractor.forwarded(),
                _ => {
                    return Err(invalid(
                        "header",
                        format!("{}: expected x-forwarded-for or forwarded", quoted(header)),
                    ))
                }
            };
        }
        if let Some(prefix) = self.ipv6_prefix {
            extractor = extractor.ipv6_prefix(int_in(prefix, 1, 128, "ipv6_prefix")?)?;
        }
        Ok(Arc::new(extractor))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Policy;

    fn err(text: &str) -> ConfigError {
        Policy::from_toml(text).unwrap_err()
    }

    #[test]
    fn key_secrets_are_exactly_32_hex_digits() {
        let secret = KeySecret::from_bytes(
            *b"\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\xfe\xff",
        );
        assert_eq!(
            secret_from_hex("000102030405060708090a0b0c0dfeff"),
            Some(secret)
        );
        assert_eq!(
            secret_from_hex("000102030405060708090A0B0C0DFEFF"),
            Some(secret)
        );
        for bad in [
            "",
            "000102030405060708090a0b0c0dfef",
            "000102030405060708090a0b0c0dfeff0",
            "+00102030405060708090a0b0c0dfeff",
            "000102030405060708090a0b0c0dfefg",
            " 00102030405060708090a0b0c0dfeff",
            "é00102030405060708090a0b0c0dfef",
        ] {
            assert_eq!(secret_from_hex(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn key_secret_tables_name_the_field() {
        let limits = "\n[[limits]]\nname = \"a\"\nkey = { global = true }\nroutes = [{ windows = [\"1/s\"] }]\n";
        let e = err(&format!(
            "key_secret = {{ env = \"X\", file = \"y\" }}{limits}"
        ));
        assert_eq!(e.kind(), ConfigErrorKind::Syntax);
        assert_eq!(e.field(), "key_secret.file");
        let e = err(&format!("key_secret = {{}}{limits}"));
        assert_eq!(e.field(), "key_secret");
        let e = err(&format!("key_secret = 7{limits}"));
        assert_eq!(e.field(), "key_secret");
        let e = err(&format!("key_secret = {{ env = \"A=B\" }}{limits}"));
        assert_eq!(
            (e.kind(), e.field()),
            (ConfigErrorKind::InvalidValue, "key_secret.env")
        );
        assert_eq!((e.line(), e.column()), (Some(1), Some(22)));
    }

    #[test]
    fn nested_first_of_is_refused() {
        let e = err(
            "[[limits]]\nname = \"a\"\nkey = { first_of = [{ first_of = [{ global = true }] }] }\nroutes = [{ windows = [\"1/s\"] }]\n",
        );
        assert_eq!(e.field(), "limits[0].key.first_of[0].first_of");
        assert_eq!(e.line(), Some(3));
    }
}
