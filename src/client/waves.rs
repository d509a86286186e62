//! [`Waves`] and [`Campaign`]: batch work launched in waves under an
//! account's in-flight cap and a campaign's own.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::future::{poll_fn, Future};
use std::hash::BuildHasher;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use crate::inflight::{Busy, ConcurrencyLimiter, Mode, Permit, SlotFuture};

/// Waits without a bound: a campaign's jobs wait for each other, not for a
/// deadline.
const WAIT: Mode = Mode::Queue {
    max_queued: usize::MAX,
    max_wait: Duration::MAX,
};

/// The in-flight caps of accounts, shared by all their campaigns (Nixflex:
/// "the engine launches calls in waves up to your account's concurrent call
/// limit").
///
/// Cheap to clone; clones share the counts. Each [`Campaign`] runs its jobs
/// at most `min(account cap, max_concurrent)` at once, and the account's
/// campaigns together at most the account cap. (Campaigns of one account
/// that give it different caps: the account's slots follow the cap its
/// latest job asked under, and each campaign still runs at most its own
/// limit. Under a layer, that cap is never above the limit's cap for the
/// account.) A job holds its
/// slots until it ends; the next waiting job (first come, first served)
/// then starts.
/// The slots are those of the crate's in-flight limiter: see
/// [`Quota::in_flight`](crate::Quota::in_flight).
///
/// [`Waves::new`] keeps the accounts' slots apart from everything else;
/// [`RateLimitLayer::waves`](crate::RateLimitLayer::waves) takes them from a
/// layer's in-flight cap of one limit, so that an account's campaign jobs
/// and its requests under that cap count together.
///
/// ```
/// use std::time::Duration;
/// use tower_ratelimit::client::Waves;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let waves = Waves::new();
/// // An account of 10 calls at once, a campaign throttled to 5.
/// let campaign = waves.campaign("acct_1", 10, 5);
/// let calls = (0..40).map(|i| async move {
///     tokio::time::sleep(Duration::from_millis(1)).await;
///     i
/// });
/// let done = campaign.run(calls).await.unwrap();
/// assert_eq!(done.len(), 40);
/// # }
/// ```
#[derive(Clone, Default)]
pub struct Waves {
    accounts: Accounts,
    campaigns: ConcurrencyLimiter,
    next_campaign: Arc<AtomicU64>,
}

/// Where the accounts' slots come from.
#[derive(Clone)]
enum Accounts {
    /// The waves' own limiter (accounts by a hash of their name).
    Own(ConcurrencyLimiter, RandomState),
    /// A rate-limit layer's in-flight caps.
    Layer(Arc<dyn AccountSlots>),
}

impl Default for Accounts {
    fn default() -> Self {
        Accounts::Own(ConcurrencyLimiter::new(), RandomState::new())
    }
}

/// An account's slots under a cap kept elsewhere (a layer's in-flight cap
/// of one limit: see [`RateLimitLayer::waves`](crate::RateLimitLayer::waves)).
pub(crate) trait AccountSlots: Send + Sync {
    /// A slot of `account`, whose cap is `cap`, taken in `mode`.
    fn acquire(&self, account: &str, cap: u32, mode: Mode) -> SlotFuture;
}

impl Waves {
    /// Caps for accounts yet unseen, kept by the waves themselves.
    pub fn new() -> Self {
        Self::default()
    }

    /// Waves whose accounts' slots are taken from `slots`.
    pub(crate) fn sharing(slots: Arc<dyn AccountSlots>) -> Self {
        Waves {
            accounts: Accounts::Layer(slots),
            ..Self::default()
        }
    }

    /// A slot of `account`, whose cap is `cap`, taken in `mode`.
    pub(crate) fn account_slot(&self, account: &str, cap: u32, mode: Mode) -> SlotFuture {
        match &self.accounts {
            Accounts::Own(limiter, hasher) => {
                Box::pin(limiter.acquire(hasher.hash_one(account), cap, mode))
            }
            Accounts::Layer(slots) => slots.acquire(account, cap, mode),
        }
    }

    /// A campaign of `account`, whose jobs take at most `account_cap` slots
    /// at once with the account's other campaigns, and at most
    /// `max_concurrent` of their own. A cap of 0 is taken as 1, so that a
    /// campaign always moves on.
    pub fn campaign(&self, account: &str, account_cap: u32, max_concurrent: u32) -> Campaign {
        Campaign {
            waves: self.clone(),
            account: account.into(),
            account_cap: account_cap.max(1),
            id: self.next_campaign.fetch_add(1, Ordering::Relaxed),
            max_concurrent: max_concurrent.max(1),
        }
    }
}

impl fmt::Debug for Waves {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let accounts = match &self.accounts {
            Accounts::Own(..) => "own",
            Accounts::Layer(_) => "a layer's",
        };
        f.debug_struct("Waves")
            .field("accounts", &accounts)
            .field("campaigns", &self.campaigns)
            .finish_non_exhaustive()
    }
}

/// One campaign's jobs under its caps: made by [`Waves::campaign`].
#[derive(Clone)]
pub struct Campaign {
    waves: Waves,
    account: Arc<str>,
    account_cap: u32,
    id: u64,
    max_concurrent: u32,
}

/// A job's two slots: the campaign's and the account's.
type Slots = (Permit, Permit);

/// The next job's slots, on their way.
type Acquiring<'a> = Pin<Box<dyn Future<Output = Result<Slots, Busy>> + Send + 'a>>;

impl Campaign {
    /// The most of this campaign's jobs that run at once:
    /// `min(account cap, max_concurrent)`.
    pub fn limit(&self) -> u32 {
        self.account_cap.min(self.max_concurrent)
    }

    /// Runs `jobs` in order, each started once it has a slot of the
    /// campaign and one of the account, and its slots freed as it ends;
    /// resolves to their outputs, in order, once all have ended.
    ///
    /// The jobs are polled within this future (no task is spawned), at most
    /// [`Campaign::limit`] at once. Dropping it drops the running jobs and
    /// frees their slots. It fails with [`Busy`] only if the in-flight
    /// limiter does (it waits without a bound, so it does not).
    pub async fn run<I, F>(&self, jobs: I) -> Result<Vec<F::Output>, Busy>
    where
        I: IntoIterator<Item = F>,
        F: Future,
    {
        let mut jobs = jobs.into_iter();
        let mut next = jobs.next();
        let mut outputs: Vec<Option<F::Output>> = Vec::new();
        let mut running: Vec<(usize, Pin<Box<F>>, Slots)> = Vec::new();
        let mut acquiring: Option<Acquiring<'_>> = None;
        poll_fn(|cx| {
            while next.is_some() {
                let slots = acquiring.get_or_insert_with(|| Box::pin(self.slots()));
                let slots = match slots.as_mut().poll(cx) {
                    Poll::Ready(Ok(slots)) => slots,
                    Poll::Ready(Err(busy)) => return Poll::Ready(Err(busy)),
                    Poll::Pending => break,
                };
                acquiring = None;
                if let Some(job) = next.take() {
                    running.push((outputs.len(), Box::pin(job), slots));
                    outputs.push(None);
                }
                next = jobs.next();
            }
            running.retain_mut(|(i, job, _)| match job.as_mut().poll(cx) {
                Poll::Ready(output) => {
                    outputs[*i] = Some(output);
                    false
                }
                Poll::Pending => true,
            });
            // A job that ends frees its slots, which wakes the waiting
            // `acquiring` (and so this task) if they let the next job start.
            if next.is_none() && running.is_empty() {
                Poll::Ready(Ok(outputs.drain(..).flatten().collect()))
            } else {
                Poll::Pending
            }
        })
        .await
    }

    /// A slot of the campaign (under its [`limit`](Campaign::limit), so
    /// that it holds whatever cap the account's other campaigns give), then
    /// one of the account.
    async fn slots(&self) -> Result<Slots, Busy> {
        let waves = &self.waves;
        let own = waves.campaigns.acquire(self.id, self.limit(), WAIT).await?;
        let account = waves
            .account_slot(&self.account, self.account_cap, WAIT)
            .await?;
        Ok((own, account))
    }
}

impl fmt::Debug for Campaign {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Campaign")
            .field("account_cap", &self.account_cap)
            .field("max_concurrent", &self.max_concurrent)
            .finish_non_exhaustive()
    }
}
