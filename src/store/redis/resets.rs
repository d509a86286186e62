//! Resets reach every process at once. A store remembers refusals (the
//! deny cache) and bans it has seen, to answer them without a call; an
//! operator's reset deletes a key's buckets and ban in Redis, and the same
//! script publishes what it deleted on the channel `<prefix>:resets`. Every
//! store listens there, on a connection of its own, and forgets those
//! buckets and bans at once, instead of refusing from memory until they
//! would have ended.
//!
//! A store that (re)subscribes forgets everything it remembers, since it
//! may have missed resets while it was not listening: its next requests ask
//! Redis, which is always right. The listener retries with a backoff (up to
//! 5 s) while Redis cannot be reached, subscribes again on a new connection
//! each time the store gives up its own as silent (its breaker opened, or a
//! call was lost: this connection may have gone silent without closing
//! too), and stops with the store.
//!
//! A message is the deleted buckets and penalty keys as text, `b` or `p`
//! and 16 hexadecimal digits each, separated by spaces. Anything else in a
//! message is ignored: a stranger who can publish on the channel can only
//! make stores ask Redis more often.

use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{select, Either};
use futures_util::StreamExt;
use tokio::sync::Notify;

use super::script::Planned;

/// The channel a store with keys under `prefix` hears of resets on.
pub(crate) fn channel(prefix: &str) -> String {
    format!("{prefix}:resets")
}

/// The message telling every store that the buckets and penalty keys of
/// `checks` were reset.
pub(crate) fn message<'a>(checks: impl IntoIterator<Item = &'a Planned>) -> String {
    let mut message = String::new();
    for check in checks {
        push(&mut message, 'b', check.bucket);
        if let Some((key, _)) = check.penalty {
            push(&mut message, 'p', key);
        }
    }
    message
}

fn push(message: &mut String, tag: char, id: u64) {
    if !message.is_empty() {
        message.push(' ');
    }
    message.push(tag);
    message.push_str(&format!("{id:016x}"));
}

/// One thing a reset deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reset {
    /// A bucket: its refusal is forgotten.
    Bucket(u64),
    /// A penalty key: its ban is forgotten.
    Penalty(u64),
}

/// What a message says was reset (what it cannot read, it skips).
pub(crate) fn parse(message: &[u8]) -> impl Iterator<Item = Reset> + '_ {
    message.split(|&b| b == b' ').filter_map(|token| {
        let (&tag, digits) = token.split_first()?;
        if digits.len() != 16 || !digits.iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        let id = u64::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()?;
        match tag {
            b'b' => Some(Reset::Bucket(id)),
            b'p' => Some(Reset::Penalty(id)),
            _ => None,
        }
    })
}

/// The longest wait between two attempts to subscribe.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What the listener tells its store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Heard<'a> {
    /// It is about to subscribe.
    Subscribing,
    /// It has subscribed: resets may have been missed before.
    Subscribed,
    /// A message: what a reset deleted (see [`parse`]).
    Message(&'a [u8]),
}

/// Listens on `channel` through `clients` (tried in turn), telling `tell`
/// what it hears, for as long as `tell` answers that the store is there.
pub(crate) async fn listen(
    clients: Vec<redis::Client>,
    channel: String,
    connect_timeout: Duration,
    renew: Arc<Notify>,
    mut tell: impl FnMut(Heard<'_>) -> bool,
) {
    let mut backoff = Duration::from_millis(50);
    // Whether a failure to subscribe was told at `warn` since the last
    // subscription (once per spell: the attempts repeat every few seconds).
    let mut warned = false;
    for client in clients.iter().cycle() {
        if !tell(Heard::Subscribing) {
            return;
        }
        let subscribed = tokio::time::timeout(connect_timeout, async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        })
        .await;
        match subscribed {
            Ok(Ok(mut pubsub)) => {
                backoff = Duration::from_millis(50);
                warned = false;
                if !tell(Heard::Subscribed) {
                    return;
                }
                let mut messages = pubsub.on_message();
                loop {
                    match select(pin!(messages.next()), pin!(renew.notified())).await {
                        Either::Left((Some(message), _)) => {
                            if !tell(Heard::Message(message.get_payload_bytes())) {
                                return;
                            }
                        }
                        Either::Left((None, _)) => {
                            tracing::debug!(
                                "rate-limit store: the resets channel closed; subscribing again"
                            );
                            break;
                        }
                        // The store gave up its connection as silent:
                        // this one may have gone silent too.
                        Either::Right(((), _)) => {
                            tracing::debug!(
                                "rate-limit store: subscribing to resets on a new connection"
                            );
                            break;
                        }
                    }
                }
            }
            Ok(Err(error)) if !warned => {
                // Redis refuses it (an ACL without the channel, no room for
                // another client), or is away: said once per spell.
                warned = true;
                tracing::warn!(
                    %error,
                    %channel,
                    "rate-limit store: cannot subscribe to resets (is Redis away, or does \
                     it refuse this user the channel? ACL `&<channel>`): until it can, \
                     resets made by other processes do not reach this one's deny cache"
                );
            }
            Ok(Err(error)) => {
                tracing::debug!(%error, "rate-limit store: cannot subscribe to resets");
            }
            Err(_) => tracing::debug!("rate-limit store: subscribing to resets timed out"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::protocol::Check;
    use crate::store::redis::FailurePolicy;
    use crate::{penalty::Penalty, Quota, Window};
    use proptest::prelude::*;

    #[test]
    fn a_message_names_every_bucket_and_penalty_key() {
        let quota = Quota::new(Window::per_minute(1));
        let minute = Duration::from_secs(60);
        let penalty = Penalty::new(3, minute, minute).unwrap();
        let checks = [
            Planned::new(&Check::new(1, &quota), FailurePolicy::default()),
            Planned::new(
                &Check::new(u64::MAX, &quota).with_penalty(0xabc, &penalty),
                FailurePolicy::default(),
            ),
        ];
        let message = message(&checks);
        assert_eq!(
            message,
            "b0000000000000001 bffffffffffffffff p0000000000000abc"
        );
        let read: Vec<_> = parse(message.as_bytes()).collect();
        assert_eq!(
            read,
            [
                Reset::Bucket(1),
                Reset::Bucket(u64::MAX),
                Reset::Penalty(0xabc)
            ]
        );
    }

    #[test]
    fn what_is_not_a_reset_is_skipped() {
        let read: Vec<_> = parse(
            b"  x0000000000000001 b12 b000000000000000g p0000000000000002 b+000000000000001 ",
        )
        .collect();
        assert_eq!(read, [Reset::Penalty(2)]);
    }

    proptest! {
        #[test]
        fn any_message_parses_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            for reset in parse(&bytes) {
                let (Reset::Bucket(_) | Reset::Penalty(_)) = reset;
            }
        }

        #[test]
        fn messages_round_trip(buckets in proptest::collection::vec(any::<u64>(), 0..8)) {
            let quota = Quota::new(Window::per_minute(1));
            let checks: Vec<_> = buckets
                .iter()
                .map(|&b| Planned::new(&Check::new(b, &quota), FailurePolicy::default()))
                .collect();
            let read: Vec<_> = parse(message(&checks).as_bytes()).collect();
            let expected: Vec<_> = buckets.iter().map(|&b| Reset::Bucket(b)).collect();
            prop_assert_eq!(read, expected);
        }
    }
}
