//! The Sage side of a binding: OAuth ([`oauth`], [`connect`]), the sealed token vault
//! with single-flight refresh ([`tokens`]), the reference cache ([`reference`]) and
//! online master-key rotation ([`rotation`]). Envelope encryption itself is
//! `ledger_core::crypto` (shared with pairing's api_keys).

pub mod connect;
pub mod oauth;
pub mod reference;
pub mod rotation;
pub mod session;
pub mod tokens;

use ledger_core::AppState;
use utoipa_axum::{router::OpenApiRouter, routes};

/// The JSON API of Sage connections.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(connect::authorize))
        .routes(routes!(connect::connection))
        .routes(routes!(connect::business))
        .routes(routes!(connect::disconnect))
        .routes(routes!(connect::magento_disconnect))
        .routes(routes!(reference::get))
        .routes(routes!(reference::refresh_now))
}

/// Deletes Sage consents that expired unfinished: OAuth states never called back and
/// grants whose business was never chosen. Returns rows removed.
pub async fn housekeeping(db: &sqlx::PgPool) -> Result<u64, sqlx::Error> {
    let mut removed = sqlx::query!("DELETE FROM sage_oauth_states WHERE expires_at < now()")
        .execute(db)
        .await?
        .rows_affected();
    removed += sqlx::query!("DELETE FROM sage_pending_grants WHERE expires_at < now()")
        .execute(db)
        .await?
        .rows_affected();
    Ok(removed)
}
