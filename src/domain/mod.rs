//! Pure types and rules of the product, with no I/O: identifiers and timestamps, event types
//! and subscriptions, webhook fields and their validation, the address rules of SPEC §5,
//! API keys, the delivery status machine and the retry schedule.
//!
//! Everything here is a function of its inputs, so it is unit-tested without a database or
//! a network. `store`, `api` and `delivery` depend on this module; it depends on none of them.

pub mod address;
pub mod api_key;
pub mod delivery;
pub mod event_type;
pub mod payload;
pub mod retry;
pub mod time;
pub mod webhook;
