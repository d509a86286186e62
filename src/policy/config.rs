//! Policies from TOML files.
//!
//! A policy file says in TOML what [`Policy::builder`] says in code, and is
//! compiled through the same builder, so a file and the equivalent code mean
//! exactly the same thing. The format is described in the crate's README.
//!
//! ```
//! use tower_ratelimit::Policy;
//!
//! let policy = Policy::from_toml(r#"
//! refusal = "talkpilot"
//! report = "minute"
//!
//! [[limits]]
//! name = "per_key"
//! key = { header = "X-API-Key" }
//!
//! [[limits.routes]]
//! windows = ["60/minute", "1000/hour"]
//! "#).unwrap();
//! assert_eq!(policy.limit_names().collect::<Vec<_>>(), ["per_key"]);
//! ```
//!
//! Every mistake is a [`ConfigError`] naming the field as a path
//! (`limits[1].routes[0].windows[2]`) and its line and column in the file:
//! TOML syntax, wrong types and unknown fields ([`ConfigErrorKind::Syntax`])
//! as well as values that make no sense (a window of `0/minute`, a cost
//! larger than a window, a custom key nobody registered …).
//!
//! Positions are found by walking the parsed TOML document: the span of the
//! value at the error's field path (or, for errors the TOML deserializer
//! reports, the field whose span holds the error). Errors from
//! [`PolicyBuilder::build`](super::PolicyBuilder::build) therefore get the
//! position of the value they name without this module re-checking what the
//! builder checks.

use std::fmt;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use http::StatusCode;
use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::methods::Methods;
use super::pattern::PathPattern;
use super::rate_text::{parse_duration, parse_window};
use super::{Algorithm, Limit, MissingKey, Override, Policy, PolicyBuilder, Quota, Tiers, Window};
use crate::decision::ReportedWindow;
use crate::error::{ConfigError, ConfigErrorKind};
use crate::headers::HeaderStyle;
use crate::key::{
    Bearer, FirstOf, ForwardedHeader, ForwardedIp, Global, Header, KeyExtractor, KeySecret,
    PathCapture, PeerIp,
};
use crate::penalty::Penalty;
use crate::response::RefusalFormat;

/// The most alternatives one `first_of` key may list.
const MAX_FIRST_OF: usize = 16;

/// Key extractors registered in code, for policy files to name with
/// `key = { custom = "<name>" }`: keys that come from what an authentication
/// layer put in the request's extensions, or any extractor of your own.
///
/// ```
/// use tower_ratelimit::key::{Extension, Key};
/// use tower_ratelimit::policy::CustomKeys;
/// use tower_ratelimit::Policy;
///
/// struct Account { id: u64 }
///
/// let custom = CustomKeys::new().with("account", Extension::new(|a: &Account| Key::from(a.id)));
/// let policy = Policy::from_toml_with(r#"
/// [[limits]]
/// name = "per_account"
/// key = { custom = "account" }
/// routes = [{ windows = ["100/minute"] }]
/// "#, &custom).unwrap();
/// # let _ = policy;
///
/// let err = Policy::from_toml_with(r#"
/// [[limits]]
/// name = "per_account"
/// key = { custom = "acount" }
/// routes = [{ windows = ["100/minute"] }]
/// "#, &custom).unwrap_err();
/// assert_eq!(err.field(), "limits[0].key.custom");
/// assert_eq!(err.line(), Some(4));
/// ```
#[derive(Clone, Default)]
pub struct CustomKeys {
    keys: Vec<(Box<str>, Arc<dyn KeyExtractor>)>,
}

impl CustomKeys {
    /// No custom keys yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `extractor` under `name`, replacing any extractor registered
    /// under that name before.
    #[must_use]
    pub fn with(self, name: impl Into<String>, extractor: impl KeyExtractor) -> Self {
        self.with_shared(name, Arc::new(extractor))
    }

    /// Registers a shared extractor under `name`, replacing any extractor
    /// registered under that name before.
    #[must_use]
    pub fn with_shared(
        mut self,
        name: impl Into<String>,
        extractor: Arc<dyn KeyExtractor>,
    ) -> Self {
        let name: Box<str> = name.into().into_boxed_str();
        match self.keys.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = extractor,
            None => self.keys.push((name, extractor)),
        }
        self
    }

    /// The extractor registered under `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn KeyExtractor>> {
        self.keys.iter().find(|(n, _)| &**n == name).map(|(_, e)| e)
    }

    /// The registered names, in the order they were first registered.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|(n, _)| &**n)
    }
}

impl fmt::Debug for CustomKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CustomKeys")
            .field(&self.names().collect::<Vec<_>>())
            .finish()
    }
}

impl Policy {
    /// Loads a policy from TOML text (the format is in the crate's README).
    ///
    /// Errors name the field (`limits[0].routes[1].windows[0]`) and carry the
    /// line and column of the value at fault.
    ///
    /// ```
    /// use tower_ratelimit::{ConfigErrorKind, Policy};
    ///
    /// let policy = Policy::from_toml(r#"
    /// [[limits]]
    /// name = "per_key"
    /// key = { header = "X-API-Key" }
    ///
    /// [[limits.routes]]
    /// methods = ["POST"]
    /// path = "/v1/keys"
    /// windows = ["10/hour"]
    ///
    /// [[limits.routes]]
    /// windows = ["60/minute", { limit = 1000, period = "1h" }]
    /// "#).unwrap();
    /// assert_eq!(policy.limit_names().collect::<Vec<_>>(), ["per_key"]);
    ///
    /// let err = Policy::from_toml(r#"
    /// [[limits]]
    /// name = "per_key"
    /// key = { header = "X-API-Key" }
    /// routes = [{ windows = ["60/minute", "0/hour"] }]
    /// "#).unwrap_err();
    /// assert_eq!(err.kind(), ConfigErrorKind::InvalidValue);
    /// assert_eq!(err.field(), "limits[0].routes[0].windows[1]");
    /// assert_eq!((err.line(), err.column()), (Some(5), Some(37)));
    /// ```
    pub fn from_toml(text: &str) -> Result<Policy, ConfigError> {
        Self::from_toml_with(text, &CustomKeys::new())
    }

    /// Loads a policy from TOML text whose `key = { custom = "<name>" }`
    /// tables name extractors registered in `custom`.
    pub fn from_toml_with(text: &str, custom: &CustomKeys) -> Result<Policy, ConfigError> {
        let (document, errors) = DeTable::parse_recoverable(text);
        let document = Document {
            text,
            root: document,
        };
        if let Some(error) = errors.first() {
            return Err(document.syntax_error(error));
        }
        let spec = FileSpec::deserialize(toml::de::Deserializer::from(document.root.clone()))
            .map_err(|error| document.syntax_error(&error))?;
        spec.into_builder(custom)
            .and_then(PolicyBuilder::build)
            .map_err(|error| document.locate(error))
    }

    /// Loads a policy from a TOML file. A file that cannot be read is a
    /// [`ConfigErrorKind::Io`] error naming the path.
    pub fn from_toml_file(path: impl AsRef<Path>) -> Result<Policy, ConfigError> {
        Self::from_toml_file_with(path, &CustomKeys::new())
    }

    /// Loads a policy from a TOML file whose `key = { custom = "<name>" }`
    /// tables name extractors registered in `custom`.
    pub fn from_toml_file_with(
        path: impl AsRef<Path>,
        custom: &CustomKeys,
    ) -> Result<Policy, ConfigError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| {
            ConfigError::new(
                ConfigErrorKind::Io,
                "",
                format!("cannot read the policy file `{}`: {e}", path.display()),
            )
        })?;
        let text = String::from_utf8(bytes).map_err(|e| {
            let bytes = e.as_bytes();
            let (line, column) = line_column(bytes, e.utf8_error().valid_up_to());
            ConfigError::new(
                ConfigErrorKind::Syntax,
                "",
                format!("the policy file `{}` is not valid UTF-8", path.display()),
            )
            .at(line, column)
        })?;
        Self::from_toml_with(&text, custom)
    }
}

// ---------------------------------------------------------------------------
// Positions: field paths and spans in the parsed document.

/// The parsed document, to find where a field is.
struct Document<'i> {
    text: &'i str,
    root: Spanned<DeTable<'i>>,
}

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

impl Document<'_> {
    /// A TOML (syntax, type or unknown-field) error, with the field path of
    /// the innermost value or key whose span holds the error.
    fn syntax_error(&self, error: &toml::de::Error) -> ConfigError {
        let message = error.message().trim();
        let Some(span) = error.span() else {
            return ConfigError::new(ConfigErrorKind::Syntax, "", message).at(1, 1);
        };
        let (line, column) = line_column(self.text.as_bytes(), span.start);
        ConfigError::new(ConfigErrorKind::Syntax, self.field_at(span.start), message)
            .at(line, column)
    }

    /// Adds the position of the value at the error's field path (or of its
    /// nearest ancestor present in the file).
    fn locate(&self, error: ConfigError) -> ConfigError {
        let span = self.span_of(error.field());
        let (line, column) = line_column(self.text.as_bytes(), span.start);
        error.at(line, column)
    }

    /// The span of the deepest value along `field`.
    fn span_of(&self, field: &str) -> Range<usize> {
        let root = self.root.get_ref();
        let mut span = self.root.span();
        let mut table = Some(root);
        let mut array: Option<&[Spanned<DeValue<'_>>]> = None;
        for step in parse_field(field) {
            let next = match (&step, table, array) {
                (Step::Key(name), Some(t), _) => {
                    t.iter().find(|(k, _)| k.get_ref() == name).map(|(_, v)| v)
                }
                (Step::Index(i), _, Some(a)) => a.get(*i),
                _ => None,
            };
            let Some(value) = next else { break };
            span = value.span();
            (table, array) = match value.get_ref() {
                DeValue::Table(t) => (Some(t), None),
                DeValue::Array(a) => (None, Some(&a[..])),
                _ => (None, None),
            };
        }
        span
    }

    /// The path of the innermost key or value whose span holds `offset`; if
    /// none does (a syntax error between values), of the last one before it.
    fn field_at(&self, offset: usize) -> String {
        let mut search = Search {
            offset,
            path: Vec::new(),
            holding: None,
            before: None,
        };
        search.table(self.root.get_ref());
        let steps = search
            .holding
            .or(search.before.map(|(_, p)| p))
            .unwrap_or_default();
        format_field(&steps)
    }
}

/// A depth-first search for the field at an offset. Tables written with a
/// `[header]` have the header's span, not their contents', so every branch is
/// searched.
struct Search {
    offset: usize,
    path: Vec<Step>,
    /// The deepest path whose span holds the offset.
    holding: Option<Vec<Step>>,
    /// The path whose span ends last before the offset, and that end.
    before: Option<(usize, Vec<Step>)>,
}

impl Search {
    fn consider(&mut self, span: Range<usize>) {
        let holds = span.contains(&self.offset) || (span.is_empty() && span.start == self.offset);
        if holds {
            if self
                .holding
                .as_ref()
                .is_none_or(|h| h.len() <= self.path.len())
            {
                self.holding = Some(self.path.clone());
            }
        } else if span.end <= self.offset
            && self.before.as_ref().is_none_or(|(end, p)| {
                span.end > *end || (span.end == *end && p.len() <= self.path.len())
            })
        {
            self.before = Some((span.end, self.path.clone()));
        }
    }

    fn table(&mut self, table: &DeTable<'_>) {
        for (key, value) in table.iter() {
            self.path.push(Step::Key(key.get_ref().to_string()));
            self.consider(key.span());
            self.value(value);
            self.path.pop();
        }
    }

    fn value(&mut self, value: &Spanned<DeValue<'_>>) {
        self.consider(value.span());
        match value.get_ref() {
            DeValue::Table(t) => self.table(t),
            DeValue::Array(a) => {
                for (i, item) in a.iter().enumerate() {
                    self.path.push(Step::Index(i));
                    self.value(item);
                    self.path.pop();
                }
            }
            _ => {}
        }
    }
}

/// Splits `limits[1].routes[0].windows` into its steps.
fn parse_field(field: &str) -> Vec<Step> {
    let mut steps = Vec::new();
    for part in field.split('.') {
        let (name, mut rest) = part.split_at(part.find('[').unwrap_or(part.len()));
        if !name.is_empty() {
            steps.push(Step::Key(name.to_owned()));
        }
        while let Some(inner) = rest.strip_prefix('[') {
            let Some((index, tail)) = inner.split_once(']') else {
                break;
            };
            match index.parse() {
                Ok(i) => steps.push(Step::Index(i)),
                Err(_) => return steps,
            }
            rest = tail;
        }
    }
    steps
}

fn format_field(steps: &[Step]) -> String {
    let mut out = String::new();
    for step in steps {
        match step {
            Step::Index(i) => out.push_str(&format!("[{i}]")),
            Step::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                let bare = !k.is_empty()
                    && k.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                if bare {
                    out.push_str(k);
                } else {
                    out.push_str(&format!("\"{}\"", k.escape_debug()));
                }
            }
        }
    }
    out
}

/// The 1-based line and column (in characters) of a byte offset.
fn line_column(text: &[u8], offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    // Count characters, not bytes: skip UTF-8 continuation bytes.
    let column = before[line_start..]
        .iter()
        .filter(|&&b| b & 0xC0 != 0x80)
        .count()
        + 1;
    (line, column)
}

// ---------------------------------------------------------------------------
// The file's shape.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "a policy table")]
struct FileSpec {
    headers: Option<String>,
    report: Option<String>,
    refusal: Option<String>,
    refusal_status: Option<Int>,
    busy_status: Option<Int>,
    busy_retry_after: Option<String>,
    max_key_len: Option<Int>,
    key_secret: Option<KeySecretSpec>,
    memory: Option<MemorySpec>,
    #[serde(default)]
    limits: Vec<LimitSpec>,
}

/// `[memory]`: the bounds of the memory store `RateLimitLayer::new` builds.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "a memory table such as { max_entries = 100000 }")]
struct MemorySpec {
    max_entries: Option<Int>,
}

/// `key_secret = "<32 hex digits>"` or `key_secret = { env = "NAME" }`.
enum KeySecretSpec {
    Hex(String),
    Env(KeySecretEnv),
}

/// `{ env = "NAME" }`: the secret is in an environment variable.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeySecretEnv {
    env: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "a limit table with `name`, `key` and `routes`")]
struct LimitSpec {
    name: String,
    key: KeySpec,
    on_missing_key: Option<String>,
    algorithm: Option<String>,
    #[serde(default)]
    shadow: bool,
    #[serde(default)]
    exempt_keys: Vec<String>,
    #[serde(default)]
    exempt_ips: Vec<String>,
    penalty: Option<PenaltySpec>,
    plan: Option<KeySpec>,
    #[serde(default)]
    routes: Vec<RouteSpec>,
    #[serde(default)]
    overrides: Vec<OverrideSpec>,
}

/// One key's own quota (`windows` …) or plan (`plan`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "an override table such as { key = \"k\", plan = \"pro\" }")]
struct OverrideSpec {
    key: String,
    plan: Option<String>,
    #[serde(default)]
    windows: Vec<WindowSpec>,
    cost: Option<Int>,
    algorithm: Option<String>,
    concurrency: Option<Int>,
    queue: Option<QueueSpec>,
}

/// A quota's fields, as a route, a plan or an override gives them.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "a quota table such as { windows = [\"60/minute\"] } or { concurrency = 10 }")]
struct QuotaSpec {
    #[serde(default)]
    windows: Vec<WindowSpec>,
    cost: Option<Int>,
    algorithm: Option<String>,
    concurrency: Option<Int>,
    queue: Option<QueueSpec>,
}

/// `queue = { max_queued = 100, max_wait = "30s" }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "a queue table such as { max_queued = 100, max_wait = \"30s\" }")]
struct QueueSpec {
    max_queued: Int,
    max_wait: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "a penalty table such as { refusals = 20, within = \"60s\", ban = \"300s\" }")]
struct PenaltySpec {
    refusals: u32,
    within: String,
    ban: String,
}

impl PenaltySpec {
    fn into_penalty(self) -> Result<Penalty, ConfigError> {
        let within = parse_duration(&self.within).map_err(|reason| invalid("within", reason))?;
        let ban = parse_duration(&self.ban).map_err(|reason| invalid("ban", reason))?;
        Penalty::new(self.refusals, within, ban)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "a key table such as { header = \"X-API-Key\" }")]
struct KeySpec {
    header: Option<String>,
    /// With `header`: a comma is part of the key, not a list separator.
    allow_commas: Option<bool>,
    bearer: Option<bool>,
    path: Option<String>,
    peer_ip: Option<PeerIpSpec>,
    forwarded_ip: Option<ForwardedIpSpec>,
    global: Option<bool>,
    custom: Option<String>,
    first_of: Option<Vec<KeySpec>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "a table such as { trusted = [\"10.0.0.0/8\"] }")]
struct ForwardedIpSpec {
    trusted: Vec<String>,
    header: Option<String>,
    ipv6_prefix: Option<Int>,
}

/// `peer_ip = true` or `peer_ip = { ipv6_prefix = 56 }`.
enum PeerIpSpec {
    Flag(bool),
    Options(PeerIpOptions),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PeerIpOptions {
    ipv6_prefix: Option<Int>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "a route table with `windows`")]
struct RouteSpec {
    methods: Option<MethodsSpec>,
    /// Whether a route that names `GET` also matches `HEAD` (default true).
    head: Option<bool>,
    path: Option<String>,
    #[serde(default)]
    windows: Vec<WindowSpec>,
    cost: Option<Int>,
    algorithm: Option<String>,
    concurrency: Option<Int>,
    queue: Option<QueueSpec>,
    #[serde(default)]
    plans: std::collections::BTreeMap<String, QuotaSpec>,
}

/// `methods = ["GET", "POST"]` or `methods = "GET,POST"`.
enum MethodsSpec {
    One(String),
    List(Vec<String>),
}

/// `"60/minute"` or `{ limit = 60, period = "1m" }`.
enum WindowSpec {
    Text(String),
    Table(WindowTable),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WindowTable {
    limit: Int,
    period: String,
}

/// A TOML integer (its errors say "an integer", not a Rust type).
#[derive(Clone, Copy)]
struct Int(i64);

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

// ---------------------------------------------------------------------------
// From the file's shape to the builder.

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::invalid(field, message)
}

/// A whole number in `min..=max`.
fn int_in<T: TryFrom<i64>>(value: Int, min: i64, max: i64, field: &str) -> Result<T, ConfigError> {
    if !(min..=max).contains(&value.0) {
        return Err(invalid(
            field,
            format!("must be from {min} to {max}, not {}", value.0),
        ));
    }
    T::try_from(value.0).map_err(|_| invalid(field, format!("{} is out of range", value.0)))
}

fn quoted(text: &str) -> String {
    format!("`{}`", text.escape_debug())
}

impl FileSpec {
    fn into_builder(self, custom: &CustomKeys) -> Result<PolicyBuilder, ConfigError> {
        let mut builder = Policy::builder();
        if let Some(secret) = &self.key_secret {
            builder = builder.key_secret(secret.resolve()?);
        }
        if let Some(headers) = &self.headers {
            builder = builder.headers(header_style(headers)?);
        }
        if let Some(report) = &self.report {
            builder = builder.report(reported_window(report)?);
        }
        if let Some(refusal) = &self.refusal {
            let format = RefusalFormat::from_name(refusal).ok_or_else(|| {
                invalid(
                    "refusal",
                    format!(
                        "{}: expected json, problem_json, flireo, nixflex, talkpilot or exotel",
                        quoted(refusal)
                    ),
                )
            })?;
            builder = builder.refusal(format);
        }
        if let Some(status) = self.refusal_status {
            builder = builder.refusal_status(status_code(status, "refusal_status")?);
        }
        if let Some(status) = self.busy_status {
            builder = builder.busy_status(status_code(status, "busy_status")?);
        }
        if let Some(after) = &self.busy_retry_after {
            let after =
                parse_duration(after).map_err(|reason| invalid("busy_retry_after", reason))?;
            builder = builder.busy_retry_after(after);
        }
        if let Some(len) = self.max_key_len {
            builder = builder.max_key_len(int_in(len, 1, i64::from(u32::MAX), "max_key_len")?);
        }
        if let Some(max) = self.memory.and_then(|m| m.max_entries) {
            let field = "memory.max_entries";
            if max.0 < 1 {
                return Err(invalid(field, format!("must be at least 1, not {}", max.0)));
            }
            let max = usize::try_from(max.0)
                .map_err(|_| invalid(field, format!("{} is out of range", max.0)))?;
            builder = builder.memory_max_entries(max);
        }
        for (i, limit) in self.limits.into_iter().enumerate() {
            builder = builder.limit(
                limit
                    .into_limit(custom)
                    .map_err(|e| e.within(format!("limits[{i}]")))?,
            );
        }
        Ok(builder)
    }
}

/// An HTTP status from the field `field`.
fn status_code(value: Int, field: &str) -> Result<StatusCode, ConfigError> {
    let code: u16 = int_in(value, 100, 999, field)?;
    StatusCode::from_u16(code).map_err(|_| invalid(field, format!("{code} is not an HTTP status")))
}

fn header_style(text: &str) -> Result<HeaderStyle, ConfigError> {
    Ok(match text.to_ascii_lowercase().as_str() {
        "x-ratelimit" => HeaderStyle::XRateLimit,
        "ietf" => HeaderStyle::Ietf,
        "both" => HeaderStyle::Both,
        "none" => HeaderStyle::None,
        _ => {
            return Err(invalid(
                "headers",
                format!("{}: expected x-ratelimit, ietf, both or none", quoted(text)),
            ))
        }
    })
}

fn reported_window(text: &str) -> Result<ReportedWindow, ConfigError> {
    if text.eq_ignore_ascii_case("most_restrictive") {
        return Ok(ReportedWindow::MostRestrictive);
    }
    parse_duration(text).map(ReportedWindow::Period).map_err(|reason| {
        invalid(
            "report",
            format!(
                "{}: expected most_restrictive or a window's period such as minute or 60s ({reason})",
                quoted(text)
            ),
        )
    })
}

fn algorithm(text: &str, field: &str) -> Result<Algorithm, ConfigError> {
    match text {
        "gcra" => Ok(Algorithm::Gcra),
        "fixed_window" => Ok(Algorithm::FixedWindow),
        _ => Err(invalid(
            field,
            format!("{}: expected gcra or fixed_window", quoted(text)),
        )),
    }
}

impl LimitSpec {
    fn into_limit(self, custom: &CustomKeys) -> Result<Limit, ConfigError> {
        let key = self
            .key
            .extractor(custom, true)
            .map_err(|e| e.within("key"))?;
        let missing_key = match self.on_missing_key.as_deref() {
            None | Some("reject") => MissingKey::Reject,
            Some("skip") => MissingKey::Skip,
            Some(other) => {
                return Err(invalid(
                    "on_missing_key",
                    format!("{}: expected reject or skip", quoted(other)),
                ))
            }
        };
        let default_algorithm = match &self.algorithm {
            Some(text) => algorithm(text, "algorithm")?,
            None => Algorithm::default(),
        };
        let mut limit = Limit::with_shared_key(self.name, key)
            .on_missing_key(missing_key)
            .shadow(self.shadow)
            .exempt_keys(self.exempt_keys)
            .exempt_ips(self.exempt_ips);
        if let Some(penalty) = self.penalty {
            limit = limit.penalty(penalty.into_penalty().map_err(|e| e.within("penalty"))?);
        }
        if let Some(plan) = &self.plan {
            let source = plan.extractor(custom, true).map_err(|e| e.within("plan"))?;
            limit = limit.plan_from(SharedKey(source));
        }
        for (j, route) in self.routes.into_iter().enumerate() {
            let (spec, tiers, head) = route
                .into_route(default_algorithm)
                .map_err(|e| e.within(format!("routes[{j}]")))?;
            limit = if head {
                limit.route(spec, tiers)
            } else {
                limit.route_without_head(spec, tiers)
            };
        }
        for (j, spec) in self.overrides.into_iter().enumerate() {
            let (key, value) = spec
                .into_override(default_algorithm)
                .map_err(|e| e.within(format!("overrides[{j}]")))?;
            limit = limit.key_override(key, value);
        }
        Ok(limit)
    }
}

/// A shared extractor, as [`Limit::plan_from`] takes one.
struct SharedKey(Arc<dyn KeyExtractor>);

impl KeyExtractor for SharedKey {
    fn extract<'a>(
        &self,
        request: &crate::key::RequestView<'a>,
    ) -> Result<crate::key::Key<'a>, crate::key::KeyError> {
        self.0.extract(request)
    }

    fn describe(&self) -> std::borrow::Cow<'_, str> {
        self.0.describe()
    }
}

impl OverrideSpec {
    fn into_override(
        self,
        default_algorithm: Algorithm,
    ) -> Result<(String, Override), ConfigError> {
        let OverrideSpec {
            key,
            plan,
            windows,
            cost,
            algorithm,
            concurrency,
            queue,
        } = self;
        let quota = QuotaSpec {
            windows,
            cost,
            algorithm,
            concurrency,
            queue,
        };
        let has_quota = !quota.windows.is_empty() || quota.concurrency.is_some();
        let value = match (plan, has_quota) {
            (Some(_), true) => {
                return Err(invalid(
                    "plan",
                    "give an override either a `plan` or its own quota (`windows`, `concurrency`), not both",
                ))
            }
            (Some(plan), false) => Override::Plan(plan),
            (None, _) => Override::Quota(quota.into_quota(default_algorithm)?),
        };
        Ok((key, value))
    }
}

impl QuotaSpec {
    fn into_quota(self, default_algorithm: Algorithm) -> Result<Quota, ConfigError> {
        let mut windows = self
            .windows
            .iter()
            .enumerate()
            .map(|(k, w)| w.window().map_err(|e| e.within(format!("windows[{k}]"))));
        let mut quota = match (windows.next(), self.concurrency) {
            (Some(first), _) => Quota::new(first?),
            (None, Some(max)) => {
                Quota::in_flight(int_in(max, 0, i64::from(u32::MAX), "concurrency")?)
            }
            (None, None) => {
                return Err(invalid(
                    "windows",
                    "list at least one window, such as \"60/minute\", or set `concurrency`",
                ))
            }
        };
        for window in windows {
            quota = quota.and(window?);
        }
        if let Some(max) = self.concurrency {
            quota = quota.max_in_flight(int_in(max, 0, i64::from(u32::MAX), "concurrency")?);
        }
        if let Some(queue) = self.queue {
            if self.concurrency.is_none() {
                return Err(invalid(
                    "queue",
                    "a queue needs `concurrency` (the in-flight cap)",
                ));
            }
            let max_queued = int_in(queue.max_queued, 0, 1_000_000, "queue.max_queued")?;
            let max_wait = parse_duration(&queue.max_wait)
                .map_err(|reason| invalid("queue.max_wait", reason))?;
            quota = quota.queue(max_queued, max_wait);
        }
        if let Some(cost) = self.cost {
            quota = quota.cost(int_in(cost, 1, i64::from(u32::MAX), "cost")?);
        }
        let algorithm = match &self.algorithm {
            Some(text) => algorithm(text, "algorithm")?,
            None => default_algorithm,
        };
        Ok(quota.algorithm(algorithm))
    }
}

impl RouteSpec {
    /// The route as `Limit::route` takes it: `"METHODS PATH"` and quotas by
    /// plan, and whether its `GET` also matches `HEAD` (else it is for
    /// `Limit::route_without_head`).
    fn into_route(
        self,
        default_algorithm: Algorithm,
    ) -> Result<(String, Tiers, bool), ConfigError> {
        let methods = match &self.methods {
            None => Methods::ANY,
            Some(MethodsSpec::One(text)) => text.parse::<Methods>()?,
            Some(MethodsSpec::List(list)) => {
                if list.is_empty() {
                    return Err(invalid(
                        "methods",
                        "list at least one method, or leave `methods` out for every method",
                    ));
                }
                let mut set: Option<Methods> = None;
                for (k, name) in list.iter().enumerate() {
                    if name.contains(',') {
                        return Err(invalid(
                            format!("methods[{k}]"),
                            format!("{}: one method per list item", quoted(name)),
                        ));
                    }
                    let parsed = name.parse::<Methods>().map_err(|e| {
                        ConfigError::invalid(format!("methods[{k}]"), e.message().to_owned())
                    })?;
                    set = Some(set.map_or(parsed, |s| s.or(parsed)));
                }
                set.unwrap_or(Methods::ANY)
            }
        };
        if self.head.is_some() && !methods.contains(&http::Method::GET) {
            return Err(invalid(
                "head",
                format!(
                    "`head` says whether a route that names GET also matches HEAD, \
                     and this route's methods ({methods}) do not include GET"
                ),
            ));
        }
        let path = self.path.as_deref().unwrap_or("*");
        // Check the pattern as written (not as `Limit::route` would trim it).
        PathPattern::parse(path).map_err(|e| e.within("path"))?;

        let own = QuotaSpec {
            windows: self.windows,
            cost: self.cost,
            algorithm: self.algorithm,
            concurrency: self.concurrency,
            queue: self.queue,
        };
        let mut tiers = Tiers::new(own.into_quota(default_algorithm)?);
        for (name, spec) in self.plans {
            let quota = spec
                .into_quota(default_algorithm)
                .map_err(|e| e.within(format!("plans.{name}")))?;
            tiers = tiers.plan(name, quota);
        }
        Ok((
            format!("{methods} {path}"),
            tiers,
            self.head.unwrap_or(true),
        ))
    }
}

impl WindowSpec {
    fn window(&self) -> Result<Window, ConfigError> {
        match self {
            WindowSpec::Text(text) => parse_window(text).map_err(|reason| {
                let shown = format!("`{text}`");
                if reason.contains(&shown) {
                    invalid("", reason)
                } else {
                    invalid("", format!("{reason} (in {shown})"))
                }
            }),
            WindowSpec::Table(table) => {
                let limit: u32 = int_in(table.limit, 1, i64::from(u32::MAX), "limit")?;
                let period =
                    parse_duration(&table.period).map_err(|reason| invalid("period", reason))?;
                Window::new(limit, period).map_err(|e| invalid("", e.message().to_owned()))
            }
        }
    }
}

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

    fn extractor(
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
            return Ok(Arc::new(Bearer::new()));
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
            return Ok(Arc::new(PathCapture::new(capture.as_str())));
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
            return Ok(Arc::new(Global::new()));
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
    fn resolve(&self) -> Result<KeySecret, ConfigError> {
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
        for (k, entry) in self.trusted.iter().enumerate() {
            ForwardedIp::new([entry])
                .map_err(|e| invalid(format!("trusted[{k}]"), e.message().to_owned()))?;
        }
        let mut extractor = ForwardedIp::new(&self.trusted)?;
        if let Some(header) = &self.header {
            extractor = extractor.header(match header.to_ascii_lowercase().as_str() {
                "x-forwarded-for" => ForwardedHeader::XForwardedFor,
                "forwarded" => ForwardedHeader::Forwarded,
                _ => {
                    return Err(invalid(
                        "header",
                        format!("{}: expected x-forwarded-for or forwarded", quoted(header)),
                    ))
                }
            });
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

    fn err(text: &str) -> ConfigError {
        Policy::from_toml(text).unwrap_err()
    }

    #[test]
    fn field_paths_round_trip() {
        for field in [
            "",
            "report",
            "limits[1].routes[0].windows[2]",
            "limits[0].key.first_of[1].header",
        ] {
            assert_eq!(format_field(&parse_field(field)), field);
        }
        assert_eq!(parse_field("a[x].b"), vec![Step::Key("a".into())]);
        assert_eq!(format_field(&[Step::Key("a b".into())]), "\"a b\"");
    }

    #[test]
    fn columns_count_characters() {
        assert_eq!(line_column(b"abc", 0), (1, 1));
        assert_eq!(line_column(b"a\nbc", 3), (2, 2));
        assert_eq!(line_column("é\né = 1".as_bytes(), 5), (2, 2));
        assert_eq!(line_column("é\né = 1".as_bytes(), 6), (2, 3));
        assert_eq!(line_column(b"ab", 99), (1, 3));
    }

    #[test]
    fn syntax_errors_inside_headers_name_the_field() {
        let e = err("[[limits]]\nname = \"a\"\nkey = { global = true }\n[[limits.routes]]\nwindows = [\"1/s\", 3]\n");
        assert_eq!(e.kind(), ConfigErrorKind::Syntax);
        assert_eq!(e.field(), "limits[0].routes[0].windows[1]");
        assert_eq!((e.line(), e.column()), (Some(5), Some(19)));
    }

    #[test]
    fn an_empty_file_has_no_limits() {
        let e = err("");
        assert_eq!(e.field(), "limits");
        assert_eq!((e.line(), e.column()), (Some(1), Some(1)));
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
