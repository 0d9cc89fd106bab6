//! Accounts, tenants and bindings, and the module's side of authentication.
//!
//! - [`accounts`]: merchant accounts (argon2id passwords), API tokens, sign-in sessions
//!   with CSRF tokens, sign-in throttling;
//! - [`auth`]: the [`auth::Merchant`] extractor every merchant endpoint uses;
//! - [`bindings`]: bindings and their states, sealed api_keys;
//! - [`magento`]: verifying the module's signed requests (HS256, claims, replay store);
//! - [`status`]: the endpoints the module calls besides webhooks: tile health, entity
//!   status and disconnect.

pub mod accounts;
pub mod api;
pub mod auth;
pub mod bindings;
pub mod magento;
pub mod status;
pub mod tokens;

use ledger_core::AppState;
use utoipa_axum::{router::OpenApiRouter, routes};

/// Routes owned by this crate.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(accounts::signup))
        .routes(routes!(accounts::signin))
        .routes(routes!(accounts::signout))
        .routes(routes!(accounts::me))
        .routes(routes!(tokens::list_tokens, tokens::create_token))
        .routes(routes!(tokens::revoke_token))
        .routes(routes!(api::list))
        .routes(routes!(api::get))
        .routes(routes!(status::tile_health))
        .routes(routes!(status::entity_status))
}

/// Deletes what has expired: replay-store entries, sessions, old sign-in failures, and
/// bindings whose pairing was never confirmed within a day. Returns rows removed. (The
/// Sage side's expired consents are `ledger_sage_vault::housekeeping`'s.)
pub async fn housekeeping(db: &sqlx::PgPool) -> Result<u64, sqlx::Error> {
    let mut removed = magento::prune_jti(db).await?;
    removed += sqlx::query!("DELETE FROM sessions WHERE expires_at < now()")
        .execute(db)
        .await?
        .rows_affected();
    removed += ledger_core::rate::prune(db).await?;
    removed += sqlx::query!(
        "DELETE FROM connector_bindings
         WHERE status = 'pairing' AND api_key IS NULL AND pending_since < now() - interval '1 day'"
    )
    .execute(db)
    .await?
    .rows_affected();
    Ok(removed)
}
