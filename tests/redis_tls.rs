//! The Redis store over TLS (`rediss://`, feature `redis-tls`) against a
//! real `redis-server` listening only on a TLS port, with a certificate
//! signed by a CA this test makes (rcgen).
//!
//! The store trusts the operating system's root certificates, which
//! `SSL_CERT_FILE` overrides: these tests point it at their CA (one for the
//! whole test process). A server whose certificate another CA signed is
//! refused. A binary of its own, apart from the other Redis tests in
//! `tests/redis/`, because it sets that environment variable: no other test
//! should read the environment (or connect through TLS) while it does.
//!
//! `TOWER_RATELIMIT_SKIP_REDIS=1` skips these tests (with a note), as it
//! does the other Redis tests.

#![cfg(feature = "redis-tls")]

#[path = "redis/support.rs"]
mod support;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use http::StatusCode;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use support::{send, service};
use tower_ratelimit::store::redis::{FailurePolicy, RedisStore};
use tower_ratelimit::{Policy, RateLimitLayer};

/// Five requests per minute per `X-API-Key`, one secret for every node.
const POLICY: &str = r#"
key_secret = "000102030405060708090a0b0c0d0e0f"

[[limits]]
name = "per_key"
key = { header = "X-API-Key" }
routes = [{ windows = ["5/minute"] }]
"#;

/// A CA, and a server certificate for `localhost` and `127.0.0.1` it signed.
struct Pki {
    ca_pem: String,
    server_cert_pem: String,
    server_key_pem: String,
}

impl Pki {
    fn new(name: &str) -> Self {
        let ca_key = KeyPair::generate().expect("a CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(
            DnType::CommonName,
            format!("tower-ratelimit test CA {name}"),
        );
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key).expect("a CA certificate");
        let issuer = Issuer::new(ca, ca_key);

        let server_key = KeyPair::generate().expect("a server key");
        let mut server =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("server parameters");
        server
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let server_cert = server
            .signed_by(&server_key, &issuer)
            .expect("a server certificate");
        Pki {
            ca_pem: ca_cert.pem(),
            server_cert_pem: server_cert.pem(),
            server_key_pem: server_key.serialize_pem(),
        }
    }
}

/// The CA every store of this process trusts.
fn trusted_pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| Pki::new("trusted"))
}

/// This process's scratch directory, holding the trusted CA's certificate,
/// which `SSL_CERT_FILE` names; removed when the last test using it ends.
struct Trust {
    dir: PathBuf,
}

impl Drop for Trust {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Makes the stores of this process trust [`trusted_pki`]'s CA (through
/// `SSL_CERT_FILE`, set before any store connects), for as long as the
/// returned guard lives.
fn trust() -> Arc<Trust> {
    static CURRENT: Mutex<Weak<Trust>> = Mutex::new(Weak::new());
    let mut current = CURRENT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(trust) = current.upgrade() {
        return trust;
    }
    let dir =
        std::env::temp_dir().join(format!("tower-ratelimit-redis-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    let file = dir.join("trusted-ca.pem");
    std::fs::write(&file, &trusted_pki().ca_pem).expect("the CA file");
    std::env::set_var("SSL_CERT_FILE", &file);
    let trust = Arc::new(Trust { dir });
    *current = Arc::downgrade(&trust);
    trust
}

/// A `redis-server` listening on a TLS port only, killed on drop.
struct TlsServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

impl TlsServer {
    /// Starts a server with `pki`'s certificate, its files in `trust`'s
    /// directory.
    fn start(pki: &Pki, name: &str, trust: &Trust) -> Self {
        let port = support::free_port();
        let dir = trust.dir.join(format!("{name}-{port}"));
        std::fs::create_dir_all(&dir).expect("the server's directory");
        let write = |file: &str, text: &str| {
            let path = dir.join(file);
            std::fs::write(&path, text).expect("a certificate file");
            path.to_string_lossy().into_owned()
        };
        let cert = write("server.crt", &pki.server_cert_pem);
        let key = write("server.key", &pki.server_key_pem);
        let ca = write("ca.crt", &pki.ca_pem);
        let log = dir.join("redis.log");
        let port_text = port.to_string();
        let log_text = log.to_string_lossy();
        let child = support::spawn_server(
            &dir,
            &[
                "--port",
                "0",
                "--tls-port",
                &port_text,
                "--tls-cert-file",
                &cert,
                "--tls-key-file",
                &key,
                "--tls-ca-cert-file",
                &ca,
                "--tls-auth-clients",
                "no",
                "--logfile",
                &log_text,
            ],
        );
        let mut server = TlsServer {
            child: Some(child),
            port,
            dir,
        };
        server.wait_until_listening(&log);
        server
    }

    fn wait_until_listening(&mut self, log: &Path) {
        let started = Instant::now();
        loop {
            if TcpStream::connect_timeout(
                &([127, 0, 0, 1], self.port).into(),
                Duration::from_millis(200),
            )
            .is_ok()
            {
                return;
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                let log = std::fs::read_to_string(log).unwrap_or_default();
                panic!(
                    "redis-server with --tls-port {} exited at start ({status}); a \
                     redis-server built without TLS support cannot run this test \
                     (Debian's and Homebrew's have it). Its log:\n{log}",
                    self.port
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not listen on TLS port {} within 10 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `rediss://127.0.0.1:PORT`.
    fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port)
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn store(url: &str) -> RedisStore {
    RedisStore::builder(url)
        .deadline(Duration::from_secs(5))
        .on_failure(FailurePolicy::Closed)
        .connect()
        .await
        .expect("the TLS server answers")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_layers_over_tls_admit_exactly_the_limit() {
    if support::skipped() {
        return;
    }
    let trust = trust();
    let server = TlsServer::start(trusted_pki(), "shared", &trust);
    let url = server.url();
    let stores = [store(&url).await, store(&url).await];
    let services: Vec<_> = stores
        .iter()
        .map(|s| {
            service(&RateLimitLayer::with_store(
                Policy::from_toml(POLICY).unwrap(),
                s.clone(),
            ))
        })
        .collect();

    // Concurrent requests for one key, alternately on either node.
    let responses =
        futures::future::join_all((0..20).map(|i| send(&services[i % 2], "GET", "/v1/calls", "k")))
            .await;
    let admitted = responses
        .iter()
        .filter(|r| r.status() == StatusCode::OK)
        .count();
    let refused = responses
        .iter()
        .filter(|r| r.status() == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!((admitted, refused), (5, 15));
    for store in &stores {
        // Every decision was Redis's: none fell back to the failure policy.
        assert_eq!(store.failures(), 0, "{store:?}");
        assert_eq!(store.fallbacks(), 0, "{store:?}");
    }
    // Each was decided by Redis, or refused from a refusal Redis made.
    let decided: u64 = stores
        .iter()
        .map(|s| s.decisions() + s.cached_refusals())
        .sum();
    assert_eq!(decided, 20);

    // Another key has its own five.
    let response = send(&services[1], "GET", "/v1/calls", "other").await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_server_signed_by_an_unknown_ca_is_refused() {
    if support::skipped() {
        return;
    }
    let trust = trust();
    let server = TlsServer::start(&Pki::new("unknown"), "unknown", &trust);
    let error = RedisStore::builder(server.url())
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect_err("a certificate no trusted CA signed");
    let message = error.to_string();
    assert!(
        message.to_ascii_lowercase().contains("certificate"),
        "{message}"
    );
}

#[tokio::test]
async fn a_private_ca_given_to_the_builder_is_trusted() {
    if support::skipped() {
        return;
    }
    let trust = trust();
    // A CA the process does not trust: only this store does.
    let private = Pki::new("private");
    let server = TlsServer::start(&private, "private", &trust);
    let store = RedisStore::builder(server.url())
        .tls_root_certificates(private.ca_pem.as_bytes())
        .deadline(Duration::from_secs(5))
        .on_failure(FailurePolicy::Closed)
        .connect()
        .await
        .expect("the server's CA is trusted");
    let svc = service(&RateLimitLayer::with_store(
        Policy::from_toml(POLICY).unwrap(),
        store.clone(),
    ));
    let mut admitted = 0;
    for _ in 0..7 {
        if send(&svc, "GET", "/", "k").await.status() == StatusCode::OK {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 5);
    assert_eq!(store.fallbacks(), 0);

    // Only the given CA: the process's trusted one no longer is.
    let other = TlsServer::start(trusted_pki(), "other", &trust);
    let error = RedisStore::builder(other.url())
        .tls_root_certificates(private.ca_pem.as_bytes())
        .connect()
        .await
        .expect_err("a server the given CA did not sign");
    assert!(error.to_string().contains("UnknownIssuer"), "{error}");
}

#[tokio::test]
async fn root_certificates_are_checked_when_the_store_is_built() {
    let pem = trusted_pki().ca_pem.as_bytes();
    let error = RedisStore::builder("redis://127.0.0.1:6379")
        .tls_root_certificates(pem)
        .build()
        .unwrap_err();
    assert_eq!(error.field(), "tls_root_certificates", "{error}");
    let error = RedisStore::builder("rediss://127.0.0.1:6379")
        .tls_root_certificates(&b"not PEM"[..])
        .build()
        .unwrap_err();
    assert_eq!(error.field(), "tls_root_certificates", "{error}");
    assert!(RedisStore::builder("rediss://127.0.0.1:6379")
        .tls_root_certificates(pem)
        .build()
        .is_ok());
}
