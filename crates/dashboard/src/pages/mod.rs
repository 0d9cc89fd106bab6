//! The merchant's pages beyond sign-in and Sage connect: sign-up and sign-out, the
//! bindings list with health and the Magento connect form, sync settings, sync history
//! with retries, and the audit trail. Each page calls the same domain code as the JSON
//! API, so the two never disagree.

use std::collections::BTreeMap;

use askama::Template;
use axum::{
    Form,
    extract::{ConnectInfo, Path, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Redirect, Response},
};
use chrono::{DateTime, Utc};
use ledger_core::{AppState, BindingId, FieldError, Problem, Secret, TenantId, audit::Actor};
use ledger_sage_sync::{
    policy::{self, Settings},
    runs::{self, RunFilter},
};
use ledger_sage_vault::reference::{self, Reference};
use ledger_tenant_binding::{
    accounts,
    auth::{Merchant, action, session_merchant},
    bindings,
};
use serde::Deserialize;

use crate::{
    extract::{
        Button, CsrfForm, CsrfToken, ForAccount, ForAudit, ForBindings, ForHistory, ForOverview, ForSettings,
        PageMerchant, PageOwner, RunAccess, csrf_forms,
    },
    render,
};

/// "3 minutes ago", for freshness labels.
pub(crate) fn ago(at: Option<DateTime<Utc>>) -> String {
    let Some(at) = at else { return "never".to_owned() };
    let secs = (Utc::now() - at).num_seconds().max(0);
    match secs {
        0..=59 => "just now".to_owned(),
        60..=3599 => format!("{} min ago", secs / 60),
        3600..=86_399 => format!("{} h ago", secs / 3600),
        _ => format!("{} days ago", secs / 86_400),
    }
}

/// Field errors by field name, for inline messages.
fn by_field(errors: &[FieldError]) -> BTreeMap<String, String> {
    errors
        .iter()
        .map(|e| (e.field.clone(), format!("{} ({})", e.message, e.code)))
        .collect()
}

mod account;
mod audit;
mod binding_list;
mod history;
mod settings;
mod signup;

pub use account::*;
pub use audit::*;
pub use binding_list::*;
pub use history::*;
pub use settings::*;
pub use signup::*;
