//! Shared core of the ledger.
//!
//! Everything here is used by more than one crate and holds no business logic:
//! typed identifiers, the [`Secret`] wrapper, [`Settings`] with their layered
//! loader, the RFC 9457 [`Problem`] error model every HTTP answer uses, and the
//! database pool plus the one migrator.

pub mod audit;
pub mod config;
pub mod crypto;
pub mod db;
pub mod extract;
pub mod http;
pub mod ids;
pub mod problem;
pub mod rate;
pub mod secret;
pub mod state;
pub mod trace;

pub use config::{ConfigError, Settings};
pub use ids::*;
pub use problem::{FieldError, Problem, ProblemBody};
pub use secret::Secret;
pub use state::AppState;

/// Installs ring as rustls' process-wide crypto provider (reqwest and sqlx use rustls;
/// only ring is built, not aws-lc). Idempotent; call before building an HTTP client.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The TLS client configuration every outbound HTTP client uses: ring, the platform's
/// root certificates. Built once: left to reqwest, each new client re-reads and parses
/// the system's CA bundle, which profiling showed to be a quarter of the sync path's CPU
/// (a client per store call and per Sage session).
pub fn tls_config() -> rustls::ClientConfig {
    static CONFIG: std::sync::OnceLock<rustls::ClientConfig> = std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| {
            use rustls_platform_verifier::BuilderVerifierExt as _;
            install_crypto_provider();
            rustls::ClientConfig::builder()
                .with_platform_verifier()
                .expect("the platform's root certificates load")
                .with_no_client_auth()
        })
        .clone()
}
