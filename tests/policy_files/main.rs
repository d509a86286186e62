//! Policy files: what a file means (exactly what the equivalent code
//! means), every key form and default, the errors that name the field, line
//! and column, and every parser fed arbitrary input without a panic.
//!
//! `key_secret = { env = "NAME" }` is in `tests/key_secret_env.rs`, a binary
//! of its own because it sets environment variables.

mod config_file;
mod parsers_never_panic;
