//! Telling the store the outcome (`POST /rest/V1/byte8/sync-state`), which drives the
//! "Sage Status" chips. One queued callback per entity: a newer outcome replaces a
//! queued one, so the latest state wins. Retried with backoff while the store is down.
//!
//! `invoice.paid` shares the invoice's chip (the mirror is keyed by entity type and id).
//! The admin shows nothing else about a payment, so its outcome is told there:
//! - a payment that syncs refreshes the chip as Synced with the invoice's Sage id and
//!   reference;
//! - a payment that fails, or waits for a payment method nobody mapped, turns the
//!   invoice's chip Failed with an `error_code` that names the payment
//!   (`payment_validation`, `payment_provider`, `payment_method_not_mapped`, …) — Sage
//!   shows the invoice unpaid — until the payment syncs;
//! - a payment the merchant chose to leave unposted (its method mapped to no bank
//!   account), a zero-value one, or one skipped with its invoice changes nothing.

use chrono::{DateTime, Utc};
use ledger_core::{AppState, BindingId};
use ledger_magento_api::{
    MagentoClient, MagentoError, UrlPolicy,
    canonical::{SyncState, mysql_timestamp},
    client::ErrorClass as MagentoClass,
    url::Url,
};
use ledger_tenant_binding::bindings;
use serde_json::Value;

use crate::outcome::{ErrorClass, Failure, Outcome};

pub const PROVIDER: &str = "sage_accounting";

/// The state to report for a finished run, or `None` when nothing should be sent.
#[allow(clippy::too_many_arguments, reason = "the run's columns")]
pub fn state_for(
    event_name: &str,
    entity_type: &str,
    entity_id: i64,
    status: &str,
    outcome: &Outcome,
    finished_at: DateTime<Utc>,
    invoice_sage: Option<(String, Option<String>)>,
    dead_class: Option<ErrorClass>,
) -> Option<SyncState> {
    if !["invoice", "creditmemo", "customer", "product"].contains(&entity_type) || entity_id <= 0 {
        return None;
    }
    let mut state = SyncState {
        entity_type: entity_type.to_owned(),
        magento_entity_id: entity_id,
        provider: PROVIDER.to_owned(),
        sync_status: String::new(),
        provider_entity_id: None,
        provider_reference: None,
        skip_reason: None,
        error_code: None,
        last_sync_at: Some(mysql_timestamp(finished_at)),
    };
    let is_payment = event_name == "invoice.paid";
    match (status, outcome) {
        ("synced", Outcome::Synced { sage_id, reference, .. }) => {
            state.sync_status = "synced".into();
            let (id, reference) = if is_payment {
                invoice_sage.unwrap_or((sage_id.clone(), reference.clone()))
            } else {
                (sage_id.clone(), reference.clone())
            };
            state.provider_entity_id = Some(id);
            state.provider_reference = reference;
        }
        ("skipped_by_policy", Outcome::Skipped { reason, .. }) if is_payment => {
            // Unposted because nobody mapped its method: the invoice is unpaid in Sage.
            if reason != "payment_method_not_mapped" {
                return None;
            }
            state.sync_status = "failed".into();
            state.error_code = Some(reason.clone());
        }
        ("failed" | "dead", Outcome::Failed(Failure { class, .. })) if is_payment => {
            state.sync_status = "failed".into();
            state.error_code = Some(format!("payment_{}", dead_class.unwrap_or(*class).magento_code()));
        }
        _ if is_payment => return None,
        ("skipped_by_policy", Outcome::Skipped { reason, .. }) => {
            state.sync_status = "skipped".into();
            state.skip_reason = Some(reason.chars().take(64).collect());
        }
        ("failed" | "dead", Outcome::Failed(Failure { class, .. })) => {
            state.sync_status = "failed".into();
            state.error_code = Some(dead_class.unwrap_or(*class).magento_code().to_owned());
        }
        _ => return None,
    }
    Some(state)
}

/// What delivering one callback did.
#[derive(Debug)]
pub enum Delivery {
    Delivered,
    /// The store refused the body for good (400): logged, not retried.
    Rejected(String),
    /// The store is down or refused our key: retry later.
    Retry(Failure),
}

/// Sends the queued state to the store.
pub async fn deliver(state: &AppState, binding: BindingId, payload: &Value) -> Delivery {
    let Ok(sync_state) = serde_json::from_value::<SyncState>(payload["state"].clone()) else {
        return Delivery::Rejected("malformed callback payload".into());
    };
    let row = match sqlx::query!(
        r#"SELECT tenant_id, magento_base_url, status, api_key, magento_connection_status, store_clock_skew_secs
           FROM connector_bindings WHERE id = $1"#,
        binding.0
    )
    .fetch_optional(&state.db)
    .await
    {
        Ok(Some(r)) => r,
        Ok(None) => return Delivery::Rejected("binding deleted".into()),
        Err(e) => return Delivery::Retry(Failure::new(ErrorClass::Transient, "database", e.to_string())),
    };
    if row.status == "revoked" {
        return Delivery::Rejected("binding revoked".into());
    }
    let key = match bindings::open_api_key(state, binding, row.api_key.as_deref()) {
        Ok(k) => k,
        Err(p) => return Delivery::Rejected(p.detail),
    };
    let Ok(base) = Url::parse(&row.magento_base_url) else {
        return Delivery::Rejected("bad store URL".into());
    };
    let result = async {
        MagentoClient::new(
            &base,
            &row.tenant_id.to_string(),
            &key,
            &UrlPolicy::from_settings(&state.settings),
        )
        .await?
        .with_store_clock(row.store_clock_skew_secs)
        .sync_state(&sync_state)
        .await
    }
    .await;
    match result {
        Ok(()) => {
            if row.magento_connection_status != "active" {
                let _ = bindings::record_magento_answer(&state.db, binding, false).await;
            }
            Delivery::Delivered
        }
        Err(e @ MagentoError::ClockSkew { store_ahead_secs, .. }) => {
            let _ = bindings::record_store_clock(&state.db, binding, i32::try_from(store_ahead_secs).ok()).await;
            Delivery::Retry(Failure::new(
                ErrorClass::MagentoUnreachable,
                "store_clock_skew",
                e.to_string(),
            ))
        }
        Err(e @ MagentoError::Unauthorized { .. }) => {
            let _ = bindings::record_magento_answer(&state.db, binding, true).await;
            Delivery::Retry(Failure::new(
                ErrorClass::MagentoAuth,
                "magento_unauthorized",
                e.to_string(),
            ))
        }
        Err(e) if e.class() == MagentoClass::Transient => Delivery::Retry(Failure::new(
            ErrorClass::MagentoUnreachable,
            "magento_unreachable",
            e.to_string(),
        )),
        Err(e) => Delivery::Rejected(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-04-29T10:11:12Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn synced_invoices_report_id_reference_and_mysql_time() {
        let outcome = Outcome::Synced {
            sage_id: "abc".into(),
            reference: Some("SI-27".into()),
            message: None,
        };
        let s = state_for("invoice.created", "invoice", 42, "synced", &outcome, at(), None, None).unwrap();
        assert_eq!(
            (
                s.sync_status.as_str(),
                s.provider_entity_id.as_deref(),
                s.provider_reference.as_deref()
            ),
            ("synced", Some("abc"), Some("SI-27"))
        );
        assert_eq!(s.last_sync_at.as_deref(), Some("2026-04-29 10:11:12"));
    }

    #[test]
    fn a_payment_s_outcome_shows_on_its_invoice_chip() {
        let state = |status: &str, outcome: &Outcome| {
            state_for("invoice.paid", "invoice", 42, status, outcome, at(), None, None)
        };
        // The merchant's choice (method mapped to no bank account), zero value: unchanged.
        for reason in ["payment_left_unposted", "zero_value_payment", "unpaid_invoice"] {
            let skipped = Outcome::Skipped {
                reason: reason.into(),
                message: String::new(),
            };
            assert!(state("skipped_by_policy", &skipped).is_none(), "{reason}");
        }
        // Nobody mapped the method: the invoice is unpaid in Sage, and the chip says why.
        let unmapped = Outcome::Skipped {
            reason: "payment_method_not_mapped".into(),
            message: String::new(),
        };
        let s = state("skipped_by_policy", &unmapped).unwrap();
        assert_eq!(
            (s.sync_status.as_str(), s.error_code.as_deref()),
            ("failed", Some("payment_method_not_mapped"))
        );
        let failed = Outcome::Failed(Failure::new(ErrorClass::Validation, "x", "y"));
        let s = state("failed", &failed).unwrap();
        assert_eq!(
            (
                s.sync_status.as_str(),
                s.error_code.as_deref(),
                s.provider_reference.as_deref()
            ),
            ("failed", Some("payment_validation"), None)
        );
        let synced = Outcome::Synced {
            sage_id: "pay".into(),
            reference: None,
            message: None,
        };
        let s = state_for(
            "invoice.paid",
            "invoice",
            42,
            "synced",
            &synced,
            at(),
            Some(("inv".into(), Some("SI-9".into()))),
            None,
        )
        .unwrap();
        assert_eq!(
            (s.sync_status.as_str(), s.provider_entity_id.as_deref()),
            ("synced", Some("inv")),
            "Synced again, with the invoice's Sage id"
        );
    }

    #[test]
    fn failures_use_the_modules_error_codes() {
        let failed = Outcome::Failed(Failure::new(ErrorClass::Transient, "x", "y"));
        let s = state_for("creditmemo.created", "creditmemo", 7, "dead", &failed, at(), None, None).unwrap();
        assert_eq!(
            (s.sync_status.as_str(), s.error_code.as_deref()),
            ("failed", Some("provider"))
        );
        let skipped = Outcome::Skipped {
            reason: "PRODUCT_TYPE_NOT_SUPPORTED".into(),
            message: String::new(),
        };
        let s = state_for(
            "product.upserted",
            "product",
            3,
            "skipped_by_policy",
            &skipped,
            at(),
            None,
            None,
        )
        .unwrap();
        assert_eq!(s.skip_reason.as_deref(), Some("PRODUCT_TYPE_NOT_SUPPORTED"));
    }
}
