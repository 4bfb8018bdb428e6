#![allow(unreachable_pub)]

//! The integration suite: one binary, a file per area. Tests drive the real HTTP API on a
//! real socket, real receivers, and real SQLite files; the process tests run the real
//! binary.

mod helpers;
mod hostile;

mod auth;
mod batch;
mod delivery;
mod events;
mod fuzz;
mod handoff;
mod process;
mod properties;
mod retention;
mod rotation;
mod scale;
mod validation;
mod webhooks;
