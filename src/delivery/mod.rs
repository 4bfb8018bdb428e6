//! The delivery path: the worker claims due deliveries in batches under a lease, sends
//! them with bounded concurrency (globally and per webhook), and records each result.
//!
//! It depends on `domain`, `store`, `signing` and `net`, never on `api`: `lib.rs` wires
//! the two together.

pub mod dispatch;
pub mod worker;

pub use dispatch::Dispatcher;
pub use worker::{Worker, WorkerConfig};
