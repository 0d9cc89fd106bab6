//! The audit trail: who changed what. Every feature records through [`record`].

use serde_json::Value;
use uuid::Uuid;

use crate::{BindingId, TenantId};

/// Who acted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    Account(Uuid),
    Operator(Uuid),
    /// The Magento store of a binding (its signed calls).
    Magento(BindingId),
    System,
}

impl Actor {
    pub fn as_text(&self) -> String {
        match self {
            Self::Account(id) => format!("account:{id}"),
            Self::Operator(id) => format!("operator:{id}"),
            Self::Magento(id) => format!("magento:{id}"),
            Self::System => "system".to_owned(),
        }
    }
}

/// One audit entry. `details` must never hold secrets.
#[derive(Debug, Clone)]
pub struct Entry<'a> {
    pub actor: Actor,
    pub tenant_id: Option<TenantId>,
    pub binding_id: Option<BindingId>,
    pub action: &'a str,
    pub details: Value,
    pub request_id: Option<&'a str>,
}

/// Appends `entry`; runs inside the caller's transaction so the change and its record
/// commit together.
pub async fn record(conn: &mut sqlx::PgConnection, entry: Entry<'_>) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO audit_log (actor, tenant_id, binding_id, action, details, request_id)
         VALUES ($1, $2, $3, $4, $5, $6)",
        entry.actor.as_text(),
        entry.tenant_id.map(|t| t.0),
        entry.binding_id.map(|b| b.0),
        entry.action,
        entry.details,
        entry.request_id,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Retention: deletes up to `batch` entries older than `older_than_secs`, oldest first;
/// how many went.
pub async fn delete_older(db: &sqlx::PgPool, older_than_secs: f64, batch: i64) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query!(
        "DELETE FROM audit_log WHERE id IN (
               SELECT id FROM audit_log WHERE at < now() - make_interval(secs => $1) ORDER BY at LIMIT $2)",
        older_than_secs,
        batch
    )
    .execute(db)
    .await?
    .rows_affected())
}
