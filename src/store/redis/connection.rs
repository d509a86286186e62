//! The connection to Redis: one auto-reconnecting multiplexed connection to a
//! server, or a cluster connection; the clients for them, over TLS for
//! `rediss://` URLs (feature `redis-tls`); and the script call that reloads
//! the script when the server has lost it (`NOSCRIPT`).

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{ErrorKind, FromRedisValue, RedisResult, Script, ServerErrorKind, ToRedisArgs};

use crate::error::ConfigError;

/// How `rediss://` connections are verified.
#[derive(Clone, Default)]
pub(crate) struct Tls {
    /// CA certificates (PEM) trusted instead of the system's roots.
    #[cfg(feature = "redis-tls")]
    pub(crate) root_certificates: Option<Vec<u8>>,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = f.debug_struct("Tls");
        #[cfg(feature = "redis-tls")]
        out.field(
            "root_certificates",
            &self.root_certificates.as_ref().map(|_| "<PEM>"),
        );
        out.finish()
    }
}

/// Whether `url` asks for TLS (`rediss://`, `valkeys://`).
fn is_tls(url: &str) -> bool {
    url.split_once("://").is_some_and(|(scheme, _)| {
        scheme.eq_ignore_ascii_case("rediss") || scheme.eq_ignore_ascii_case("valkeys")
    })
}

/// The error for a URL that needs TLS in a build without it.
#[cfg(not(feature = "redis-tls"))]
fn tls_disabled() -> ConfigError {
    ConfigError::invalid(
        "redis",
        "a `rediss://` URL needs TLS: enable the cargo feature `redis-tls` of tower-ratelimit",
    )
}

/// A malformed URL. The URL itself is not repeated: it may hold a password.
fn bad_url() -> ConfigError {
    ConfigError::invalid(
        "redis",
        "not a Redis URL (redis://[:PASSWORD@]HOST:PORT[/DB], rediss://… or redis+unix:///PATH)",
    )
}

/// Checks what TLS needs before any client is made: the feature for a
/// `rediss://` URL, a TLS URL for root certificates, and certificates that
/// parse.
fn check_tls<'u>(urls: impl IntoIterator<Item = &'u str>, tls: &Tls) -> Result<(), ConfigError> {
    let mut any_tls = false;
    let mut all_tls = true;
    for url in urls {
        let secure = is_tls(url);
        any_tls |= secure;
        all_tls &= secure;
    }
    #[cfg(not(feature = "redis-tls"))]
    {
        let _ = (tls, all_tls);
        if any_tls {
            return Err(tls_disabled());
        }
    }
    #[cfg(feature = "redis-tls")]
    if let Some(pem) = &tls.root_certificates {
        if !all_tls {
            return Err(ConfigError::invalid(
                "tls_root_certificates",
                "root certificates are set, but the Redis URL is not `rediss://…`",
            ));
        }
        check_pem(pem)?;
    }
    #[cfg(feature = "redis-tls")]
    if any_tls {
        install_crypto_provider();
    }
    Ok(())
}

/// At least one certificate, and every PEM block a certificate that parses.
#[cfg(feature = "redis-tls")]
fn check_pem(pem: &[u8]) -> Result<(), ConfigError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;

    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(pem) {
        let added = certificate
            .map_err(|e| e.to_string())
            .and_then(|c| roots.add(c).map_err(|e| e.to_string()));
        if let Err(e) = added {
            return Err(ConfigError::invalid(
                "tls_root_certificates",
                format!("not a PEM CA certificate: {e}"),
            ));
        }
    }
    if roots.is_empty() {
        return Err(ConfigError::invalid(
            "tls_root_certificates",
            "no certificate (expected PEM: -----BEGIN CERTIFICATE----- …)",
        ));
    }
    Ok(())
}

/// rustls needs a process-wide crypto provider, and cannot choose one when
/// both `ring` and `aws-lc-rs` are compiled in; unless the application has
/// installed one, `ring`'s is installed.
#[cfg(feature = "redis-tls")]
fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Another thread may have installed one meanwhile: fine either way.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// The TLS certificates for a client, if any were set.
#[cfg(feature = "redis-tls")]
fn certificates(tls: &Tls) -> Option<redis::TlsCertificates> {
    tls.root_certificates
        .as_ref()
        .map(|pem| redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(pem.clone()),
        })
}

/// A client for the server at `url`, verified as `tls` says over TLS.
pub(crate) fn server_client(url: &str, tls: &Tls) -> Result<redis::Client, ConfigError> {
    check_tls([url], tls)?;
    let client = redis::Client::open(url).map_err(|_| bad_url())?;
    #[cfg(feature = "redis-tls")]
    if let Some(certificates) = certificates(tls) {
        return redis::Client::build_with_tls(client.get_connection_info().clone(), certificates)
            .map_err(|e| ConfigError::invalid("tls_root_certificates", e.to_string()));
    }
    Ok(client)
}

/// A builder for a client of the cluster reached through `urls`, verified
/// as `tls` says over TLS.
pub(crate) fn cluster_builder(
    urls: &[String],
    tls: &Tls,
) -> Result<ClusterClientBuilder, ConfigError> {
    if urls.is_empty() {
        return Err(ConfigError::invalid(
            "redis",
            "a cluster needs at least one URL",
        ));
    }
    check_tls(urls.iter().map(String::as_str), tls)?;
    let builder = ClusterClient::builder(urls.iter().map(String::as_str));
    #[cfg(feature = "redis-tls")]
    if let Some(certificates) = certificates(tls) {
        return Ok(builder.certs(certificates));
    }
    Ok(builder)
}

/// Where the store sends its commands.
pub(crate) enum Backend {
    /// One server (or a primary behind a proxy), reconnected automatically.
    Single(Box<Server>),
    /// A Redis Cluster, connected on first use (and retried until it is).
    Cluster(Box<Cluster>),
}

/// The connection to one server: reconnected when it drops, and replaced
/// when it has gone silent (see [`Server::renew`]).
pub(crate) struct Server {
    client: redis::Client,
    config: ConnectionManagerConfig,
    manager: ArcSwap<ConnectionManager>,
}

impl Server {
    /// A server reached through `client`, connected on first use.
    pub(crate) fn new(
        client: redis::Client,
        config: ConnectionManagerConfig,
    ) -> Result<Self, ConfigError> {
        let manager = ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
            .map_err(|e| ConfigError::invalid("redis", format!("cannot set up: {e}")))?;
        Ok(Server {
            client,
            config,
            manager: ArcSwap::from_pointee(manager),
        })
    }

    /// The connection, for one command.
    fn connection(&self) -> ConnectionManager {
        (**self.manager.load()).clone()
    }

    /// Gives up the connection for a new one, made on first use: a
    /// connection can go silent without dropping (a failover behind an
    /// address that now swallows packets, a middlebox that forgot it), and
    /// the connection manager replaces only one that drops. Calls already
    /// sent on the old one keep waiting on it until their deadlines.
    pub(crate) fn renew(&self) {
        match ConnectionManager::new_lazy_with_config(self.client.clone(), self.config.clone()) {
            Ok(manager) => self.manager.store(Arc::new(manager)),
            Err(error) => {
                tracing::warn!(%error, "rate-limit store: cannot make a new connection to Redis")
            }
        }
    }
}

/// A cluster client and its connection: made on first use, and replaced
/// in the background after [`Cluster::renew`].
pub(crate) struct Cluster {
    shared: Arc<ClusterShared>,
}

/// What the cluster's calls and its renewals in the background share.
struct ClusterShared {
    client: ClusterClient,
    connection: ArcSwapOption<ClusterConnection>,
    /// Held while a connection is made, so that calls waiting for one make
    /// one between them.
    connecting: tokio::sync::Mutex<()>,
    /// A new connection is being made in the background.
    renewing: AtomicBool,
    /// The connect timeout: a renewal may take four of them (a connection
    /// to each node, and the slots' refresh).
    connect_timeout: Duration,
}

impl Cluster {
    /// A cluster reached through `client`, connected on first use, each
    /// node within `connect_timeout`.
    pub(crate) fn new(client: ClusterClient, connect_timeout: Duration) -> Self {
        Cluster {
            shared: Arc::new(ClusterShared {
                client,
                connection: ArcSwapOption::empty(),
                connecting: tokio::sync::Mutex::new(()),
                renewing: AtomicBool::new(false),
                connect_timeout,
            }),
        }
    }

    /// The connection, for one command: made now if there is none.
    async fn connection(&self) -> RedisResult<ClusterConnection> {
        let shared = &self.shared;
        if let Some(connection) = &*shared.connection.load() {
            return Ok((**connection).clone());
        }
        let _connecting = shared.connecting.lock().await;
        if let Some(connection) = &*shared.connection.load() {
            return Ok((**connection).clone());
        }
        let connection = shared.client.get_async_connection().await?;
        shared.connection.store(Some(Arc::new(connection.clone())));
        Ok(connection)
    }

    /// Makes a new connection (to every node, with the cluster's topology
    /// as it is now) in the background, and puts it in the place of the
    /// one in use, which serves the calls meanwhile. The cluster connection
    /// replaces a node's connection only when it drops: one that went
    /// silent (a node's host frozen or cut off, its slots failed over to a
    /// replica; a middlebox that forgot it) would otherwise keep that
    /// node's keys waiting for their deadlines as long as the silence lasts
    /// (TCP gives up on a lost host after many minutes, and never on a
    /// frozen process).
    pub(crate) fn renew(&self) {
        let shared = Arc::clone(&self.shared);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // Outside a runtime, no call is under way: the next one connects.
            shared.connection.store(None);
            return;
        };
        if shared.renewing.swap(true, Ordering::AcqRel) {
            return;
        }
        runtime.spawn(async move {
            let limit = shared.connect_timeout.saturating_mul(4);
            let connecting = shared.client.get_async_connection();
            match tokio::time::timeout(limit, connecting).await {
                Ok(Ok(connection)) => shared.connection.store(Some(Arc::new(connection))),
                Ok(Err(error)) => tracing::warn!(
                    %error,
                    "rate-limit store: cannot make a new connection to the Redis Cluster; the one in use stays"
                ),
                Err(_) => tracing::warn!(
                    "rate-limit store: a new connection to the Redis Cluster took over {limit:?}; the one in use stays"
                ),
            }
            shared.renewing.store(false, Ordering::Release);
        });
    }
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Backend::Single(_) => f.write_str("Single"),
            Backend::Cluster(_) => f.write_str("Cluster"),
        }
    }
}

impl Backend {
    /// Whether this is a Redis Cluster (one script call's keys must then
    /// share a hash slot).
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Backend::Cluster(_))
    }

    /// Gives up the connection for a new one (see [`Server::renew`] and
    /// [`Cluster::renew`]).
    pub(crate) fn renew(&self) {
        match self {
            Backend::Single(server) => server.renew(),
            Backend::Cluster(cluster) => cluster.renew(),
        }
    }

    /// Runs `script` on `keys` and `args`; `loads` counts the times the
    /// script had to be loaded.
    pub(crate) async fn eval<A: ToRedisArgs + Sync, T: FromRedisValue>(
        &self,
        script: &Script,
        keys: &[String],
        args: &[A],
        loads: &AtomicU64,
    ) -> RedisResult<T> {
        match self {
            Backend::Single(server) => {
                eval_on(&mut server.connection(), script, keys, args, loads).await
            }
            Backend::Cluster(cluster) => {
                eval_on(&mut cluster.connection().await?, script, keys, args, loads).await
            }
        }
    }

    /// Checks that Redis answers, and loads the scripts.
    pub(crate) async fn prepare(&self, scripts: &[&Script], loads: &AtomicU64) -> RedisResult<()> {
        match self {
            Backend::Single(server) => prepare_on(&mut server.connection(), scripts, loads).await,
            Backend::Cluster(cluster) => {
                prepare_on(&mut cluster.connection().await?, scripts, loads).await
            }
        }
    }
}

async fn prepare_on<C: ConnectionLike>(
    connection: &mut C,
    scripts: &[&Script],
    loads: &AtomicU64,
) -> RedisResult<()> {
    redis::cmd("PING").query_async::<()>(connection).await?;
    for script in scripts {
        loads.fetch_add(1, Ordering::Relaxed);
        script.load_async(connection).await?;
    }
    Ok(())
}

/// `EVALSHA`; on `NOSCRIPT` (a restarted or flushed server), `SCRIPT LOAD`
/// and `EVALSHA` again. A connection that drops under the call (a killed
/// client, a restarted proxy) fails the commands still queued on it: the
/// call is sent once more, on the connection made in its place. A command
/// that did reach Redis before the drop may thus run twice: it is charged
/// twice (a request refused early later), never admitted uncounted.
async fn eval_on<C: ConnectionLike, A: ToRedisArgs + Sync, T: FromRedisValue>(
    connection: &mut C,
    script: &Script,
    keys: &[String],
    args: &[A],
    loads: &AtomicU64,
) -> RedisResult<T> {
    let mut command = redis::cmd("EVALSHA");
    command
        .arg(script.get_hash())
        .arg(keys.len())
        .arg(keys)
        .arg(args);
    let first = command.query_async(connection).await;
    let answer = match first {
        Err(error) if dropped(&error) => command.query_async(connection).await,
        other => other,
    };
    match answer {
        Err(error) if error.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
            loads.fetch_add(1, Ordering::Relaxed);
            script.load_async(connection).await?;
            command.query_async(connection).await
        }
        other => other,
    }
}

/// Whether `error` is the loss of the connection a command was queued on
/// (not a refused connection, a timeout or an error reply).
fn dropped(error: &redis::RedisError) -> bool {
    (error.is_connection_dropped() || error.is_io_error())
        && !error.is_timeout()
        && !error.is_connection_refusal()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_urls_are_recognised() {
        assert!(is_tls("rediss://127.0.0.1:6380"));
        assert!(is_tls("REDISS://h"));
        assert!(is_tls("valkeys://h"));
        assert!(!is_tls("redis://h"));
        assert!(!is_tls("redis+unix:///tmp/redis.sock"));
        assert!(!is_tls("rediss"));
    }

    #[test]
    fn urls_without_tls_need_no_feature() {
        assert!(server_client("redis://127.0.0.1:6379", &Tls::default()).is_ok());
        let e = server_client("not a url", &Tls::default()).unwrap_err();
        assert_eq!(e.field(), "redis");
        let e = cluster_builder(&[], &Tls::default()).unwrap_err();
        assert_eq!(e.field(), "redis");
    }

    #[cfg(not(feature = "redis-tls"))]
    #[test]
    fn tls_urls_without_the_feature_name_it() {
        let e = server_client("rediss://user:hunter2@127.0.0.1:6380", &Tls::default()).unwrap_err();
        assert_eq!(e.field(), "redis");
        assert!(e.to_string().contains("`redis-tls`"), "{e}");
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let urls = ["redis://a:1".to_owned(), "rediss://b:2".to_owned()];
        let e = cluster_builder(&urls, &Tls::default()).unwrap_err();
        assert!(e.to_string().contains("`redis-tls`"), "{e}");
    }

    #[cfg(feature = "redis-tls")]
    #[test]
    fn tls_urls_with_the_feature_make_clients() {
        assert!(server_client("rediss://127.0.0.1:6380", &Tls::default()).is_ok());
        let urls = ["rediss://a:1".to_owned()];
        assert!(cluster_builder(&urls, &Tls::default()).is_ok());
    }

    #[cfg(feature = "redis-tls")]
    #[test]
    fn root_certificates_are_checked() {
        let tls = |pem: &[u8]| Tls {
            root_certificates: Some(pem.to_vec()),
        };
        let e = server_client("rediss://127.0.0.1:6380", &tls(b"")).unwrap_err();
        assert_eq!(e.field(), "tls_root_certificates");
        let garbage = b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n";
        let e = server_client("rediss://127.0.0.1:6380", &tls(garbage)).unwrap_err();
        assert_eq!(e.field(), "tls_root_certificates");
        let e = server_client("redis://127.0.0.1:6379", &tls(garbage)).unwrap_err();
        assert!(e.to_string().contains("not `rediss://"), "{e}");
    }
}
