//! The demo's admin listener: requests to the API show up in `GET
//! /metrics` on the admin address, in the Prometheus text format, and the
//! rate limiter's admin API peeks, resets and overrides a key over HTTP.

#[path = "../src/admin.rs"]
mod admin;
#[path = "../src/server.rs"]
#[allow(dead_code)]
mod server;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower_ratelimit::{Policy, RateLimitLayer};

const GUARDS: server::Guards = server::Guards {
    header_timeout: Duration::from_secs(5),
    max_connections: 64,
};

/// Sends `GET path` (with `X-API-Key: key`, if any) over a connection of
/// its own: the response's status and body.
async fn get(addr: SocketAddr, path: &str, key: Option<&str>) -> (u16, String) {
    send(addr, "GET", path, key, "").await
}

/// Sends `METHOD path` with `body` (and `X-API-Key: key`, if any) over a
/// connection of its own: the response's status and body.
async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: &str,
) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let key = key.map_or(String::new(), |k| format!("x-api-key: {k}\r\n"));
    let length = body.len();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\n{key}content-length: {length}\r\n\
         connection: close\r\n\r\n{body}"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut response))
        .await
        .expect("an answer within 5 s")
        .unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    (status, body.to_owned())
}

/// The samples of a Prometheus text exposition: `name{labels}` to value.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("`series value`");
            (series.to_owned(), value.parse().expect("a number"))
        })
        .collect()
}

#[tokio::test]
async fn the_admin_listener_serves_the_decisions_in_prometheus_text() {
    // The recorder first: the layer registers its metrics when it is built.
    let handle = admin::install().unwrap();
    let policy = Policy::from_toml(include_str!("../policies/default.toml")).unwrap();
    let api = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api_addr = api.local_addr().unwrap();
    let layer = RateLimitLayer::new(policy);
    let limits_admin = tower_ratelimit::admin::router(&layer);
    let app = server::app(|router| router.layer(layer));
    tokio::spawn(server::serve(api, app, GUARDS, std::future::pending()));
    let admin_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_addr = admin_listener.local_addr().unwrap();
    let admin_app = admin::router(handle, limits_admin);
    tokio::spawn(server::serve(
        admin_listener,
        admin_app,
        GUARDS,
        std::future::pending(),
    ));

    for _ in 0..3 {
        assert_eq!(get(api_addr, "/v1/calls", Some("k_1")).await.0, 200);
    }
    assert_eq!(get(api_addr, "/v1/calls", None).await.0, 401);
    assert_eq!(
        get(api_addr, "/metrics", Some("k_1")).await.0,
        200,
        "the API's own path"
    );

    let (status, text) = get(admin_addr, "/metrics", None).await;
    assert_eq!(status, 200);
    let samples = samples(&text);
    let decisions = |outcome: &str| {
        samples.get(&format!(
            "ratelimit_decisions_total{{limit=\"per_key\",outcome=\"{outcome}\"}}"
        ))
    };
    assert_eq!(decisions("admitted"), Some(&4.0), "{text}");
    assert_eq!(decisions("key_rejected"), Some(&1.0), "{text}");
    assert_eq!(decisions("refused"), Some(&0.0), "{text}");
    assert_eq!(
        samples.get("ratelimit_near_limit_total{limit=\"per_key\"}"),
        Some(&0.0),
        "{text}"
    );

    // The admin API on the same listener: where k_1 stands (4 used of 60),
    // consuming nothing; a reset; an override; its removal.
    let key_path = "/limits/per_key/keys/k_1";
    let remaining = |body: &str| {
        let value: serde_json::Value = serde_json::from_str(body).unwrap();
        value["routes"][0]["windows"][0]["remaining"]
            .as_u64()
            .unwrap()
    };
    for _ in 0..2 {
        let (status, body) = get(admin_addr, key_path, None).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(remaining(&body), 56, "{body}");
    }
    let (status, _) = send(admin_addr, "DELETE", key_path, None, "").await;
    assert_eq!(status, 200);
    assert_eq!(remaining(&get(admin_addr, key_path, None).await.1), 60);

    let override_path = format!("{key_path}/override");
    let body = r#"{"windows": ["120/minute"]}"#;
    let (status, answer) = send(admin_addr, "PUT", &override_path, None, body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(get(api_addr, "/v1/calls", Some("k_1")).await.0, 200);
    let (_, body) = get(admin_addr, key_path, None).await;
    assert_eq!(remaining(&body), 119, "{body}");
    let (status, _) = send(admin_addr, "DELETE", &override_path, None, "").await;
    assert_eq!(status, 200);
    let (_, body) = get(admin_addr, key_path, None).await;
    assert_eq!(remaining(&body), 59, "{body}");

    let (status, body) = get(admin_addr, "/limits/nope/keys/k_1", None).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = send(admin_addr, "PUT", &override_path, None, "{").await;
    assert_eq!(status, 400, "{body}");
}
