//! The clients of the store: for one server or a cluster, from their
//! URLs, over TLS for `rediss://` URLs (feature `redis-tls`), with the
//! URL or the certificates named in a [`ConfigError`] when they are wrong.

use std::fmt;

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
pub(crate) fn bad_url() -> ConfigError {
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

/// The clients of a cluster's seeds, `urls`, verified as `tls` says over
/// TLS: where the store first asks for the cluster's map, and whose
/// settings (credentials, TLS) its connections to every node take.
pub(crate) fn cluster_seeds(urls: &[String], tls: &Tls) -> Result<Vec<redis::Client>, ConfigError> {
    if urls.is_empty() {
        return Err(ConfigError::invalid(
            "redis",
            "a cluster needs at least one URL",
        ));
    }
    check_tls(urls.iter().map(String::as_str), tls)?;
    urls.iter().map(|url| server_client(url, tls)).collect()
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
        let e = cluster_seeds(&[], &Tls::default()).unwrap_err();
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
        let e = cluster_seeds(&urls, &Tls::default()).unwrap_err();
        assert!(e.to_string().contains("`redis-tls`"), "{e}");
    }

    #[cfg(feature = "redis-tls")]
    #[test]
    fn tls_urls_with_the_feature_make_clients() {
        assert!(server_client("rediss://127.0.0.1:6380", &Tls::default()).is_ok());
        let urls = ["rediss://a:1".to_owned()];
        assert!(cluster_seeds(&urls, &Tls::default()).is_ok());
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
