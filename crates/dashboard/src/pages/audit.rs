//! The audit trail.

// A part of the pages module: its helpers and imports are this file's too.
use super::*;

pub struct AuditRow {
    pub at: String,
    pub actor: String,
    pub action: String,
    pub binding: String,
    pub details: String,
}

#[derive(Template)]
#[template(path = "audit.html")]
pub(super) struct AuditPage {
    pub(super) nav: Nav,
    pub(super) rows: Vec<AuditRow>,
}

pub async fn audit_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    PageMerchant { merchant, .. }: PageMerchant<ForAudit>,
) -> Result<Response, Problem> {
    let tenant = current_tenant(&state, &headers, &merchant).await?;
    let rows = sqlx::query!(
        r#"SELECT a.at, a.actor, a.action, a.binding_id, a.details, acc.email AS "email?"
           FROM audit_log a
           LEFT JOIN accounts acc ON a.actor IN ('account:' || acc.id::text, 'operator:' || acc.id::text)
           WHERE a.tenant_id = $1 OR a.binding_id IN (SELECT id FROM connector_bindings WHERE tenant_id = $1)
              OR (a.tenant_id IS NULL AND a.binding_id IS NULL AND a.actor = $2)
           ORDER BY a.id DESC LIMIT 200"#,
        tenant.0,
        Actor::Account(merchant.account_id.0).as_text()
    )
    .fetch_all(&state.db)
    .await?;
    let rows = rows
        .into_iter()
        .map(|r| AuditRow {
            at: r.at.format("%Y-%m-%d %H:%M:%S").to_string(),
            actor: r.email.unwrap_or(r.actor),
            action: r.action,
            binding: r.binding_id.map(|b| b.to_string()).unwrap_or_default(),
            details: summarize(&r.details),
        })
        .collect();
    Ok(render(&AuditPage {
        nav: Nav::of(&merchant),
        rows,
    }))
}

/// A settings change as "field: before → after"; other details as compact JSON.
pub(super) fn summarize(details: &serde_json::Value) -> String {
    if let (Some(before), Some(after)) = (details["before"].as_object(), details["after"].as_object()) {
        let changes: Vec<String> = after
            .iter()
            .filter(|(k, v)| before.get(*k) != Some(*v))
            .map(|(k, v)| format!("{k}: {} → {v}", before.get(k).cloned().unwrap_or_default()))
            .collect();
        return if changes.is_empty() {
            "no change".to_owned()
        } else {
            changes.join("; ")
        };
    }
    let text = details.to_string();
    if text == "{}" { String::new() } else { text }
}
