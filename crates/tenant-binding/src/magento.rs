//! Verifying the module's signed requests (contract §3.1).
//!
//! The path (or, for tile/status/disconnect, the unverified `sub`) names the tenant; a
//! tenant may hold several bindings (production, staging), so the request belongs to
//! the binding whose outbound subkey verifies the signature. Only then are the claims
//! checked, and the `jti` is consumed in the shared Postgres replay store.

use axum::http::{HeaderMap, header};
use ledger_core::{AppState, BindingId, Problem, TenantId};
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
            let api_key = state.keyring.open_string(sealed, &context).map_err(Problem::internal)?;
            if parsed.verify_signature(Subkeys::derive(api_key.expose()).outbound.expose()) {
                matched = Some((candidate, pending.then(|| sealed.to_vec())));
                break;
            }
        }
        if matched.is_some() {
            break;
        }
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

    let leeway = i64::try_from(state.settings.magento_clock_leeway.as_secs()).unwrap_or(30);
    let now = chrono::Utc::now().timestamp();
    let claims = auth::check_outbound_claims(&parsed.claims, &tenant_text, now, leeway).map_err(|e| jwt_problem(&e))?;

    let mut status = candidate.status;
    if let Some(sealed_pending) = pending {
        bindings::promote_pending_key(&state.db, &state.keyring, candidate.binding_id, &sealed_pending).await?;
        if matches!(status, BindingStatus::Pairing | BindingStatus::Revoked) {
            status = BindingStatus::Paired;
        }
    }
    if status == BindingStatus::Revoked && !allow_revoked {
        return Err(refused(
            "binding_revoked",
            "This store was disconnected from the ledger, so its events are no longer accepted. \
             To sync again, generate a pairing code in the Magento admin and connect the store in the ledger dashboard.",
        ));
    }
    Ok(MagentoCaller {
        tenant_id,
        binding_id: candidate.binding_id,
        status,
        jti_expires_at: claims.exp + leeway,
        claims,
    })
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
