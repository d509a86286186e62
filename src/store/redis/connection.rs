//! The connection to Redis: one auto-reconnecting multiplexed connection to a
//! server, replaced when Redis seems silent on it, or a cluster (see
//! [`Cluster`]); and the script call that reloads the script when the server
//! has lost it (`NOSCRIPT`).

use super::redis_time::RedisTime;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, FromRedisValue, RedisResult, Script, ServerErrorKind, ToRedisArgs};

pub(crate) use super::cluster::Cluster;
use crate::error::ConfigError;

/// Where the store sends its commands.
pub(crate) enum Backend {
    /// One server (or a primary behind a proxy), reconnected automatically.
    Single(Box<Server>),
    /// A Redis Cluster, mapped on first use (and retried until it is).
    Cluster(Box<Cluster>),
}

/// The connection to one server: reconnected when it drops, and replaced
/// when it has gone silent (see [`Server::renew`]).
pub(crate) struct Server {
    client: redis::Client,
    config: ConnectionManagerConfig,
    manager: ArcSwap<ConnectionManager>,
    /// What is known of its clock.
    clock: Arc<RedisTime>,
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
            clock: Arc::new(RedisTime::new()),
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
            Backend::Cluster(cluster) => cluster.eval(script, keys, args, loads).await,
        }
    }

    /// What is known of the clock of the server that serves `keys` (all
    /// of one slot): each server's, or cluster node's, is learned from its
    /// own answers.
    pub(crate) fn clock_for(&self, keys: &[String]) -> Option<Arc<RedisTime>> {
        match self {
            Backend::Single(server) => Some(Arc::clone(&server.clock)),
            Backend::Cluster(cluster) => cluster.clock_for(keys),
        }
    }

    /// Checks that Redis answers, and loads the scripts.
    pub(crate) async fn prepare(&self, scripts: &[&Script], loads: &AtomicU64) -> RedisResult<()> {
        match self {
            Backend::Single(server) => prepare_on(&mut server.connection(), scripts, loads).await,
            Backend::Cluster(cluster) => cluster.prepare(scripts, loads).await,
        }
    }
}

pub(super) async fn prepare_on<C: ConnectionLike>(
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
pub(super) async fn eval_on<C: ConnectionLike, A: ToRedisArgs + Sync, T: FromRedisValue>(
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
