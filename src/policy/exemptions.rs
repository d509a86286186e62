//! Keys and addresses a limit never applies to.

use ipnet::IpNet;
use std::collections::HashSet;

use crate::error::ConfigError;
use crate::key::{
    domain_id, operator_key, parse_net, peer_ip, KeyExtractor, KeySecret, RequestView,
};

/// A limit's allowlist: keyed hashes of exempt keys (never the keys) and
/// exempt peer ranges.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Exemptions {
    /// The hash domain of this limit's exempt keys.
    domain: u64,
    keys: HashSet<u64>,
    ranges: Box<[IpNet]>,
}

impl Exemptions {
    /// The exemptions of the limit named `limit`, whose keys `extractor`
    /// reads: `keys` as an operator writes them (an address for a limit
    /// keyed by the client's IP: see [`operator_key`]), at most
    /// `max_key_len` bytes, and `ranges` of peer addresses.
    pub(crate) fn compile(
        limit: &str,
        extractor: &dyn KeyExtractor,
        max_key_len: usize,
        keys: &[String],
        ranges: &[String],
        (secret, key_domain): (&KeySecret, u64),
    ) -> Result<Self, ConfigError> {
        let domain = domain_id(limit, 0);
        let keys = keys
            .iter()
            .enumerate()
            .map(
                |(i, text)| match operator_key(extractor, text, max_key_len) {
                    Ok(key) => Ok(KeySecret::derive(secret.id(key_domain, &key), domain)),
                    Err(why) => Err(ConfigError::invalid(format!("exempt_keys[{i}]"), why)),
                },
            )
            .collect::<Result<_, _>>()?;
        let ranges = ranges
            .iter()
            .enumerate()
            .map(|(i, text)| parse_net(text).map_err(|e| e.within(format!("exempt_ips[{i}]"))))
            .collect::<Result<_, _>>()?;
        Ok(Exemptions {
            domain,
            keys,
            ranges,
        })
    }

    /// Whether a request whose key has the id `id` (see
    /// [`CompiledLimit::key_id`](super::limit::CompiledLimit::key_id)) is
    /// exempt. An operator's key is read as one alternative's of a
    /// [`FirstOf`](crate::key::FirstOf), so a client that sends the same
    /// bytes through another (a header of its choosing) is not exempt.
    #[inline]
    pub(crate) fn covers(&self, id: u64, request: &RequestView<'_>) -> bool {
        if self.keys.is_empty() && self.ranges.is_empty() {
            return false;
        }
        self.listed_cover(id, request)
    }

    /// Whether a request whose key has the id `id` is exempt, the limit
    /// having exemptions.
    #[inline(never)]
    fn listed_cover(&self, id: u64, request: &RequestView<'_>) -> bool {
        let by_key =
            !self.keys.is_empty() && self.keys.contains(&KeySecret::derive(id, self.domain));
        let by_ip = !self.ranges.is_empty()
            && peer_ip(request.extensions())
                .is_some_and(|ip| self.ranges.iter().any(|r| r.contains(&ip)));
        by_key || by_ip
    }
}
