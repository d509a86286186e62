//! Memory per tracked key: this crate's `MemoryStore` against `governor`'s
//! keyed store, and the memory given back once keys go idle.
//!
//! Run with `cargo bench -p tower-ratelimit-benches --bench memory`. Bytes are
//! counted by a counting global allocator (only this thread's allocations):
//! what the data structures ask the allocator for, without the allocator's own
//! overhead.

mod support;

use std::hint::black_box;
use std::num::NonZeroU32;

use governor::{Quota as GovernorQuota, RateLimiter};
use support::{bucket, T0};
use tower_ratelimit::store::protocol::{Check, Decided};
use tower_ratelimit::store::{MemoryStore, Store};
use tower_ratelimit::{Quota, Window};

const S: u64 = 1_000_000_000;

/// Net bytes allocated (and not freed) while `f` runs.
fn net_bytes(f: impl FnOnce()) -> i64 {
    allocation_counter::measure(f).bytes_current
}

fn quota(windows: usize) -> Quota {
    let quota = Quota::new(Window::per_minute(60));
    if windows == 2 {
        quota.and(Window::per_hour(1000))
    } else {
        quota
    }
}

fn admitted(store: &MemoryStore, now: u64, checks: &[Check<'_>]) -> bool {
    match store.check(now, checks) {
        Decided::Ready(Ok(outcome)) => outcome.admitted(),
        other => panic!("the memory store answered {other:?}"),
    }
}

struct Row {
    what: String,
    keys: u64,
    windows: usize,
    bytes: i64,
    returned: Option<i64>,
}

fn memory_store(keys: u64, windows: usize) -> Row {
    let quota = quota(windows);
    let store = MemoryStore::with_max_entries(4 * keys as usize);
    let grown = net_bytes(|| {
        for i in 0..keys {
            assert!(admitted(&store, T0, &[Check::new(bucket(i), &quota)]));
        }
    });
    assert_eq!(store.len() as u64, keys * windows as u64);
    // An hour and a minute later every key is back to a fresh key's state.
    let swept = net_bytes(|| store.sweep(T0 + 3661 * S));
    assert!(store.is_empty());
    Row {
        what: "tower-ratelimit MemoryStore".into(),
        keys,
        windows,
        bytes: grown,
        returned: Some(-swept),
    }
}

fn governor_u64(keys: u64) -> Row {
    let limiter = RateLimiter::keyed(GovernorQuota::per_minute(NonZeroU32::new(60).unwrap()));
    let grown = net_bytes(|| {
        for i in 0..keys {
            assert!(limiter.check_key(&bucket(i)).is_ok());
        }
    });
    black_box(&limiter);
    Row {
        what: "governor keyed, u64 keys".into(),
        keys,
        windows: 1,
        bytes: grown,
        returned: None,
    }
}

fn governor_string(keys: u64) -> Row {
    let limiter = RateLimiter::keyed(GovernorQuota::per_minute(NonZeroU32::new(60).unwrap()));
    let grown = net_bytes(|| {
        for i in 0..keys {
            // A 32-byte API key, owned by the map as a `String`.
            let key = format!("nx_live_{:024x}", bucket(i) as u128);
            assert!(limiter.check_key(&key).is_ok());
        }
    });
    black_box(&limiter);
    Row {
        what: "governor keyed, 32-byte String keys".into(),
        keys,
        windows: 1,
        bytes: grown,
        returned: None,
    }
}

fn main() {
    // `cargo test --benches` runs this with `--bench` absent: keep it quick.
    let full = std::env::args().any(|a| a == "--bench");
    let sizes: &[u64] = if full {
        &[10_000, 1_000_000]
    } else {
        &[10_000]
    };
    let mut rows = Vec::new();
    for &keys in sizes {
        for windows in [1, 2] {
            rows.push(memory_store(keys, windows));
        }
        rows.push(governor_u64(keys));
        rows.push(governor_string(keys));
    }
    println!("| store | keys | windows | bytes | bytes per key per window | returned after idle |");
    println!("|---|---:|---:|---:|---:|---|");
    for row in rows {
        let per = row.bytes as f64 / (row.keys as f64 * row.windows as f64);
        let returned = match row.returned {
            Some(r) => format!("{:.1}% ({r} B)", 100.0 * r as f64 / row.bytes as f64),
            None => "n/a".into(),
        };
        println!(
            "| {} | {} | {} | {} | {per:.1} | {returned} |",
            row.what, row.keys, row.windows, row.bytes
        );
    }
}
