//! A Redis Cluster as the store reaches it: a map of the 16,384 hash slots
//! to their primaries (from `CLUSTER SLOTS`), one connection per primary,
//! and each script call sent to its keys' slot's primary.
//!
//! The store routes its calls itself rather than through the redis crate's
//! cluster client, which refreshes its map under a lock that every call
//! waits for, connecting to every node meanwhile: under load, one primary
//! that died made the calls to all the others miss their deadlines until
//! its replica took over. Here the map is swapped whole when a refresh
//! (in a task of its own) has it, and a call only ever waits for its own
//! node. A `MOVED` answer points its slot at the new node at once (and
//! refreshes the map in the background); an `ASK` answer is followed with
//! `ASKING` and the call in one pipeline, which no other call's command can
//! come between; a `TRYAGAIN` is tried again with a growing pause; at most
//! [`MAX_HOPS`] of these in one call.

use super::redis_time::RedisTime;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, FromRedisValue, RedisResult, Script, ServerErrorKind, ToRedisArgs};

use super::connection::{eval_on, prepare_on};

/// The number of hash slots of a Redis Cluster.
const SLOTS: usize = 16_384;

/// No primary known for a slot.
const NONE: u16 = u16::MAX;

/// The most redirections (and `TRYAGAIN`s) one call follows; the store's
/// deadline bounds them too.
const MAX_HOPS: usize = 5;

/// A Redis Cluster reached through its seeds: mapped on first use, and
/// mapped again when a node says a slot moved or stops answering.
pub(crate) struct Cluster {
    shared: Arc<Shared>,
}

struct Shared {
    /// Clients of the seeds: where a map is asked for when no known node
    /// answers, and whose settings (credentials, TLS) every node's client
    /// takes.
    seeds: Vec<redis::Client>,
    config: ConnectionManagerConfig,
    /// How long asking one node for the map may take.
    connect_timeout: Duration,
    /// What the nodes' times of their last answers count from.
    epoch: Instant,
    map: ArcSwapOption<SlotMap>,
    /// Held while a first map is made, so that the calls waiting for one
    /// make one between them.
    mapping: tokio::sync::Mutex<()>,
    /// A map is being made in the background.
    refreshing: AtomicBool,
}

/// Which primary serves each slot.
struct SlotMap {
    /// The index in `nodes` of each slot's primary ([`NONE`]: unknown).
    slots: Box<[u16]>,
    nodes: Vec<Arc<Node>>,
}

impl SlotMap {
    /// How many slots have a known primary.
    fn covered(&self) -> usize {
        self.slots.iter().filter(|&&i| i != NONE).count()
    }
}

/// A primary and the connection to it.
struct Node {
    host: String,
    port: u16,
    client: redis::Client,
    connection: ArcSwap<ConnectionManager>,
    /// When it last answered (ms since the cluster's epoch).
    answered_ms: AtomicU64,
    /// When a call to it was last given up unanswered (the store stops
    /// waiting for a call a grace period past its deadline).
    abandoned_ms: AtomicU64,
    /// What is known of its clock.
    clock: Arc<RedisTime>,
}

/// A call under way on a node: one dropped before it ended was given up
/// unanswered, and the node is noted for it.
struct Waiting<'n> {
    node: &'n Node,
    shared: &'n Shared,
    ended: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if !self.ended {
            let now = self.shared.now_ms();
            self.node.abandoned_ms.fetch_max(now, Ordering::Relaxed);
        }
    }
}

impl Node {
    fn new(shared: &Shared, host: String, port: u16) -> RedisResult<Arc<Node>> {
        let client = node_client(&shared.seeds[0], &host, port)?;
        let connection =
            ConnectionManager::new_lazy_with_config(client.clone(), shared.config.clone())?;
        Ok(Arc::new(Node {
            host,
            port,
            client,
            connection: ArcSwap::from_pointee(connection),
            answered_ms: AtomicU64::new(shared.now_ms()),
            abandoned_ms: AtomicU64::new(0),
            clock: Arc::new(RedisTime::new()),
        }))
    }

    fn connection(&self) -> ConnectionManager {
        (**self.connection.load()).clone()
    }

    /// A new connection in place of the one in use (calls already sent on
    /// it keep waiting there, until their deadlines).
    fn reconnect(&self, config: &ConnectionManagerConfig) {
        match ConnectionManager::new_lazy_with_config(self.client.clone(), config.clone()) {
            Ok(connection) => self.connection.store(Arc::new(connection)),
            Err(error) => tracing::warn!(
                %error, host = %self.host, port = self.port,
                "rate-limit store: cannot make a new connection to a Redis Cluster node"
            ),
        }
    }
}

/// A client for the node at `host:port` with the settings (credentials,
/// TLS and its certificates) of the seed client `seed`.
fn node_client(seed: &redis::Client, host: &str, port: u16) -> RedisResult<redis::Client> {
    use redis::ConnectionAddr;
    let info = seed.get_connection_info().clone();
    let addr = match info.addr() {
        ConnectionAddr::TcpTls {
            insecure,
            tls_params,
            ..
        } => ConnectionAddr::TcpTls {
            host: host.to_owned(),
            port,
            insecure: *insecure,
            tls_params: tls_params.clone(),
        },
        _ => ConnectionAddr::Tcp(host.to_owned(), port),
    };
    redis::Client::open(info.set_addr(addr))
}

impl Cluster {
    /// A cluster reached through `seeds`, each node over a connection made
    /// as `config` says; mapped on first use, asking each node at most
    /// `connect_timeout`.
    pub(crate) fn new(
        seeds: Vec<redis::Client>,
        config: ConnectionManagerConfig,
        connect_timeout: Duration,
    ) -> Self {
        Cluster {
            shared: Arc::new(Shared {
                seeds,
                config,
                connect_timeout,
                epoch: Instant::now(),
                map: ArcSwapOption::empty(),
                mapping: tokio::sync::Mutex::new(()),
                refreshing: AtomicBool::new(false),
            }),
        }
    }

    /// The map, made now if there is none yet.
    async fn map(&self) -> RedisResult<Arc<SlotMap>> {
        let shared = &self.shared;
        if let Some(map) = shared.map.load_full() {
            return Ok(map);
        }
        let _mapping = shared.mapping.lock().await;
        if let Some(map) = shared.map.load_full() {
            return Ok(map);
        }
        let map = Arc::new(shared.ask_for_map(None).await?);
        shared.map.store(Some(Arc::clone(&map)));
        Ok(map)
    }

    /// What is known of the clock of the primary that serves `keys` (all
    /// of one slot), if the cluster is mapped.
    pub(crate) fn clock_for(&self, keys: &[String]) -> Option<Arc<RedisTime>> {
        let slot = slot_of_keys(keys);
        let map = self.shared.map.load();
        let map = map.as_deref()?;
        let node = map
            .nodes
            .get(usize::from(*map.slots.get(usize::from(slot))?))?;
        Some(Arc::clone(&node.clock))
    }

    /// The primary of `slot`.
    async fn node_of(&self, slot: u16) -> RedisResult<Arc<Node>> {
        let map = self.map().await?;
        match map.slots[usize::from(slot)] {
            NONE => {
                self.shared.refresh();
                Err(redis::RedisError::from((
                    ErrorKind::Server(ServerErrorKind::ClusterDown),
                    "no primary serves the slot",
                )))
            }
            i => Ok(Arc::clone(&map.nodes[usize::from(i)])),
        }
    }

    /// Runs `script` on `keys` (all of one slot) and `args` on that slot's
    /// primary, following up to [`MAX_HOPS`] redirections; `loads` counts
    /// the times the script had to be loaded.
    pub(crate) async fn eval<A: ToRedisArgs + Sync, T: FromRedisValue>(
        &self,
        script: &Script,
        keys: &[String],
        args: &[A],
        loads: &AtomicU64,
    ) -> RedisResult<T> {
        let slot = slot_of_keys(keys);
        let shared = &self.shared;
        let mut node = self.node_of(slot).await?;
        let mut asking = false;
        let mut hops = 0;
        loop {
            let mut connection = node.connection();
            let result = if asking {
                let call = eval_asking(&mut connection, script, keys, args, loads);
                shared.call(&node, call).await
            } else {
                let call = eval_on(&mut connection, script, keys, args, loads);
                shared.call(&node, call).await
            };
            let error = match result {
                Ok(answer) => return Ok(answer),
                Err(error) => error,
            };
            hops += 1;
            let kind = error.kind();
            let redirect = error.redirect_node().and_then(|(to, _)| address(to));
            (node, asking) = match (kind, redirect) {
                _ if hops > MAX_HOPS => return Err(error),
                (ErrorKind::Server(ServerErrorKind::Moved), Some((host, port))) => {
                    (shared.moved(slot, &host, port)?, false)
                }
                (ErrorKind::Server(ServerErrorKind::Ask), Some((host, port))) => {
                    (shared.node_at(&host, port)?, true)
                }
                (ErrorKind::Server(ServerErrorKind::TryAgain), _) => {
                    // A slot in migration, and not every key of the call on
                    // one of its nodes (a call's keys include ones not
                    // created yet): soon the migration may be over.
                    tokio::time::sleep(Duration::from_millis(10 * hops as u64)).await;
                    (self.node_of(slot).await?, false)
                }
                _ => {
                    if unanswered(&error)
                        || matches!(
                            kind,
                            ErrorKind::Server(
                                ServerErrorKind::ClusterDown | ServerErrorKind::MasterDown
                            )
                        )
                    {
                        // A node gone, or failing over: its slots may have a
                        // new primary.
                        shared.refresh();
                    }
                    return Err(error);
                }
            };
        }
    }

    /// Checks that every primary answers, and loads the scripts on each.
    pub(crate) async fn prepare(&self, scripts: &[&Script], loads: &AtomicU64) -> RedisResult<()> {
        let map = self.map().await?;
        for node in &map.nodes {
            prepare_on(&mut node.connection(), scripts, loads).await?;
        }
        Ok(())
    }

    /// Gives the connection of each node that seems silent (a call given
    /// up unanswered since its last answer: its host frozen or cut off, a
    /// middlebox that forgot the connection; TCP gives up on a lost host
    /// after many minutes, and never on a frozen process) up for a new
    /// one, and maps the cluster again in the background (the node may have
    /// failed over). The nodes that answer keep their connections.
    pub(crate) fn renew(&self) {
        let shared = &self.shared;
        if let Some(map) = shared.map.load_full() {
            for node in &map.nodes {
                let answered = node.answered_ms.load(Ordering::Relaxed);
                if node.abandoned_ms.load(Ordering::Relaxed) > answered {
                    node.reconnect(&shared.config);
                    // Once: the next silence is timed from now.
                    node.answered_ms
                        .fetch_max(shared.now_ms(), Ordering::Relaxed);
                }
            }
        }
        shared.refresh();
    }
}

/// Whether `error` says the node did not answer (rather than answering an
/// error).
fn unanswered(error: &redis::RedisError) -> bool {
    error.is_io_error()
        || error.is_timeout()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
}

impl Shared {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Runs `call` on `node`, and notes when the node answered (an error
    /// reply is an answer too) or, if `call` is dropped unfinished, that a
    /// call to it was given up.
    async fn call<T>(
        &self,
        node: &Node,
        call: impl std::future::Future<Output = RedisResult<T>>,
    ) -> RedisResult<T> {
        let mut waiting = Waiting {
            node,
            shared: self,
            ended: false,
        };
        let result = call.await;
        waiting.ended = true;
        if !matches!(&result, Err(error) if unanswered(error)) {
            node.answered_ms.fetch_max(self.now_ms(), Ordering::Relaxed);
        }
        result
    }

    /// Maps the cluster again in a task of its own (one at a time), if
    /// there is a runtime; calls go on with the map they have meanwhile.
    fn refresh(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let shared = Arc::clone(self);
        runtime.spawn(async move {
            // Cleared even if the task is dropped (its runtime shutting
            // down), so that a later refresh may run.
            struct Refreshing<'s>(&'s AtomicBool);
            impl Drop for Refreshing<'_> {
                fn drop(&mut self) {
                    self.0.store(false, Ordering::Release);
                }
            }
            let _refreshing = Refreshing(&shared.refreshing);
            let current = shared.map.load_full();
            match shared.ask_for_map(current.as_deref()).await {
                Ok(map) => shared.map.store(Some(Arc::new(map))),
                Err(error) => tracing::warn!(
                    %error,
                    "rate-limit store: cannot map the Redis Cluster's slots again; the map in use stays"
                ),
            }
            // At most one refresh every 100 ms (or connect timeout, if
            // shorter).
            tokio::time::sleep(shared.connect_timeout.min(Duration::from_millis(100))).await;
        });
    }

    /// A map from `CLUSTER SLOTS`, asked of the nodes of `current` and then
    /// of the seeds, each within the connect timeout, until one answers;
    /// the nodes of `current` that still serve slots keep their
    /// connections.
    async fn ask_for_map(&self, current: Option<&SlotMap>) -> RedisResult<SlotMap> {
        let known = current.map_or(&[][..], |map| &map.nodes[..]);
        let mut last_error = None;
        let mut best = None;
        // The nodes that answered last first: the one whose call just
        // failed is the least likely to know.
        let mut by_answer: Vec<&Arc<Node>> = known.iter().collect();
        by_answer.sort_by_key(|n| std::cmp::Reverse(n.answered_ms.load(Ordering::Relaxed)));
        let asked = by_answer
            .into_iter()
            .map(|node| (node.client.clone(), node.host.clone()))
            .chain(self.seeds.iter().map(|seed| {
                let host = match seed.get_connection_info().addr() {
                    redis::ConnectionAddr::Tcp(host, _)
                    | redis::ConnectionAddr::TcpTls { host, .. } => host.clone(),
                    _ => String::new(),
                };
                (seed.clone(), host)
            }));
        for (client, host) in asked {
            let ranges = tokio::time::timeout(self.connect_timeout, async {
                let mut connection = client.get_multiplexed_async_connection().await?;
                redis::cmd("CLUSTER")
                    .arg("SLOTS")
                    .query_async::<Vec<Vec<redis::Value>>>(&mut connection)
                    .await
            })
            .await;
            match ranges.map(|ranges| ranges.and_then(|r| self.map_of(&r, &host, known))) {
                // A node outside the cluster, or one that has not heard of
                // every slot's primary yet, does not decide the map: the
                // next node is asked, and the fullest map kept.
                Ok(Ok(map)) if map.covered() == SLOTS => return Ok(map),
                Ok(Ok(map)) => {
                    if best
                        .as_ref()
                        .is_none_or(|b: &SlotMap| b.covered() < map.covered())
                    {
                        best = Some(map);
                    }
                }
                Ok(Err(error)) => last_error = Some(error),
                Err(_) => {
                    last_error = Some(redis::RedisError::from((
                        ErrorKind::Io,
                        "no answer to CLUSTER SLOTS within the connect timeout",
                    )))
                }
            }
        }
        if let Some(map) = best {
            return Ok(map);
        }
        Err(last_error.unwrap_or_else(|| {
            redis::RedisError::from((ErrorKind::Client, "no Redis Cluster node to ask"))
        }))
    }

    /// The map of `ranges` (`CLUSTER SLOTS`, asked of a node on `host`),
    /// reusing the nodes of `known`.
    fn map_of(
        &self,
        ranges: &[Vec<redis::Value>],
        host: &str,
        known: &[Arc<Node>],
    ) -> RedisResult<SlotMap> {
        let mut map = SlotMap {
            slots: vec![NONE; SLOTS].into_boxed_slice(),
            nodes: Vec::new(),
        };
        for range in ranges {
            let (Some(first), Some(last)) = (slot_bound(range.first()), slot_bound(range.get(1)))
            else {
                continue;
            };
            let Some((node_host, port)) = node_of_range(range) else {
                continue;
            };
            // A node may leave its own address out: it is the one asked.
            let node_host = if node_host.is_empty() {
                host.to_owned()
            } else {
                node_host
            };
            let index = match map
                .nodes
                .iter()
                .position(|n| n.host == node_host && n.port == port)
            {
                Some(index) => index,
                None => {
                    let node = match known.iter().find(|n| n.host == node_host && n.port == port) {
                        Some(node) => Arc::clone(node),
                        None => Node::new(self, node_host, port)?,
                    };
                    map.nodes.push(node);
                    map.nodes.len() - 1
                }
            };
            for slot in first..=last.min(SLOTS - 1) {
                map.slots[slot] = index as u16;
            }
        }
        if map.nodes.is_empty() {
            return Err(redis::RedisError::from((
                ErrorKind::Server(ServerErrorKind::ClusterDown),
                "CLUSTER SLOTS named no primary",
            )));
        }
        Ok(map)
    }

    /// Points `slot` at the node at `host:port` (a `MOVED` answer), and
    /// maps the whole cluster again in the background: the node.
    fn moved(self: &Arc<Self>, slot: u16, host: &str, port: u16) -> RedisResult<Arc<Node>> {
        let new = self.node_at(host, port)?;
        let at = |n: &Arc<Node>| n.host == host && n.port == port;
        self.map.rcu(|map| {
            let map = map.as_deref()?;
            let mut nodes = map.nodes.clone();
            let index = nodes.iter().position(at).unwrap_or_else(|| {
                nodes.push(Arc::clone(&new));
                nodes.len() - 1
            });
            let mut slots = map.slots.clone();
            slots[usize::from(slot)] = index as u16;
            Some(Arc::new(SlotMap { slots, nodes }))
        });
        self.refresh();
        // The map's node for the address, one connection per node.
        let known = self
            .map
            .load()
            .as_deref()
            .and_then(|map| map.nodes.iter().find(|n| at(n)).cloned());
        Ok(known.unwrap_or(new))
    }

    /// The node at `host:port`: the map's, or a new one.
    fn node_at(&self, host: &str, port: u16) -> RedisResult<Arc<Node>> {
        let known = self.map.load_full().and_then(|map| {
            map.nodes
                .iter()
                .find(|n| n.host == host && n.port == port)
                .cloned()
        });
        match known {
            Some(node) => Ok(node),
            None => Node::new(self, host.to_owned(), port),
        }
    }
}

/// The slot of a call's `keys` (all of one slot; the first's).
fn slot_of_keys(keys: &[String]) -> u16 {
    keys.first().map_or(0, |key| slot_of(key.as_bytes()))
}

/// A slot number of a `CLUSTER SLOTS` range.
fn slot_bound(value: Option<&redis::Value>) -> Option<usize> {
    match value? {
        redis::Value::Int(n) => usize::try_from(*n).ok(),
        _ => None,
    }
}

/// The address of the primary of a `CLUSTER SLOTS` range (`[first, last,
/// [host, port, id, …], replicas…]`), if it names one; the host is empty
/// when the node left it out (it is the node asked).
pub(crate) fn node_of_range(range: &[redis::Value]) -> Option<(String, u16)> {
    let redis::Value::Array(node) = range.get(2)? else {
        return None;
    };
    let host = match node.first()? {
        redis::Value::BulkString(host) => String::from_utf8(host.clone()).ok()?,
        redis::Value::SimpleString(host) => host.clone(),
        redis::Value::Nil => String::new(),
        _ => return None,
    };
    let redis::Value::Int(port) = node.get(1)? else {
        return None;
    };
    let port = u16::try_from(*port).ok()?;
    (host != "?").then_some((host, port))
}

/// `host` and `port` of a redirection's `host:port` (an IPv6 host is
/// written without brackets, and its last colon is the port's).
fn address(to: &str) -> Option<(String, u16)> {
    let (host, port) = to.rsplit_once(':')?;
    Some((host.to_owned(), port.parse().ok()?))
}

/// The hash slot of `key`: CRC16 (XMODEM) of its hash tag (the text
/// between its first `{` and the next `}`, if not empty) or of the whole
/// key, modulo 16,384.
fn slot_of(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16(tagged.unwrap_or(key)) % SLOTS as u16
}

/// CRC16/XMODEM (polynomial 0x1021, initial value 0), as Redis Cluster
/// hashes keys.
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in bytes {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The script call sent after an `ASK` redirection: `ASKING` and
/// `EVALSHA` in one pipeline. A slot in migration answers `ASK` for a key
/// already moved, and its new node runs only a command sent right after
/// `ASKING` on the same connection; sent apart on a connection other calls
/// share, another call's command could come between them. A node without
/// the script (`NOSCRIPT`) has it loaded, and the pair is sent again.
async fn eval_asking<A: ToRedisArgs + Sync, T: FromRedisValue>(
    connection: &mut ConnectionManager,
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

#[cfg(test)]
mod tests {
    use redis::Value::{Array, BulkString, Int, Nil, SimpleString};

    use super::{address, node_of_range, slot_of};

    #[test]
    fn slots_are_redis_cluster_s_own() {
        // As `CLUSTER KEYSLOT` answers.
        assert_eq!(slot_of(b"foo"), 12182);
        assert_eq!(slot_of(b"123456789"), 12739);
        assert_eq!(slot_of(b""), 0);
        // A hash tag decides; an empty one does not.
        assert_eq!(slot_of(b"{user1000}.following"), slot_of(b"user1000"));
        assert_eq!(slot_of(b"a{foo}b{bar}"), slot_of(b"foo"));
        assert_eq!(slot_of(b"foo{}{bar}"), 8363);
        assert_eq!(slot_of(b"foo{bar"), slot_of(b"foo{bar"));
    }

    #[test]
    fn a_slot_range_names_its_primary_by_host_and_port() {
        let node = |host: redis::Value, port: i64| {
            Array(vec![host, Int(port), BulkString(b"id".to_vec())])
        };
        let range = |primary: redis::Value| vec![Int(0), Int(5460), primary];
        let ip = || BulkString(b"10.0.0.7".to_vec());
        assert_eq!(
            node_of_range(&range(node(ip(), 7000))),
            Some(("10.0.0.7".to_owned(), 7000))
        );
        assert_eq!(
            node_of_range(&range(node(SimpleString("redis-a".into()), 6379))),
            Some(("redis-a".to_owned(), 6379))
        );
        // A node that leaves its address out is the one asked.
        assert_eq!(
            node_of_range(&range(node(BulkString(Vec::new()), 7001))),
            Some((String::new(), 7001))
        );
        assert_eq!(
            node_of_range(&range(node(Nil, 7001))),
            Some((String::new(), 7001))
        );
        // Unknown endpoints, ports out of range and other shapes name none.
        for unnamed in [
            range(node(BulkString(b"?".to_vec()), 7000)),
            range(node(ip(), 70_000)),
            range(Int(3)),
            vec![Int(0)],
        ] {
            assert_eq!(node_of_range(&unnamed), None, "{unnamed:?}");
        }
    }

    #[test]
    fn redirections_name_host_and_port() {
        assert_eq!(address("127.0.0.1:7000"), Some(("127.0.0.1".into(), 7000)));
        assert_eq!(address("::1:7000"), Some(("::1".into(), 7000)));
        assert_eq!(address("redis-a:6379"), Some(("redis-a".into(), 6379)));
        assert_eq!(address("nowhere"), None);
        assert_eq!(address("h:port"), None);
    }
}
