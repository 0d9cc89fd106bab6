//! Verifying the module's signed requests (contract §3.1).
//!
//! The path (or, for tile/status/disconnect, the unverified `sub`) names the tenant; a
//! tenant may hold several bindings (production, staging), so the request belongs to
//! the binding whose outbound subkey verifies the signature. Only then are the claims
//! checked, and the `jti` is consumed in the shared Postgres replay store.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use axum::http::{HeaderMap, header};
use ledger_core::{AppState, BindingId, Problem, Secret, TenantId};
use ledger_magento_api::auth::{self, Claims, JwtError, Subkeys};

use crate::bindings::{self, BindingStatus};

/// A request proven to come from a binding's store.
#[derive(Debug, Clone)]
pub struct MagentoCaller {
    pub tenant_id: TenantId,
    pub binding_id: BindingId,
    pub status: BindingStatus,
    pub claims: Claims,
    /// The replay store keeps the jti until then (token expiry plus leeway).
    pub jti_expires_at: i64,
    /// The store's clock minus the ledger's as this token shows it (`iat − now`).
    pub store_clock_skew: i64,
    /// Verified with a key from [`KeyCache`], not read for this request: the sealed
    /// api_key the binding must still hold, and the binding still not be revoked, when
    /// the request's effect is committed (the ingest statement checks both).
    pub key_check: Option<Arc<[u8]>>,
}

/// What a request may be and still be accepted.
#[derive(Debug, Clone, Copy, Default)]
pub struct Accept {
    /// A revoked binding's request (disconnect stays idempotent; the tile shows it).
    pub revoked: bool,
    /// Seconds of clock skew accepted beyond the configured leeway. Only for requests
    /// that change nothing (the tile), so a skewed store can still be told it is.
    pub extra_clock_tolerance: i64,
    /// May verify with a cached key ([`KeyCache`]); the caller then commits its effect
    /// only if [`MagentoCaller::key_check`] still holds.
    pub cached: bool,
}

impl Accept {
    /// The webhook: its effect is the ingest statement, which re-checks a cached key.
    pub const WEBHOOK: Self = Self {
        revoked: false,
        extra_clock_tolerance: 0,
        cached: true,
    };
}

/// How long a tenant's keys are used without reading them again. Safety does not rest
/// on it (a cached key is re-checked where the request's effect is committed); it
/// bounds how stale the binding's status and recorded clock skew may be on a hit.
const KEY_CACHE_TTL: Duration = Duration::from_secs(30);
/// Tenants held at most; past it, expired entries are dropped (and, if all are fresh,
/// the whole map: a miss costs one read).
const KEY_CACHE_TENANTS: usize = 10_000;

/// The outbound subkeys of recently seen tenants' current api_keys, so a busy store's
/// webhook is verified without a read of its binding and without opening its sealed key
/// again. Pending keys are never cached (their first use promotes them, a write).
#[derive(Debug, Default)]
pub struct KeyCache(Mutex<HashMap<TenantId, CachedTenant>>);

#[derive(Debug)]
struct CachedTenant {
    read_at: Instant,
    keys: Vec<CachedKey>,
}

#[derive(Debug)]
struct CachedKey {
    binding_id: BindingId,
    status: BindingStatus,
    sealed: Arc<[u8]>,
    outbound: Secret<[u8; 32]>,
    store_clock_skew: Option<i32>,
}

/// A cached key that verified a token.
struct CacheHit {
    binding_id: BindingId,
    status: BindingStatus,
    sealed: Arc<[u8]>,
    store_clock_skew: Option<i32>,
}

impl KeyCache {
    pub fn of(state: &AppState) -> Arc<Self> {
        state.part(|_| Self::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TenantId, CachedTenant>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The cached key of `tenant` that verifies `parsed`, if the tenant was read lately.
    fn verify(&self, tenant: TenantId, parsed: &auth::Parsed<'_>) -> Option<CacheHit> {
        let map = self.lock();
        let entry = map.get(&tenant).filter(|e| e.read_at.elapsed() < KEY_CACHE_TTL)?;
        entry
            .keys
            .iter()
            .find(|k| parsed.verify_signature(k.outbound.expose()))
            .map(|k| CacheHit {
                binding_id: k.binding_id,
                status: k.status,
                sealed: k.sealed.clone(),
                store_clock_skew: k.store_clock_skew,
            })
    }

    fn store(&self, tenant: TenantId, keys: Vec<CachedKey>) {
        let mut map = self.lock();
        if map.len() >= KEY_CACHE_TENANTS && !map.contains_key(&tenant) {
            map.retain(|_, e| e.read_at.elapsed() < KEY_CACHE_TTL);
            if map.len() >= KEY_CACHE_TENANTS {
                map.clear();
            }
        }
        map.insert(
            tenant,
            CachedTenant {
                read_at: Instant::now(),
                keys,
            },
        );
    }

    /// What the binding now records of the store's clock (after [`note_store_clock`]
    /// wrote it), so later hits compare with it.
    fn note_skew(&self, tenant: TenantId, binding: BindingId, skew: Option<i32>) {
        if let Some(key) = self
            .lock()
            .get_mut(&tenant)
            .and_then(|e| e.keys.iter_mut().find(|k| k.binding_id == binding))
        {
            key.store_clock_skew = skew;
        }
    }

    /// Forgets `tenant`'s keys: a request verified with one found its binding changed.
    pub fn forget(&self, tenant: TenantId) {
        self.lock().remove(&tenant);
    }
}

/// Skews below this are a request's transit time and clock jitter: not recorded.
const SKEW_WORTH_RECORDING_SECS: i64 = 10;

/// "store clock 95 s ahead — fix NTP", for the tile, dashboard and ops console.
pub fn clock_warning(skew_secs: i64) -> String {
    let direction = if skew_secs > 0 { "ahead" } else { "behind" };
    format!("store clock {} s {direction} — fix NTP", skew_secs.unsigned_abs())
}

fn refused(code: &'static str, detail: impl Into<String>) -> Problem {
    Problem::unauthorized(code, detail)
}

fn jwt_problem(err: &JwtError) -> Problem {
    let hint = match err {
        JwtError::Expired(_) | JwtError::NotYetValid(_) => {
            " Check that the Magento server's clock is synchronised (NTP)."
        }
        JwtError::Subject(_) => " The store is paired with another tenant; pair it again from this tenant.",
        _ => "",
    };
    refused(err.code(), format!("The request's token was refused: {err}.{hint}"))
}

/// Verifies a module request. `path_tenant` is the tenant named in the URL (webhooks);
/// without one, the token's `sub` names it. Revoked bindings are refused unless
/// `allow_revoked` (disconnect stays idempotent).
pub async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    path_tenant: Option<&str>,
    allow_revoked: bool,
) -> Result<MagentoCaller, Problem> {
    let accept = Accept {
        revoked: allow_revoked,
        extra_clock_tolerance: 0,
        cached: false,
    };
    authenticate_with(state, headers, path_tenant, accept).await
}

/// [`authenticate`] with an explicit [`Accept`].
///
/// A correctly signed token outside its validity window is the store's clock, not an
/// attack or a bad key: it is answered 503 + Retry-After (the module dead-letters every
/// 4xx at once, but retries a 5xx), and the measured skew is recorded on the binding.
pub async fn authenticate_with(
    state: &AppState,
    headers: &HeaderMap,
    path_tenant: Option<&str>,
    accept: Accept,
) -> Result<MagentoCaller, Problem> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.get(..7)
                .filter(|p| p.eq_ignore_ascii_case("bearer "))
                .map(|_| v[7..].trim())
        })
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            refused(
                "token_missing",
                "Send the module's signed token as `Authorization: Bearer <jwt>`.",
            )
        })?;
    let parsed = auth::parse(token).map_err(|e| jwt_problem(&e))?;

    let tenant_text = match path_tenant {
        Some(t) => t.to_owned(),
        None => parsed
            .subject()
            .map(str::to_owned)
            .ok_or_else(|| jwt_problem(&JwtError::Claim("sub")))?,
    };
    let tenant_id: TenantId = tenant_text.parse().map_err(|_| {
        refused(
            "unknown_tenant",
            format!("The ledger has no tenant `{tenant_text}`. Pair the store again from the ledger dashboard."),
        )
    })?;

    let cache = accept.cached.then(|| KeyCache::of(state));
    // A cached key of a revoked binding is read again: the answer must be current.
    let hit = cache
        .as_ref()
        .and_then(|c| c.verify(tenant_id, &parsed))
        .filter(|h| accept.revoked || h.status != BindingStatus::Revoked);
    let (binding_id, mut status, recorded_skew, pending, key_check) = match hit {
        Some(h) => (h.binding_id, h.status, h.store_clock_skew, None, Some(h.sealed)),
        None => {
            let (candidate, pending) = verify_read(state, tenant_id, &parsed, cache.as_deref()).await?;
            (
                candidate.binding_id,
                candidate.status,
                candidate.store_clock_skew,
                pending,
                None,
            )
        }
    };

    let leeway = i64::try_from(state.settings.magento_clock_leeway.as_secs()).unwrap_or(30);
    let now = chrono::Utc::now().timestamp();
    let skew = parsed
        .claims
        .get("iat")
        .and_then(serde_json::Value::as_i64)
        .map(|iat| iat - now);
    let claims = match auth::check_outbound_claims(
        &parsed.claims,
        &tenant_text,
        now,
        leeway + accept.extra_clock_tolerance,
    ) {
        Ok(claims) => claims,
        Err(e @ (JwtError::Expired(_) | JwtError::NotYetValid(_))) => {
            let skew = skew.unwrap_or_default();
            note_store_clock(state, cache.as_deref(), tenant_id, binding_id, recorded_skew, skew).await;
            tracing::warn!(%binding_id, skew_secs = skew, "a correctly signed token outside its validity: the store's clock is off");
            return Err(Problem::unavailable(
                "store_clock_skew",
                format!(
                    "The request's token was refused: {e}. Its signature is right, so the Magento server's clock \
                     is about {} s {} the ledger's. Fix its time (NTP); the module retries this request.",
                    skew.unsigned_abs(),
                    if skew > 0 { "ahead of" } else { "behind" }
                ),
                60,
            ));
        }
        Err(e) => return Err(jwt_problem(&e)),
    };
    let skew = skew.unwrap_or_default();
    note_store_clock(state, cache.as_deref(), tenant_id, binding_id, recorded_skew, skew).await;

    if let Some(sealed_pending) = pending {
        bindings::promote_pending_key(&state.db, &state.keyring, binding_id, &sealed_pending).await?;
        if matches!(status, BindingStatus::Pairing | BindingStatus::Revoked) {
            status = BindingStatus::Paired;
        }
    }
    if status == BindingStatus::Revoked && !accept.revoked {
        return Err(refused(
            "binding_revoked",
            "This store was disconnected from the ledger, so its events are no longer accepted. \
             To sync again, generate a pairing code in the Magento admin and connect the store in the ledger dashboard.",
        ));
    }
    Ok(MagentoCaller {
        tenant_id,
        binding_id,
        status,
        // A token accepted from a store ahead of us is kept until its own expiry.
        jti_expires_at: claims.exp.max(now) + leeway + accept.extra_clock_tolerance,
        store_clock_skew: skew,
        claims,
        key_check,
    })
}

/// Reads `tenant`'s keys and finds the one that verifies `parsed` (and the sealed pending
/// key, when that is the one); fills `cache` with the current keys.
async fn verify_read(
    state: &AppState,
    tenant_id: TenantId,
    parsed: &auth::Parsed<'_>,
    cache: Option<&KeyCache>,
) -> Result<(bindings::KeyCandidate, Option<Vec<u8>>), Problem> {
    let candidates = bindings::key_candidates(&state.db, tenant_id).await?;
    if candidates.is_empty() {
        return Err(refused(
            "unknown_tenant",
            format!(
                "The ledger has no paired store for tenant {tenant_id}. Pair the store again from the ledger dashboard."
            ),
        ));
    }
    let mut matched = None;
    let mut cached = Vec::new();
    for candidate in &candidates {
        let keys = [
            (
                candidate.api_key.as_deref(),
                bindings::api_key_context(candidate.binding_id),
                false,
            ),
            (
                candidate.pending_api_key.as_deref(),
                bindings::pending_key_context(candidate.binding_id),
                true,
            ),
        ];
        for (sealed, context, pending) in keys {
            let Some(sealed) = sealed else { continue };
            if matched.is_some() && (pending || cache.is_none()) {
                continue;
            }
            let api_key = state.keyring.open_string(sealed, &context).map_err(Problem::internal)?;
            let outbound = Subkeys::derive(api_key.expose()).outbound;
            if matched.is_none() && parsed.verify_signature(outbound.expose()) {
                matched = Some((candidate, pending.then(|| sealed.to_vec())));
            }
            if !pending && cache.is_some() {
                cached.push(CachedKey {
                    binding_id: candidate.binding_id,
                    status: candidate.status,
                    sealed: sealed.into(),
                    outbound,
                    store_clock_skew: candidate.store_clock_skew,
                });
            }
        }
    }
    if let Some(cache) = cache {
        cache.store(tenant_id, cached);
    }
    let Some((candidate, pending)) = matched else {
        return Err(refused(
            "token_signature_invalid",
            format!(
                "The request's signature does not verify with any key the ledger issued for tenant {tenant_id}: \
                 the store's api_key is not current. Pair the store again (Generate pairing code in the Magento admin, \
                 then connect it in the ledger dashboard)."
            ),
        ));
    };
    Ok((candidate.clone(), pending))
}

/// Records the store's clock skew when it differs from what the binding holds by more
/// than jitter (a write only when the picture changes), and clears it once the store is
/// back in time. Best effort: a failed write must not refuse the request.
async fn note_store_clock(
    state: &AppState,
    cache: Option<&KeyCache>,
    tenant: TenantId,
    binding: BindingId,
    recorded: Option<i32>,
    skew: i64,
) {
    let worth = skew.abs() >= SKEW_WORTH_RECORDING_SECS;
    let new = worth.then(|| i32::try_from(skew.clamp(-86_400 * 365, 86_400 * 365)).unwrap_or_default());
    let changed = match (recorded, new) {
        (None, None) => false,
        (Some(old), Some(new)) => (i64::from(old) - i64::from(new)).abs() >= 5,
        _ => true,
    };
    if !changed {
        return;
    }
    match bindings::record_store_clock(&state.db, binding, new).await {
        Ok(()) => {
            if let Some(cache) = cache {
                cache.note_skew(tenant, binding, new);
            }
        }
        Err(err) => tracing::warn!(binding_id = %binding, error = %err, "recording the store's clock skew failed"),
    }
}

/// Consumes the token's `jti`; a second use is refused. Runs on the caller's
/// connection so it can share the request's transaction.
pub async fn consume_jti(conn: &mut sqlx::PgConnection, caller: &MagentoCaller) -> Result<(), Problem> {
    let fresh = sqlx::query_scalar!(
        r#"INSERT INTO magento_jti (binding_id, jti, expires_at) VALUES ($1, $2, to_timestamp($3))
           ON CONFLICT DO NOTHING RETURNING true AS "fresh!""#,
        caller.binding_id.0,
        caller.claims.jti,
        caller.jti_expires_at as f64,
    )
    .fetch_optional(conn)
    .await?;
    match fresh {
        Some(_) => Ok(()),
        None => Err(jwt_problem(&JwtError::Replayed)),
    }
}

/// Deletes replay-store entries past their expiry; returns how many.
pub async fn prune_jti(db: &sqlx::PgPool) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query!("DELETE FROM magento_jti WHERE expires_at < now()")
        .execute(db)
        .await?
        .rows_affected())
}
