//! The limiter's table: each key's count of slots in use and its line of
//! waiters, spread over padded, locked shards.

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::Waker;
use std::time::Duration;

use parking_lot::Mutex;
use smallvec::SmallVec;
use tokio::time::Instant;

use super::{Busy, Mode, Permit, Release, Source, SHARDS};
use crate::shard::{sparse, MixedKeyMap, Padded};

/// The shared state: keys spread over padded, locked shards.
/// The shared state: keys spread over padded, locked shards.
pub(super) struct Inner {
    pub(super) shards: Box<[Padded<Mutex<Shard>>]>,
}

impl Default for Inner {
    fn default() -> Self {
        Inner {
            shards: (0..SHARDS)
                .map(|_| Padded(Mutex::new(Shard::default())))
                .collect(),
        }
    }
}

#[derive(Default)]
pub(super) struct Shard {
    pub(super) keys: MixedKeyMap<Entry>,
}

/// One key's count and line.
///
/// Between operations the line is empty or `in_flight >= cap`: a freed slot
/// goes straight to the oldest waiter (still counted), so a new request can
/// never find a free slot while someone waits.
#[derive(Default)]
pub(super) struct Entry {
    /// Slots held, plus slots handed to waiters that have not taken them yet.
    pub(super) in_flight: u32,
    /// The cap of the key's latest call.
    pub(super) cap: u32,
    /// The requests waiting, oldest first; tickets increase front to back.
    pub(super) queue: VecDeque<Waiter>,
    /// The ticket the next waiter gets.
    pub(super) next_ticket: u64,
}

pub(super) struct Waiter {
    ticket: u64,
    waker: Waker,
}

/// What the first poll of an [`Acquire`](super::Acquire) found.
pub(super) enum First {
    /// With the key's count now.
    Admitted(u32),
    Refused(Busy),
    Queued {
        ticket: u64,
        since: Instant,
    },
}

/// What a later poll of a waiting [`Acquire`](super::Acquire) found.
pub(super) enum Waiting {
    /// A slot was handed to it (and is counted in `in_flight`, the key's
    /// count now).
    Granted(u32),
    /// Its time ran out; it has left the line.
    Left,
    Pending,
}

/// Wakers of waiters handed a slot, woken once the shard is unlocked.
pub(super) type Wakers = SmallVec<[Waker; 4]>;

pub(super) fn wake_all(wakers: Wakers) {
    for waker in wakers {
        waker.wake();
    }
}

impl Inner {
    pub(super) fn shard(&self, key: u64) -> &Mutex<Shard> {
        // Fibonacci hashing: the top bits of the product depend on every bit
        // of the key, so small sequential keys spread as well as hashes do.
        let index = (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58) as usize % self.shards.len();
        &self.shards[index].0
    }

    /// A permit for a slot already counted in `in_flight`.
    pub(super) fn permit(self: &Arc<Self>, key: u64, in_flight: u32) -> Permit {
        Permit {
            key,
            in_flight,
            release: Release::Local(Arc::clone(self)),
            source: Source::Counted,
        }
    }

    pub(super) fn first_poll(&self, key: u64, max: u32, mode: Mode, waker: &Waker) -> First {
        let mut wake = Wakers::new();
        let first = {
            let mut shard = self.shard(key).lock();
            let entry = shard.entry(key, max, &mut wake);
            if entry.queue.is_empty() && entry.in_flight < entry.cap {
                entry.in_flight += 1;
                First::Admitted(entry.in_flight)
            } else {
                let first = match mode {
                    Mode::Queue {
                        max_queued,
                        max_wait,
                    } if entry.queue.len() < max_queued => {
                        if max_wait.is_zero() {
                            First::Refused(Busy::TimedOut {
                                waited: Duration::ZERO,
                            })
                        } else {
                            let ticket = entry.next_ticket;
                            entry.next_ticket = ticket.wrapping_add(1);
                            entry.queue.push_back(Waiter {
                                ticket,
                                waker: waker.clone(),
                            });
                            First::Queued {
                                ticket,
                                since: Instant::now(),
                            }
                        }
                    }
                    _ => First::Refused(Busy::Full {
                        in_flight: entry.in_flight,
                    }),
                };
                if let First::Refused(_) = first {
                    shard.forget_if_idle(key);
                }
                first
            }
        };
        wake_all(wake);
        first
    }

    pub(super) fn poll_queued(
        &self,
        key: u64,
        ticket: u64,
        expired: bool,
        waker: &Waker,
    ) -> Waiting {
        let mut shard = self.shard(key).lock();
        let Some(entry) = shard.keys.get_mut(&key) else {
            // Cannot happen: a waiter's key is tracked until it has taken or
            // given back its slot. Answer as if the time ran out.
            return Waiting::Left;
        };
        let Some(at) = entry.position(ticket) else {
            return Waiting::Granted(entry.in_flight);
        };
        if expired {
            entry.remove(at);
            shard.forget_if_idle(key);
            return Waiting::Left;
        }
        let slot = &mut entry.queue[at].waker;
        if !slot.will_wake(waker) {
            slot.clone_from(waker);
        }
        Waiting::Pending
    }

    /// Takes a dropped waiter out of the line, or gives back the slot it was
    /// handed and never took.
    pub(super) fn cancel(&self, key: u64, ticket: u64) {
        let mut shard = self.shard(key).lock();
        let Some(entry) = shard.keys.get_mut(&key) else {
            return;
        };
        match entry.position(ticket) {
            Some(at) => {
                entry.remove(at);
                shard.forget_if_idle(key);
            }
            None => {
                drop(shard);
                self.release(key);
            }
        }
    }

    /// Frees one slot of `key`, handing it on to the line if the cap allows.
    pub(super) fn release(&self, key: u64) {
        let mut wake = Wakers::new();
        {
            let mut shard = self.shard(key).lock();
            if let Some(entry) = shard.keys.get_mut(&key) {
                entry.in_flight = entry.in_flight.saturating_sub(1);
                entry.hand_on(&mut wake);
                shard.forget_if_idle(key);
            }
        }
        wake_all(wake);
    }
}

impl Shard {
    /// The entry of `key` (a fresh one if untracked), with its cap set to
    /// `max` and the slots a raised cap frees handed to the line.
    pub(super) fn entry(&mut self, key: u64, max: u32, wake: &mut Wakers) -> &mut Entry {
        let entry = self.keys.entry(key).or_default();
        entry.cap = max;
        entry.hand_on(wake);
        entry
    }

    /// Drops `key`'s entry if it holds nothing: no slot, no waiter.
    pub(super) fn forget_if_idle(&mut self, key: u64) {
        if self
            .keys
            .get(&key)
            .is_some_and(|e| e.in_flight == 0 && e.queue.is_empty())
        {
            self.keys.remove(&key);
            if sparse(self.keys.len(), self.keys.capacity()) {
                self.keys.shrink_to(self.keys.len() * 2);
            }
        }
    }
}

impl Entry {
    /// Hands free slots (under the cap) to the oldest waiters.
    pub(super) fn hand_on(&mut self, wake: &mut Wakers) {
        while self.in_flight < self.cap {
            let Some(waiter) = self.queue.pop_front() else {
                break;
            };
            self.in_flight += 1;
            wake.push(waiter.waker);
        }
    }

    pub(super) fn position(&self, ticket: u64) -> Option<usize> {
        self.queue.binary_search_by_key(&ticket, |w| w.ticket).ok()
    }

    pub(super) fn remove(&mut self, at: usize) {
        self.queue.remove(at);
        if sparse(self.queue.len(), self.queue.capacity()) {
            self.queue.shrink_to(self.queue.len() * 2);
        }
    }
}
