//! The health loop: pings every live binding's store (`GET /rest/V1/byte8/ping`) and
//! records what the module's tile shows: `token_revoked` after a 401 (the store no
//! longer holds our key), `active` after any answer proving it does.

use ledger_core::{AppState, BindingId, TenantId};
use ledger_magento_api::MagentoError;
use ledger_tenant_binding::bindings;

use crate::store::{StoreError, StoreRef, store_client};

/// What one ping found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PingOutcome {
    Healthy,
    Unauthorized,
    Unreachable,
}

/// Pings one binding's store and records the answer.
pub async fn ping(
    state: &AppState,
    binding_id: BindingId,
    tenant_id: TenantId,
    base_url: &str,
    store_clock_skew: Option<i32>,
) -> PingOutcome {
    let outcome = async {
        let sealed = bindings::sealed_api_key(&state.db, binding_id)
            .await
            .map_err(|e| MagentoError::Transient {
                url: base_url.to_owned(),
                reason: e.to_string(),
            })?;
        let store = StoreRef {
            binding_id,
            tenant_id,
            base_url,
            sealed_api_key: sealed.as_deref(),
            store_clock_skew,
        };
        let client = store_client(state, store).await.map_err(|e| match e {
            StoreError::Magento(e) => e,
            StoreError::BadUrl(url) => MagentoError::Url(ledger_magento_api::UrlError::NotAUrl(url)),
            StoreError::ApiKey(e) => MagentoError::Transient {
                url: base_url.to_owned(),
                reason: e.to_string(),
            },
        })?;
        client.ping().await
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
    if let Err(MagentoError::ClockSkew { store_ahead_secs, .. }) = &outcome
        && let Err(err) =
            bindings::record_store_clock(&state.db, binding_id, i32::try_from(*store_ahead_secs).ok()).await
    {
        tracing::warn!(%binding_id, error = %err, "recording the store's clock failed");
    }
    if let Err(err) = &outcome {
        tracing::info!(%binding_id, error = %err, "store ping failed");
    }
    result
}

/// Stores pinged at once: a pass over 10,000 stores, most answering in tens of
/// milliseconds and a few timing out, fits in the minute between passes.
pub const PING_CONCURRENCY: usize = 32;

/// The session advisory lock whose holder is the one replica pinging in a pass.
pub const HEALTH_LEADER_LOCK: i64 = 0x6c65_6467_6572_0001;

/// Pings every paired binding once, [`PING_CONCURRENCY`] at a time, if this process leads
/// the pass (another replica's pass in progress: nothing, `Ok(0)`). Returns how many
/// stores were pinged.
pub async fn ping_all(state: &AppState) -> Result<usize, sqlx::Error> {
    // A connection of its own, closed at the end (or when the pass is dropped at
    // shutdown): closing the session releases the lock, wherever the pass stopped.
    let mut leader = state.db.acquire().await?.detach();
    let led = sqlx::query_scalar!(r#"SELECT pg_try_advisory_lock($1) AS "led!""#, HEALTH_LEADER_LOCK)
        .fetch_one(&mut leader)
        .await?;
    if !led {
        return Ok(0);
    }
    let rows = sqlx::query!(
        r#"SELECT id AS "id: BindingId", tenant_id AS "tenant_id: TenantId", magento_base_url, store_clock_skew_secs
           FROM connector_bindings WHERE status IN ('paired', 'active', 'needs_reauth', 'paused') AND api_key IS NOT NULL"#
    )
    .fetch_all(&state.db)
    .await?;
    let total = rows.len();
    let mut pings = tokio::task::JoinSet::new();
    for row in rows {
        if pings.len() >= PING_CONCURRENCY {
            pings.join_next().await;
        }
        let state = state.clone();
        pings.spawn(async move {
            ping(
                &state,
                row.id,
                row.tenant_id,
                &row.magento_base_url,
                row.store_clock_skew_secs,
            )
            .await;
        });
    }
    while pings.join_next().await.is_some() {}
    let _ = sqlx::Connection::close(leader).await;
    Ok(total)
}
