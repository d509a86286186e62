//! The layer through the public API: exact counting, rate-limit headers,
//! refusals, keys, `HEAD` requests, in-flight caps, penalties, plans,
//! runtime overrides, shadow mode and exemptions, the auth composition
//! example, the frameworks it is made for (axum, `tower::ServiceBuilder`,
//! tonic), and the path of a store that answers asynchronously.

mod common;

mod async_store;
mod auth_composition;
mod counting;
mod current_decision;
mod frameworks;
mod head_requests;
mod headers;
mod in_flight;
mod keys;
mod overrides;
mod penalties;
mod plans;
mod refusals;
mod reload;
mod shadow_and_exemptions;
