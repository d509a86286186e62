//! The Redis store on a Redis Cluster (one node holding every slot): the
//! keys of a request, across windows and stacked limits, share one hash slot,
//! so the one script still decides it whole.

use std::time::{Duration, Instant};

use tower_ratelimit::store::protocol::{Check, Decided, Outcome};
use tower_ratelimit::store::redis::RedisStore;
use tower_ratelimit::store::Store;
use tower_ratelimit::{Algorithm, Quota, Window};

const T0: u64 = 1_700_000_000_000_000_000;

async fn decide(store: &RedisStore, now: u64, checks: &[Check<'_>]) -> Outcome {
    match store.check(now, checks) {
        Decided::Pending(pending) => pending.await.unwrap(),
        Decided::Ready(result) => result.unwrap(),
    }
}

#[tokio::test]
async fn a_cluster_decides_stacked_multi_window_requests_in_one_slot() {
    if crate::support::server().is_none() {
        return;
    }
    let server = crate::support::RedisServer::start_with(&[
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        "nodes.conf",
    ]);
    let mut client = server.client().await;
    let _: () = redis::cmd("CLUSTER")
        .arg("ADDSLOTSRANGE")
        .arg(0)
        .arg(16383)
        .query_async(&mut client)
        .await
        .unwrap();
    let started = Instant::now();
    loop {
        let info: String = redis::cmd("CLUSTER")
            .arg("INFO")
            .query_async(&mut client)
            .await
            .unwrap();
        if info.contains("cluster_state:ok") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the cluster did not come up: {info}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let store = RedisStore::cluster_builder([server.url()])
        .layer_clock()
        .deadline(Duration::from_secs(2))
        .connect()
        .await
        .expect("the cluster answers");
    let wide = Quota::new(Window::per_minute(100)).and(Window::per_hour(1000));
    let narrow = Quota::new(Window::per_minute(2))
        .and(Window::per_hour(5))
        .algorithm(Algorithm::FixedWindow);
    // Buckets far apart in the hash space: without the shared hash tag their
    // keys would fall in different slots (CROSSSLOT).
    let checks = [Check::new(1, &wide), Check::new(u64::MAX / 3, &narrow)];
    assert!(decide(&store, T0, &checks).await.admitted());
    assert!(decide(&store, T0, &checks).await.admitted());
    let refused = decide(&store, T0, &checks).await;
    assert!(!refused.admitted());
    assert_eq!(
        refused.windows()[0].remaining,
        98,
        "the refusal charged nothing"
    );
    assert_eq!(store.failures(), 0, "{store:?}");
    let keys = server.keys().await;
    assert_eq!(keys.len(), 4);
    let slots: Vec<u16> = {
        let mut slots = Vec::new();
        for key in &keys {
            let slot: u16 = redis::cmd("CLUSTER")
                .arg("KEYSLOT")
                .arg(key)
                .query_async(&mut client)
                .await
                .unwrap();
            slots.push(slot);
        }
        slots
    };
    assert!(
        slots.windows(2).all(|w| w[0] == w[1]),
        "one slot: {slots:?}"
    );
}
