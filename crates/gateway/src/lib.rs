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

/// Connects (and migrates) and checks that every master key the stored secrets use is
/// configured: a missing one is a configuration error naming LEDGER_MASTER_KEYS.
pub async fn connect_checked(settings: ledger_core::Settings) -> anyhow::Result<AppState> {
    let state = AppState::connect(settings).await?;
    let unknown = ledger_sage_vault::rotation::unknown_keys_in_use(&state.db, &state.keyring).await?;
    if !unknown.is_empty() {
        return Err(ledger_core::ConfigError::Invalid {
            setting: "LEDGER_MASTER_KEYS".to_owned(),
            origin: ledger_core::config::Origin::Environment,
            message: format!(
                "stored secrets use key id(s) {} that are not configured; keep old keys (after the active one) until \
                 `ledger keys rotate` reports 0 rows left",
                unknown.join(", ")
            ),
        }
        .into());
    }
    Ok(state)
}
