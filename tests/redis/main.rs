//! The Redis store against a real `redis-server` (each test starts its
//! own): shared exact counts, the decision script's arithmetic, a cluster
//! (one node, and three),
//! failures and the circuit breaker, in-flight caps and penalties across
//! nodes, and the same decisions as the memory store on random sequences.
//!
//! TLS (`rediss://`) is in `tests/redis_tls.rs`, a binary of its own because
//! it sets `SSL_CERT_FILE`.

#![cfg(feature = "redis")]

#[macro_use]
mod support;

#[cfg(feature = "admin")]
mod admin;
mod arithmetic;
mod cluster;
mod cluster_nodes;
mod failures;
mod in_flight;
mod local_fallback;
#[path = "../support/log_text.rs"]
mod log_text;
mod model;
mod outages;
mod penalties;
mod principals;
mod store;
