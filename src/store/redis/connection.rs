//! The connection to Redis: one auto-reconnecting multiplexed connection to a
//! server, or a cluster connection, each replaced when Redis seems silent on
//! it; and the script call that reloads the script when the server has lost
//! it (`NOSCRIPT`).

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{ErrorKind, FromRedisValue, RedisResult, Script, ServerErrorKind, ToRedisArgs};

use crate::error::ConfigError;

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

impl ClusterShared {
    /// A new connection, once it is connected to the primary of every slot
    /// range and each answers `PING`. The cluster client sends a call whose
    /// node it holds no connection to elsewhere, and each answer `MOVED`
    /// makes it look for that node again, holding the calls to every node
    /// meanwhile: a connection made while a primary is silent and not yet
    /// replaced would slow every call down to nearly the deadline.
    async fn reaching_every_primary(&self) -> RedisResult<ClusterConnection> {
        let mut connection = self.client.get_async_connection().await?;
        let ranges: Vec<Vec<redis::Value>> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut connection)
            .await?;
        for (host, port) in ranges.iter().filter_map(|range| primary_of(range)) {
            let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host, port });
            connection
                .route_command(redis::cmd("PING"), routing)
                .await?;
        }
        Ok(connection)
    }
}

/// The address of the primary of a `CLUSTER SLOTS` range (`[first, last,
/// [host, port, id, …], replicas…]`), if it names one.
fn primary_of(range: &[redis::Value]) -> Option<(String, u16)> {
    let redis::Value::Array(node) = range.get(2)? else {
        return None;
    };
    let host = match node.first()? {
        redis::Value::BulkString(host) => String::from_utf8(host.clone()).ok()?,
        redis::Value::SimpleString(host) => host.clone(),
        _ => return None,
    };
    let redis::Value::Int(port) = node.get(1)? else {
        return None;
    };
    let port = u16::try_from(*port).ok()?;
    (!host.is_empty() && host != "?").then_some((host, port))
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
            match tokio::time::timeout(limit, shared.reaching_every_primary()).await {
                Ok(Ok(connection)) => shared.connection.store(Some(Arc::new(connection))),
                Ok(Err(error)) => tracing::warn!(
                    %error,
                    "rate-limit store: a new connection to the Redis Cluster does not reach every primary; the one in use stays"
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
                let mut connection = cluster.connection().await?;
                match eval_on(&mut connection, script, keys, args, loads).await {
                    Err(error) if error.redirect_node().is_some() => {
                        eval_asking(&mut connection, script, keys, args, loads).await
                    }
                    other => other,
                }
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

/// The script call once more, after a redirection the cluster client did
/// not get through: `ASKING` and `EVALSHA` in one pipeline. A slot in
/// migration answers `ASK` for a key already moved, and its new node runs
/// only a command sent right after `ASKING` on the same connection. The
/// cluster client sends the two as separate requests on a connection that
/// other calls share, so another call's command can come between them and
/// this one is sent back (`MOVED`) until the client gives up. In one
/// pipeline nothing comes between them (and on a node that owns the slot,
/// `ASKING` changes nothing). A node without the script (`NOSCRIPT`) has
/// it loaded on every primary, and the pair is sent again.
async fn eval_asking<A: ToRedisArgs + Sync, T: FromRedisValue>(
    connection: &mut ClusterConnection,
    script: &Script,
    keys: &[String],
    args: &[A],
    loads: &AtomicU64,
) -> RedisResult<T> {
    let mut pipeline = redis::pipe();
    pipeline
        .cmd("ASKING")
        .ignore()
        .cmd("EVALSHA")
        .arg(script.get_hash())
        .arg(keys.len())
        .arg(keys)
        .arg(args);
    let answer = match pipeline.query_async::<(T,)>(connection).await {
        Err(error) if error.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
            loads.fetch_add(1, Ordering::Relaxed);
            script.load_async(connection).await?;
            pipeline.query_async(connection).await
        }
        other => other,
    };
    answer.map(|(answer,)| answer)
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
    use redis::Value::{Array, BulkString, Int, SimpleString};

    use super::primary_of;

    #[test]
    fn a_slot_range_names_its_primary_by_host_and_port() {
        let node = |host: redis::Value, port: i64| {
            Array(vec![host, Int(port), BulkString(b"id".to_vec())])
        };
        let range = |primary: redis::Value| vec![Int(0), Int(5460), primary];
        let ip = || BulkString(b"10.0.0.7".to_vec());
        assert_eq!(
            primary_of(&range(node(ip(), 7000))),
            Some(("10.0.0.7".to_owned(), 7000))
        );
        assert_eq!(
            primary_of(&range(node(SimpleString("redis-a".into()), 6379))),
            Some(("redis-a".to_owned(), 6379))
        );
        // Unknown endpoints, ports out of range and other shapes name none.
        for unnamed in [
            range(node(BulkString(Vec::new()), 7000)),
            range(node(BulkString(b"?".to_vec()), 7000)),
            range(node(ip(), 70_000)),
            range(node(ip(), -1)),
            range(Int(3)),
            vec![Int(0), Int(5460)],
        ] {
            assert_eq!(primary_of(&unnamed), None, "{unnamed:?}");
        }
    }
}
