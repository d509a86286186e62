//! Keys from the client's IP address: the peer, or the client a trusted proxy
//! forwarded for.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use http::header::{HeaderName, FORWARDED};
use http::Extensions;
use ipnet::{IpNet, Ipv4Net};

use super::{Key, KeyError, KeyErrorKind, KeyExtractor, RequestView};
use crate::error::ConfigError;

/// The default IPv6 grouping: one /64 is one client (a single host usually
/// owns a whole /64, so finer keys would let it multiply its quota).
const DEFAULT_V6_PREFIX: u8 = 64;

/// The peer's IP address: the TCP connection's remote end.
///
/// It is read from the request's extensions: a [`SocketAddr`] or [`IpAddr`]
/// that the server put there, or (with the `axum` feature) axum's
/// `ConnectInfo<SocketAddr>` (serve with
/// `into_make_service_with_connect_info::<SocketAddr>()`). IPv6 addresses are
/// grouped by /64 unless configured otherwise; IPv4-mapped IPv6 addresses
/// count as the IPv4 address.
#[derive(Debug, Clone, Copy)]
pub struct PeerIp {
    v6_prefix: u8,
}

impl Default for PeerIp {
    fn default() -> Self {
        PeerIp {
            v6_prefix: DEFAULT_V6_PREFIX,
        }
    }
}

impl PeerIp {
    /// The peer address, IPv6 grouped by /64.
    pub fn new() -> Self {
        Self::default()
    }

    /// Groups IPv6 addresses by a `/prefix` (1 to 128) instead of /64.
    pub fn ipv6_prefix(mut self, prefix: u8) -> Result<Self, ConfigError> {
        self.v6_prefix = check_prefix(prefix)?;
        Ok(self)
    }
}

impl KeyExtractor for PeerIp {
    fn extract<'a>(&self, request: &RequestView<'a>) -> Result<Key<'a>, KeyError> {
        peer_ip(request.extensions())
            .map(|ip| ip_key(ip, self.v6_prefix))
            .ok_or_else(missing_peer)
    }

    fn describe(&self) -> Cow<'_, str> {
        Cow::Borrowed(PEER_SOURCE)
    }

    fn settings(&self) -> Cow<'_, str> {
        Cow::Owned(format!("{self:?}"))
    }

    /// The key of a request from the address `text` (`192.0.2.1`,
    /// `[2001:db8::1]:443`, `::ffff:192.0.2.1` …).
    fn key_from_text<'t>(&self, text: &'t str) -> Result<Key<'t>, KeyError> {
        address_key(text, self.v6_prefix)
            .ok_or_else(|| not_an_address(text, "Expected an IP address"))
    }
}

/// Which header a trusted proxy writes the client's address into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2`.
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for=proxy1`.
    Forwarded,
}

impl ForwardedHeader {
    fn name(self) -> HeaderName {
        match self {
            ForwardedHeader::XForwardedFor => HeaderName::from_static("x-forwarded-for"),
            ForwardedHeader::Forwarded => FORWARDED,
        }
    }

    fn display(self) -> &'static str {
        match self {
            ForwardedHeader::XForwardedFor => "X-Forwarded-For header",
            ForwardedHeader::Forwarded => "Forwarded header",
        }
    }
}

/// The client's IP address as forwarded by trusted proxies.
///
/// The forwarding header is believed only when the peer is a trusted proxy,
/// and only as far as the chain of trusted proxies goes: entries are read
/// from the right (the nearest proxy), skipping trusted proxies, and the first
/// untrusted address is the client. A client that writes its own header
/// cannot choose its key, because the proxies append to what it sent. An
/// RFC 7239 obfuscated identifier (`for=_hidden`) is the client's key;
/// `for=unknown` or anything else that is not an address is a
/// [`KeyErrorKind::Malformed`] error rather than a bucket shared by strangers. Only
/// the configured header is read (a proxy that manages `X-Forwarded-For`
/// passes a client's forged `Forwarded` through untouched).
///
/// IPv4-mapped IPv6 addresses (`::ffff:192.0.2.1`, what a dual-stack
/// listener reports for an IPv4 peer) are their IPv4 address everywhere: as
/// the peer, as an entry of the header and as a trusted proxy, so
/// `127.0.0.1` trusts a proxy that connects as `::ffff:127.0.0.1`, and
/// `::ffff:127.0.0.1` or `::ffff:10.0.0.0/104` in the trusted list mean
/// `127.0.0.1` and `10.0.0.0/8`. An IPv6 range that is wider than the mapped
/// range (`::/0`) trusts IPv6 peers only: list IPv4 proxies as IPv4.
///
/// ```
/// use tower_ratelimit::key::ForwardedIp;
///
/// let client = ForwardedIp::new(["10.0.0.0/8", "192.168.1.1"]).unwrap();
/// assert!(ForwardedIp::new(["not an address"]).is_err());
/// # let _ = client;
/// ```
#[derive(Debug, Clone)]
pub struct ForwardedIp {
    trusted: Vec<IpNet>,
    header: ForwardedHeader,
    v6_prefix: u8,
}

impl ForwardedIp {
    /// Trusts the proxies in `trusted` (addresses or CIDR ranges).
    pub fn new<I, S>(trusted: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let trusted = trusted
            .into_iter()
            .enumerate()
            .map(|(i, s)| parse_net(s.as_ref()).map_err(|e| e.within(format!("trusted[{i}]"))))
            .collect::<Result<_, _>>()?;
        Ok(ForwardedIp {
            trusted,
            header: ForwardedHeader::default(),
            v6_prefix: DEFAULT_V6_PREFIX,
        })
    }

    /// Reads RFC 7239 `Forwarded: for=client, for=proxy1` instead of
    /// `X-Forwarded-For`.
    #[must_use]
    pub fn forwarded(mut self) -> Self {
        self.header = ForwardedHeader::Forwarded;
        self
    }

    /// Reads `X-Forwarded-For: client, proxy1, proxy2` (the default).
    #[must_use]
    pub fn x_forwarded_for(mut self) -> Self {
        self.header = ForwardedHeader::XForwardedFor;
        self
    }

    /// Groups IPv6 addresses by a `/prefix` (1 to 128) instead of /64.
    pub fn ipv6_prefix(mut self, prefix: u8) -> Result<Self, ConfigError> {
        self.v6_prefix = check_prefix(prefix)?;
        Ok(self)
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// The client's address, or an error if the header holds something that
    /// is not an address where the client's address should be.
    fn client<'a>(&self, peer: IpAddr, request: &RequestView<'a>) -> Result<Client<'a>, KeyError> {
        if !self.is_trusted(peer) {
            return Ok(Client::Ip(peer));
        }
        let mut nearest_trusted = peer;
        for value in request.headers().get_all(self.header.name()).iter().rev() {
            let text = value.to_str().map_err(|_| self.malformed())?;
            for entry in text.rsplit(',') {
                let client = match self.header {
                    ForwardedHeader::XForwardedFor => {
                        parse_forwarded_address(entry.trim()).map(Client::Ip)
                    }
                    ForwardedHeader::Forwarded => forwarded_for(entry),
                }
                .ok_or_else(|| self.malformed())?;
                match client {
                    Client::Ip(ip) if self.is_trusted(ip) => nearest_trusted = ip,
                    client => return Ok(client),
                }
            }
        }
        Ok(Client::Ip(nearest_trusted))
    }

    fn malformed(&self) -> KeyError {
        let expected = match self.header {
            ForwardedHeader::XForwardedFor => "Expected a comma-separated list of IP addresses.",
            ForwardedHeader::Forwarded => {
                "Expected comma-separated elements with `for=` an IP address \
                 (`for=\"[2001:db8::1]\"` for IPv6) or an obfuscated `_token`."
            }
        };
        KeyError::new(KeyErrorKind::Malformed, self.header.display()).with_detail(expected)
    }
}

impl KeyExtractor for ForwardedIp {
    fn extract<'a>(&self, request: &RequestView<'a>) -> Result<Key<'a>, KeyError> {
        let peer = peer_ip(request.extensions()).ok_or_else(missing_peer)?;
        match self.client(peer, request)? {
            Client::Ip(ip) => Ok(ip_key(ip, self.v6_prefix)),
            Client::Obfuscated(token) => Ok(obfuscated_key(token)),
        }
    }

    fn describe(&self) -> Cow<'_, str> {
        Cow::Borrowed(PEER_SOURCE)
    }

    fn settings(&self) -> Cow<'_, str> {
        Cow::Owned(format!("{self:?}"))
    }

    /// The key of a client at the address `text` (`192.0.2.1`,
    /// `[2001:db8::1]:443`, `::ffff:192.0.2.1` …), or with
    /// [`ForwardedIp::forwarded`], of an obfuscated identifier (`_hidden`).
    fn key_from_text<'t>(&self, text: &'t str) -> Result<Key<'t>, KeyError> {
        if self.header == ForwardedHeader::Forwarded {
            let token = text.trim();
            if is_obfuscated(token) {
                return Ok(obfuscated_key(token));
            }
            return address_key(text, self.v6_prefix).ok_or_else(|| {
                not_an_address(
                    text,
                    "Expected an IP address or an obfuscated identifier (`_hidden`)",
                )
            });
        }
        address_key(text, self.v6_prefix)
            .ok_or_else(|| not_an_address(text, "Expected an IP address"))
    }
}

const PEER_SOURCE: &str = "client IP address";

fn missing_peer() -> KeyError {
    KeyError::new(KeyErrorKind::Missing, PEER_SOURCE)
        .with_detail("The server did not record the peer address.")
}

fn check_prefix(prefix: u8) -> Result<u8, ConfigError> {
    if (1..=128).contains(&prefix) {
        Ok(prefix)
    } else {
        Err(ConfigError::invalid(
            "ipv6_prefix",
            format!("{prefix} is not a prefix length from 1 to 128"),
        ))
    }
}

/// An IP address or CIDR range, as written in a policy, in the form
/// [`canonical`] addresses are compared with: a range of IPv4-mapped IPv6
/// addresses (`::ffff:10.0.0.0/104`) is the IPv4 range (`10.0.0.0/8`).
pub(crate) fn parse_net(text: &str) -> Result<IpNet, ConfigError> {
    let text = text.trim();
    let net = text
        .parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| {
            ConfigError::invalid(
                "",
                format!(
                    "`{}` is not an IP address or CIDR range",
                    text.escape_debug()
                ),
            )
        })?;
    // `10.0.0.1/8` is all of 10/8: most likely one host or the range was
    // meant, and trusting or exempting 16 million addresses by a typo is
    // not what an operator wants.
    if net.addr() != net.network() {
        return Err(ConfigError::invalid(
            "",
            format!(
                "`{}` has host bits set: write the range as `{}`, or the address alone",
                text.escape_debug(),
                net.trunc()
            ),
        ));
    }
    Ok(canonical_net(net))
}

/// A range of IPv4-mapped IPv6 addresses as the IPv4 range it maps; any
/// other range as is (one wider than `::ffff:0:0/96` holds IPv6 addresses
/// too, so it is not an IPv4 range).
fn canonical_net(net: IpNet) -> IpNet {
    let IpNet::V6(v6) = net else {
        return net;
    };
    match (v6.addr().to_ipv4_mapped(), v6.prefix_len().checked_sub(96)) {
        (Some(v4), Some(prefix)) => Ipv4Net::new(v4, prefix).map_or(net, IpNet::V4),
        _ => net,
    }
}

/// An address as the crate compares and keys it: an IPv4-mapped IPv6
/// address (`::ffff:192.0.2.1`, what a dual-stack listener reports for an
/// IPv4 peer, and what a proxy may forward) is its IPv4 address, so it meets
/// IPv4 trusted proxies and exempt ranges and keys the IPv4 client's bucket.
fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// The peer's address, [`canonical`], from the request's extensions.
pub(crate) fn peer_ip(extensions: &Extensions) -> Option<IpAddr> {
    #[cfg(feature = "axum")]
    if let Some(info) = extensions.get::<axum::extract::ConnectInfo<SocketAddr>>() {
        return Some(canonical(info.0.ip()));
    }
    extensions
        .get::<SocketAddr>()
        .map(SocketAddr::ip)
        .or_else(|| extensions.get::<IpAddr>().copied())
        .map(canonical)
}

/// The key of a [`canonical`] address: IPv4 as is, IPv6 masked to
/// `v6_prefix` bits.
fn ip_key<'a>(ip: IpAddr, v6_prefix: u8) -> Key<'a> {
    match ip {
        IpAddr::V4(v4) => Key::copied(&v4.octets()),
        IpAddr::V6(v6) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(v6_prefix))
                .unwrap_or(0);
            Key::copied(&Ipv6Addr::from(u128::from(v6) & mask).octets())
        }
    }
}

/// The key of a client whose address an operator wrote as `text`, as
/// [`parse_forwarded_address`] reads it (`192.0.2.1`, `[2001:db8::1]:443`,
/// `::ffff:192.0.2.1` …, with spaces around): the key of a request from
/// that address.
fn address_key<'a>(text: &str, v6_prefix: u8) -> Option<Key<'a>> {
    parse_forwarded_address(text.trim()).map(|ip| ip_key(ip, v6_prefix))
}

/// Why `text` is not a client's address: empty, or `expected` followed by
/// examples.
fn not_an_address(text: &str, expected: &str) -> KeyError {
    if text.trim().is_empty() {
        return KeyError::new(KeyErrorKind::Empty, PEER_SOURCE);
    }
    KeyError::new(KeyErrorKind::Malformed, PEER_SOURCE).with_detail(format!(
        "{expected}, such as `192.0.2.1`, `2001:db8::1` or `::ffff:192.0.2.1`."
    ))
}

/// An address as proxies write it: `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`,
/// `[2001:db8::1]:80`; [`canonical`], so `::ffff:1.2.3.4` is `1.2.3.4`.
fn parse_forwarded_address(text: &str) -> Option<IpAddr> {
    let text = text.trim_matches('"');
    let ip = text
        .parse::<IpAddr>()
        .or_else(|_| text.parse::<SocketAddr>().map(|addr| addr.ip()))
        .ok()
        .or_else(|| text.strip_prefix('[')?.strip_suffix(']')?.parse().ok())?;
    Some(canonical(ip))
}

/// Who a forwarding header says the client is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Client<'a> {
    Ip(IpAddr),
    /// An RFC 7239 obfuscated identifier (`for=_hidden`): stable per client
    /// by design, so it is the client's key.
    Obfuscated(&'a str),
}

/// The `for=` parameter of one `Forwarded` element. `for=unknown` is not a
/// client (it would pool every unknown client in one bucket), so it is `None`;
/// so is an element with more than one `for=` (RFC 7239 allows one, and
/// which of them a proxy wrote cannot be known).
fn forwarded_for(element: &str) -> Option<Client<'_>> {
    let mut values = element.split(';').filter_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        name.trim().eq_ignore_ascii_case("for").then_some(value)
    });
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let value = value.trim().trim_matches('"');
    let token = value.split_once(':').map_or(value, |(node, _port)| node);
    if is_obfuscated(token) {
        Some(Client::Obfuscated(token))
    } else {
        parse_forwarded_address(value).map(Client::Ip)
    }
}

/// Whether `token` is an RFC 7239 obfuscated identifier: `_` then letters,
/// digits, `.`, `_` or `-`.
#[inline]
fn is_obfuscated(token: &str) -> bool {
    token.len() > 1
        && token.starts_with('_')
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The key of an obfuscated identifier. It starts with `ff 00`, so it can
/// never equal an address key of a real client (as 4 bytes it would be in
/// 255.0.0.0/8, as 16 bytes in the multicast range ff00::/8).
fn obfuscated_key<'a>(token: &str) -> Key<'a> {
    let mut bytes = Vec::with_capacity(token.len() + 2);
    bytes.extend_from_slice(&[0xff, 0x00]);
    bytes.extend_from_slice(token.as_bytes());
    Key::copied(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(xff: &[&str], peer: &str) -> Result<Client<'static>, KeyError> {
        let extractor = ForwardedIp::new(["10.0.0.0/8"]).unwrap();
        let mut req = http::Request::new(());
        for v in xff {
            req.headers_mut()
                .append("x-forwarded-for", v.parse().unwrap());
        }
        req.extensions_mut().insert(peer.parse::<IpAddr>().unwrap());
        let peer = peer_ip(req.extensions()).unwrap();
        extractor
            .client(peer, &RequestView::from_request(&req))
            .map(|c| match c {
                Client::Ip(ip) => Client::Ip(ip),
                Client::Obfuscated(_) => unreachable!("X-Forwarded-For holds addresses only"),
            })
    }

    #[test]
    fn the_first_untrusted_address_from_the_right_is_the_client() {
        let ip = |s: &str| Client::Ip(s.parse::<IpAddr>().unwrap());
        assert_eq!(
            client(&["1.1.1.1, 2.2.2.2, 10.0.0.2"], "10.0.0.1"),
            Ok(ip("2.2.2.2"))
        );
        assert_eq!(
            client(&["1.1.1.1", "2.2.2.2:443"], "10.0.0.1"),
            Ok(ip("2.2.2.2"))
        );
        assert_eq!(
            client(&["[2001:db8::1]:443"], "10.0.0.1"),
            Ok(ip("2001:db8::1"))
        );
        assert_eq!(
            client(&["9.9.9.9"], "8.8.8.8"),
            Ok(ip("8.8.8.8")),
            "untrusted peer: header ignored"
        );
        assert_eq!(client(&[], "10.0.0.1"), Ok(ip("10.0.0.1")));
        assert_eq!(client(&["10.0.0.9"], "10.0.0.1"), Ok(ip("10.0.0.9")));
        assert_eq!(
            client(&["garbage"], "10.0.0.1").unwrap_err().kind(),
            KeyErrorKind::Malformed
        );
    }

    #[test]
    fn ipv4_mapped_addresses_are_their_ipv4_address() {
        let ip = |s: &str| Client::Ip(s.parse::<IpAddr>().unwrap());
        assert_eq!(
            client(&["2.2.2.2"], "::ffff:10.0.0.1"),
            Ok(ip("2.2.2.2")),
            "a dual-stack peer in a trusted IPv4 range is trusted"
        );
        assert_eq!(
            client(&["2.2.2.2, ::ffff:10.0.0.2"], "10.0.0.1"),
            Ok(ip("2.2.2.2")),
            "a mapped trusted hop is skipped"
        );
        assert_eq!(
            client(&["[::ffff:2.2.2.2]:443"], "10.0.0.1"),
            Ok(ip("2.2.2.2"))
        );
        assert_eq!(
            client(&["0:0:0:0:0:FFFF:0202:0202"], "10.0.0.1"),
            Ok(ip("2.2.2.2"))
        );
    }

    #[test]
    fn mapped_ranges_are_ipv4_ranges() {
        let net = |s: &str| parse_net(s).unwrap().to_string();
        assert_eq!(net("::ffff:127.0.0.1"), "127.0.0.1/32");
        assert_eq!(net("::ffff:10.0.0.0/104"), "10.0.0.0/8");
        assert_eq!(net("::ffff:0:0/96"), "0.0.0.0/0");
        assert_eq!(net("::fffe:0:0/95"), "::fffe:0:0/95");
        // Host bits set: a typo, not a range.
        for text in ["10.0.0.1/8", "::ffff:0:0/95", "2001:db8::1/64"] {
            let err = parse_net(text).unwrap_err();
            assert!(err.message().contains("host bits"), "{text}: {err}");
        }
        assert_eq!(net("::/0"), "::/0");
        assert_eq!(net(" 2001:db8::/32 "), "2001:db8::/32");
        assert_eq!(net("10.0.0.0/8"), "10.0.0.0/8");
    }

    #[test]
    fn forwarded_for_parameters() {
        let ip = |s: &str| Some(Client::Ip(s.parse().unwrap()));
        assert_eq!(forwarded_for("for=192.0.2.60;proto=http"), ip("192.0.2.60"));
        assert_eq!(
            forwarded_for(r#"For="[2001:db8:cafe::17]:4711""#),
            ip("2001:db8:cafe::17")
        );
        assert_eq!(
            forwarded_for("for=_hidden"),
            Some(Client::Obfuscated("_hidden"))
        );
        assert_eq!(
            forwarded_for(r#"for="_node7:_port""#),
            Some(Client::Obfuscated("_node7"))
        );
        assert_eq!(forwarded_for("for=unknown"), None);
        assert_eq!(forwarded_for("for=192.0.2.60;for=198.51.100.1"), None);
        assert_eq!(forwarded_for("for=unknown;For=198.51.100.1"), None);
        assert_eq!(
            forwarded_for(r#"for="[::ffff:192.0.2.60]:80""#),
            ip("192.0.2.60")
        );
        assert_eq!(forwarded_for("for=_"), None);
        assert_eq!(forwarded_for("proto=https"), None);
    }

    #[test]
    fn an_operator_s_address_is_the_key_of_a_request_from_it() {
        let peer = PeerIp::new().ipv6_prefix(48).unwrap();
        let from = |ip: &str| {
            let mut req = http::Request::new(());
            req.extensions_mut().insert(ip.parse::<IpAddr>().unwrap());
            peer.extract(&RequestView::from_request(&req))
                .unwrap()
                .to_bytes()
                .into_owned()
        };
        let text = |t: &str| peer.key_from_text(t).unwrap().to_bytes().into_owned();
        for (t, ip) in [
            ("10.1.2.3", "10.1.2.3"),
            (" ::ffff:10.1.2.3 ", "10.1.2.3"),
            ("10.1.2.3:443", "::ffff:10.1.2.3"),
            ("[2001:db8::1]", "2001:db8:0:ffff::2"),
            ("[2001:DB8::1]:443", "2001:db8::9"),
        ] {
            assert_eq!(text(t), from(ip), "{t}");
        }
        assert_ne!(text("2001:db8:1::1"), from("2001:db8::1"));
        for bad in [
            "",
            " ",
            "10.1.2",
            "10.1.2.3/8",
            "_hidden",
            "::ffff:10.1.2.256",
        ] {
            assert!(peer.key_from_text(bad).is_err(), "{bad}");
        }
        let forwarded = ForwardedIp::new(["10.0.0.0/8"]).unwrap();
        assert!(forwarded.key_from_text("_hidden").is_err());
        let forwarded = forwarded.forwarded();
        assert_eq!(
            forwarded.key_from_text("_hidden").unwrap(),
            obfuscated_key("_hidden")
        );
        assert_eq!(
            forwarded.key_from_text("::ffff:10.1.2.3").unwrap(),
            ip_key("10.1.2.3".parse().unwrap(), 64)
        );
    }

    #[test]
    fn ipv6_is_grouped_by_prefix() {
        let a = ip_key("2001:db8:1:2:aaaa::1".parse().unwrap(), 64);
        let b = ip_key("2001:db8:1:2:bbbb::2".parse().unwrap(), 64);
        let c = ip_key("2001:db8:1:3::1".parse().unwrap(), 64);
        assert_eq!(a, b);
        assert_ne!(a, c);
        let mapped = ip_key(canonical("::ffff:192.0.2.1".parse().unwrap()), 64);
        assert_eq!(mapped, ip_key("192.0.2.1".parse().unwrap(), 64));
    }
}
