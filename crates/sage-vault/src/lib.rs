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
