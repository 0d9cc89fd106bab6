//! The sync engine: the worker runtime ([`worker`]) over the job queue
//! (`ledger-jobs`), sync runs and operator actions ([`runs`]), the sync policy
//! ([`policy`]), the Magento → Sage mapping ([`mapping`]), exactly-once posting
//! ([`process`], [`xref`]) and the callbacks that drive the store's chips ([`callback`]).

pub mod api;
pub mod callback;
pub mod mapping;
pub mod outcome;
pub mod policy;
pub mod process;
pub mod retention;
pub mod runs;
pub mod worker;
pub mod xref;

use ledger_core::AppState;
use utoipa_axum::{router::OpenApiRouter, routes};

/// The JSON API of runs and settings.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(api::list_runs))
        .routes(routes!(api::get_run))
        .routes(routes!(api::retry_run))
        .routes(routes!(api::resolve_run))
        .routes(routes!(api::skip_run))
        .routes(routes!(api::retry_dead_runs))
        .routes(routes!(api::fixable))
        .routes(routes!(api::retry_fixable_runs))
        .routes(routes!(api::get, api::put))
}
