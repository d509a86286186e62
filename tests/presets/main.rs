//! The platform presets: each published policy in `demo/policies/`
//! behaves as its platform's page says, through one harness
//! (`platform.rs`).

mod platform;

mod exotel;
mod flireo;
mod nixflex;
mod talkpilot;
