//! The connection to Redis: one auto-reconnecting multiplexed connection to a
//! server, or a cluster connection; and the script call that reloads the
//! script when the server has lost it (`NOSCRIPT`).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{ErrorKind, RedisResult, Script, ServerErrorKind};

/// Where the store sends its commands.
pub(crate) enum Backend {
    /// One server (or a primary behind a proxy), reconnected automatically.
    Single(ConnectionManager),
    /// A Redis Cluster, connected on first use (and retried until it is).
    Cluster(Box<Cluster>),
}

/// A cluster client and its connection, once made.
pub(crate) struct Cluster {
    pub(crate) client: ClusterClient,
    pub(crate) connection: tokio::sync::OnceCell<ClusterConnection>,
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
    /// Runs `script` on `keys` and `args`; `loads` counts the times the
    /// script had to be loaded.
    pub(crate) async fn eval(
        &self,
        script: &Script,
        keys: &[String],
        args: &[String],
        loads: &AtomicU64,
    ) -> RedisResult<Vec<i64>> {
        match self {
            Backend::Single(manager) => {
                eval_on(&mut manager.clone(), script, keys, args, loads).await
            }
            Backend::Cluster(cluster) => {
                let connection = cluster
                    .connection
                    .get_or_try_init(|| cluster.client.get_async_connection())
                    .await?;
                eval_on(&mut connection.clone(), script, keys, args, loads).await
            }
        }
    }

    /// Checks that Redis answers, and loads the script.
    pub(crate) async fn prepare(&self, script: &Script, loads: &AtomicU64) -> RedisResult<()> {
        match self {
            Backend::Single(manager) => prepare_on(&mut manager.clone(), script, loads).await,
            Backend::Cluster(cluster) => {
                let connection = cluster
                    .connection
                    .get_or_try_init(|| cluster.client.get_async_connection())
                    .await?;
                prepare_on(&mut connection.clone(), script, loads).await
            }
        }
    }
}

async fn prepare_on<C: ConnectionLike>(
    connection: &mut C,
    script: &Script,
    loads: &AtomicU64,
) -> RedisResult<()> {
    redis::cmd("PING").query_async::<()>(connection).await?;
    loads.fetch_add(1, Ordering::Relaxed);
    script.load_async(connection).await.map(drop)
}

/// `EVALSHA`; on `NOSCRIPT` (a restarted or flushed server), `SCRIPT LOAD`
/// and `EVALSHA` again.
async fn eval_on<C: ConnectionLike>(
    connection: &mut C,
    script: &Script,
    keys: &[String],
    args: &[String],
    loads: &AtomicU64,
) -> RedisResult<Vec<i64>> {
    let mut command = redis::cmd("EVALSHA");
    command
        .arg(script.get_hash())
        .arg(keys.len())
        .arg(keys)
        .arg(args);
    match command.query_async(connection).await {
        Err(error) if error.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
            loads.fetch_add(1, Ordering::Relaxed);
            script.load_async(connection).await?;
            command.query_async(connection).await
        }
        other => other,
    }
}
