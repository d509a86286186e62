//! `key_secret = { env = "NAME" }`: the key secret from an environment
//! variable, so that nodes share it without writing it in the policy file.
//!
//! The environment is the process's and tests run on threads: every test
//! uses variables of its own. A binary of its own for the same reason: no
//! other test should read the environment while these set it.

use std::convert::Infallible;
use std::sync::Arc;

use http::{Request, Response, StatusCode};
use tower::{service_fn, Layer, ServiceExt};
use tower_ratelimit::store::MemoryStore;
use tower_ratelimit::{ConfigError, ConfigErrorKind, Policy, RateLimitLayer};

const HEX: &str = "000102030405060708090a0b0c0d0e0f";

/// Five requests per minute per `X-API-Key`, under `key_secret`.
fn policy(key_secret: &str) -> Result<Policy, ConfigError> {
    Policy::from_toml(&format!(
        r#"key_secret = {key_secret}

[[limits]]
name = "per_key"
key = {{ header = "X-API-Key" }}
routes = [{{ windows = ["5/minute"] }}]
"#
    ))
}

fn set(name: &str, value: &str) {
    std::env::set_var(name, value);
}

/// How many of `n` requests with `key`, sent alternately through a layer
/// for each policy, all on one store, are admitted.
async fn admitted(policies: Vec<Policy>, key: &str, n: usize) -> usize {
    let store = Arc::new(MemoryStore::new());
    let services: Vec<_> = policies
        .into_iter()
        .map(|policy| {
            RateLimitLayer::with_shared_store(policy, Arc::clone(&store)).layer(service_fn(
                |_req: Request<String>| async { Ok::<_, Infallible>(Response::new(String::new())) },
            ))
        })
        .collect();
    let mut ok = 0;
    for i in 0..n {
        let request = Request::builder()
            .uri("/v1/calls")
            .header("x-api-key", key)
            .body(String::new())
            .unwrap();
        let response = services[i % services.len()]
            .clone()
            .oneshot(request)
            .await
            .unwrap_or_else(|e: Infallible| match e {});
        match response.status() {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => {}
            other => panic!("unexpected status {other}"),
        }
    }
    ok
}

#[tokio::test]
async fn policies_with_one_env_secret_share_buckets() {
    set("TOWER_RATELIMIT_TEST_SECRET_SHARED", HEX);
    // Surrounding whitespace (a trailing newline from a secret store) is
    // ignored, and hex digits may be upper case.
    set(
        "TOWER_RATELIMIT_TEST_SECRET_SHARED_UPPER",
        &format!("{}\n", HEX.to_uppercase()),
    );
    let env = || policy(r#"{ env = "TOWER_RATELIMIT_TEST_SECRET_SHARED" }"#).unwrap();
    let upper = policy(r#"{ env = "TOWER_RATELIMIT_TEST_SECRET_SHARED_UPPER" }"#).unwrap();
    let plain = policy(&format!("\"{HEX}\"")).unwrap();

    // Two nodes, one store: between them they admit exactly the limit.
    assert_eq!(admitted(vec![env(), env()], "k", 12).await, 5);
    // The same secret written in the file, or in upper case, is the same
    // secret.
    assert_eq!(admitted(vec![env(), plain], "k", 12).await, 5);
    assert_eq!(admitted(vec![env(), upper], "k", 12).await, 5);
}

#[tokio::test]
async fn another_secret_means_other_buckets() {
    set("TOWER_RATELIMIT_TEST_SECRET_A", HEX);
    set(
        "TOWER_RATELIMIT_TEST_SECRET_B",
        "ffeeddccbbaa99887766554433221100",
    );
    let a = policy(r#"{ env = "TOWER_RATELIMIT_TEST_SECRET_A" }"#).unwrap();
    let b = policy(r#"{ env = "TOWER_RATELIMIT_TEST_SECRET_B" }"#).unwrap();
    // The same key hashes to different buckets: each node admits its five.
    assert_eq!(admitted(vec![a, b], "k", 12).await, 10);
}

/// The error for `key_secret = { env = "<name>" }`, which must name the
/// field, point at it, and never show the variable's value.
fn env_error(name: &str, value: Option<&str>) -> ConfigError {
    let e = policy(&format!("{{ env = \"{name}\" }}")).unwrap_err();
    assert_eq!(e.kind(), ConfigErrorKind::InvalidValue, "{e}");
    assert_eq!(e.field(), "key_secret.env", "{e}");
    assert_eq!((e.line(), e.column()), (Some(1), Some(22)), "{e}");
    let message = e.to_string();
    assert!(message.contains(name), "{message}");
    if let Some(value) = value.filter(|v| !v.trim().is_empty()) {
        assert!(!message.contains(value.trim()), "{message}");
    }
    e
}

#[test]
fn an_unset_variable_is_an_error() {
    let e = env_error("TOWER_RATELIMIT_TEST_SECRET_UNSET", None);
    assert!(e.message().contains("is not set"), "{e}");
}

#[test]
fn a_value_that_is_not_32_hex_digits_is_an_error() {
    for (i, value) in [
        "",
        "00010203",
        "000102030405060708090a0b0c0d0e0f00",
        "000102030405060708090a0b0c0d0e0g",
        "sixteen byte key",
        "000102030405060708 90a0b0c0d0e0f",
    ]
    .into_iter()
    .enumerate()
    {
        let name = format!("TOWER_RATELIMIT_TEST_SECRET_BAD_{i}");
        set(&name, value);
        let e = env_error(&name, Some(value));
        assert!(e.message().contains("32 hex digits"), "{e}");
    }
}

#[cfg(unix)]
#[test]
fn a_value_that_is_not_unicode_is_an_error() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;

    let name = "TOWER_RATELIMIT_TEST_SECRET_NOT_UNICODE";
    std::env::set_var(name, OsStr::from_bytes(b"00010203\xff"));
    let e = env_error(name, None);
    assert!(e.message().contains("Unicode"), "{e}");
}

#[test]
fn the_table_has_exactly_the_field_env() {
    let e =
        policy(r#"{ env = "TOWER_RATELIMIT_TEST_SECRET_X", file = "/run/secret" }"#).unwrap_err();
    assert_eq!(e.kind(), ConfigErrorKind::Syntax, "{e}");
    assert_eq!(e.field(), "key_secret.file", "{e}");
    assert!(e.message().contains("unknown field `file`"), "{e}");
    assert_eq!(e.line(), Some(1));

    let e = policy("{}").unwrap_err();
    assert_eq!(e.field(), "key_secret", "{e}");
    assert!(e.message().contains("`env`"), "{e}");

    let e = policy(r#"{ env = "" }"#).unwrap_err();
    assert_eq!(e.field(), "key_secret.env", "{e}");

    let e = policy("16").unwrap_err();
    assert_eq!(
        (e.kind(), e.field()),
        (ConfigErrorKind::Syntax, "key_secret")
    );
    assert!(e.message().contains("32 hex digits"), "{e}");
}

#[test]
fn the_plain_form_still_works_and_still_checks() {
    assert!(policy(&format!("\"{HEX}\"")).is_ok());
    let e = policy("\"+00102030405060708090a0b0c0d0e0f\"").unwrap_err();
    assert_eq!(e.field(), "key_secret", "{e}");
    assert!(e.message().contains("32 hex digits"), "{e}");
}
