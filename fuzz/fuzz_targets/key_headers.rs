//! Arbitrary bytes in `X-API-Key`, `Authorization`, `X-Forwarded-For` and
//! `Forwarded` (each line of the input is one header: its first byte picks
//! the name, the rest is the value) through the header, bearer and
//! forwarded-address extractors: a key or a `KeyError`, never a panic. A
//! bearer key is always an RFC 6750 `b64token`, a header key never holds a
//! comma unless commas are allowed, and an IPv4 peer gets the same keys
//! when written as IPv4-mapped IPv6 (`::ffff:a.b.c.d`, a dual-stack peer).
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use http::{HeaderValue, Request};
use libfuzzer_sys::fuzz_target;
use tower_ratelimit::key::{ForwardedIp, Header, KeyErrorKind, KeyExtractor, PeerIp, RequestView};

const NAMES: [&str; 4] = ["x-api-key", "authorization", "x-forwarded-for", "forwarded"];

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let peer = match first % 3 {
        0 => IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
        1 => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
        _ => IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)),
    };
    let trust_all = ForwardedIp::new(["0.0.0.0/0", "::/0"]).unwrap();
    let prefix = first / 2 + 1; // 1..=128
    let extractors: [Box<dyn KeyExtractor>; 8] = [
        Box::new(Header::parse("X-API-Key").unwrap()),
        Box::new(Header::parse("X-API-Key").unwrap().allow_commas()),
        Box::new(Header::bearer()),
        Box::new(trust_all.clone().ipv6_prefix(prefix).unwrap()),
        Box::new(trust_all.forwarded()),
        Box::new(
            ForwardedIp::new(["10.0.0.0/8", "2001:db8::/32"])
                .unwrap()
                .forwarded(),
        ),
        Box::new(ForwardedIp::new(["::ffff:10.0.0.0/104"]).unwrap()),
        Box::new(PeerIp::new().ipv6_prefix(prefix).unwrap()),
    ];

    let found = keys(&extractors, rest, peer);
    for key in found.iter().flatten() {
        assert!(!key.is_empty());
    }
    if let Ok(key) = &found[0] {
        assert!(!key.contains(&b','));
    }
    if let Ok(token) = &found[2] {
        let body = token
            .iter()
            .rposition(|&b| b != b'=')
            .expect("a token body");
        assert!(token[..=body]
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b)));
    }
    if let IpAddr::V4(v4) = peer {
        let mapped = IpAddr::V6(v4.to_ipv6_mapped());
        assert_eq!(keys(&extractors, rest, mapped), found);
    }
});

/// Every extractor's key (its bytes) or error kind, for a request from
/// `peer` with the headers that `lines` describe.
fn keys(
    extractors: &[Box<dyn KeyExtractor>],
    lines: &[u8],
    peer: IpAddr,
) -> Vec<Result<Vec<u8>, KeyErrorKind>> {
    let mut request = Request::new(());
    for line in lines.split(|&b| b == b'\n') {
        let Some((&selector, value)) = line.split_first() else {
            continue;
        };
        if let Ok(value) = HeaderValue::from_bytes(value) {
            request
                .headers_mut()
                .append(NAMES[usize::from(selector % 4)], value);
        }
    }
    request.extensions_mut().insert(SocketAddr::new(peer, 443));
    let view = RequestView::from_request(&request);
    extractors
        .iter()
        .map(|extractor| match extractor.extract(&view) {
            Ok(key) => Ok(key.to_bytes().into_owned()),
            Err(err) => {
                let _ = err.to_string();
                Err(err.kind())
            }
        })
        .collect()
}
