//! `SenderPool` under paused time: each sender at its own pace, messages
//! spread over the senders free soonest, round robin when free alike.

use std::sync::Arc;
use std::time::Duration;

use tower_ratelimit::client::{Pacer, SenderPool};
use tower_ratelimit::{Quota, Window};

use super::ms_since;

#[tokio::test(start_paused = true)]
async fn six_messages_over_two_numbers_alternate_one_a_second_each() {
    let pool = SenderPool::new(["+15550001", "+15550002"]).unwrap();
    let start = tokio::time::Instant::now();
    let sends = (0..6).map(|_| async {
        let from = pool.next().await.unwrap().to_owned();
        (from, ms_since(start))
    });
    let sent = futures::future::join_all(sends).await;
    let expected = [
        ("+15550001", 0),
        ("+15550002", 0),
        ("+15550001", 1_000),
        ("+15550002", 1_000),
        ("+15550001", 2_000),
        ("+15550002", 2_000),
    ];
    let expected: Vec<(String, u64)> = expected.iter().map(|(n, t)| (n.to_string(), *t)).collect();
    assert_eq!(sent, expected);
}

#[tokio::test(start_paused = true)]
async fn no_number_sends_faster_than_its_pace() {
    let numbers = ["+15550001", "+15550002", "+15550003"];
    let pool = SenderPool::new(numbers).unwrap();
    let start = tokio::time::Instant::now();
    let sends = (0..30).map(|_| async {
        let from = pool.next().await.unwrap().to_owned();
        (from, ms_since(start))
    });
    let sent = futures::future::join_all(sends).await;
    for number in numbers {
        let times: Vec<u64> = sent
            .iter()
            .filter(|(from, _)| from == number)
            .map(|(_, at)| *at)
            .collect();
        let expected: Vec<u64> = (0..10).map(|s| s * 1_000).collect();
        assert_eq!(times, expected, "{number}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_busy_number_is_skipped_for_a_free_one() {
    // Two numbers at 1 per 2 s, the pace shared with another sender: it
    // uses +1 at 500 ms, so the pool's first message goes to +2 at once;
    // then both are free at 2.5 s, and take turns from +1.
    let quota = Quota::new(Window::new(1, Duration::from_secs(2)).unwrap());
    let pacer = Arc::new(Pacer::new(quota).unwrap());
    let pool = SenderPool::with_pacer(Arc::clone(&pacer), ["+1", "+2"]).unwrap();
    let start = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    pacer.wait("+1").await.unwrap();
    assert_eq!(pool.next().await.unwrap(), "+2");
    assert_eq!(ms_since(start), 500);
    assert_eq!(pool.next().await.unwrap(), "+1");
    assert_eq!(ms_since(start), 2_500);
    assert_eq!(pool.next().await.unwrap(), "+2");
    assert_eq!(ms_since(start), 2_500);
}

#[test]
fn a_pool_needs_distinct_named_senders() {
    let none: [&str; 0] = [];
    assert!(SenderPool::new(none)
        .unwrap_err()
        .to_string()
        .contains("a pool needs a sender"));
    let twice = SenderPool::new(["+1", "+1"]).unwrap_err();
    assert!(twice.to_string().contains("`+1` is named twice"), "{twice}");
    assert!(SenderPool::new(["+1", ""]).is_err());
}
