//! The memory store: its bounds at the entry cap, and the layer's every
//! decision against a reference model on random request sequences.
//!
//! The flood of made-up keys is in `tests/memory_flood.rs`, a binary of its
//! own because it records the layer's logs. The Redis store is in
//! `tests/redis/`.

mod memory_cap;
mod model;
