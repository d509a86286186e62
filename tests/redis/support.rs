//! A real `redis-server` for the Redis tests (this binary's and
//! `tests/redis_tls.rs`'s): each test starts its own on a free loopback
//! port, with persistence off, and kills it on drop; or a three-node Redis
//! Cluster of them ([`Cluster`]).
//!
//! Without `redis-server` (and, for a cluster, `redis-cli`) on `PATH` the
//! tests fail with a message that says how to install it, unless
//! `TOWER_RATELIMIT_SKIP_REDIS=1` is set (then each test passes after
//! printing that it did not run).

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A `redis-server` child process.
#[derive(Debug)]
pub(crate) struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    extra: Vec<String>,
}

/// Starts a server, or returns `None` (after saying so) when the Redis tests
/// are skipped on purpose.
pub(crate) fn server() -> Option<RedisServer> {
    (!skipped()).then(RedisServer::start)
}

/// Whether the Redis tests are skipped on purpose
/// (`TOWER_RATELIMIT_SKIP_REDIS=1`); then says so.
pub(crate) fn skipped() -> bool {
    let skip = std::env::var_os("TOWER_RATELIMIT_SKIP_REDIS").is_some_and(|v| v == "1");
    if skip {
        eprintln!("note: TOWER_RATELIMIT_SKIP_REDIS=1: this Redis test did not run");
    }
    skip
}

/// Starts `redis-server` on loopback with persistence off, its files in
/// `dir`, and `args`; a missing `redis-server` fails with how to install it.
pub(crate) fn spawn_server(dir: &Path, args: &[&str]) -> Child {
    let child = Command::new("redis-server")
        .args(["--bind", "127.0.0.1"])
        .args(["--save", ""])
        .args(["--appendonly", "no"])
        .args(["--dir", &dir.to_string_lossy()])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    match child {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "the Redis tests need `redis-server` on PATH: install it with \
             `apt-get install -y redis-server` (or `brew install redis`), \
             or set TOWER_RATELIMIT_SKIP_REDIS=1 to skip them"
        ),
        Err(e) => panic!("cannot start redis-server: {e}"),
    }
}

/// Skips the test (with a note) when the Redis tests are skipped on purpose.
#[macro_export]
macro_rules! redis_or_skip {
    () => {
        match $crate::support::server() {
            Some(server) => server,
            None => return,
        }
    };
}

/// A free loopback port.
pub(crate) fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
    listener.local_addr().expect("its address").port()
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers.
    pub(crate) fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server with more command-line options.
    pub(crate) fn start_with(extra: &[&str]) -> Self {
        Self::start_on(free_port, extra)
    }

    /// Starts a server on a port `pick` chooses, and chooses again if the
    /// server exits at start (another process took the port between the
    /// choice and the start: other test binaries start servers too).
    fn start_on(pick: fn() -> u16, extra: &[&str]) -> Self {
        for _ in 0..4 {
            let mut server = Self::unstarted(pick(), extra);
            server.spawn();
            if server.came_up() {
                return server;
            }
        }
        let mut server = Self::unstarted(pick(), extra);
        server.launch();
        server
    }

    /// A server on `port` with `extra` options and its scratch directory,
    /// not started yet.
    fn unstarted(port: u16, extra: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "tower-ratelimit-redis-{}-{port}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("a scratch directory");
        RedisServer {
            child: None,
            port,
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn launch(&mut self) {
        self.spawn();
        self.wait_until_it_answers();
    }

    /// Starts the process without waiting for it.
    fn spawn(&mut self) {
        let port = self.port.to_string();
        let mut args = vec!["--port", &port];
        args.extend(self.extra.iter().map(String::as_str));
        self.child = Some(spawn_server(&self.dir, &args));
    }

    fn wait_until_it_answers(&mut self) {
        assert!(
            self.came_up(),
            "redis-server on port {} exited at start",
            self.port
        );
    }

    /// Waits until the server answers: `false` if it exited first.
    fn came_up(&mut self) -> bool {
        let started = Instant::now();
        while !self.answers() {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(Child::try_wait) {
                return false;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server on port {} did not answer within 10 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// Whether the server answers PING.
    pub(crate) fn answers(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect_timeout(
            &([127, 0, 0, 1], self.port).into(),
            Duration::from_millis(200),
        ) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        if stream.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut reply = [0u8; 7];
        stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
    }

    /// `redis://127.0.0.1:PORT`.
    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (SIGKILL: no goodbye to its clients).
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing answers.
    pub(crate) fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Thaws a frozen server (SIGCONT).
    pub(crate) fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("the server runs").id();
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("kill(1)");
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// Starts the server again on the same port, empty.
    pub(crate) fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// A plain client connection for inspecting the server.
    pub(crate) async fn client(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("a URL")
            .get_multiplexed_async_connection()
            .await
            .expect("a connection to the test server")
    }

    /// Every key on the server (SCAN, not KEYS).
    pub(crate) async fn keys(&self) -> Vec<String> {
        let mut connection = self.client().await;
        let mut cursor = 0u64;
        let mut keys = Vec::new();
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut connection)
                .await
                .expect("SCAN");
            keys.extend(batch);
            if next == 0 {
                return keys;
            }
            cursor = next;
        }
    }

    /// Every key on the server and its value, sorted (every key the store
    /// writes is a string).
    pub(crate) async fn values(&self) -> Vec<(String, Vec<u8>)> {
        let mut client = self.client().await;
        let mut values = Vec::new();
        for key in self.keys().await {
            let value: Vec<u8> = redis::cmd("GET")
                .arg(&key)
                .query_async(&mut client)
                .await
                .expect("GET");
            values.push((key, value));
        }
        values.sort();
        values
    }
}

/// A TCP proxy on a free loopback port in front of a server, for what a
/// failover does to the connections behind one address:
/// [`Proxy::silence`] makes every connection made so far pass nothing more
/// either way while it stays open (an address that swallows packets);
/// [`Proxy::redirect`] sends new connections to another server. Its tasks
/// end with the test's runtime.
pub(crate) struct Proxy {
    port: u16,
    /// Connections made before the last silence pass nothing.
    era: Arc<AtomicU64>,
    /// The port new connections go to.
    to: Arc<AtomicU64>,
}

impl Proxy {
    /// Starts a proxy to the server on loopback port `to`.
    pub(crate) async fn start(to: u16) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let era = Arc::new(AtomicU64::new(0));
        let eras = Arc::clone(&era);
        let to = Arc::new(AtomicU64::new(u64::from(to)));
        let target = Arc::clone(&to);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let port = target.load(SeqCst) as u16;
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
                    continue;
                };
                let born = eras.load(SeqCst);
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(pump(client_read, server_write, Arc::clone(&eras), born));
                tokio::spawn(pump(server_read, client_write, Arc::clone(&eras), born));
            }
        });
        Proxy { port, era, to }
    }

    /// `redis://127.0.0.1:PORT`, through the proxy.
    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Silences the connections made so far.
    pub(crate) fn silence(&self) {
        self.era.fetch_add(1, SeqCst);
    }

    /// Sends new connections to the server on loopback port `to` (as a
    /// failover moves an address); those made so far stay where they are.
    pub(crate) fn redirect(&self, to: u16) {
        self.to.store(u64::from(to), SeqCst);
    }
}

/// Passes what `from` reads to `into` while the connection's era lasts;
/// then holds both open and passes nothing.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut into: tokio::net::tcp::OwnedWriteHalf,
    era: Arc<AtomicU64>,
    born: u64,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if era.load(SeqCst) != born {
            std::future::pending::<()>().await;
        }
        if into.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------
// A three-node Redis Cluster.

/// A Redis Cluster of three primaries (with no replicas, or one each) on
/// free loopback ports, each a [`RedisServer`] with cluster mode on,
/// stopped on drop.
///
/// A node that dies leaves its slots uncovered and the others keep serving
/// theirs (`cluster-require-full-coverage no`), as a cluster whose failover
/// has not happened yet would.
#[derive(Debug)]
pub(crate) struct Cluster {
    nodes: Vec<RedisServer>,
}

/// Starts a cluster, or returns `None` (after saying so) when the Redis
/// tests are skipped on purpose.
pub(crate) fn cluster() -> Option<Cluster> {
    (!skipped()).then(|| Cluster::start(0))
}

/// Starts a cluster whose primaries have a replica each, which takes over
/// one second after its primary stops answering, or returns `None` when the
/// Redis tests are skipped on purpose.
pub(crate) fn replicated_cluster() -> Option<Cluster> {
    (!skipped()).then(|| Cluster::start(1))
}

/// Skips the test (with a note) when the Redis tests are skipped on purpose.
#[macro_export]
macro_rules! cluster_or_skip {
    () => {
        match $crate::support::cluster() {
            Some(cluster) => cluster,
            None => return,
        }
    };
    (replicated) => {
        match $crate::support::replicated_cluster() {
            Some(cluster) => cluster,
            None => return,
        }
    };
}

/// A free loopback port whose cluster bus port (10,000 above it) is free
/// too.
fn free_cluster_port() -> u16 {
    loop {
        let port = free_port();
        if port <= u16::MAX - 10_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

impl Cluster {
    /// Starts three primaries and `replicas` replicas of each at once, joins
    /// them with `redis-cli --cluster create`, and waits until every node
    /// reports `cluster_state:ok` (and, with replicas, until each primary
    /// has its replicas).
    pub(crate) fn start(replicas: usize) -> Self {
        let nodes: Vec<RedisServer> = (0..3 * (1 + replicas))
            .map(|_| {
                RedisServer::start_on(
                    free_cluster_port,
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-require-full-coverage",
                        "no",
                        // A replica takes over a primary silent for 1 s,
                        // however long ago it last heard from it.
                        "--cluster-node-timeout",
                        "1000",
                        "--cluster-replica-validity-factor",
                        "0",
                    ],
                )
            })
            .collect();
        let cluster = Cluster { nodes };

        let addresses: Vec<String> = cluster
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let output = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output();
        let output = match output {
            Ok(output) => output,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "the Redis cluster tests need `redis-cli` on PATH: install it with \
                 `apt-get install -y redis-server` (or `brew install redis`), \
                 or set TOWER_RATELIMIT_SKIP_REDIS=1 to skip them"
            ),
            Err(e) => panic!("cannot run redis-cli: {e}"),
        };
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );

        let started = Instant::now();
        cluster.until_every_node(
            started,
            "reach cluster_state:ok",
            &["CLUSTER", "INFO"],
            |info| info.contains("cluster_state:ok"),
        );
        // Each replica in sync with its primary, so that it can take over.
        cluster.until_every_node(started, "get in sync", &["INFO", "replication"], |info| {
            info.contains("role:slave") && info.contains("master_link_status:up")
                || info.contains(&format!("connected_slaves:{replicas}"))
        });
        cluster
    }

    /// Sends `command` to each node until `ready` says yes to its answer,
    /// at most 15 s from `started` in all (the panic says the node did not
    /// `what`).
    fn until_every_node(
        &self,
        started: Instant,
        what: &str,
        command: &[&str],
        ready: impl Fn(&str) -> bool,
    ) {
        for node in &self.nodes {
            let mut connection = redis::Client::open(node.url())
                .expect("a URL")
                .get_connection()
                .expect("a connection to a cluster node");
            loop {
                let answer: String = redis::cmd(command[0])
                    .arg(&command[1..])
                    .query(&mut connection)
                    .expect("a cluster node's answer");
                if ready(&answer) {
                    break;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(15),
                    "node {} did not {what} within 15 s: {answer}",
                    node.port
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// The nodes that are primaries now, as far as `ROLE` on each running
    /// node says.
    pub(crate) async fn primaries(&self) -> Vec<usize> {
        let mut primaries = Vec::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let role: Vec<redis::Value> = redis::cmd("ROLE")
                .query_async(&mut node.client().await)
                .await
                .expect("ROLE");
            if matches!(role.first(), Some(redis::Value::BulkString(b)) if b == b"master") {
                primaries.push(i);
            }
        }
        primaries
    }

    /// A plain connection to node `index`.
    pub(crate) async fn node(&self, index: usize) -> redis::aio::MultiplexedConnection {
        self.nodes[index].client().await
    }

    /// Every node's `redis://127.0.0.1:PORT`, to seed a cluster client.
    pub(crate) fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The number of keys on each node (`DBSIZE`), in node order; every
    /// node must be running.
    pub(crate) async fn key_counts(&self) -> Vec<u64> {
        let mut counts = Vec::with_capacity(self.nodes.len());
        for node in &self.nodes {
            let count: u64 = redis::cmd("DBSIZE")
                .query_async(&mut node.client().await)
                .await
                .expect("DBSIZE");
            counts.push(count);
        }
        counts
    }

    /// Kills node `index` (SIGKILL): its slots stay assigned to it, and
    /// unanswered.
    pub(crate) fn kill(&mut self, index: usize) {
        self.nodes[index].kill();
    }

    /// Waits until the replicas of primary `index` have every write it took
    /// (their replication offsets reach its own), at most 5 s.
    pub(crate) async fn replicated(&self, index: usize) {
        let mut connection = self.nodes[index].client().await;
        let started = Instant::now();
        loop {
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query_async(&mut connection)
                .await
                .expect("INFO replication");
            let own = info
                .lines()
                .find_map(|l| l.strip_prefix("master_repl_offset:"));
            let replicas: Vec<_> = info
                .lines()
                .filter(|l| l.starts_with("slave"))
                .filter_map(|l| l.split(',').find_map(|p| p.strip_prefix("offset=")))
                .collect();
            if own.is_some() && !replicas.is_empty() && replicas.iter().all(|&o| Some(o) == own) {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "the replicas of node {} lag: {info}",
                self.nodes[index].port
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Freezes node `index` (SIGSTOP): its connections stay open and nothing
    /// answers (it is killed on drop all the same).
    pub(crate) fn freeze(&self, index: usize) {
        self.nodes[index].freeze();
    }

    /// Lets frozen node `index` run again (SIGCONT).
    pub(crate) fn thaw(&self, index: usize) {
        self.nodes[index].thaw();
    }

    /// Puts node `index` behind a [`Proxy`]: the node announces the proxy's
    /// port as its own (`cluster-announce-port`), so clients reach it
    /// through the proxy once every node's `CLUSTER SLOTS` says so (waited
    /// for here, at most 15 s).
    pub(crate) async fn behind_proxy(&self, index: usize) -> Proxy {
        let node = &self.nodes[index];
        let proxy = Proxy::start(node.port).await;
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("cluster-announce-port")
            .arg(proxy.port)
            .query_async(&mut node.client().await)
            .await
            .expect("CONFIG SET cluster-announce-port");
        let started = Instant::now();
        for other in &self.nodes {
            let mut connection = other.client().await;
            loop {
                let slots: redis::Value = redis::cmd("CLUSTER")
                    .arg("SLOTS")
                    .query_async(&mut connection)
                    .await
                    .expect("CLUSTER SLOTS");
                if format!("{slots:?}").contains(&format!("int({})", proxy.port)) {
                    break;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(15),
                    "node {} does not announce port {} within 15 s: {slots:?}",
                    node.port,
                    proxy.port
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        proxy
    }
}

// ---------------------------------------------------------------------------
// A rate-limited service for the tests.

use std::convert::Infallible;

use http::{Request, Response};
use tower::util::BoxCloneService;
use tower::{service_fn, Layer, ServiceExt};
use tower_ratelimit::key::{Header, KeySecret};
use tower_ratelimit::store::protocol::{Check, Decided, Outcome};
use tower_ratelimit::store::redis::{RedisStore, RedisStoreBuilder};
use tower_ratelimit::store::Store;
use tower_ratelimit::{Limit, Policy, Quota, RateLimitLayer, ResponseBody};

/// `builder`'s store, connected, with a 50 ms deadline and a breaker that
/// opens after `failures` failures in a row for a cool-down of 100 ms.
pub(crate) async fn impatient(builder: RedisStoreBuilder, failures: u32) -> RedisStore {
    builder
        .deadline(Duration::from_millis(50))
        .circuit_breaker(failures, Duration::from_millis(100))
        .connect()
        .await
        .expect("Redis answers")
}

/// The store's outcome for `checks` at `now`, from a store that never
/// fails (its failure policy answers when Redis does not).
pub(crate) async fn decide(store: &RedisStore, now: u64, checks: &[Check<'_>]) -> Outcome {
    match store.check(now, checks) {
        Decided::Pending(pending) => pending.await.expect("the store never fails"),
        Decided::Ready(result) => result.expect("the store never fails"),
    }
}

/// The key secret of the tests' nodes: processes that share a store share
/// it, so that they share buckets.
pub(crate) const SECRET: KeySecret = KeySecret::from_bytes(*b"shared by nodes!");

/// `quota` per `X-API-Key`, under [`SECRET`].
pub(crate) fn per_key(quota: Quota) -> Policy {
    Policy::builder()
        .key_secret(SECRET)
        .limit(Limit::new("per_key", Header::parse("X-API-Key").unwrap()).quota(quota))
        .build()
        .unwrap()
}

pub(crate) type Svc = BoxCloneService<Request<String>, Response<ResponseBody<String>>, Infallible>;

/// `layer` around a service that answers 200 "ok".
pub(crate) fn service<St: Store>(layer: &RateLimitLayer<St>) -> Svc {
    let inner = service_fn(|_req: Request<String>| async {
        Ok::<_, Infallible>(Response::new(String::from("ok")))
    });
    BoxCloneService::new(layer.layer(inner))
}

/// The store `builder` builds, on the layer's clock (so that it reads as
/// the memory store does at the same moments), with a 2 s deadline.
pub(crate) async fn on_layer_clock(
    builder: tower_ratelimit::store::redis::RedisStoreBuilder,
) -> tower_ratelimit::store::RedisStore {
    builder
        .layer_clock()
        .deadline(Duration::from_secs(2))
        .connect()
        .await
        .expect("the test server answers")
}

/// Sends one request with `X-API-Key: key`.
pub(crate) fn send(
    svc: &Svc,
    method: &str,
    path: &str,
    key: &str,
) -> impl std::future::Future<Output = Response<ResponseBody<String>>> + Send + 'static {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("x-api-key", key)
        .body(String::new())
        .expect("a request");
    let svc = svc.clone();
    async move {
        svc.oneshot(request)
            .await
            .unwrap_or_else(|e: Infallible| match e {})
    }
}

/// A header's value as text.
pub(crate) fn header<'r>(
    response: &'r Response<ResponseBody<String>>,
    name: &str,
) -> Option<&'r str> {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().expect("ASCII"))
}
