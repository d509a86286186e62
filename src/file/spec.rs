//! The file's shape: the tables and values serde reads from a policy file,
//! before any of them is checked.
//!
//! Every table denies unknown fields, and every value that may be written in
//! two ways (`"60/minute"` or `{ limit = 60, period = "1m" }`) says both in
//! its type errors.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

/// The whole file: the policy's settings and its `[[limits]]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "a policy table")]
pub(super) struct FileSpec {
    pub(super) headers: Option<String>,
    pub(super) report: Option<String>,
    pub(super) refusal: Option<String>,
    pub(super) refusal_status: Option<Int>,
    pub(super) busy_status: Option<Int>,
    pub(super) busy_retry_after: Option<String>,
    pub(super) max_key_len: Option<Int>,
    pub(super) key_secret: Option<KeySecretSpec>,
    pub(super) memory: Option<MemorySpec>,
    #[serde(default)]
    pub(super) limits: Vec<LimitSpec>,
}

/// `[memory]`: the bounds of the memory store `RateLimitLayer::new` builds.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "a memory table such as { max_entries = 100000 }")]
pub(super) struct MemorySpec {
    pub(super) max_entries: Option<Int>,
}

/// `key_secret = "<32 hex digits>"` or `key_secret = { env = "NAME" }`.
pub(super) enum KeySecretSpec {
    Hex(String),
    Env(KeySecretEnv),
}

/// `{ env = "NAME" }`: the secret is in an environment variable.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct KeySecretEnv {
    pub(super) env: String,
}

/// `[[limits]]`: one limit.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "a limit table with `name`, `key` and `routes`")]
pub(super) struct LimitSpec {
    pub(super) name: String,
    pub(super) key: KeySpec,
    pub(super) on_missing_key: Option<String>,
    pub(super) algorithm: Option<String>,
    #[serde(default)]
    pub(super) shadow: bool,
    #[serde(default)]
    pub(super) exempt_keys: Vec<String>,
    #[serde(default)]
    pub(super) exempt_ips: Vec<String>,
    pub(super) penalty: Option<PenaltySpec>,
    pub(super) plan: Option<KeySpec>,
    #[serde(default)]
    pub(super) routes: Vec<RouteSpec>,
    #[serde(default)]
    pub(super) overrides: Vec<OverrideSpec>,
}

/// One key's own quota (`windows` …) or plan (`plan`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "an override table such as { key = \"k\", plan = \"pro\" }")]
pub(super) struct OverrideSpec {
    pub(super) key: String,
    pub(super) plan: Option<String>,
    #[serde(default)]
    pub(super) windows: Vec<WindowSpec>,
    pub(super) cost: Option<Int>,
    pub(super) algorithm: Option<String>,
    pub(super) concurrency: Option<Int>,
    pub(super) queue: Option<QueueSpec>,
}

/// A quota's fields, as a route, a plan or an override gives them.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "a quota table such as { windows = [\"60/minute\"] } or { concurrency = 10 }")]
pub(super) struct QuotaSpec {
    #[serde(default)]
    pub(super) windows: Vec<WindowSpec>,
    pub(super) cost: Option<Int>,
    pub(super) algorithm: Option<String>,
    pub(super) concurrency: Option<Int>,
    pub(super) queue: Option<QueueSpec>,
}

/// `queue = { max_queued = 100, max_wait = "30s" }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "a queue table such as { max_queued = 100, max_wait = \"30s\" }")]
pub(super) struct QueueSpec {
    pub(super) max_queued: Int,
    pub(super) max_wait: String,
}

/// `penalty = { refusals = 20, within = "60s", ban = "300s" }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "a penalty table such as { refusals = 20, within = \"60s\", ban = \"300s\" }")]
pub(super) struct PenaltySpec {
    pub(super) refusals: u32,
    pub(super) within: String,
    pub(super) ban: String,
}

/// `key = { ... }` (or `plan = { ... }`): where a key is read, one source per table.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "a key table such as { header = \"X-API-Key\" }")]
pub(super) struct KeySpec {
    pub(super) header: Option<String>,
    /// With `header`: a comma is part of the key, not a list separator.
    pub(super) allow_commas: Option<bool>,
    pub(super) bearer: Option<bool>,
    pub(super) path: Option<String>,
    /// With `path`: the key the capture is counted within.
    pub(super) within: Option<Box<KeySpec>>,
    pub(super) peer_ip: Option<PeerIpSpec>,
    pub(super) forwarded_ip: Option<ForwardedIpSpec>,
    pub(super) global: Option<bool>,
    pub(super) custom: Option<String>,
    pub(super) first_of: Option<Vec<KeySpec>>,
}

/// `forwarded_ip = { trusted = [...] }`: the client IP that trusted proxies forwarded.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "a table such as { trusted = [\"10.0.0.0/8\"] }")]
pub(super) struct ForwardedIpSpec {
    pub(super) trusted: Vec<String>,
    pub(super) header: Option<String>,
    pub(super) ipv6_prefix: Option<Int>,
}

/// `peer_ip = true` or `peer_ip = { ipv6_prefix = 56 }`.
pub(super) enum PeerIpSpec {
    Flag(bool),
    Options(PeerIpOptions),
}

/// `peer_ip = { ipv6_prefix = 56 }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PeerIpOptions {
    pub(super) ipv6_prefix: Option<Int>,
}

/// `[[limits.routes]]`: methods, path, quota and the quotas of plans.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "a route table with `windows`")]
pub(super) struct RouteSpec {
    pub(super) methods: Option<MethodsSpec>,
    /// Whether a route that names `GET` also matches `HEAD` (default true).
    pub(super) head: Option<bool>,
    pub(super) path: Option<String>,
    #[serde(default)]
    pub(super) windows: Vec<WindowSpec>,
    pub(super) cost: Option<Int>,
    pub(super) algorithm: Option<String>,
    pub(super) concurrency: Option<Int>,
    pub(super) queue: Option<QueueSpec>,
    #[serde(default)]
    pub(super) plans: BTreeMap<String, QuotaSpec>,
}

/// `methods = ["GET", "POST"]` or `methods = "GET,POST"`.
pub(super) enum MethodsSpec {
    One(String),
    List(Vec<String>),
}

/// `"60/minute"` or `{ limit = 60, period = "1m" }`.
pub(super) enum WindowSpec {
    Text(String),
    Table(WindowTable),
}

/// `{ limit = 60, period = "1m" }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WindowTable {
    pub(super) limit: Int,
    pub(super) period: String,
}

/// A TOML integer (its errors say "an integer", not a Rust type).
#[derive(Clone, Copy)]
pub(super) struct Int(pub(super) i64);

impl<'de> Deserialize<'de> for Int {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Int;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Int, E> {
                Ok(Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Int, E> {
                i64::try_from(v)
                    .map(Int)
                    .map_err(|_| E::custom("integer too large"))
            }
        }
        deserializer.deserialize_i64(V)
    }
}

/// `Deserialize` for a spec written either as a scalar (read by
/// `$visit_scalar` and converted into the `$scalar` variant) or as a table or
/// list (read as `$inner` through `$visit` and `$wrap`, into `$compound`);
/// errors say `$expecting`.
macro_rules! scalar_or_compound {
    (
        $spec:ident, $expecting:literal,
        $visit_scalar:ident($scalar_ty:ty) => $scalar:ident,
        $visit:ident($access:ident, $wrap:ident) => $compound:ident($inner:ty) $(,)?
    ) => {
        impl<'de> Deserialize<'de> for $spec {
            fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = $spec;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($expecting)
                    }
                    fn $visit_scalar<E: de::Error>(self, v: $scalar_ty) -> Result<$spec, E> {
                        Ok($spec::$scalar(v.into()))
                    }
                    fn $visit<A: $access<'de>>(self, access: A) -> Result<$spec, A::Error> {
                        <$inner>::deserialize(de::value::$wrap::new(access)).map($spec::$compound)
                    }
                }
                deserializer.deserialize_any(V)
            }
        }
    };
}

scalar_or_compound!(
    PeerIpSpec, "`true` or a table such as { ipv6_prefix = 56 }",
    visit_bool(bool) => Flag,
    visit_map(MapAccess, MapAccessDeserializer) => Options(PeerIpOptions),
);
scalar_or_compound!(
    MethodsSpec, "a list of methods such as [\"GET\", \"POST\"], or a string such as \"GET,POST\"",
    visit_str(&str) => One,
    visit_seq(SeqAccess, SeqAccessDeserializer) => List(Vec<String>),
);
scalar_or_compound!(
    KeySecretSpec, "32 hex digits, or a table such as { env = \"RATELIMIT_KEY_SECRET\" }",
    visit_str(&str) => Hex,
    visit_map(MapAccess, MapAccessDeserializer) => Env(KeySecretEnv),
);
scalar_or_compound!(
    WindowSpec, "a window such as \"60/minute\" or { limit = 60, period = \"1m\" }",
    visit_str(&str) => Text,
    visit_map(MapAccess, MapAccessDeserializer) => Table(WindowTable),
);
