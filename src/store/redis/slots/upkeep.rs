//! The upkeep task of a node's shared slots: it renews the leases of the
//! slots this node holds and performs the releases of dropped permits and
//! waiters, in batches, retrying what Redis did not answer.

use std::collections::HashMap;
use std::sync::Weak;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::Instant;

use super::{call, millis, Count, Owner, PartsOf, IDS_PER_CALL, KEYS_PER_CALL, MAX_PENDING_FREES};

/// A message to the upkeep task.
#[derive(Debug)]
pub(super) enum Msg {
    /// This node now holds slot `n` of `key` (of `principal`): renew it.
    Held { key: Count, n: u64 },
    /// Slot or place in line `n` of `key` is given up: remove it.
    Free { key: Count, n: u64 },
}

/// The upkeep task, before it is spawned.
pub(super) struct Upkeep {
    pub(super) rx: UnboundedReceiver<Msg>,
    pub(super) lease: Duration,
}

/// A slot or place in line to remove, since when.
struct Pending {
    key: Count,
    n: u64,
    since: Instant,
}

impl Upkeep {
    /// The upkeep task: renews the leases of this node's slots every third
    /// of a lease, performs the releases of dropped permits and waiters,
    /// and ends once `owner` (the store) is gone.
    pub(super) async fn run<T: Send + Sync + 'static>(mut self, owner: Weak<T>, parts: PartsOf<T>) {
        let renew_every = (self.lease / 3).max(Duration::from_millis(1));
        let retry_every =
            (renew_every / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        // This node's slots: key -> holder counters.
        let mut held: HashMap<Count, Vec<u64>> = HashMap::new();
        let mut frees: Vec<Pending> = Vec::new();
        let mut next_renew = Instant::now() + renew_every;
        let mut retry_at: Option<Instant> = None;
        loop {
            let wake_at = retry_at.map_or(next_renew, |r| r.min(next_renew));
            let mut freed = false;
            match tokio::time::timeout_at(wake_at, self.rx.recv()).await {
                Ok(Some(msg)) => {
                    freed |= take(msg, &mut held, &mut frees);
                    while let Ok(msg) = self.rx.try_recv() {
                        freed |= take(msg, &mut held, &mut frees);
                    }
                }
                // Every sender is gone: the store and its permits.
                Ok(None) => return,
                Err(_) => {}
            }
            let Some(state) = owner.upgrade() else {
                // The store is gone: its slots expire with their leases.
                return;
            };
            let store = Owner::new(state, parts);
            let p = store.parts();
            let now = Instant::now();
            let renew = now >= next_renew;
            let retry = retry_at.is_some_and(|r| now >= r);
            if !(renew || ((freed || retry) && !frees.is_empty())) {
                continue;
            }
            // Frees older than a lease have expired by themselves.
            frees.retain(|f| now.saturating_duration_since(f.since) < self.lease);
            if frees.len() > MAX_PENDING_FREES {
                frees.drain(..frees.len() - MAX_PENDING_FREES);
            }
            let renewals: Vec<(Count, u64)> = if renew {
                held.iter()
                    .flat_map(|(&key, ns)| ns.iter().map(move |&n| (key, n)))
                    .collect()
            } else {
                Vec::new()
            };
            match upkeep(&store, &frees, &renewals).await {
                Ok(restored) => {
                    for f in frees.drain(..) {
                        p.slots.wake(f.key.key);
                    }
                    retry_at = None;
                    if restored > 0 {
                        tracing::warn!(
                            restored,
                            "rate-limit store: in-flight slots held here were missing in Redis \
                             (restarted, flushed, or unreachable past their lease); held again"
                        );
                    }
                    if renew {
                        next_renew = Instant::now() + renew_every;
                    }
                }
                Err(()) => {
                    let again = Instant::now() + retry_every;
                    if !frees.is_empty() {
                        retry_at = Some(again);
                    }
                    if renew {
                        next_renew = again;
                    }
                }
            }
        }
    }
}

/// Applies one message to the upkeep's state; whether it frees something.
fn take(msg: Msg, held: &mut HashMap<Count, Vec<u64>>, frees: &mut Vec<Pending>) -> bool {
    match msg {
        Msg::Held { key, n } => {
            held.entry(key).or_default().push(n);
            false
        }
        Msg::Free { key, n } => {
            forget(held, key, n);
            frees.push(Pending {
                key,
                n,
                since: Instant::now(),
            });
            true
        }
    }
}

fn forget(held: &mut HashMap<Count, Vec<u64>>, key: Count, n: u64) {
    if let Some(ns) = held.get_mut(&key) {
        ns.retain(|&m| m != n);
        if ns.is_empty() {
            held.remove(&key);
        }
    }
}

/// Frees `frees` and renews `renewals` (key, holder counter) in as few
/// script calls as the batch limits allow: how many renewals found their
/// slot missing in Redis, and held it again. Stops at the first call that
/// fails.
async fn upkeep<T: Send + Sync + 'static>(
    owner: &Owner<T>,
    frees: &[Pending],
    renewals: &[(Count, u64)],
) -> Result<usize, ()> {
    let p = &owner.parts();
    // Group by key, keeping the order of first appearance.
    let mut order: Vec<Count> = Vec::new();
    let mut groups: HashMap<Count, (Vec<u64>, Vec<u64>)> = HashMap::new();
    for f in frees {
        if !groups.contains_key(&f.key) {
            order.push(f.key);
        }
        groups.entry(f.key).or_default().0.push(f.n);
    }
    for &(key, n) in renewals {
        if !groups.contains_key(&key) {
            order.push(key);
        }
        groups.entry(key).or_default().1.push(n);
    }
    let lease = millis(p.slots.lease);
    let mut restored = 0;
    let mut keys: Vec<String> = Vec::new();
    let mut args: Vec<String> = Vec::new();
    let mut ids = 0;
    // On a cluster one call holds the keys of one principal (one hash
    // slot) only: the keys go principal by principal.
    let cluster = p.backend.is_cluster();
    if cluster {
        order.sort_by_key(|count| count.principal);
    }
    for (i, key) in order.iter().enumerate() {
        let (free, renew) = &groups[key];
        keys.extend(key.keys(p.prefix));
        args.push(free.len().to_string());
        args.extend(free.iter().map(|&n| p.slots.holder(n)));
        args.push(renew.len().to_string());
        args.extend(renew.iter().map(|&n| p.slots.holder(n)));
        ids += free.len() + renew.len();
        let last = i + 1 == order.len();
        let slot_ends = cluster
            && order
                .get(i + 1)
                .is_some_and(|n| n.principal != key.principal);
        if last || slot_ends || keys.len() / 4 >= KEYS_PER_CALL || ids >= IDS_PER_CALL {
            let mut call_args = Vec::with_capacity(args.len() + 2);
            call_args.push(String::from("m"));
            call_args.push(lease.clone());
            call_args.append(&mut args);
            let reply = call(owner, &keys, &call_args, p.deadline)
                .await
                .map_err(drop)?;
            restored += reply.len();
            keys.clear();
            ids = 0;
        }
    }
    Ok(restored)
}
