//! The health loop: pings every live binding's store (`GET /rest/V1/byte8/ping`) and
//! records what the module's tile shows: `token_revoked` after a 401 (the store no
//! longer holds our key), `active` after any answer proving it does.

use ledger_core::{AppState, BindingId, TenantId};
use ledger_magento_api::{MagentoClient, MagentoError, UrlPolicy, url::Url};
use ledger_tenant_binding::bindings;

/// What one ping found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PingOutcome {
    Healthy,
    Unauthorized,
    Unreachable,
}

/// Pings one binding's store and records the answer.
pub async fn ping(state: &AppState, binding_id: BindingId, tenant_id: TenantId, base_url: &str) -> PingOutcome {
    let policy = UrlPolicy::from_settings(&state.settings);
    let outcome = async {
        let base = Url::parse(base_url)
            .map_err(|_| MagentoError::Url(ledger_magento_api::UrlError::NotAUrl(base_url.to_owned())))?;
        let key = bindings::api_key(state, binding_id)
            .await
            .map_err(|p| MagentoError::Transient {
                url: base_url.to_owned(),
                reason: p.detail,
            })?;
        MagentoClient::new(&base, &tenant_id.to_string(), &key, &policy)
            .await?
            .ping()
            .await
    }
    .await;
    let result = match &outcome {
        Ok(()) => PingOutcome::Healthy,
        Err(MagentoError::Unauthorized { .. }) => PingOutcome::Unauthorized,
        Err(_) => PingOutcome::Unreachable,
    };
    if result != PingOutcome::Unreachable
        && let Err(err) =
            bindings::record_magento_answer(&state.db, binding_id, result == PingOutcome::Unauthorized).await
    {
        tracing::warn!(%binding_id, error = %err, "recording the ping result failed");
    }
    if let Err(err) = &outcome {
        tracing::info!(%binding_id, error = %err, "store ping failed");
    }
    result
}

/// Pings every paired binding once.
pub async fn ping_all(state: &AppState) -> Result<usize, sqlx::Error> {
    let rows = sqlx::query!(
        r#"SELECT id AS "id: BindingId", tenant_id AS "tenant_id: TenantId", magento_base_url
           FROM connector_bindings WHERE status IN ('paired', 'active', 'needs_reauth', 'paused') AND api_key IS NOT NULL"#
    )
    .fetch_all(&state.db)
    .await?;
    for row in &rows {
        ping(state, row.id, row.tenant_id, &row.magento_base_url).await;
    }
    Ok(rows.len())
}
