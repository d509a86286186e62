//! Everything that parses input, fed arbitrary input: it answers `Ok` or a
//! sensible `Err`, and never panics. The same entry points as the fuzz
//! targets in `fuzz/`, run on stable in CI.

use std::net::{IpAddr, SocketAddr};

use http::{HeaderValue, Request};
use proptest::prelude::*;
use tower_ratelimit::key::{ForwardedIp, Header, KeyErrorKind, KeyExtractor, PeerIp, RequestView};
use tower_ratelimit::{ConfigError, ConfigErrorKind, Policy};

/// A valid policy that mutations start from.
const VALID: &str = r#"headers = "both"
report = "minute"
refusal = "nixflex"
refusal_status = 429
max_key_len = 64

[[limits]]
name = "per_key"
key = { first_of = [{ header = "X-API-Key" }, { forwarded_ip = { trusted = ["10.0.0.0/8"], header = "forwarded", ipv6_prefix = 56 } }] }
on_missing_key = "reject"
algorithm = "gcra"

[[limits.routes]]
methods = ["POST"]
path = "/v1/keys"
windows = ["10/hour"]

[[limits.routes]]
methods = "POST,PUT"
windows = ["60/minute", { limit = 1000, period = "1h" }]
cost = 2
algorithm = "fixed_window"

[[limits]]
name = "per_call"
key = { path = "call_id" }
routes = [{ path = "/v1/calls/{call_id}/control", windows = ["10/minute"] }]
"#;

/// What every error from a policy text must look like: a position inside
/// the text, a well-formed field path and a message.
fn check_error(text: &str, err: &ConfigError) {
    assert_ne!(err.kind(), ConfigErrorKind::Io);
    assert!(!err.message().is_empty());
    let (line, column) = (err.line().expect("a line"), err.column().expect("a column"));
    let lines = text.split('\n').count();
    assert!((1..=lines).contains(&line), "line {line} of {lines}: {err}");
    let line_len = text.split('\n').nth(line - 1).unwrap().chars().count();
    assert!(
        (1..=line_len + 1).contains(&column),
        "column {column} of {line_len}: {err}"
    );
    let field = err.field();
    assert!(well_formed_path(field), "{field:?}");
    let _ = err.to_string();
}

/// Whether `field` is a field path: empty, or segments joined by `.`, each
/// a bare key (`limits`) or a quoted one (`"x.y"`, with `\` escapes, for a
/// key that is not bare), then any indices (`[0]`).
fn well_formed_path(field: &str) -> bool {
    let mut rest = field;
    while !rest.is_empty() {
        if let Some(quoted) = rest.strip_prefix('"') {
            let mut escaped = false;
            let Some(end) = quoted.char_indices().find_map(|(i, c)| {
                let closes = c == '"' && !escaped;
                escaped = c == '\\' && !escaped;
                closes.then_some(i)
            }) else {
                return false;
            };
            rest = &quoted[end + 1..];
        } else {
            let bare = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
                .unwrap_or(rest.len());
            if bare == 0 {
                return false;
            }
            rest = &rest[bare..];
        }
        while let Some(index) = rest.strip_prefix('[') {
            let Some(end) = index.find(']') else {
                return false;
            };
            if end == 0 || !index[..end].bytes().all(|b| b.is_ascii_digit()) {
                return false;
            }
            rest = &index[end + 1..];
        }
        if !rest.is_empty() {
            match rest.strip_prefix('.') {
                Some(next) if !next.is_empty() => rest = next,
                _ => return false,
            }
        }
    }
    true
}

#[test]
fn field_paths_are_checked_segment_by_segment() {
    for good in [
        "",
        "limits",
        "limits[0].routes[1].windows",
        "\".\"",
        "a.\"x.y\"[2]",
        "\"a\\\"b\"",
    ] {
        assert!(well_formed_path(good), "{good:?}");
    }
    for bad in [
        ".", "a.", ".a", "a..b", "a[]", "a[x]", "\"open", "a]", "a b",
    ] {
        assert!(!well_formed_path(bad), "{bad:?}");
    }
}

#[test]
fn a_key_of_dots_is_named_quoted() {
    // Found by the property tests below: a key that is not bare is quoted
    // in the field path, so its dots are not taken for separators.
    let text = "['..";
    let err = Policy::from_toml(text).unwrap_err();
    assert_eq!(err.field(), "\"..\"");
    check_error(text, &err);
}

fn load(text: &str) {
    if let Err(err) = Policy::from_toml(text) {
        check_error(text, &err);
    }
}

/// A TOML string literal holding `s`.
fn quote(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// Lines that look like a policy file, with arbitrary values in them.
fn policy_like() -> impl Strategy<Value = String> {
    let value = prop_oneof![
        any::<String>().prop_map(|s| quote(&s)),
        "[0-9]{1,4}/[a-z0-9 ]{0,8}".prop_map(|s| quote(&s)),
        "[/{}*a-z_]{0,12}".prop_map(|s| quote(&s)),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        Just("[]".to_owned()),
        Just("{}".to_owned()),
        "[0-9]{1,3}/(s|m|h|minute|hour)".prop_map(|w| format!("[{}]", quote(&w))),
        (1u32..100, "[0-9]{0,2}(s|m|h|ms|d|y)")
            .prop_map(|(l, p)| format!("[{{ limit = {l}, period = {} }}]", quote(&p))),
    ];
    let key = prop_oneof![
        Just("name"),
        Just("key"),
        Just("routes"),
        Just("windows"),
        Just("path"),
        Just("methods"),
        Just("cost"),
        Just("algorithm"),
        Just("on_missing_key"),
        Just("headers"),
        Just("report"),
        Just("refusal"),
        Just("refusal_status"),
        Just("max_key_len"),
        Just("header"),
        Just("peer_ip"),
        Just("forwarded_ip"),
        Just("first_of"),
        Just("custom"),
        Just("global"),
        Just("bearer"),
        Just("trusted"),
        Just("ipv6_prefix"),
    ];
    let line = prop_oneof![
        Just("[[limits]]".to_owned()),
        Just("[[limits.routes]]".to_owned()),
        Just("[limits.routes]".to_owned()),
        (key.clone(), value.clone()).prop_map(|(k, v)| format!("{k} = {v}")),
        (key.clone(), key, value).prop_map(|(k1, k2, v)| format!("{k1} = {{ {k2} = {v} }}")),
    ];
    prop::collection::vec(line, 0..16).prop_map(|lines| lines.join("\n"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_is_a_policy_or_an_error(text in any::<String>()) {
        load(&text);
    }

    #[test]
    fn policy_like_text_is_a_policy_or_an_error(text in policy_like()) {
        load(&text);
    }

    #[test]
    fn a_mutated_valid_policy_is_a_policy_or_an_error(
        edits in prop::collection::vec((any::<prop::sample::Index>(), 0u8..3, any::<char>()), 1..6),
    ) {
        let mut text: Vec<char> = VALID.chars().collect();
        for (at, op, c) in edits {
            let i = at.index(text.len() + 1);
            match op {
                0 => text.insert(i, c),
                1 if i < text.len() => { text.remove(i); }
                _ if i < text.len() => text[i] = c,
                _ => {}
            }
        }
        load(&text.into_iter().collect::<String>());
    }

    #[test]
    fn arbitrary_window_text(window in any::<String>(), period in any::<String>(), limit in any::<i64>()) {
        let route = |windows: String| format!(
            "[[limits]]\nname = \"a\"\nkey = {{ global = true }}\n[[limits.routes]]\nwindows = {windows}\n"
        );
        load(&route(format!("[{}]", quote(&window))));
        load(&route(format!("[{{ limit = {limit}, period = {} }}]", quote(&period))));
        load(&format!("report = {}\n{}", quote(&period), route("[\"1/s\"]".into())));
    }

    #[test]
    fn arbitrary_key_tables(name in any::<String>(), list in prop::collection::vec(any::<String>(), 0..4), prefix in any::<i64>()) {
        let routes = "routes = [{ path = \"/{x}\", windows = [\"1/s\"] }]";
        let list = format!("[{}]", list.iter().map(|s| quote(s)).collect::<Vec<_>>().join(", "));
        for key in [
            format!("{{ header = {} }}", quote(&name)),
            format!("{{ path = {} }}", quote(&name)),
            format!("{{ custom = {} }}", quote(&name)),
            format!("{{ peer_ip = {{ ipv6_prefix = {prefix} }} }}"),
            format!("{{ forwarded_ip = {{ trusted = {list}, header = {}, ipv6_prefix = {prefix} }} }}", quote(&name)),
            format!("{{ first_of = [{{ header = {} }}, {{ peer_ip = true }}] }}", quote(&name)),
        ] {
            load(&format!("[[limits]]\nname = \"a\"\nkey = {key}\n{routes}\n"));
        }
    }

    #[test]
    fn arbitrary_route_tables(path in any::<String>(), methods in any::<String>(), cost in any::<i64>()) {
        let head = "[[limits]]\nname = \"a\"\nkey = { global = true }\n[[limits.routes]]\nwindows = [\"100/s\"]\n";
        load(&format!("{head}path = {}\n", quote(&path)));
        load(&format!("{head}methods = {}\n", quote(&methods)));
        load(&format!("{head}methods = [{}]\n", quote(&methods)));
        load(&format!("{head}cost = {cost}\n"));
    }

    #[test]
    fn methods_and_header_names_parse_or_fail(text in any::<String>()) {
        let _ = Header::parse(&text);
        let _ = ForwardedIp::new([text.as_str()]);
    }

    #[test]
    fn key_headers_extract_or_fail(
        api_key in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..3),
        authorization in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..3),
        forwarded_for in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..3),
        forwarded in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..3),
        peer in prop::sample::select(vec![
            "10.0.0.1:1",
            "[::ffff:10.0.0.1]:1",
            "[2001:db8::1]:1",
            "198.51.100.1:1",
            "[::ffff:198.51.100.1]:1",
        ]),
        prefix in any::<u8>(),
    ) {
        extract_all(&[
            ("x-api-key", api_key),
            ("authorization", authorization),
            ("x-forwarded-for", forwarded_for),
            ("forwarded", forwarded),
        ], peer.parse().unwrap(), prefix);
    }

    #[test]
    fn address_like_headers_extract_or_fail(
        forwarded_for in "[0-9a-f:\\[\\]., ]{0,40}",
        forwarded in "(for=|proto=|;|,| |\"|\\[|\\]|[0-9a-f:.]){0,20}",
        authorization in "(Bearer|bearer|BEARER|Basic)?[ \t]{0,2}[a-zA-Z0-9 \t=,~+/._!-]{0,8}",
        api_key in "[a-z ,\t]{0,8}",
        peer in prop::sample::select(vec!["10.1.2.3:9", "[::ffff:10.1.2.3]:9"]),
    ) {
        extract_all(&[
            ("x-forwarded-for", vec![forwarded_for.into_bytes()]),
            ("forwarded", vec![forwarded.into_bytes()]),
            ("authorization", vec![authorization.into_bytes()]),
            ("x-api-key", vec![api_key.into_bytes()]),
        ], peer.parse().unwrap(), 64);
    }
}

/// A request with these headers from `peer`.
fn request_with(headers: &[(&'static str, Vec<Vec<u8>>)], peer: SocketAddr) -> Request<()> {
    let mut request = Request::new(());
    for (name, values) in headers {
        for value in values {
            if let Ok(value) = HeaderValue::from_bytes(value) {
                request.headers_mut().append(*name, value);
            }
        }
    }
    request.extensions_mut().insert(peer);
    request
}

/// Every extractor's key (its bytes) or error kind.
fn keys(
    extractors: &[Box<dyn KeyExtractor>],
    view: &RequestView<'_>,
) -> Vec<Result<Vec<u8>, KeyErrorKind>> {
    extractors
        .iter()
        .map(|e| {
            e.extract(view)
                .map(|k| k.to_bytes().into_owned())
                .map_err(|e| e.kind())
        })
        .collect()
}

/// Runs every header-reading extractor over a request with these headers:
/// no panic, no empty key, a bearer key is an RFC 6750 `b64token`, a header
/// key is trimmed and (unless commas are allowed) holds no comma, and an
/// IPv4 peer gets the same keys written as IPv4-mapped IPv6.
fn extract_all(headers: &[(&'static str, Vec<Vec<u8>>)], peer: SocketAddr, prefix: u8) {
    let request = request_with(headers, peer);
    let view = RequestView::from_request(&request);
    let trust_all = ForwardedIp::new(["0.0.0.0/0", "::/0"]).unwrap();
    let extractors: Vec<Box<dyn KeyExtractor>> = vec![
        Box::new(Header::parse("X-API-Key").unwrap()),
        Box::new(Header::parse("X-API-Key").unwrap().allow_commas()),
        Box::new(Header::bearer()),
        Box::new(trust_all.clone()),
        Box::new(trust_all.forwarded()),
        Box::new(ForwardedIp::new(["10.0.0.0/8"]).unwrap()),
        Box::new(ForwardedIp::new(["::ffff:10.0.0.0/104"]).unwrap()),
        Box::new(PeerIp::new()),
    ];
    let found = keys(&extractors, &view);
    for key in found.iter().flatten() {
        assert!(!key.is_empty());
    }
    for key in found[..2].iter().flatten() {
        assert!(!key.starts_with(b" ") && !key.ends_with(b" "), "{key:?}");
        assert!(!key.starts_with(b"\t") && !key.ends_with(b"\t"), "{key:?}");
    }
    if let Ok(key) = &found[0] {
        assert!(!key.contains(&b','), "{key:?}");
    }
    if let Ok(token) = &found[2] {
        let body = token
            .iter()
            .rposition(|&b| b != b'=')
            .expect("a token body");
        assert!(
            token[..=body]
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b)),
            "{token:?}"
        );
    }
    let twin = match peer.ip() {
        IpAddr::V4(v4) => Some(IpAddr::V6(v4.to_ipv6_mapped())),
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4),
    };
    if let Some(twin) = twin {
        let twin = request_with(headers, SocketAddr::new(twin, peer.port()));
        assert_eq!(keys(&extractors, &RequestView::from_request(&twin)), found);
    }
    if let Ok(peer_ip) = PeerIp::new().ipv6_prefix(prefix) {
        assert!(peer_ip.extract(&view).is_ok());
    }
}
