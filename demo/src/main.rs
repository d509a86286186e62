//! Run with `cargo run -p voice-api` (options: `--addr 127.0.0.1:3000`,
//! `--config FILE`, `--preset NAME` for `demo/policies/NAME.toml`,
//! `--redis redis://127.0.0.1:6379` to count in Redis, or
//! `--redis-cluster redis://127.0.0.1:7000` (a seed node) in a Redis Cluster,
//! with `--features redis`; processes that share a Redis need one key secret:
//! the policy's `key_secret`, or else `RATELIMIT_KEY_SECRET`).
//! Any request may add `?hold_ms=N` (up to 60,000) to stay in flight N ms
//! before it is answered, to try concurrency by hand.
//!
//! Slow clients: a connection is closed when its client takes longer than
//! `--header-timeout-ms` (default 10,000, at most 30,000) to send a request's
//! line and headers, or stays idle that long between requests; at most
//! `--max-connections` (default 1,000) are served at once.
//!
//! Metrics and admin: with `--features admin`, `--admin 127.0.0.1:9000`
//! serves the rate limiter's metrics at `GET /metrics` (Prometheus text
//! format) and its admin API at `/limits/{limit}/keys/{key}` on that
//! address, apart from the API.
//!
//! Reload: `kill -HUP <pid>` reloads the `--config` file; the log (stderr)
//! says what changed, or why the file was refused.
//!
//! Outbound work (with a policy that sets Nixflex's account call caps, as
//! `--preset nixflex` does): `POST /v1/campaigns` runs a batch campaign's
//! simulated calls in waves under the account's and the campaign's caps,
//! `POST /v1/sms` sends messages paced at 1 a second per sending number;
//! `GET /v1/campaigns/{id}` and `GET /v1/sms/{id}` follow them.
//!
//! A stand-in for a voice-AI API: every path answers 200 JSON (other methods
//! than GET, HEAD, POST, PUT, PATCH and DELETE get a 405),
//! behind a `RateLimitLayer`. Without `--config` it enforces
//! `demo/policies/default.toml`: per `X-API-Key`, 60/minute and 1,000/hour,
//! both.

#[cfg(feature = "admin")]
mod admin;
mod campaigns;
mod jobs;
mod outbound;
mod reload;
mod server;
mod sms;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use tower_ratelimit::store::Store;
use tower_ratelimit::{Policy, RateLimitLayer};

const DEFAULT_POLICY: &str = include_str!("../policies/default.toml");

/// The longest `--header-timeout-ms` accepted.
const MAX_HEADER_TIMEOUT_MS: u64 = 30_000;

/// Where the counts are shared: `--redis URL` or `--redis-cluster URL`.
enum Shared {
    Server(String),
    Cluster(String),
}

impl Shared {
    /// The option that named it.
    fn flag(&self) -> &'static str {
        match self {
            Shared::Server(_) => "--redis",
            Shared::Cluster(_) => "--redis-cluster",
        }
    }

    /// The server's URL, or the cluster's seed node's.
    fn url(&self) -> &str {
        match self {
            Shared::Server(url) | Shared::Cluster(url) => url,
        }
    }
}

struct Options {
    addr: SocketAddr,
    config: Option<String>,
    redis: Option<Shared>,
    admin: Option<SocketAddr>,
    guards: server::Guards,
}

/// Where the platform presets live.
const PRESETS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/policies");

fn usage() -> &'static str {
    "usage: voice_api [--addr HOST:PORT] [--config POLICY.toml | --preset NAME]\n                 [--redis redis://HOST:PORT | --redis-cluster redis://HOST:PORT]\n                 [--header-timeout-ms MS] [--max-connections N] [--admin HOST:PORT]"
}

/// The names of the policy files in `demo/policies/`.
fn preset_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(PRESETS)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            Some(name.strip_suffix(".toml")?.to_owned())
        })
        .collect();
    names.sort();
    names
}

fn parse_args() -> Result<Options, String> {
    let mut options = Options {
        addr: SocketAddr::from(([127, 0, 0, 1], 3000)),
        config: None,
        redis: None,
        admin: None,
        guards: server::Guards {
            header_timeout: Duration::from_secs(10),
            max_connections: 1_000,
        },
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .ok_or_else(|| format!("{name} needs a value\n{}", usage()))
        };
        match arg.as_str() {
            "--addr" => {
                let text = value("--addr")?;
                options.addr = socket_addr(&text).ok_or_else(|| {
                    format!("--addr: `{text}` is not HOST:PORT (such as 127.0.0.1:3000)")
                })?;
            }
            "--config" | "--preset" if options.config.is_some() => {
                return Err(format!(
                    "--config and --preset name the one policy served: give one of them, once\n{}",
                    usage()
                ));
            }
            "--config" => options.config = Some(value("--config")?),
            "--preset" => {
                let name = value("--preset")?.to_ascii_lowercase();
                let known = preset_names();
                if !known.contains(&name) {
                    return Err(format!(
                        "--preset: no preset `{name}` (presets: {})",
                        known.join(", ")
                    ));
                }
                options.config = Some(format!("{PRESETS}/{name}.toml"));
            }
            "--redis" | "--redis-cluster" => {
                let url = value(&arg)?;
                if cfg!(not(feature = "redis")) {
                    return Err(format!(
                        "{arg} needs the `redis` feature: \
                         cargo run -p voice-api --features redis -- {arg} URL"
                    ));
                }
                let shared = if arg == "--redis" {
                    Shared::Server(url)
                } else {
                    Shared::Cluster(url)
                };
                if let Some(other) = options.redis.as_ref().filter(|o| o.flag() != arg) {
                    return Err(format!(
                        "{} and {arg} exclude each other: count in one Redis server \
                         (--redis) or in one Redis Cluster (--redis-cluster)",
                        other.flag()
                    ));
                }
                options.redis = Some(shared);
            }
            "--admin" => {
                let text = value("--admin")?;
                if cfg!(not(feature = "admin")) {
                    return Err(String::from(
                        "--admin needs the `admin` feature: \
                         cargo run -p voice-api --features admin -- --admin HOST:PORT",
                    ));
                }
                let addr = socket_addr(&text).ok_or_else(|| {
                    format!("--admin: `{text}` is not HOST:PORT (such as 127.0.0.1:9000)")
                })?;
                options.admin = Some(addr);
            }
            "--header-timeout-ms" => {
                let text = value("--header-timeout-ms")?;
                let ms = text
                    .parse::<u64>()
                    .ok()
                    .filter(|ms| (1..=MAX_HEADER_TIMEOUT_MS).contains(ms))
                    .ok_or_else(|| {
                        format!("--header-timeout-ms: `{text}` is not from 1 to {MAX_HEADER_TIMEOUT_MS}")
                    })?;
                options.guards.header_timeout = Duration::from_millis(ms);
            }
            "--max-connections" => {
                let text = value("--max-connections")?;
                options.guards.max_connections = text
                    .parse::<usize>()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| {
                        format!("--max-connections: `{text}` is not a positive number")
                    })?;
            }
            "-h" | "--help" => {
                println!("{}", usage());
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument `{other}`\n{}", usage())),
        }
    }
    Ok(options)
}

/// The address `text` names: an IP address and port, or a host name (such
/// as `localhost:3000`) and port, resolved now.
fn socket_addr(text: &str) -> Option<SocketAddr> {
    use std::net::ToSocketAddrs;
    text.parse()
        .ok()
        .or_else(|| text.to_socket_addrs().ok()?.next())
}

fn load_policy(config: Option<&str>) -> Result<Policy, String> {
    match config {
        Some(path) => Policy::from_toml_file(path).map_err(|e| format!("{path}: {e}")),
        None => Policy::from_toml(DEFAULT_POLICY).map_err(|e| format!("built-in policy: {e}")),
    }
}

/// The variable the demo reads the key secret from, with `--redis` or
/// `--redis-cluster`, when the policy sets none.
const SECRET_VAR: &str = "RATELIMIT_KEY_SECRET";

/// The policy for a process that shares its counts through Redis: every
/// such process must hash keys under one secret. A policy that sets none
/// gets `RATELIMIT_KEY_SECRET`'s, read as the policy file's own
/// `key_secret = { env = "…" }` would be. `flag` names the option that
/// shares the counts.
fn load_shared_policy(config: Option<&str>, flag: &str) -> Result<Policy, String> {
    let policy = load_policy(config)?;
    if policy.has_key_secret() {
        return Ok(policy);
    }
    if std::env::var_os(SECRET_VAR).is_none() {
        return Err(format!(
            "{flag}: the policy sets no key_secret, so this process would hash keys under a \
             random secret of its own and share no counts with other processes.\n\
             Set {SECRET_VAR} to the same 32 hex digits on every process (for example \
             `export {SECRET_VAR}=$(openssl rand -hex 16)`), or set key_secret in the policy file."
        ));
    }
    let text = match config {
        Some(path) => std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?,
        None => DEFAULT_POLICY.to_owned(),
    };
    // Top-level keys come first in TOML: the line goes before the file's.
    Policy::from_toml(&format!(
        "key_secret = {{ env = \"{SECRET_VAR}\" }}\n{text}"
    ))
    .map_err(|e| format!("{SECRET_VAR}: {e}"))
}

/// The limiter with its counts in the Redis server or cluster at `shared`.
#[cfg(feature = "redis")]
async fn redis_layer(
    policy: Policy,
    shared: &Shared,
) -> Result<RateLimitLayer<tower_ratelimit::store::RedisStore>, String> {
    use tower_ratelimit::store::RedisStore;
    let (builder, what) = match shared {
        Shared::Server(_) => (RedisStore::builder(shared.url()), "Redis"),
        Shared::Cluster(_) => (
            RedisStore::cluster_builder([shared.url()]),
            "a Redis Cluster",
        ),
    };
    let store = builder
        .connect()
        .await
        .map_err(|e| format!("{}: {e}", shared.flag()))?;
    println!("counting in {what} (prefix `{}`)", store.prefix());
    Ok(RateLimitLayer::with_store(policy, store))
}

/// Without the `redis` feature `--redis` and `--redis-cluster` are refused
/// while parsing arguments.
#[cfg(not(feature = "redis"))]
async fn redis_layer(_policy: Policy, shared: &Shared) -> Result<RateLimitLayer, String> {
    Err(format!(
        "{0} needs the `redis` feature: cargo run -p voice-api --features redis -- {0} {1}",
        shared.flag(),
        shared.url()
    ))
}

/// `curl` lines that show a preset's limits (`ADDR` is the server's address).
fn hints(preset: Option<&str>) -> &'static [&'static str] {
    match preset {
        Some("flireo") => &[
            "curl -i -H 'Authorization: Bearer key_a' http://ADDR/agents     # X-RateLimit-Limit: 100",
            "for i in $(seq 11); do curl -s -o /dev/null -w '%{http_code} ' -X POST -H 'Authorization: Bearer key_a' http://ADDR/calls/call_1/control; done; echo",
        ],
        Some("nixflex") => &[
            "curl -i -X POST -H 'Authorization: Bearer nx_a' http://ADDR/v1/keys     # 10/hour",
            "for i in $(seq 10); do curl -s -o /dev/null -X POST -H 'Authorization: Bearer nx_a' 'http://ADDR/v1/calls/inbound?hold_ms=5000' & done; sleep 1",
            "curl -i -X POST -H 'Authorization: Bearer nx_a' http://ADDR/v1/calls/inbound   # the 11th call: busy",
            "time curl -s -o /dev/null -w '%{http_code}\\n' -X POST -H 'Authorization: Bearer nx_a' http://ADDR/v1/calls   # outbound: waits its turn",
        ],
        Some("talkpilot") => &[
            "curl -i -H 'X-API-Key: tp_a' http://ADDR/agents        # X-RateLimit-Limit: 60",
            "curl -i -H 'X-API-Key: tp_custom' http://ADDR/agents   # its own: 120",
            "for i in $(seq 61); do curl -s -o /dev/null -w '%{http_code} ' -H 'X-API-Key: tp_b' http://ADDR/agents; done; echo",
        ],
        Some("exotel") => &[
            "curl -s -o /dev/null -w '%{http_code} ' 'http://ADDR/v2/accounts/AC1/legs?n=[1-11]'; echo   # ten 200s, then 429",
            "curl -i http://ADDR/v2/accounts/AC1/bridges   # another category",
            "curl -s -X POST 'http://ADDR/v2/accounts/AC2/legs/L1/actions?hold_ms=5000' & sleep 1; curl -i -X POST http://ADDR/v2/accounts/AC2/legs/L1/actions",
        ],
        _ => &[
            "curl -i -H 'X-API-Key: demo' http://ADDR/v1/calls",
            "curl -i -X POST -H 'X-API-Key: demo' http://ADDR/v1/calls",
            "curl -i http://ADDR/v1/calls            # no key: 401",
            "curl -i -H 'X-API-Key: demo' 'http://ADDR/v1/calls?hold_ms=2000'   # stays in flight 2 s",
            "curl -s -o /dev/null -w '%{http_code} ' -H 'X-API-Key: burst' 'http://ADDR/v1/agents?n=[1-61]'; echo   # sixty 200s, then 429",
        ],
    }
}

/// The rate limiter's admin API (feature `admin`).
#[cfg(feature = "admin")]
type LimitsAdmin = axum::Router;
#[cfg(not(feature = "admin"))]
type LimitsAdmin = ();

/// The API (with its `outbound` routes) behind `layer`, and the layer's
/// admin API; with a `config` file, `SIGHUP` reloads it (read with `load`).
fn with_layer<St: Store>(
    layer: RateLimitLayer<St>,
    config: Option<String>,
    load: reload::Load,
) -> (axum::Router, LimitsAdmin) {
    let outbound = outbound::routes(config.as_deref(), &layer);
    reload::on_sighup(layer.reload_handle(), config, load);
    #[cfg(feature = "admin")]
    let limits_admin = tower_ratelimit::admin::router(&layer);
    #[cfg(not(feature = "admin"))]
    let limits_admin = ();
    let app = server::app(|router| router.merge(outbound).layer(layer));
    (app, limits_admin)
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let options = match parse_args() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let load: reload::Load = match &options.redis {
        Some(Shared::Server(_)) => |config| load_shared_policy(config, "--redis"),
        Some(Shared::Cluster(_)) => |config| load_shared_policy(config, "--redis-cluster"),
        None => load_policy,
    };
    let policy = match load(options.config.as_deref()) {
        Ok(policy) => policy,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    // The recorder goes in before the layer is built: the layer registers
    // its metrics then.
    #[cfg(feature = "admin")]
    let admin = match options.admin {
        None => None,
        Some(addr) => match admin::install() {
            Ok(handle) => Some((addr, handle)),
            Err(message) => {
                eprintln!("{message}");
                return ExitCode::FAILURE;
            }
        },
    };
    let limits: Vec<String> = policy.limit_names().map(str::to_owned).collect();
    let config = options.config.clone();
    #[cfg_attr(not(feature = "admin"), allow(unused_variables))]
    let (app, limits_admin) = match &options.redis {
        None => with_layer(RateLimitLayer::new(policy), config, load),
        Some(shared) => match redis_layer(policy, shared).await {
            Ok(layer) => with_layer(layer, config, load),
            Err(message) => {
                eprintln!("{message}");
                return ExitCode::from(2);
            }
        },
    };

    let listener = match tokio::net::TcpListener::bind(options.addr).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("cannot listen on {}: {e}", options.addr);
            return ExitCode::FAILURE;
        }
    };
    let addr = listener.local_addr().unwrap_or(options.addr);
    // Both listeners first: nothing says "listening" before both are.
    #[cfg(feature = "admin")]
    let admin = match admin {
        None => None,
        Some((admin_addr, handle)) => match tokio::net::TcpListener::bind(admin_addr).await {
            Ok(listener) => Some((listener, handle)),
            Err(e) => {
                eprintln!("cannot listen on {admin_addr}: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    println!("voice_api listening on http://{addr}");
    #[cfg(feature = "admin")]
    if let Some((admin_listener, handle)) = admin {
        let admin_addr = admin_listener
            .local_addr()
            .map_or_else(|e| e.to_string(), |a| a.to_string());
        println!("metrics at http://{admin_addr}/metrics, rate-limit admin at http://{admin_addr}/limits/");
        let app = admin::router(handle, limits_admin);
        let serving = server::serve(admin_listener, app, options.guards, std::future::pending());
        tokio::spawn(serving);
    }
    println!(
        "policy: {} (limits: {})",
        options
            .config
            .as_deref()
            .unwrap_or("built-in default: per X-API-Key, 60/minute and 1000/hour"),
        limits.join(", ")
    );
    println!("try:");
    let preset = options
        .config
        .as_deref()
        .and_then(|path| std::path::Path::new(path).file_stem()?.to_str());
    for line in hints(preset) {
        println!("  {}", line.replace("ADDR", &addr.to_string()));
    }

    server::serve(listener, app, options.guards, stop_signal()).await;
    ExitCode::SUCCESS
}

/// Completes on the first Ctrl-C (`SIGINT`) or `SIGTERM`: the server then
/// stops taking connections and lets the requests in flight finish. A
/// second signal ends the process at once.
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).ok();
    interrupted(&mut term).await;
    eprintln!("shutting down: finishing the requests in flight (Ctrl-C again to stop now)");
    tokio::spawn(async move {
        interrupted(&mut term).await;
        eprintln!("stopped with requests in flight");
        std::process::exit(130);
    });
}

/// The next Ctrl-C, or `SIGTERM` if `term` listens for it.
async fn interrupted(term: &mut Option<tokio::signal::unix::Signal>) {
    let terminated = async {
        match term.as_mut() {
            Some(term) => {
                term.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminated => {}
    }
}
