//! Arbitrary bytes in `X-API-Key`, `Authorization`, `X-Forwarded-For` and
//! `Forwarded` (each line of the input is one header: its first byte picks
//! the name, the rest is the value) through the header, bearer and
//! forwarded-address extractors: a key or a `KeyError`, never a panic.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use http::{HeaderValue, Request};
use libfuzzer_sys::fuzz_target;
use tower_ratelimit::key::{
    Bearer, ForwardedHeader, ForwardedIp, Header, KeyExtractor, PeerIp, RequestView,
};

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
    let mut request = Request::new(());
    for line in rest.split(|&b| b == b'\n') {
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
    let view = RequestView::new(&request, None);

    let trust_all = ForwardedIp::new(["0.0.0.0/0", "::/0"]).unwrap();
    let prefix = first / 2 + 1; // 1..=128
    let extractors: [Box<dyn KeyExtractor>; 6] = [
        Box::new(Header::parse("X-API-Key").unwrap()),
        Box::new(Bearer::new()),
        Box::new(trust_all.clone().ipv6_prefix(prefix).unwrap()),
        Box::new(trust_all.header(ForwardedHeader::Forwarded)),
        Box::new(
            ForwardedIp::new(["10.0.0.0/8", "2001:db8::/32"])
                .unwrap()
                .header(ForwardedHeader::Forwarded),
        ),
        Box::new(PeerIp::new().ipv6_prefix(prefix).unwrap()),
    ];
    for extractor in &extractors {
        match extractor.extract(&view) {
            Ok(key) => assert!(!key.is_empty()),
            Err(err) => {
                let _ = err.to_string();
            }
        }
    }
});
