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

/// Installs ring as rustls' process-wide crypto provider (reqwest and sqlx use rustls;
/// we build only ring, not aws-lc). Safe to call more than once.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
