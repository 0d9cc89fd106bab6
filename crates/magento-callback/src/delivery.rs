//! Sync-state delivery (`POST /rest/V1/byte8/sync-state`): one queued callback's state
//! told to its store, and what the store's answer says about the binding recorded.

use ledger_core::{AppState, BindingId, TenantId};
use ledger_jobs::CallbackStore;
use ledger_magento_api::{MagentoError, canonical::SyncState, client::ErrorClass};
use ledger_tenant_binding::bindings;
use serde_json::Value;

use crate::store::{StoreError, StoreRef, store_client};

/// What delivering one callback did.
#[derive(Debug)]
pub enum Delivery {
    Delivered,
    /// The store refused the body for good (400), or the binding is gone: not retried.
    Rejected(String),
    /// The store is down, its clock is off, or it refused our key: retry later.
    Retry(Retry),
}

/// Why a delivery is to be retried.
#[derive(Debug, Clone)]
pub struct Retry {
    pub kind: RetryKind,
    /// `database`, `store_clock_skew`, `magento_unauthorized` or `magento_unreachable`.
    pub code: &'static str,
    pub message: String,
}

/// What stood in the way, for the backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryKind {
    /// The ledger's own database.
    Database,
    /// The store did not answer, or its clock is off.
    StoreUnreachable,
    /// The store answered 401: it no longer holds our key (a re-pair fixes it).
    KeyRefused,
}

/// Sends a queued callback's state (the job's payload) to the binding's store.
pub async fn deliver(state: &AppState, binding: BindingId, payload: &Value) -> Delivery {
    let row = match sqlx::query_as!(
        CallbackStore,
        r#"SELECT tenant_id AS "tenant_id: TenantId", magento_base_url, status, api_key,
                  magento_connection_status, store_clock_skew_secs
           FROM connector_bindings WHERE id = $1"#,
        binding.0
    )
    .fetch_optional(&state.db)
    .await
    {
        Ok(row) => row,
        Err(e) => {
            return Delivery::Retry(Retry {
                kind: RetryKind::Database,
                code: "database",
                message: e.to_string(),
            });
        }
    };
    deliver_to(state, binding, row.as_ref(), payload).await
}

/// [`deliver`] with the binding's columns already read (`None`: the binding is gone).
pub async fn deliver_to(
    state: &AppState,
    binding: BindingId,
    row: Option<&CallbackStore>,
    payload: &Value,
) -> Delivery {
    let Ok(sync_state) = serde_json::from_value::<SyncState>(payload["state"].clone()) else {
        return Delivery::Rejected("malformed callback payload".into());
    };
    let Some(row) = row else {
        return Delivery::Rejected("binding deleted".into());
    };
    if row.status == "revoked" {
        return Delivery::Rejected("binding revoked".into());
    }
    let store = StoreRef {
        binding_id: binding,
        tenant_id: row.tenant_id,
        base_url: &row.magento_base_url,
        sealed_api_key: row.api_key.as_deref(),
        store_clock_skew: row.store_clock_skew_secs,
    };
    let result = match store_client(state, store).await {
        Ok(client) => client.sync_state(&sync_state).await,
        Err(StoreError::ApiKey(e)) => return Delivery::Rejected(e.to_string()),
        Err(StoreError::BadUrl(_)) => return Delivery::Rejected("bad store URL".into()),
        // The URL policy's refusal is answered like the store's own errors below.
        Err(StoreError::Magento(e)) => Err(e),
    };
    match result {
        Ok(()) => {
            if row.magento_connection_status != "active" {
                let _ = bindings::record_magento_answer(&state.db, binding, false).await;
            }
            Delivery::Delivered
        }
        Err(e @ MagentoError::ClockSkew { store_ahead_secs, .. }) => {
            let _ = bindings::record_store_clock(&state.db, binding, i32::try_from(store_ahead_secs).ok()).await;
            Delivery::Retry(Retry {
                kind: RetryKind::StoreUnreachable,
                code: "store_clock_skew",
                message: e.to_string(),
            })
        }
        Err(e @ MagentoError::Unauthorized { .. }) => {
            let _ = bindings::record_magento_answer(&state.db, binding, true).await;
            Delivery::Retry(Retry {
                kind: RetryKind::KeyRefused,
                code: "magento_unauthorized",
                message: e.to_string(),
            })
        }
        Err(e) if e.class() == ErrorClass::Transient => Delivery::Retry(Retry {
            kind: RetryKind::StoreUnreachable,
            code: "magento_unreachable",
            message: e.to_string(),
        }),
        Err(e) => Delivery::Rejected(e.to_string()),
    }
}
