//! Steps 1 and 2 of a request's path: which limits apply to it (method and
//! path), and to whose key, at which quota.

use http::Request;

use super::applied::{resolve, Applied, Charge, Checks, Claim};
use super::metrics::Verdict;
use super::Shared;
use crate::decision::WindowReport;
use crate::event::{Event, EventKind};
use crate::key::{Key, KeyError, KeyErrorKind, KeySecret, RequestView};
use crate::policy::{CompiledLimit, Own};
use crate::report::quota_report;
use crate::route::{Methods, PathSegments};
use crate::store::protocol::Check;
use crate::store::Store;

/// What applies to a request.
pub(super) enum Plan {
    /// No limit: the request passes uncounted.
    Pass,
    /// The limits put in the [`Applied`], to be decided.
    Apply,
    /// A limit found no usable key: a 401, nothing counted.
    Reject(KeyError),
    /// The key is banned by a limit's penalty: refused, nothing counted.
    Banned(Ban),
}

/// A ban found in force before anything was counted.
pub(super) struct Ban {
    /// The banning limit.
    pub(super) limit: usize,
    /// Nanoseconds until it lifts.
    pub(super) left: u64,
    /// The request's bucket in that limit, for events.
    pub(super) bucket: u64,
    /// The limit's reported window.
    pub(super) report: WindowReport,
}

/// Matches `request` against every limit's routes and reads each applying
/// limit's key: puts in `applied` a charge (its windows) and a claim (its
/// in-flight cap) for each, and in `checks` the store's check of each
/// charge (built here, where its route and quota are at hand), or says why
/// the request goes no further.
pub(super) fn plan<'p, St: Store, B>(
    shared: &'p Shared<St>,
    request: &Request<B>,
    applied: &mut Applied,
    checks: &mut Checks<'p>,
) -> Plan {
    let policy = &*shared.policy.inner;
    let now = applied.now;
    let path = PathSegments::new(request.uri().path());
    let method = Methods::of(request.method());
    for (li, limit) in policy.limits.iter().enumerate() {
        let Some((ri, route, captures)) = limit.route_for(method, &path) else {
            continue;
        };
        let view = RequestView::new(request, Some(captures));
        // Read where the extractor put it: a key is some 50 bytes with
        // one-byte tags, slow to copy right after it was written.
        let extracted = limit.key.extract(&view);
        let key = match &extracted {
            Ok(key) if (1..=policy.max_key_len).contains(&key.len()) => key,
            _ => match unusable(shared, li, limit, extracted) {
                Some(error) => return Plan::Reject(error),
                None => continue,
            },
        };
        let id = limit.key_id(&policy.secret, key);
        if limit.exemptions.covers(id, &view) {
            tracing::trace!(limit = %limit.name, "limit skipped: exempt");
            continue;
        }
        let bucket = KeySecret::derive(id, route.id);
        let own = resolve(policy, li, limit, id, &view);
        let quota = route.quota_of(own.as_ref());
        let penalty_key = limit
            .penalty
            .map(|_| KeySecret::derive(id, limit.penalty_domain));
        if let (Some(key), false) = (penalty_key, limit.shadow) {
            if let Some(left) = shared.store.banned_for(key, now) {
                let report = quota_report(quota, li, ri, policy.report);
                let ban = Ban {
                    limit: li,
                    left,
                    bucket,
                    report,
                };
                return Plan::Banned(longest_ban(shared, request, &path, now, li + 1, ban));
            }
        }
        let origin = (li as u16, ri as u16);
        if let Some(cap) = quota.in_flight_cap() {
            applied.claims.push(Claim {
                origin,
                key: KeySecret::derive(id, limit.concurrency_domain),
                principal: id,
                bucket,
                cap,
                mode: quota.in_flight_mode(),
                shadow: limit.shadow,
            });
        }
        if !quota.windows().is_empty() {
            // A key's own quota is not the policy's to lend: its check is
            // built from the charge (see `Applied::ask`).
            let lent = match &own {
                Some(Own::Quota(_)) => None,
                Some(Own::Plan(p)) => Some(route.plan_quota(Some(*p))),
                None => Some(route.plan_quota(None)),
            };
            if let Some(quota) = lent {
                checks.push(Check {
                    bucket,
                    principal: id,
                    quota,
                    shadow: limit.shadow,
                    limit: &limit.name,
                    base: shared.succession.base(route),
                    penalty: penalty_key.zip(limit.penalty.as_ref()),
                });
            }
            let own = applied.keep(own);
            applied.charges.push(Charge {
                origin,
                bucket,
                principal: id,
                penalty_key,
                own,
                shadow: limit.shadow,
            });
        }
    }
    if applied.claims.len() > 1 {
        // Slots are taken in this order, each held while the next is
        // waited for: an order of the keys' slot counts themselves, which
        // no policy decides, so that requests under two policies (a reload
        // that reorders limits, processes sharing slots through a store)
        // never each hold a slot the other waits for.
        applied.claims.sort_unstable_by_key(|claim| claim.key);
    }
    if applied.charges.is_empty() && applied.claims.is_empty() {
        Plan::Pass
    } else {
        Plan::Apply
    }
}

/// Of `ban` and the bans in force at `now` on the limits from `from` on
/// that apply to `request`, the longest: the answer waits for every one.
#[cold]
#[inline(never)]
fn longest_ban<St: Store, B>(
    shared: &Shared<St>,
    request: &Request<B>,
    path: &PathSegments<'_>,
    now: u64,
    from: usize,
    mut ban: Ban,
) -> Ban {
    let policy = &*shared.policy.inner;
    let method = Methods::of(request.method());
    let later = policy.limits.iter().enumerate().skip(from);
    for (li, limit) in later.filter(|(_, l)| l.penalty.is_some() && !l.shadow) {
        let Some((ri, route, captures)) = limit.route_for(method, path) else {
            continue;
        };
        let view = RequestView::new(request, Some(captures));
        let Ok(key) = limit.key.extract(&view) else {
            continue;
        };
        if !(1..=policy.max_key_len).contains(&key.len()) {
            continue;
        }
        let id = limit.key_id(&policy.secret, &key);
        if limit.exemptions.covers(id, &view) {
            continue;
        }
        let penalty_key = KeySecret::derive(id, limit.penalty_domain);
        match shared.store.banned_for(penalty_key, now) {
            Some(left) if left > ban.left => {
                let own = resolve(policy, li, limit, id, &view);
                let quota = route.quota_of(own.as_ref());
                ban = Ban {
                    limit: li,
                    left,
                    bucket: KeySecret::derive(id, route.id),
                    report: quota_report(quota, li, ri, policy.report),
                };
            }
            _ => {}
        }
    }
    ban
}

/// What becomes of a request whose key for limit `li` (`extracted`) is not
/// usable: the error it is refused with, or `None` if the limit is skipped
/// (a missing key the limit may skip, or a shadow limit's).
#[cold]
#[inline(never)]
fn unusable<St>(
    shared: &Shared<St>,
    li: usize,
    limit: &CompiledLimit,
    extracted: Result<Key<'_>, KeyError>,
) -> Option<KeyError> {
    let error = key_error(limit, extracted, shared.policy.inner.max_key_len);
    if limit.skip_missing_key && error.kind() == KeyErrorKind::Missing {
        tracing::trace!(limit = %limit.name, %error, "limit skipped: no usable key");
        return None;
    }
    shared.metrics.count(li, Verdict::KeyRejected);
    if let Some(hook) = &shared.on_event {
        (hook.0)(&Event {
            kind: EventKind::KeyRejected,
            limit: &limit.name,
            bucket: None,
            decision: None,
            key_error: Some(&error),
        });
    }
    if limit.shadow {
        tracing::info!(limit = %limit.name, %error, "shadow limit would have rejected the key");
        return None;
    }
    tracing::debug!(limit = %limit.name, %error, "request refused: no usable key");
    Some(error)
}

/// Why `extracted`, the request's key for `limit`, is not usable: no key,
/// an empty one, or one longer than `max_len`.
fn key_error(
    limit: &CompiledLimit,
    extracted: Result<Key<'_>, KeyError>,
    max_len: usize,
) -> KeyError {
    let kind = match extracted {
        Err(error) => return error,
        Ok(key) if key.is_empty() => KeyErrorKind::Empty,
        Ok(_) => KeyErrorKind::TooLong,
    };
    let error = KeyError::new(kind, limit.key.describe().into_owned());
    match kind {
        KeyErrorKind::TooLong => error.with_detail(format!("The limit is {max_len} bytes.")),
        _ => error,
    }
}
