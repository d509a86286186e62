//! The circuit breaker: after a run of failures, stop waiting on Redis for a
//! cool-down, then let one request probe it.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// Counts consecutive failures (none of them with an answer from Redis in
/// between); opens after `threshold` of them.
#[derive(Debug)]
pub(crate) struct Breaker {
    threshold: u32,
    cool_down: Duration,
    state: Mutex<State>,
    /// When Redis last answered a call, in ns after `born` (0: never).
    answered: AtomicU64,
    /// When a failure was last counted, in ns after `born` (0: never).
    failed: AtomicU64,
    born: Instant,
    /// On a cluster, how recently another node must have answered for an
    /// error to be one node's rather than the store's (`None`: one server,
    /// every error counts).
    partial: Option<Duration>,
    /// `ratelimit_breaker_open{store="redis"}` (feature `metrics`): 1 while
    /// open.
    #[cfg(feature = "metrics")]
    open_gauge: metrics::Gauge,
    /// Run when Redis seems silent on the connections the store holds (see
    /// [`Breaker::on_silence`]).
    on_silence: OnceLock<OnSilence>,
    /// When `on_silence` last ran, in ns after `born` (0: never).
    renewed: AtomicU64,
}

/// What the store does when Redis seems silent (see [`Breaker::on_silence`]).
struct OnSilence(Box<dyn Fn() + Send + Sync>);

impl std::fmt::Debug for OnSilence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnSilence")
    }
}

#[derive(Debug, Default)]
struct State {
    failures: u32,
    /// While set, Redis is not called until then.
    open_until: Option<Instant>,
    /// A probe is under way; other requests keep failing fast meanwhile.
    probing: bool,
}

/// May a request call Redis?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Permit {
    /// Yes.
    Call,
    /// Yes, as the one probe after a cool-down.
    Probe,
    /// No: the breaker is open for this much longer.
    Refused(Duration),
}

/// What a finished call did to the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transition {
    None,
    Opened,
    Closed,
}

impl Breaker {
    pub(crate) fn new(threshold: u32, cool_down: Duration) -> Self {
        Breaker {
            threshold: threshold.max(1),
            cool_down,
            state: Mutex::new(State::default()),
            answered: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            born: Instant::now(),
            partial: None,
            #[cfg(feature = "metrics")]
            open_gauge: metrics::gauge!("ratelimit_breaker_open", "store" => "redis"),
            on_silence: OnceLock::new(),
            renewed: AtomicU64::new(0),
        }
    }

    /// Runs `hook` each time the breaker opens, or stays open after a
    /// failed probe, and when a call is [`lost`](Breaker::lost) (once; a
    /// second hook is ignored).
    pub(crate) fn on_silence(&self, hook: impl Fn() + Send + Sync + 'static) {
        let _ = self.on_silence.set(OnSilence(Box::new(hook)));
    }

    /// Runs the silence hook.
    fn silence(&self) {
        self.renewed.fetch_max(self.stamp(), Ordering::Relaxed);
        if let Some(OnSilence(hook)) = self.on_silence.get() {
            hook();
        }
    }

    /// A call was still unanswered `grace` after its deadline (see
    /// [`within`]): the connection it went out on is taken for silent (on a
    /// cluster, where other nodes answer, the breaker never opens for one
    /// node's silence). Runs the silence hook, unless it ran within the
    /// last `grace` (the calls lost in one silence renew the connection
    /// once).
    pub(crate) fn lost(&self, grace: Duration) {
        let last = self.renewed.load(Ordering::Relaxed);
        let grace = u64::try_from(grace.as_nanos()).unwrap_or(u64::MAX);
        let now = self.stamp();
        if last != 0 && now.saturating_sub(last) < grace {
            return;
        }
        if self
            .renewed
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            tracing::warn!(
                cool_down = ?self.cool_down,
                "rate-limit store: a call to Redis went unanswered a cool-down past its deadline"
            );
            self.silence();
        }
    }

    /// Sets the open gauge (under the state's lock, so that it follows the
    /// state's order).
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    fn gauge(&self, open: bool) {
        #[cfg(feature = "metrics")]
        self.open_gauge.set(if open { 1.0 } else { 0.0 });
    }

    pub(crate) fn cool_down(&self) -> Duration {
        self.cool_down
    }

    pub(crate) fn permit(&self) -> Permit {
        let mut state = self.state.lock();
        let Some(until) = state.open_until else {
            return Permit::Call;
        };
        let now = Instant::now();
        if now < until {
            return Permit::Refused(until - now);
        }
        if state.probing {
            // Past the cool-down, waiting for the probe: a short wait.
            return Permit::Refused(self.cool_down.min(Duration::from_secs(1)));
        }
        state.probing = true;
        Permit::Probe
    }

    /// How long a fail-closed refusal should ask the client to wait.
    pub(crate) fn retry_hint(&self) -> Duration {
        let state = self.state.lock();
        match state.open_until {
            Some(until) => until
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
            None => self.cool_down,
        }
    }

    /// A breaker for a cluster: an error counts only once no node has
    /// answered for `quiet` (the deadline), so one failed node does not
    /// stop the calls to the others.
    pub(crate) fn on_cluster(mut self, quiet: Duration) -> Self {
        self.partial = Some(quiet);
        self
    }

    /// Now, in ns after `born` (at least 1, so that 0 means never).
    fn stamp(&self) -> u64 {
        let since = Instant::now()
            .saturating_duration_since(self.born)
            .as_nanos();
        u64::try_from(since).unwrap_or(u64::MAX).max(1)
    }

    /// Whether the moment in `at` is after `start`.
    fn after(&self, at: &AtomicU64, start: Instant) -> bool {
        let start = start.saturating_duration_since(self.born).as_nanos();
        at.load(Ordering::Relaxed) > u64::try_from(start).unwrap_or(u64::MAX)
    }

    /// Notes that Redis answered a call just now.
    fn heard(&self) {
        self.answered.fetch_max(self.stamp(), Ordering::Relaxed);
    }

    pub(crate) fn success(&self, permit: Permit) -> Transition {
        self.heard();
        let mut state = self.state.lock();
        state.failures = 0;
        if permit == Permit::Probe {
            state.probing = false;
        }
        if state.open_until.take().is_some() {
            self.gauge(false);
            return Transition::Closed;
        }
        Transition::None
    }

    /// Counts a failure. The failures in a run are consecutive: an answer
    /// from Redis since the last one counted (even a late one, or another
    /// call's) ends the run, and this failure starts a new one.
    pub(crate) fn failure(&self, permit: Permit) -> Transition {
        let transition = self.count_failure(permit);
        if transition == Transition::Opened || permit == Permit::Probe {
            self.silence();
        }
        transition
    }

    fn count_failure(&self, permit: Permit) -> Transition {
        let mut state = self.state.lock();
        let previous = self.failed.fetch_max(self.stamp(), Ordering::Relaxed);
        if self.answered.load(Ordering::Relaxed) > previous {
            state.failures = 0;
        }
        state.failures = state.failures.saturating_add(1);
        if permit == Permit::Probe {
            state.probing = false;
            state.open_until = Some(Instant::now() + self.cool_down);
            self.gauge(true);
            return Transition::None;
        }
        if state.failures >= self.threshold && state.open_until.is_none() {
            state.open_until = Some(Instant::now() + self.cool_down);
            self.gauge(true);
            return Transition::Opened;
        }
        Transition::None
    }

    /// A probe that ended without an answer (its request was dropped): the
    /// next request probes instead.
    pub(crate) fn abandoned(&self, permit: Permit) {
        if permit == Permit::Probe {
            self.state.lock().probing = false;
        }
    }

    /// The number of failures since the last success.
    pub(crate) fn consecutive_failures(&self) -> u32 {
        self.state.lock().failures
    }

    pub(crate) fn is_open(&self) -> bool {
        self.state.lock().open_until.is_some()
    }
}

/// Sends `call` now and waits for its answer at most `deadline`; past it,
/// says when the call was sent. The call is polled here, so an answer that
/// has come is taken even as the deadline passes. A call still unanswered
/// then goes on in a task of its own, for one cool-down (at least one
/// deadline) more: when Redis answers late, the breaker still hears it, so a
/// queue of calls that all wait past their deadlines behind this process's
/// own commands is not taken for a silent Redis. A call unanswered even
/// then is [`lost`](Breaker::lost), and given up.
pub(crate) async fn within<T, F>(
    breaker: &Arc<Breaker>,
    deadline: Duration,
    call: F,
) -> Result<redis::RedisResult<T>, Instant>
where
    T: Send + 'static,
    F: Future<Output = redis::RedisResult<T>> + Send + 'static,
{
    let sent = Instant::now();
    let mut call = Box::pin(call);
    match tokio::time::timeout(deadline, &mut call).await {
        Ok(answer) => {
            if answer.is_ok() {
                breaker.heard();
            }
            Ok(answer)
        }
        Err(_) => {
            let heard_by = Arc::clone(breaker);
            let grace = breaker.cool_down.max(deadline);
            tokio::spawn(async move {
                match tokio::time::timeout(grace, call).await {
                    Ok(Ok(_)) => heard_by.heard(),
                    Ok(Err(_)) => {}
                    Err(_) => heard_by.lost(grace),
                }
            });
            Err(sent)
        }
    }
}

/// A call's permit, handed back to the breaker exactly once: as a success, a
/// failure, or (when dropped unanswered) as abandoned.
#[derive(Debug)]
pub(crate) struct Ticket {
    breaker: Arc<Breaker>,
    permit: Permit,
    done: bool,
}

impl Ticket {
    pub(crate) fn new(breaker: Arc<Breaker>, permit: Permit) -> Self {
        Ticket {
            breaker,
            permit,
            done: false,
        }
    }

    /// The call missed its deadline; it was sent to Redis at `sent` (what
    /// the request waited in this process before that is no silence of
    /// Redis). It counts as a failure of Redis only if Redis answered no
    /// call since it was sent (else it waited behind this process's own
    /// commands: a load made here, not a fault there) and no failure was
    /// counted meanwhile (else its wait is a silence already counted: calls
    /// that pile up during one silence are one failure, not one each).
    /// Otherwise the breaker is left as it was (`None`).
    pub(crate) fn timed_out(mut self, sent: Instant) -> Option<Transition> {
        let breaker = &self.breaker;
        if breaker.after(&breaker.answered, sent) || breaker.after(&breaker.failed, sent) {
            // Dropped as abandoned: a probe lets the next call probe.
            return None;
        }
        self.done = true;
        Some(self.breaker.failure(self.permit))
    }

    /// The call failed with an error from Redis. On a cluster whose nodes
    /// answered other calls within the deadline, it is one node's failure:
    /// the breaker, which stands for the whole store, is left as it was
    /// (`None`) and this request alone follows its failure policy.
    pub(crate) fn errored(mut self) -> Option<Transition> {
        let breaker = &self.breaker;
        if let Some(quiet) = breaker.partial {
            let since = Instant::now().checked_sub(quiet).unwrap_or(breaker.born);
            if breaker.after(&breaker.answered, since) {
                return None;
            }
        }
        self.done = true;
        Some(self.breaker.failure(self.permit))
    }

    pub(crate) fn success(mut self) -> Transition {
        self.done = true;
        self.breaker.success(self.permit)
    }

    pub(crate) fn failure(mut self) -> Transition {
        self.done = true;
        self.breaker.failure(self.permit)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.done {
            self.breaker.abandoned(self.permit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn opens_after_the_threshold_then_probes_once_after_the_cool_down() {
        let breaker = Breaker::new(3, Duration::from_secs(2));
        for _ in 0..2 {
            assert_eq!(breaker.permit(), Permit::Call);
            assert_eq!(breaker.failure(Permit::Call), Transition::None);
        }
        assert_eq!(breaker.failure(Permit::Call), Transition::Opened);
        assert_eq!(breaker.permit(), Permit::Refused(Duration::from_secs(2)));
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(breaker.retry_hint(), Duration::from_millis(500));
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(breaker.permit(), Permit::Probe);
        assert!(
            matches!(breaker.permit(), Permit::Refused(_)),
            "one probe at a time"
        );
        // The probe fails: another cool-down.
        assert_eq!(breaker.failure(Permit::Probe), Transition::None);
        assert_eq!(breaker.permit(), Permit::Refused(Duration::from_secs(2)));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(breaker.permit(), Permit::Probe);
        assert_eq!(breaker.success(Permit::Probe), Transition::Closed);
        assert_eq!(breaker.permit(), Permit::Call);
        assert_eq!(breaker.consecutive_failures(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_probe_lets_the_next_request_probe() {
        let breaker = Arc::new(Breaker::new(1, Duration::from_secs(1)));
        breaker.failure(Permit::Call);
        tokio::time::advance(Duration::from_secs(1)).await;
        let permit = breaker.permit();
        assert_eq!(permit, Permit::Probe);
        drop(Ticket::new(Arc::clone(&breaker), permit));
        assert_eq!(breaker.permit(), Permit::Probe);
    }

    #[tokio::test(start_paused = true)]
    async fn a_timeout_while_redis_answers_others_is_not_a_failure() {
        let breaker = Arc::new(Breaker::new(1, Duration::from_secs(1)));
        let waiting = Ticket::new(Arc::clone(&breaker), breaker.permit());
        let sent = Instant::now();
        tokio::time::advance(Duration::from_millis(10)).await;
        // A call written earlier is answered while this one waits.
        Ticket::new(Arc::clone(&breaker), Permit::Call).success();
        tokio::time::advance(Duration::from_millis(50)).await;
        assert_eq!(waiting.timed_out(sent), None);
        assert!(!breaker.is_open());
        assert_eq!(breaker.consecutive_failures(), 0);
        // Silence since the call started: a failure, and the breaker opens.
        let silent = Ticket::new(Arc::clone(&breaker), breaker.permit());
        let sent = Instant::now();
        tokio::time::advance(Duration::from_millis(50)).await;
        assert_eq!(silent.timed_out(sent), Some(Transition::Opened));
        assert!(breaker.is_open());
    }

    #[tokio::test(start_paused = true)]
    async fn a_silence_is_timed_from_when_the_call_was_sent() {
        let breaker = Arc::new(Breaker::new(1, Duration::from_secs(1)));
        // A request waits here 30 ms before its call is sent; Redis answers
        // another call meanwhile, then nothing once this one is sent.
        let late = Ticket::new(Arc::clone(&breaker), breaker.permit());
        tokio::time::advance(Duration::from_millis(10)).await;
        Ticket::new(Arc::clone(&breaker), Permit::Call).success();
        tokio::time::advance(Duration::from_millis(20)).await;
        let sent = Instant::now();
        tokio::time::advance(Duration::from_millis(50)).await;
        assert_eq!(late.timed_out(sent), Some(Transition::Opened));
    }

    #[tokio::test(start_paused = true)]
    async fn past_the_deadline_within_says_when_the_call_was_sent_and_hears_it_late() {
        let breaker = Arc::new(Breaker::new(1, Duration::from_secs(1)));
        let deadline = Duration::from_millis(50);
        let start = Instant::now();
        let silent = within(
            &breaker,
            deadline,
            std::future::pending::<redis::RedisResult<()>>(),
        );
        assert_eq!(silent.await.expect_err("no answer"), start);
        let answered = within(&breaker, deadline, async { Ok(7) }).await;
        assert_eq!(answered.ok().and_then(Result::ok), Some(7));
        // An answer past the deadline: the request has gone on without it,
        // and the breaker hears it all the same.
        let heard = |b: &Breaker| b.answered.load(Ordering::Relaxed);
        let before = heard(&breaker);
        let slow = async {
            tokio::time::sleep(Duration::from_millis(80)).await;
            Ok(1)
        };
        let waited = tokio::time::Instant::now();
        assert!(within(&breaker, deadline, slow).await.is_err());
        assert_eq!(waited.elapsed(), deadline);
        assert_eq!(heard(&breaker), before, "not yet");
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert!(heard(&breaker) > before, "heard late");
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_unanswered_a_cool_down_past_its_deadline_renews_once_per_cool_down() {
        let breaker = Arc::new(Breaker::new(3, Duration::from_secs(1)));
        let runs = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&runs);
        breaker.on_silence(move || {
            counted.fetch_add(1, Ordering::Relaxed);
        });
        let renewals = || runs.load(Ordering::Relaxed);
        let deadline = Duration::from_millis(50);
        let silent = || std::future::pending::<redis::RedisResult<()>>();
        let calls = (0..5).map(|_| within(&breaker, deadline, silent()));
        let missed = futures::future::join_all(calls).await;
        assert!(missed.iter().all(Result::is_err));
        tokio::time::sleep(Duration::from_millis(990)).await;
        assert_eq!(renewals(), 0, "a late answer may still come");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(renewals(), 1, "five calls lost in one silence: one renewal");
        assert_eq!(
            breaker.consecutive_failures(),
            0,
            "the breaker is left as it was"
        );
        let grace = Duration::from_secs(1);
        tokio::time::advance(Duration::from_millis(900)).await;
        breaker.lost(grace);
        assert_eq!(renewals(), 1, "within a cool-down of the last");
        tokio::time::advance(Duration::from_millis(100)).await;
        breaker.lost(grace);
        assert_eq!(renewals(), 2);
        // An opening renews too, and is the last renewal for a lost call.
        tokio::time::advance(Duration::from_secs(1)).await;
        for _ in 0..3 {
            breaker.failure(Permit::Call);
        }
        assert_eq!(renewals(), 3);
        breaker.lost(grace);
        assert_eq!(renewals(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_cool_down_a_late_answer_is_awaited_one_deadline() {
        let breaker = Arc::new(Breaker::new(3, Duration::ZERO));
        let deadline = Duration::from_millis(50);
        let slow = async {
            tokio::time::sleep(Duration::from_millis(90)).await;
            Ok(1)
        };
        assert!(within(&breaker, deadline, slow).await.is_err());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(breaker.answered.load(Ordering::Relaxed) > 0, "heard late");
    }

    #[tokio::test(start_paused = true)]
    async fn calls_that_pile_up_in_one_silence_are_one_failure() {
        let breaker = Arc::new(Breaker::new(3, Duration::from_secs(1)));
        let piled: Vec<_> = (0..10)
            .map(|_| Ticket::new(Arc::clone(&breaker), breaker.permit()))
            .collect();
        let sent = Instant::now();
        tokio::time::advance(Duration::from_millis(50)).await;
        let counted: Vec<_> = piled.into_iter().map(|t| t.timed_out(sent)).collect();
        assert_eq!(counted[0], Some(Transition::None));
        assert!(counted[1..].iter().all(Option::is_none), "{counted:?}");
        assert_eq!(breaker.consecutive_failures(), 1);
        // Each later silence, one deadline long, counts once more.
        for expected in [Transition::None, Transition::Opened] {
            let ticket = Ticket::new(Arc::clone(&breaker), breaker.permit());
            let sent = Instant::now();
            tokio::time::advance(Duration::from_millis(50)).await;
            assert_eq!(ticket.timed_out(sent), Some(expected));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn on_a_cluster_an_error_while_other_nodes_answer_is_one_nodes() {
        let deadline = Duration::from_millis(50);
        let cluster = Arc::new(Breaker::new(1, Duration::from_secs(1)).on_cluster(deadline));
        Ticket::new(Arc::clone(&cluster), Permit::Call).success();
        tokio::time::advance(Duration::from_millis(40)).await;
        let ticket = Ticket::new(Arc::clone(&cluster), cluster.permit());
        assert_eq!(ticket.errored(), None, "a node answered 40 ms ago");
        assert!(!cluster.is_open());
        tokio::time::advance(Duration::from_millis(20)).await;
        let ticket = Ticket::new(Arc::clone(&cluster), cluster.permit());
        assert_eq!(ticket.errored(), Some(Transition::Opened), "silent 60 ms");
        // One server: every error counts.
        let single = Arc::new(Breaker::new(1, Duration::from_secs(1)));
        Ticket::new(Arc::clone(&single), Permit::Call).success();
        let ticket = Ticket::new(Arc::clone(&single), single.permit());
        assert_eq!(ticket.errored(), Some(Transition::Opened));
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_answer_between_two_silences_ends_the_run_of_failures() {
        let breaker = Arc::new(Breaker::new(2, Duration::from_secs(1)));
        let silence = |breaker: &Arc<Breaker>| {
            let ticket = Ticket::new(Arc::clone(breaker), breaker.permit());
            let sent = Instant::now();
            async move {
                tokio::time::advance(Duration::from_millis(50)).await;
                ticket.timed_out(sent)
            }
        };
        assert_eq!(silence(&breaker).await, Some(Transition::None));
        // A call that missed its deadline is answered after all: Redis is
        // slow here or this process is loaded, but Redis is not silent.
        tokio::time::advance(Duration::from_millis(5)).await;
        breaker.heard();
        tokio::time::advance(Duration::from_millis(5)).await;
        assert_eq!(silence(&breaker).await, Some(Transition::None));
        assert_eq!(breaker.consecutive_failures(), 1);
        assert!(!breaker.is_open());
        // Two silences with nothing heard between them open it.
        assert_eq!(silence(&breaker).await, Some(Transition::Opened));
    }

    #[test]
    fn a_success_resets_the_run_of_failures() {
        let breaker = Breaker::new(2, Duration::from_secs(1));
        breaker.failure(Permit::Call);
        breaker.success(Permit::Call);
        assert_eq!(breaker.failure(Permit::Call), Transition::None);
        assert!(!breaker.is_open());
    }
}
