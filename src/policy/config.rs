//! Policies from TOML files.
