//! clerk's integration tests: one binary, one module per area, shared helpers in `common`.

mod arch;
mod assistant;
mod common;
mod engine;
#[cfg(feature = "hub")]
mod hub;
mod retrieval;
mod server;
mod shop;
mod trust;
mod web;
