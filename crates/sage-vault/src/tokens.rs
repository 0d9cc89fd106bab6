//! Sealed Sage tokens and race-free refresh.
//!
//! Refresh tokens rotate: each use kills the old one. So across every process exactly
//! one refresher may use it: a refresher takes a short lease on the connection row
//! (`refresh_lease`, `refreshing_until`) in its own statement, calls Sage with no
//! transaction open, and writes the new pair back only if it still holds the lease,
//! bumping `token_version`. Everyone else waits and re-reads. After `invalid_grant` the
//! row is read again before concluding: only if nobody rotated it in the meantime does
//! the connection become `needs_reauth` (binding paused, jobs held, tile red).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use ledger_core::{
    AppState, BindingId, Secret,
    audit::{self, Actor},
};

use ledger_tenant_binding::bindings::{Move, transition};

use crate::oauth::{OAuthError, SageOAuth, TokenSet};

/// How long a refresher may hold the lease (longer than any call to Sage).
const LEASE: Duration = Duration::from_secs(30);

pub fn access_context(binding: BindingId) -> String {
    format!("sage_connections.access_token:{binding}")
}

pub fn refresh_context(binding: BindingId) -> String {
    format!("sage_connections.refresh_token:{binding}")
}

/// A usable access token for one binding.
#[derive(Debug, Clone)]
pub struct AccessToken {
    pub token: Secret<String>,
    /// `X-Business`.
    pub business_id: Option<String>,
    /// The row version it came from (pass it back after a token 401).
    pub version: i64,
    pub expires_at: DateTime<Utc>,
}

/// Why no token is available.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VaultError {
    #[error("Sage is not connected for this binding")]
    NotConnected,
    #[error("Sage needs to be connected again: the refresh token was refused")]
    NeedsReauth,
    #[error("Sage is unavailable right now: {0}")]
    Transient(String),
    #[error("{0}")]
    Internal(String),
}

impl From<sqlx::Error> for VaultError {
    fn from(err: sqlx::Error) -> Self {
        if ledger_core::db::is_transient(&err) {
            Self::Transient(format!("database: {err}"))
        } else {
            Self::Internal(err.to_string())
        }
    }
}

/// Access tokens held in memory by one process, until shortly before expiry.
#[derive(Debug, Default)]
pub struct TokenCache(Mutex<HashMap<BindingId, AccessToken>>);

impl TokenCache {
    /// The state's cache (one per [`AppState`], shared by its clones).
    pub fn of(state: &AppState) -> Arc<Self> {
        state.part(|_| Self::default())
    }

    fn get(&self, binding: BindingId, margin: Duration) -> Option<AccessToken> {
        let map = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let margin = chrono::Duration::from_std(margin).unwrap_or_default();
        map.get(&binding)
            .filter(|t| t.expires_at - margin > Utc::now())
            .cloned()
    }

    fn put(&self, binding: BindingId, token: AccessToken) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(binding, token);
    }

    pub fn forget(&self, binding: BindingId) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&binding);
    }
}

/// Writes a fresh token pair for a binding (first connect or re-connect replaces any
/// previous tokens), sealed under the active key.
pub async fn store_tokens(
    conn: &mut sqlx::PgConnection,
    state: &AppState,
    binding: BindingId,
    region: &str,
    tokens: &TokenSet,
) -> Result<(), sqlx::Error> {
    let keyring = &state.keyring;
    let access = keyring.seal(tokens.access_token.expose().as_bytes(), &access_context(binding));
    let refresh = keyring.seal(tokens.refresh_token.expose().as_bytes(), &refresh_context(binding));
    let access_secs = tokens.access_expires_in.as_secs_f64();
    let refresh_secs = tokens.refresh_expires_in.as_secs_f64();
    sqlx::query!(
        "INSERT INTO sage_connections
           (binding_id, status, region, access_token, access_token_key_id, access_expires_at,
            refresh_token, refresh_token_key_id, refresh_expires_at, requested_by_id)
         VALUES ($1, 'choosing_business', $2, $3, $4, now() + make_interval(secs => $5), $6, $4, now() + make_interval(secs => $7), $8)
         ON CONFLICT (binding_id) DO UPDATE SET
           status = 'choosing_business', region = $2, business_id = NULL, business_name = NULL,
           access_token = $3, access_token_key_id = $4, access_expires_at = now() + make_interval(secs => $5),
           refresh_token = $6, refresh_token_key_id = $4, refresh_expires_at = now() + make_interval(secs => $7),
           requested_by_id = $8, token_version = sage_connections.token_version + 1,
           refresh_lease = NULL, refreshing_until = NULL, connected_at = now(), last_refreshed_at = now(), updated_at = now()",
        binding.0,
        region,
        access,
        keyring.active_id(),
        access_secs,
        refresh,
        refresh_secs,
        tokens.requested_by_id,
    )
    .execute(conn)
    .await?;
    TokenCache::of(state).forget(binding);
    Ok(())
}

struct Row {
    status: String,
    business_id: Option<String>,
    access_token: Option<Vec<u8>>,
    access_expires_at: Option<DateTime<Utc>>,
    token_version: i64,
}

async fn read(state: &AppState, binding: BindingId) -> Result<Row, VaultError> {
    let row = sqlx::query!(
        "SELECT status, business_id, access_token, access_expires_at, token_version
         FROM sage_connections WHERE binding_id = $1",
        binding.0
    )
    .fetch_optional(&state.db)
    .await?
    .ok_or(VaultError::NotConnected)?;
    Ok(Row {
        status: row.status,
        business_id: row.business_id,
        access_token: row.access_token,
        access_expires_at: row.access_expires_at,
        token_version: row.token_version,
    })
}

fn usable(row: &Row, margin: Duration) -> bool {
    let margin = chrono::Duration::from_std(margin).unwrap_or_default();
    row.access_token.is_some() && row.access_expires_at.is_some_and(|e| e - margin > Utc::now())
}

fn open(state: &AppState, binding: BindingId, row: &Row) -> Result<AccessToken, VaultError> {
    let sealed = row.access_token.as_deref().ok_or(VaultError::NotConnected)?;
    let token = state
        .keyring
        .open_string(sealed, &access_context(binding))
        .map_err(|e| VaultError::Internal(e.to_string()))?;
    Ok(AccessToken {
        token,
        business_id: row.business_id.clone(),
        version: row.token_version,
        expires_at: row.access_expires_at.unwrap_or_else(Utc::now),
    })
}

/// A valid access token for `binding`, refreshing it when it is about to expire.
pub async fn access_token(state: &AppState, binding: BindingId) -> Result<AccessToken, VaultError> {
    access_token_with(state, &TokenCache::of(state), binding, None).await
}

/// [`access_token`], but a cached token of another version than `version` (when given)
/// is dropped and the row read again.
pub async fn access_token_of_version(
    state: &AppState,
    binding: BindingId,
    version: Option<i64>,
) -> Result<AccessToken, VaultError> {
    let cache = TokenCache::of(state);
    if let Some(version) = version
        && cache
            .get(binding, Duration::ZERO)
            .is_some_and(|cached| cached.version != version)
    {
        cache.forget(binding);
    }
    access_token_with(state, &cache, binding, None).await
}

/// After Sage refused `seen` with a token 401: refresh unless another caller already did.
pub async fn after_unauthorized(
    state: &AppState,
    binding: BindingId,
    seen: &AccessToken,
) -> Result<AccessToken, VaultError> {
    let cache = TokenCache::of(state);
    cache.forget(binding);
    access_token_with(state, &cache, binding, Some(seen.version)).await
}

/// The refresh loop with an explicit cache (tests simulate many processes with many caches).
/// `stale_version`: treat that version's access token as unusable (it was refused).
pub async fn access_token_with(
    state: &AppState,
    cache: &TokenCache,
    binding: BindingId,
    stale_version: Option<i64>,
) -> Result<AccessToken, VaultError> {
    let margin = state.settings.sage_refresh_margin;
    if stale_version.is_none()
        && let Some(token) = cache.get(binding, margin)
    {
        return Ok(token);
    }
    let started = Instant::now();
    let mut wait = Duration::from_millis(20);
    loop {
        let row = read(state, binding).await?;
        if row.status == "needs_reauth" {
            return Err(VaultError::NeedsReauth);
        }
        if usable(&row, margin) && stale_version != Some(row.token_version) {
            let token = open(state, binding, &row)?;
            cache.put(binding, token.clone());
            return Ok(token);
        }
        match refresh(state, binding, row.token_version).await? {
            Refreshed::Done(token) => {
                cache.put(binding, token.clone());
                return Ok(token);
            }
            // Someone else holds the lease (or just rotated): wait, then re-read.
            Refreshed::Busy => {
                if started.elapsed() > LEASE + Duration::from_secs(5) {
                    return Err(VaultError::Transient(
                        "another process has been refreshing for too long".to_owned(),
                    ));
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_millis(250));
            }
        }
    }
}

enum Refreshed {
    Done(AccessToken),
    Busy,
}

/// One refresh attempt of the row at `version`.
async fn refresh(state: &AppState, binding: BindingId, version: i64) -> Result<Refreshed, VaultError> {
    let lease = uuid::Uuid::new_v4();
    let taken = sqlx::query!(
        "UPDATE sage_connections SET refresh_lease = $2, refreshing_until = now() + make_interval(secs => $3)
         WHERE binding_id = $1 AND token_version = $4 AND refresh_token IS NOT NULL
           AND (refreshing_until IS NULL OR refreshing_until < now())
         RETURNING refresh_token",
        binding.0,
        lease,
        LEASE.as_secs_f64(),
        version,
    )
    .fetch_optional(&state.db)
    .await?;
    let Some(taken) = taken else { return Ok(Refreshed::Busy) };
    let sealed = taken.refresh_token.ok_or(VaultError::NotConnected)?;
    let refresh_token = state
        .keyring
        .open_string(&sealed, &refresh_context(binding))
        .map_err(|e| VaultError::Internal(e.to_string()))?;

    let oauth = SageOAuth::of(state);
    match oauth.refresh(&refresh_token).await {
        Ok(tokens) => {
            let keyring = &state.keyring;
            let access = keyring.seal(tokens.access_token.expose().as_bytes(), &access_context(binding));
            let refresh = keyring.seal(tokens.refresh_token.expose().as_bytes(), &refresh_context(binding));
            let row = sqlx::query!(
                "UPDATE sage_connections SET
                   access_token = $3, access_token_key_id = $4, access_expires_at = now() + make_interval(secs => $5),
                   refresh_token = $6, refresh_token_key_id = $4, refresh_expires_at = now() + make_interval(secs => $7),
                   token_version = token_version + 1, refresh_lease = NULL, refreshing_until = NULL,
                   last_refreshed_at = now(), updated_at = now()
                 WHERE binding_id = $1 AND refresh_lease = $2
                 RETURNING token_version, business_id, access_expires_at",
                binding.0,
                lease,
                access,
                keyring.active_id(),
                tokens.access_expires_in.as_secs_f64(),
                refresh,
                tokens.refresh_expires_in.as_secs_f64(),
            )
            .fetch_optional(&state.db)
            .await?;
            let Some(row) = row else {
                // The lease expired mid-call and someone else took over; their tokens win.
                tracing::warn!(%binding, "refresh lease lost before the write; re-reading");
                return Ok(Refreshed::Busy);
            };
            tracing::info!(%binding, version = row.token_version, "Sage tokens refreshed");
            Ok(Refreshed::Done(AccessToken {
                token: tokens.access_token,
                business_id: row.business_id,
                version: row.token_version,
                expires_at: row.access_expires_at.unwrap_or_else(Utc::now),
            }))
        }
        Err(OAuthError::InvalidGrant) => {
            // Re-read before concluding: another holder may have rotated the token.
            let current = read(state, binding).await?;
            if current.token_version != version {
                return Ok(Refreshed::Busy);
            }
            mark_needs_reauth(state, binding, lease).await?;
            Err(VaultError::NeedsReauth)
        }
        Err(err) => {
            release(state, binding, lease).await?;
            Err(VaultError::Transient(err.to_string()))
        }
    }
}

async fn release(state: &AppState, binding: BindingId, lease: uuid::Uuid) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE sage_connections SET refresh_lease = NULL, refreshing_until = NULL WHERE binding_id = $1 AND refresh_lease = $2",
        binding.0,
        lease
    )
    .execute(&state.db)
    .await?;
    Ok(())
}

/// The refresh token is dead: the merchant must connect Sage again. Jobs are paused, not
/// failed, so nothing is lost meanwhile.
async fn mark_needs_reauth(state: &AppState, binding: BindingId, lease: uuid::Uuid) -> Result<(), sqlx::Error> {
    let mut tx = state.db.begin().await?;
    let changed = sqlx::query!(
        "UPDATE sage_connections SET status = 'needs_reauth', refresh_lease = NULL, refreshing_until = NULL, updated_at = now()
         WHERE binding_id = $1 AND refresh_lease = $2 AND status <> 'needs_reauth'",
        binding.0,
        lease
    )
    .execute(&mut *tx)
    .await?
    .rows_affected()
        > 0;
    if changed {
        let tenant = transition(&mut tx, binding, Move::SageNeedsReauth).await?;
        ledger_jobs::hold_binding(&mut tx, binding).await?;
        audit::record(
            &mut tx,
            audit::Entry {
                actor: Actor::System,
                tenant_id: tenant,
                binding_id: Some(binding),
                action: "sage.needs_reauth",
                details: serde_json::json!({ "reason": "refresh token refused (invalid_grant)" }),
                request_id: None,
            },
        )
        .await?;
        tracing::warn!(%binding, "Sage refresh token refused; the connection needs re-authorisation");
    }
    tx.commit().await?;
    TokenCache::of(state).forget(binding);
    Ok(())
}

/// Sage answered "No active subscription": calls will keep failing until the merchant
/// renews; the binding is paused rather than its jobs burning attempts.
pub async fn mark_subscription_lapsed(state: &AppState, binding: BindingId) -> Result<(), sqlx::Error> {
    let mut tx = state.db.begin().await?;
    let changed = sqlx::query!(
        "UPDATE sage_connections SET status = 'subscription_lapsed', updated_at = now()
         WHERE binding_id = $1 AND status = 'connected'",
        binding.0
    )
    .execute(&mut *tx)
    .await?
    .rows_affected()
        > 0;
    if changed {
        transition(&mut tx, binding, Move::SubscriptionLapsed).await?;
        ledger_jobs::hold_binding(&mut tx, binding).await?;
        audit::record(
            &mut tx,
            audit::Entry {
                actor: Actor::System,
                tenant_id: None,
                binding_id: Some(binding),
                action: "sage.subscription_lapsed",
                details: serde_json::json!({}),
                request_id: None,
            },
        )
        .await?;
    }
    tx.commit().await
}

/// Refreshes connections idle longer than `sage_keepalive_after`, so a quiet shop's
/// refresh token never reaches its 31-day expiry. Returns how many were refreshed.
pub async fn keep_alive(state: &AppState) -> Result<usize, sqlx::Error> {
    let idle = state.settings.sage_keepalive_after.as_secs_f64();
    // The version is read with the idle check: a connection another process refreshed
    // since (its version moved on) is not refreshed a second time.
    let due = sqlx::query!(
        r#"SELECT c.binding_id AS "binding_id: BindingId", c.token_version FROM sage_connections c
           JOIN connector_bindings b ON b.id = c.binding_id AND b.status NOT IN ('revoked', 'pairing')
           WHERE c.status IN ('connected', 'choosing_business', 'subscription_lapsed')
             AND c.last_refreshed_at < now() - make_interval(secs => $1)"#,
        idle
    )
    .fetch_all(&state.db)
    .await?;
    let mut refreshed = 0;
    for row in due {
        let binding = row.binding_id;
        match access_token_with(state, &TokenCache::of(state), binding, Some(row.token_version)).await {
            Ok(_) => refreshed += 1,
            Err(err) => tracing::warn!(%binding, error = %err, "keep-alive refresh failed"),
        }
    }
    Ok(refreshed)
}

/// Sage tokens still held for revoked bindings (a disconnect whose revocation did not
/// finish, or from before disconnects revoked them): revoked at Sage and deleted.
pub async fn forget_revoked(state: &AppState) -> Result<usize, sqlx::Error> {
    let orphans = sqlx::query_scalar!(
        r#"SELECT c.binding_id AS "binding_id: BindingId" FROM sage_connections c
           JOIN connector_bindings b ON b.id = c.binding_id WHERE b.status = 'revoked'"#
    )
    .fetch_all(&state.db)
    .await?;
    let mut done = 0;
    for binding in orphans {
        if disconnect(state, binding).await? {
            done += 1;
        }
    }
    Ok(done)
}

/// Ledger-side disconnect of Sage: revokes the refresh token at Sage (best effort) and
/// deletes the token row and reference cache.
pub async fn disconnect(state: &AppState, binding: BindingId) -> Result<bool, sqlx::Error> {
    let row = sqlx::query!(
        "DELETE FROM sage_connections WHERE binding_id = $1 RETURNING refresh_token",
        binding.0
    )
    .fetch_optional(&state.db)
    .await?;
    sqlx::query!("DELETE FROM sage_reference WHERE binding_id = $1", binding.0)
        .execute(&state.db)
        .await?;
    TokenCache::of(state).forget(binding);
    let Some(row) = row else { return Ok(false) };
    if let Some(sealed) = row.refresh_token
        && let Ok(token) = state.keyring.open_string(&sealed, &refresh_context(binding))
        && let Err(err) = SageOAuth::of(state).revoke(&token).await
    {
        tracing::warn!(%binding, error = %err, "revoking the Sage refresh token failed; it was deleted here anyway");
    }
    Ok(true)
}
