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
//!
//! Delivery itself is `ledger_magento_callback::delivery`'s.

use chrono::{DateTime, Utc};
use ledger_jobs::EventName;
use ledger_magento_api::canonical::{SyncState, mysql_timestamp};
use ledger_magento_callback::delivery::{Retry, RetryKind};

use crate::outcome::{ErrorClass, Failure, Outcome};

pub const PROVIDER: &str = "sage_accounting";

/// A finished run, as its store callback tells it.
#[derive(Debug, Clone, Copy)]
pub struct Finished<'a> {
    pub event: &'a EventName,
    /// `sync_runs.entity_type`: the chip's entity.
    pub entity_type: &'a str,
    pub entity_id: i64,
    /// The run's status as stored (`synced`, `skipped_by_policy`, `failed`, `dead`).
    pub status: &'a str,
    pub outcome: &'a Outcome,
    pub at: DateTime<Utc>,
}

/// The state to report for a finished run, or `None` when nothing should be sent.
/// `invoice_sage` is a payment's invoice in Sage (id, reference): its chip is the invoice's.
pub fn state_for(run: Finished<'_>, invoice_sage: Option<(String, Option<String>)>) -> Option<SyncState> {
    let Finished {
        event,
        entity_type,
        entity_id,
        status,
        outcome,
        at: finished_at,
    } = run;
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
    let is_payment = *event == EventName::InvoicePaid;
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
            state.error_code = Some(format!("payment_{}", class.magento_code()));
        }
        _ if is_payment => return None,
        ("skipped_by_policy", Outcome::Skipped { reason, .. }) => {
            state.sync_status = "skipped".into();
            state.skip_reason = Some(reason.chars().take(64).collect());
        }
        ("failed" | "dead", Outcome::Failed(Failure { class, .. })) => {
            state.sync_status = "failed".into();
            state.error_code = Some(class.magento_code().to_owned());
        }
        _ => return None,
    }
    Some(state)
}

/// A delivery to retry, as the failure whose backoff it takes.
pub fn retry_failure(retry: &Retry) -> Failure {
    let class = match retry.kind {
        RetryKind::Database => ErrorClass::Transient,
        RetryKind::StoreUnreachable => ErrorClass::MagentoUnreachable,
        RetryKind::KeyRefused => ErrorClass::MagentoAuth,
    };
    Failure::new(class, retry.code, retry.message.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finished<'a>(
        event: &'a EventName,
        entity_type: &'a str,
        entity_id: i64,
        status: &'a str,
        outcome: &'a Outcome,
    ) -> Finished<'a> {
        Finished {
            event,
            entity_type,
            entity_id,
            status,
            outcome,
            at: at(),
        }
    }

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
        let s = state_for(
            finished(&EventName::InvoiceCreated, "invoice", 42, "synced", &outcome),
            None,
        )
        .unwrap();
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
            state_for(finished(&EventName::InvoicePaid, "invoice", 42, status, outcome), None)
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
            finished(&EventName::InvoicePaid, "invoice", 42, "synced", &synced),
            Some(("inv".into(), Some("SI-9".into()))),
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
        let s = state_for(
            finished(&EventName::CreditmemoCreated, "creditmemo", 7, "dead", &failed),
            None,
        )
        .unwrap();
        assert_eq!(
            (s.sync_status.as_str(), s.error_code.as_deref()),
            ("failed", Some("provider"))
        );
        let skipped = Outcome::Skipped {
            reason: "PRODUCT_TYPE_NOT_SUPPORTED".into(),
            message: String::new(),
        };
        let s = state_for(
            finished(&EventName::ProductUpserted, "product", 3, "skipped_by_policy", &skipped),
            None,
        )
        .unwrap();
        assert_eq!(s.skip_reason.as_deref(), Some("PRODUCT_TYPE_NOT_SUPPORTED"));
    }
}
