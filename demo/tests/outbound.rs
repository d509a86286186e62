//! The demo's outbound work under `--preset nixflex`, over HTTP against the
//! `voice_api` process: campaigns run in waves under the account's and the
//! campaign's caps (the account's shared with its live calls), SMS go out at 1 a second per sending number, round
//! robin, and bad bodies get 400s that name the field.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use support::{exchange, start_demo, Process};

/// A demo process on the Nixflex preset (stopped on drop).
struct Demo {
    _process: Process,
    port: u16,
}

impl Demo {
    fn start() -> Self {
        let (process, port) = start_demo(&["--preset", "nixflex"], &[]);
        Demo {
            _process: process,
            port,
        }
    }

    /// One request with `Authorization: Bearer key`: the status and the
    /// JSON body.
    fn send(&self, method: &str, path: &str, key: &str, body: Option<&Value>) -> (u16, Value) {
        let body = body.map(Value::to_string).unwrap_or_default();
        let headers = [
            &*format!("Authorization: Bearer {key}"),
            "Content-Type: application/json",
        ];
        let reply = exchange(self.port, method, path, &headers, &body);
        let json = serde_json::from_str(&reply.body).unwrap_or(Value::Null);
        (reply.status, json)
    }

    /// GETs `path` every 100 ms until it says `finished` (at most 30 s).
    fn until_finished(&self, path: &str, key: &str) -> Value {
        let started = Instant::now();
        loop {
            let (status, body) = self.send("GET", path, key, None);
            assert_eq!(status, 200, "{body}");
            if body["finished"] == true {
                return body;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "not finished: {body}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn a_campaign_runs_in_waves_under_its_own_cap_and_the_accounts() {
    let demo = Demo::start();
    // 40 calls of 200 ms, 5 at once (under pay-as-you-go's 10): 8 waves.
    let started = Instant::now();
    let body = json!({"recipients": 40, "max_concurrent": 5, "call_ms": 200});
    let (status, created) = demo.send("POST", "/v1/campaigns", "nx_a", Some(&body));
    assert_eq!(status, 202, "{created}");
    let id = created["id"].as_str().expect("an id").to_owned();
    let done = demo.until_finished(&format!("/v1/campaigns/{id}"), "nx_a");
    assert_eq!(
        done,
        json!({"done": 40, "peak_concurrency": 5, "finished": true})
    );
    assert!(started.elapsed() >= Duration::from_millis(1_600));

    // Asking for more than the plan allows runs at the plan's cap:
    // pay-as-you-go 10, starter 25.
    for (key, cap) in [("nx_b", 10), ("nx_starter", 25)] {
        let body = json!({"recipients": 60, "max_concurrent": 50, "call_ms": 300});
        let (status, created) = demo.send("POST", "/v1/campaigns", key, Some(&body));
        assert_eq!(status, 202, "{created}");
        let path = format!("/v1/campaigns/{}", created["id"].as_str().unwrap());
        let done = demo.until_finished(&path, key);
        assert_eq!(
            done,
            json!({"done": 60, "peak_concurrency": cap, "finished": true})
        );
    }

    let (status, body) = demo.send("GET", "/v1/campaigns/cmp_999", "nx_a", None);
    assert_eq!(status, 404, "{body}");
}

#[test]
fn a_campaign_and_the_accounts_live_calls_share_its_cap() {
    let demo = Demo::start();
    // 20 calls of a second, 10 at once: the whole pay-as-you-go cap.
    let body = json!({"recipients": 20, "max_concurrent": 10, "call_ms": 1000});
    let (status, created) = demo.send("POST", "/v1/campaigns", "nx_c", Some(&body));
    assert_eq!(status, 202, "{created}");
    std::thread::sleep(Duration::from_millis(300));
    // An inbound call of the same account now finds no slot: refused at
    // once, as the 11th call in flight.
    let (status, busy) = demo.send("POST", "/v1/calls/inbound", "nx_c", None);
    assert_eq!(status, 429, "{busy}");
    assert_eq!(
        busy["error"]["code"], "concurrency_limit_exceeded",
        "{busy}"
    );
    // Another account's call goes through.
    let (status, _) = demo.send("POST", "/v1/calls/inbound", "nx_d", None);
    assert_eq!(status, 200);
    let path = format!("/v1/campaigns/{}", created["id"].as_str().unwrap());
    let done = demo.until_finished(&path, "nx_c");
    assert_eq!(
        done,
        json!({"done": 20, "peak_concurrency": 10, "finished": true})
    );
    let (status, _) = demo.send("POST", "/v1/calls/inbound", "nx_c", None);
    assert_eq!(status, 200, "the campaign's slots are free again");
}

#[test]
fn sms_alternate_over_the_numbers_at_one_a_second_each() {
    let demo = Demo::start();
    let body = json!({"from": ["+15550001", "+15550002"], "count": 6});
    let (status, created) = demo.send("POST", "/v1/sms", "nx_a", Some(&body));
    assert_eq!(status, 202, "{created}");
    let path = format!("/v1/sms/{}", created["id"].as_str().expect("an id"));
    let done = demo.until_finished(&path, "nx_a");
    let sent = done["sent"].as_array().expect("a list");
    let from: Vec<&str> = sent.iter().map(|s| s["from"].as_str().unwrap()).collect();
    assert_eq!(
        from,
        [
            "+15550001",
            "+15550002",
            "+15550001",
            "+15550002",
            "+15550001",
            "+15550002"
        ]
    );
    // At 0, 0, 1, 1, 2, 2 s after the request (a real clock: within 150 ms).
    for (i, s) in sent.iter().enumerate() {
        let at = s["at_ms"].as_u64().unwrap();
        let due = (i as u64 / 2) * 1_000;
        assert!((due..due + 150).contains(&at), "message {i} at {at} ms");
    }
}

#[test]
fn bad_bodies_get_a_400_naming_the_field() {
    let demo = Demo::start();
    let cases = [
        ("/v1/campaigns", json!({"max_concurrent": 5}), "recipients"),
        ("/v1/campaigns", json!({"recipients": 10_001}), "recipients"),
        (
            "/v1/campaigns",
            json!({"recipients": 4, "max_concurrent": 0}),
            "max_concurrent",
        ),
        (
            "/v1/campaigns",
            json!({"recipients": 4, "call_ms": 60_001}),
            "call_ms",
        ),
        ("/v1/campaigns", json!({"recipients": "4"}), "recipients"),
        ("/v1/campaigns", json!([1, 2]), "body"),
        ("/v1/sms", json!({"from": ["+1"], "count": 1_001}), "count"),
        ("/v1/sms", json!({"from": [], "count": 1}), "from"),
        ("/v1/sms", json!({"from": ["+1", "+1"], "count": 1}), "from"),
        ("/v1/sms", json!({"from": ["+1", 2], "count": 1}), "from"),
        (
            "/v1/sms",
            json!({"from": vec!["+1"; 21], "count": 1}),
            "from",
        ),
        ("/v1/sms", json!({"count": 1}), "from"),
    ];
    for (path, body, field) in cases {
        let (status, answer) = demo.send("POST", path, "nx_a", Some(&body));
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["error"]["field"], field, "{body}: {answer}");
    }
    // Not JSON at all.
    let auth = ["Authorization: Bearer nx_a"];
    let reply = exchange(demo.port, "POST", "/v1/sms", &auth, "{{{");
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert!(reply.body.contains("\"field\":\"body\""), "{}", reply.body);
}
