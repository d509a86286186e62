//! `Waves` under paused time: a campaign's jobs run at most
//! `min(account cap, max_concurrent)` at once, an account's campaigns
//! together at most its cap, and the total time is that of full waves;
//! waves from a layer share an account's cap with its requests.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tower_ratelimit::client::Waves;

use super::ms_since;

/// Jobs in flight now, and the most at once.
#[derive(Default)]
struct Gauge {
    now: AtomicU32,
    peak: AtomicU32,
}

impl Gauge {
    /// A job of `ms` milliseconds counted in every gauge of `gauges`,
    /// answering `i`.
    async fn job(gauges: Vec<&Gauge>, ms: u64, i: usize) -> usize {
        for gauge in &gauges {
            let now = gauge.now.fetch_add(1, Ordering::SeqCst) + 1;
            gauge.peak.fetch_max(now, Ordering::SeqCst);
        }
        tokio::time::sleep(Duration::from_millis(ms)).await;
        for gauge in &gauges {
            gauge.now.fetch_sub(1, Ordering::SeqCst);
        }
        i
    }

    fn peak(&self) -> u32 {
        self.peak.load(Ordering::SeqCst)
    }
}

#[tokio::test(start_paused = true)]
async fn forty_jobs_at_five_at_once_take_one_point_six_seconds() {
    let waves = Waves::new();
    let campaign = waves.campaign("acct_1", 10, 5);
    assert_eq!(campaign.limit(), 5);
    let gauge = Gauge::default();
    let start = tokio::time::Instant::now();
    let done = campaign
        .run((0..40).map(|i| Gauge::job(vec![&gauge], 200, i)))
        .await
        .unwrap();
    assert_eq!(done, (0..40).collect::<Vec<_>>());
    assert_eq!(gauge.peak(), 5);
    assert_eq!(ms_since(start), 1_600);
}

#[tokio::test(start_paused = true)]
async fn a_campaign_above_the_account_cap_runs_at_the_account_cap() {
    let waves = Waves::new();
    let campaign = waves.campaign("acct_1", 3, 10);
    assert_eq!(campaign.limit(), 3);
    let gauge = Gauge::default();
    let start = tokio::time::Instant::now();
    campaign
        .run((0..9).map(|i| Gauge::job(vec![&gauge], 100, i)))
        .await
        .unwrap();
    assert_eq!(gauge.peak(), 3);
    assert_eq!(ms_since(start), 300);
}

#[tokio::test(start_paused = true)]
async fn an_accounts_campaigns_share_its_cap() {
    let waves = Waves::new();
    let (account, first, second) = (Gauge::default(), Gauge::default(), Gauge::default());
    let a = waves.campaign("acct_1", 6, 5);
    let b = waves.campaign("acct_1", 6, 5);
    let start = tokio::time::Instant::now();
    let (ran_a, ran_b) = tokio::join!(
        a.run((0..20).map(|i| Gauge::job(vec![&account, &first], 200, i))),
        b.run((0..20).map(|i| Gauge::job(vec![&account, &second], 200, i))),
    );
    assert_eq!((ran_a.unwrap().len(), ran_b.unwrap().len()), (20, 20));
    assert_eq!(account.peak(), 6);
    assert_eq!((first.peak(), second.peak()), (5, 5));
    // First come, first served: the account's slots go to the campaigns'
    // jobs in the order they asked, so the first campaign keeps five and
    // the second one at a time until the first ends (4 waves: 20 + 4 jobs),
    // then the second runs its last 16 at its own cap of 5 (4 waves).
    assert_eq!(ms_since(start), 1_600);
    // Another account is not held up by this one's.
    let other = waves.campaign("acct_2", 6, 6);
    let gauge = Gauge::default();
    let start = tokio::time::Instant::now();
    other
        .run((0..6).map(|i| Gauge::job(vec![&gauge], 200, i)))
        .await
        .unwrap();
    assert_eq!((gauge.peak(), ms_since(start)), (6, 200));
}

#[tokio::test(start_paused = true)]
async fn a_campaign_keeps_its_limit_when_another_gives_its_account_a_higher_cap() {
    let waves = Waves::new();
    let (small, large) = (Gauge::default(), Gauge::default());
    let a = waves.campaign("acct_1", 2, 5);
    let b = waves.campaign("acct_1", 10, 5);
    assert_eq!((a.limit(), b.limit()), (2, 5));
    let (ran_a, ran_b) = tokio::join!(
        a.run((0..30).map(|i| Gauge::job(vec![&small], 100, i))),
        b.run((0..30).map(|i| Gauge::job(vec![&large], 100, i))),
    );
    assert_eq!((ran_a.unwrap().len(), ran_b.unwrap().len()), (30, 30));
    assert_eq!((small.peak(), large.peak()), (2, 5));
}

#[tokio::test(start_paused = true)]
async fn a_dropped_campaign_frees_its_slots() {
    let waves = Waves::new();
    let first = waves.campaign("acct_1", 2, 2);
    let gauge = Gauge::default();
    let run = first.run((0..4).map(|i| Gauge::job(vec![&gauge], 1_000, i)));
    assert!(tokio::time::timeout(Duration::from_millis(500), run)
        .await
        .is_err());
    let second = waves.campaign("acct_1", 2, 2);
    let start = tokio::time::Instant::now();
    second
        .run((0..2).map(|i| Gauge::job(vec![], 100, i)))
        .await
        .unwrap();
    assert_eq!(ms_since(start), 100);
}

/// `concurrent_calls`: `POST /v1/calls` at most 3 at once per `X-API-Key`,
/// refused at once over it.
fn calls_policy() -> tower_ratelimit::Policy {
    use tower_ratelimit::{key::Header, Limit, Policy, Quota};
    Policy::builder()
        .limit(
            Limit::new("concurrent_calls", Header::parse("X-API-Key").unwrap())
                .route("POST /v1/calls", Quota::in_flight(3)),
        )
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn waves_from_a_layer_share_the_account_cap_with_its_requests() {
    use std::convert::Infallible;
    use std::sync::Arc;

    use http::{Request, Response, StatusCode};
    use tokio::sync::Notify;
    use tower::{service_fn, Layer, ServiceExt};
    use tower_ratelimit::RateLimitLayer;

    let layer = RateLimitLayer::new(calls_policy());
    // A live call holds its slot until the test lets it end.
    let hang_up = Arc::new(Notify::new());
    let inner = {
        let hang_up = Arc::clone(&hang_up);
        service_fn(move |_: Request<()>| {
            let hang_up = Arc::clone(&hang_up);
            async move {
                hang_up.notified().await;
                Ok::<_, Infallible>(Response::new(String::new()))
            }
        })
    };
    let svc = layer.clone().layer(inner);
    let call = || {
        let request = Request::post("/v1/calls")
            .header("x-api-key", "acct_1")
            .body(())
            .unwrap();
        tokio::spawn(svc.clone().oneshot(request))
    };
    let live: Vec<_> = (0..2).map(|_| call()).collect();
    tokio::task::yield_now().await;
    assert_eq!(layer.keys_in_flight(), 1, "two live calls of one account");

    // A campaign of the same account: one slot is left while both live
    // calls last.
    let waves = layer.waves("concurrent_calls").unwrap();
    let campaign = waves.campaign("acct_1", 3, 10);
    let gauge = Gauge::default();
    let start = tokio::time::Instant::now();
    let run = campaign.run((0..6).map(|i| Gauge::job(vec![&gauge], 100, i)));
    tokio::pin!(run);
    // 250 ms of the campaign on the one slot left.
    tokio::select! {
        _ = &mut run => panic!("the campaign cannot be done yet"),
        _ = tokio::time::sleep(std::time::Duration::from_millis(250)) => {}
    }
    assert_eq!(
        gauge.peak(),
        1,
        "the live calls hold two of the three slots"
    );
    // The campaign holds the third: a live call now is refused at once.
    let refused = call().await.unwrap().unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    // The live calls end; the rest of the campaign runs three at once.
    hang_up.notify_waiters();
    for answer in live {
        assert_eq!(answer.await.unwrap().unwrap().status(), StatusCode::OK);
    }
    assert_eq!(run.await.unwrap().len(), 6);
    assert_eq!(gauge.peak(), 3);
    // Jobs 0 and 1 one after the other, job 2 from 200 ms; at 250 ms jobs
    // 3 and 4 take the freed slots, and job 5 job 2's at 300: done at 400.
    assert_eq!(ms_since(start), 400);
    assert_eq!(layer.keys_in_flight(), 0);
    // Only a limit the policy has can lend its slots.
    assert!(layer.waves("no such limit").is_err());
}

#[tokio::test(start_paused = true)]
async fn a_campaign_under_a_layer_runs_no_more_at_once_than_the_layers_cap() {
    use tower_ratelimit::RateLimitLayer;

    // The layer caps `acct_1` at 3 calls at once; the campaign asks for 10.
    let layer = RateLimitLayer::new(calls_policy());
    let waves = layer.waves("concurrent_calls").unwrap();
    let campaign = waves.campaign("acct_1", 10, 10);
    let gauge = Gauge::default();
    let start = tokio::time::Instant::now();
    let done = campaign
        .run((0..9).map(|i| Gauge::job(vec![&gauge], 100, i)))
        .await
        .unwrap();
    assert_eq!(done, (0..9).collect::<Vec<_>>());
    assert_eq!(gauge.peak(), 3);
    assert_eq!(ms_since(start), 300);
    // A lower campaign cap still lowers it.
    let campaign = waves.campaign("acct_1", 2, 10);
    let gauge = Gauge::default();
    let start = tokio::time::Instant::now();
    campaign
        .run((0..4).map(|i| Gauge::job(vec![&gauge], 100, i)))
        .await
        .unwrap();
    assert_eq!((gauge.peak(), ms_since(start)), (2, 200));
}
