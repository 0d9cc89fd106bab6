//! The `ledger` binary's library half: configuration loading, telemetry, the HTTP
//! router with its middleware, the server with graceful shutdown, the worker runtime
//! and `ledger dev`. Feature crates contribute routes; this crate composes them.

pub mod cli;
pub mod dev;
pub mod http;
pub mod metrics;
pub mod openapi;
pub mod server;
pub mod shutdown;
pub mod telemetry;
pub mod worker;

pub use ledger_core::AppState;

pub use ledger_core::install_crypto_provider;
