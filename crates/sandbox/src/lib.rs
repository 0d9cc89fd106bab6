//! Simulators for what cannot run here: a Magento store running the byte8 module
//! ([`magento`]), and (with the Sage issues) Sage's OAuth and API servers.
//!
//! They re-implement the other side of each contract independently of the ledger's
//! code, behave like the real thing including its documented quirks, and run both
//! in-process (tests) and alone (`ledger sandbox magento`).

#![allow(
    clippy::result_large_err,
    reason = "simulator handlers return early with axum responses; their size does not matter here"
)]

pub mod magento;
pub mod rng;
pub mod sage;

/// rustls needs a process-wide crypto provider before reqwest builds a client.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
