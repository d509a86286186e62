//! Keys and addresses a limit never applies to.

use ipnet::IpNet;
use std::collections::HashSet;

use crate::error::ConfigError;
use crate::key::{
    domain_id, operator_key, parse_net, peer_ip, Key, KeyExtractor, KeySecret, RequestView,
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
        secret: &KeySecret,
    ) -> Result<Self, ConfigError> {
        let domain = domain_id(limit, 0);
        let keys = keys
            .iter()
            .enumerate()
            .map(
                |(i, text)| match operator_key(extractor, text, max_key_len) {
                    Ok(key) => Ok(secret.named(domain, &key)),
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

    /// Whether a request with `key` (as this limit extracted it) is exempt.
    #[inline]
    pub(crate) fn covers(
        &self,
        key: &Key<'_>,
        request: &RequestView<'_>,
        secret: &KeySecret,
    ) -> bool {
        if self.keys.is_empty() && self.ranges.is_empty() {
            return false;
        }
        self.listed_cover(key, request, secret)
    }

    /// Whether a request with `key` is exempt, the limit having exemptions.
    #[inline(never)]
    fn listed_cover(&self, key: &Key<'_>, request: &RequestView<'_>, secret: &KeySecret) -> bool {
        let by_key = !self.keys.is_empty() && self.keys.contains(&secret.named(self.domain, key));
        let by_ip = !self.ranges.is_empty()
            && peer_ip(request.extensions())
                .is_some_and(|ip| self.ranges.iter().any(|r| r.contains(&ip)));
        by_key || by_ip
    }
}
