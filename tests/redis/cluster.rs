//! The Redis store on a Redis Cluster (one node holding every slot): the
//! keys of one principal, across windows and stacked limits, share one hash
//! slot, so one script decides them; different principals fall in different
//! slots, and a request over several is still decided all or nothing.

use std::time::{Duration, Instant};

use tower_ratelimit::store::protocol::Check;
use tower_ratelimit::store::redis::RedisStore;
use tower_ratelimit::{Algorithm, Quota, Window};

use crate::support::decide;

const T0: u64 = 1_700_000_000_000_000_000;

#[tokio::test]
async fn a_cluster_keeps_each_principal_in_one_slot_and_decides_across_slots_whole() {
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
    let mut slot_of = async |key: &str| -> u16 {
        redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query_async(&mut client)
            .await
            .unwrap()
    };

    let store = RedisStore::cluster_builder([server.url()])
        .layer_clock()
        .deadline(Duration::from_secs(2))
        .deny_cache(false)
        .connect()
        .await
        .expect("the cluster answers");
    let wide = Quota::new(Window::per_minute(100)).and(Window::per_hour(1000));
    let narrow = Quota::new(Window::per_minute(2))
        .and(Window::per_hour(5))
        .algorithm(Algorithm::FixedWindow);
    // Stacked limits of one principal: buckets far apart in the hash space,
    // in one slot through the principal's hash tag, decided by one script.
    let (one, two, three) = (0x1111, 0x2222, 0x3333);
    let checks = [
        Check::new(1, &wide).of_principal(one),
        Check::new(u64::MAX / 3, &narrow).of_principal(one),
    ];
    assert!(decide(&store, T0, &checks).await.admitted());
    assert!(decide(&store, T0, &checks).await.admitted());
    let refused = decide(&store, T0, &checks).await;
    assert!(!refused.admitted());
    assert_eq!(
        refused.windows()[0].remaining,
        98,
        "the refusal charged nothing"
    );
    let keys = server.keys().await;
    assert_eq!(keys.len(), 2, "one key per bucket: {keys:?}");
    assert_eq!(slot_of(&keys[0]).await, slot_of(&keys[1]).await);

    // Two principals in two slots: the second refuses, the first is given
    // back its charge, whichever is decided first.
    let tight = Quota::new(Window::per_minute(1)).algorithm(Algorithm::FixedWindow);
    assert!(
        decide(&store, T0, &[Check::new(20, &tight).of_principal(three)])
            .await
            .admitted()
    );
    for (first, second) in [(two, three), (three, two)] {
        let (bucket, other) = if first == two { (10, 20) } else { (20, 10) };
        let (q1, q2) = if first == two {
            (&wide, &tight)
        } else {
            (&tight, &wide)
        };
        let both = [
            Check::new(bucket, q1).of_principal(first),
            Check::new(other, q2).of_principal(second),
        ];
        let refused = decide(&store, T0, &both).await;
        assert!(!refused.admitted());
        let wide_status = refused.windows()[if first == two { 0 } else { 1 }];
        assert_eq!(wide_status.remaining, 100, "nothing counted: {refused:?}");
    }
    let alone = decide(&store, T0, &[Check::new(10, &wide).of_principal(two)]).await;
    assert_eq!(
        alone.windows()[0].remaining,
        99,
        "no charge was left behind"
    );
    let keys = server.keys().await;
    let tagged = |principal: u64| {
        let tag = format!("{{{principal:016x}}}");
        keys.iter().find(|k| k.contains(&tag)).unwrap().clone()
    };
    assert_ne!(
        slot_of(&tagged(two)).await,
        slot_of(&tagged(three)).await,
        "two principals, two slots"
    );
    assert_eq!(store.failures(), 0, "{store:?}");
}
