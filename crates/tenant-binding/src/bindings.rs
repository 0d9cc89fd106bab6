//! Bindings (one Magento install ↔ one Sage business) and their sealed api_keys.

use chrono::{DateTime, Utc};
use ledger_core::{AppState, BindingId, Problem, Secret, TenantId, crypto::Keyring};
use serde::Serialize;
use utoipa::ToSchema;

// The legal moves between these are `Move`'s table (not in the doc: it is the API's).
/// A binding's lifecycle.
///
/// `pairing` → (store confirms the key) → `paired` → (Sage connected) → `active`;
/// `needs_reauth` and `paused` hold jobs; `revoked` after a disconnect. Re-pairing a
/// revoked binding revives the same row, so its `entity_xref` history is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum BindingStatus {
    Pairing,
    Paired,
    Active,
    NeedsReauth,
    Paused,
    Revoked,
}

impl BindingStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pairing => "pairing",
            Self::Paired => "paired",
            Self::Active => "active",
            Self::NeedsReauth => "needs_reauth",
            Self::Paused => "paused",
            Self::Revoked => "revoked",
        }
    }

    /// Whether the store can talk to the ledger (webhooks accepted).
    pub fn is_live(self) -> bool {
        matches!(self, Self::Paired | Self::Active | Self::NeedsReauth | Self::Paused)
    }
}

/// Why a binding changes state. Every change of `connector_bindings.status` is one of
/// these, made by [`transition`] (or, for the two that depend on the other side's state
/// in the same statement, with [`Move::from`] and [`Move::to`] as its parameters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Move {
    /// The store confirmed its key; Sage is not connected (yet).
    StorePaired,
    /// The store confirmed its key while the binding's Sage side is connected.
    StorePairedSageConnected,
    /// The merchant connected (or re-authorised) Sage; held work resumes.
    SageConnected,
    /// Sage refused the refresh token: the merchant must authorise again.
    SageNeedsReauth,
    /// Sage answered that the business has no active subscription.
    SubscriptionLapsed,
    /// A lapsed subscription works again (only a lapse's pause ends so).
    SubscriptionRestored,
    /// An operator held the binding's sync jobs.
    OperatorPause,
    /// An operator released them.
    OperatorResume,
    /// The merchant or the store disconnected.
    Disconnect,
}

impl Move {
    /// The states this move leaves; from any other the binding stays as it is.
    pub fn from(self) -> &'static [BindingStatus] {
        use BindingStatus::*;
        match self {
            Self::StorePaired | Self::StorePairedSageConnected => &[Pairing, Revoked],
            Self::SageConnected => &[Paired, NeedsReauth, Paused, Active],
            Self::SageNeedsReauth => &[Active, Paired],
            Self::SubscriptionLapsed | Self::OperatorPause => &[Active],
            Self::SubscriptionRestored | Self::OperatorResume => &[Paused],
            Self::Disconnect => &[Pairing, Paired, Active, NeedsReauth, Paused],
        }
    }

    /// The state it arrives at.
    pub fn to(self) -> BindingStatus {
        match self {
            Self::StorePaired => BindingStatus::Paired,
            Self::StorePairedSageConnected
            | Self::SageConnected
            | Self::SubscriptionRestored
            | Self::OperatorResume => BindingStatus::Active,
            Self::SageNeedsReauth => BindingStatus::NeedsReauth,
            Self::SubscriptionLapsed | Self::OperatorPause => BindingStatus::Paused,
            Self::Disconnect => BindingStatus::Revoked,
        }
    }

    /// [`Move::from`] as the column's text, for a statement's `status = ANY($n)`.
    pub fn from_names(self) -> Vec<String> {
        self.from().iter().map(|s| s.as_str().to_owned()).collect()
    }
}

/// Makes `mv` if the binding is in one of its [`Move::from`] states; the binding's tenant
/// when it moved. (`revoked_at` is set by a disconnect.)
pub async fn transition(
    conn: &mut sqlx::PgConnection,
    id: BindingId,
    mv: Move,
) -> Result<Option<TenantId>, sqlx::Error> {
    sqlx::query_scalar!(
        r#"UPDATE connector_bindings SET status = $3, updated_at = now(),
                  revoked_at = CASE WHEN $3 = 'revoked' THEN now() ELSE revoked_at END
           WHERE id = $1 AND status = ANY($2)
           RETURNING tenant_id AS "tenant_id: TenantId""#,
        id.0,
        &mv.from_names(),
        mv.to().as_str(),
    )
    .fetch_optional(conn)
    .await
}

/// A binding as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Binding {
    pub binding_id: BindingId,
    pub tenant_id: TenantId,
    pub provider: String,
    pub magento_base_url: String,
    pub status: BindingStatus,
    /// `pending`, `active` or `token_revoked` (the store answered 401 to the ledger).
    pub magento_connection_status: String,
    pub region: Option<String>,
    pub paired_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    /// The store's clock minus the ledger's (seconds) when it was off by more than a few
    /// seconds the last time its signed requests showed it; `None` when in time.
    pub store_clock_skew: Option<i32>,
}

/// Authenticated data for a binding's active api_key.
pub fn api_key_context(id: BindingId) -> String {
    format!("connector_bindings.api_key:{id}")
}

/// Authenticated data for a key offered in a pairing call not yet confirmed.
pub fn pending_key_context(id: BindingId) -> String {
    format!("connector_bindings.pending_api_key:{id}")
}

pub async fn load(db: &sqlx::PgPool, id: BindingId) -> Result<Option<Binding>, sqlx::Error> {
    let row = sqlx::query!(
        r#"SELECT id AS "id: BindingId", tenant_id AS "tenant_id: TenantId", provider, magento_base_url,
                  status AS "status: BindingStatus", magento_connection_status, region, paired_at, revoked_at, created_at, store_clock_skew_secs
           FROM connector_bindings WHERE id = $1"#,
        id.0
    )
    .fetch_optional(db)
    .await?;
    Ok(row.map(|r| Binding {
        binding_id: r.id,
        tenant_id: r.tenant_id,
        provider: r.provider,
        magento_base_url: r.magento_base_url,
        status: r.status,
        magento_connection_status: r.magento_connection_status,
        region: r.region,
        paired_at: r.paired_at,
        revoked_at: r.revoked_at,
        created_at: r.created_at,
        store_clock_skew: r.store_clock_skew_secs,
    }))
}

/// Why a binding's api_key cannot be used to call its store.
#[derive(Debug, thiserror::Error)]
pub enum ApiKeyError {
    #[error("Binding {0} holds no api_key yet; pair the store.")]
    NotPaired(BindingId),
    /// Only the key's id is named, never key material.
    #[error("binding {0}'s api_key cannot be opened: {1}")]
    Unreadable(BindingId, ledger_core::crypto::CryptoError),
}

/// A binding's sealed api_key column (`None`: not paired, or no such binding).
pub async fn sealed_api_key(db: &sqlx::PgPool, id: BindingId) -> Result<Option<Vec<u8>>, sqlx::Error> {
    Ok(
        sqlx::query_scalar!("SELECT api_key FROM connector_bindings WHERE id = $1", id.0)
            .fetch_optional(db)
            .await?
            .flatten(),
    )
}

/// Decrypts a binding's sealed api_key column read along with other columns.
pub fn open_api_key(state: &AppState, id: BindingId, sealed: Option<&[u8]>) -> Result<Secret<String>, ApiKeyError> {
    let sealed = sealed.ok_or(ApiKeyError::NotPaired(id))?;
    state
        .keyring
        .open_string(sealed, &api_key_context(id))
        .map_err(|e| ApiKeyError::Unreadable(id, e))
}

/// A pairing attempt's key, sealed as pending on the store's binding (created in status
/// `pairing` for a new store URL of the tenant); the binding and whether it existed.
pub async fn record_pending_key(
    conn: &mut sqlx::PgConnection,
    keyring: &Keyring,
    tenant_id: TenantId,
    base: &str,
    api_key: &Secret<String>,
    attempt: uuid::Uuid,
) -> Result<(BindingId, bool), sqlx::Error> {
    let existing = sqlx::query_scalar!(
        r#"SELECT id AS "id: BindingId" FROM connector_bindings
           WHERE tenant_id = $1 AND provider = 'sage_accounting' AND magento_base_url = $2 FOR UPDATE"#,
        tenant_id.0,
        base
    )
    .fetch_optional(&mut *conn)
    .await?;
    let binding_id = existing.unwrap_or_else(BindingId::new);
    let sealed = keyring.seal(api_key.expose().as_bytes(), &pending_key_context(binding_id));
    sqlx::query!(
        "INSERT INTO connector_bindings
           (id, tenant_id, provider, magento_base_url, status, pending_api_key, pending_api_key_key_id, pending_attempt, pending_since)
         VALUES ($1, $2, 'sage_accounting', $3, 'pairing', $4, $5, $6, now())
         ON CONFLICT (id) DO UPDATE SET pending_api_key = $4, pending_api_key_key_id = $5, pending_attempt = $6,
           pending_since = now(), updated_at = now()",
        binding_id.0,
        tenant_id.0,
        base,
        sealed,
        keyring.active_id(),
        attempt,
    )
    .execute(&mut *conn)
    .await?;
    Ok((binding_id, existing.is_some()))
}

/// The store accepted attempt `attempt`: its pending key becomes the binding's key and the
/// binding moves as the store pairing moves say. `None` when another attempt replaced it.
pub async fn confirm_pending_key(
    conn: &mut sqlx::PgConnection,
    keyring: &Keyring,
    binding_id: BindingId,
    api_key: &Secret<String>,
    attempt: uuid::Uuid,
) -> Result<Option<BindingStatus>, sqlx::Error> {
    let sealed = keyring.seal(api_key.expose().as_bytes(), &api_key_context(binding_id));
    sqlx::query_scalar!(
        "UPDATE connector_bindings
         SET api_key = $3, api_key_key_id = $4,
             pending_api_key = NULL, pending_api_key_key_id = NULL, pending_attempt = NULL, pending_since = NULL,
             -- The moves StorePaired / StorePairedSageConnected (Move), decided in
             -- the statement: a store paired again to a binding whose Sage side is still
             -- connected is live at once.
             status = CASE WHEN status <> ALL($5) THEN status
                      WHEN EXISTS (SELECT 1 FROM sage_connections c WHERE c.binding_id = connector_bindings.id AND c.status = 'connected')
                      THEN $6 ELSE $7 END,
             magento_connection_status = 'active', magento_status_at = now(),
             paired_at = now(), revoked_at = NULL, updated_at = now()
         WHERE id = $1 AND pending_attempt = $2
         RETURNING status AS \"status: BindingStatus\"",
        binding_id.0,
        attempt,
        sealed,
        keyring.active_id(),
        &Move::StorePaired.from_names(),
        Move::StorePairedSageConnected.to().as_str(),
        Move::StorePaired.to().as_str(),
    )
    .fetch_optional(&mut *conn)
    .await
}

/// The store refused (or never got) attempt `attempt`'s key: forget it, and the binding
/// if it never paired.
pub async fn discard_pending_key(
    conn: &mut sqlx::PgConnection,
    binding_id: BindingId,
    attempt: uuid::Uuid,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "DELETE FROM connector_bindings WHERE id = $1 AND pending_attempt = $2 AND status = 'pairing' AND api_key IS NULL",
        binding_id.0,
        attempt
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query!(
        "UPDATE connector_bindings
         SET pending_api_key = NULL, pending_api_key_key_id = NULL, pending_attempt = NULL, pending_since = NULL
         WHERE id = $1 AND pending_attempt = $2",
        binding_id.0,
        attempt
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The region of the Sage connection a binding posts to, set when its business is
/// chosen; the binding's tenant.
pub async fn set_region(conn: &mut sqlx::PgConnection, id: BindingId, region: &str) -> Result<TenantId, sqlx::Error> {
    sqlx::query_scalar!(
        r#"UPDATE connector_bindings SET region = $2, updated_at = now()
           WHERE id = $1 RETURNING tenant_id AS "tenant_id: TenantId""#,
        id.0,
        region
    )
    .fetch_one(conn)
    .await
}

/// A binding's keys, for working out which binding signed a request.
#[derive(Debug, Clone)]
pub struct KeyCandidate {
    pub binding_id: BindingId,
    pub status: BindingStatus,
    pub api_key: Option<Vec<u8>>,
    pub pending_api_key: Option<Vec<u8>>,
    /// The store's clock skew as last recorded (seconds, its clock minus ours).
    pub store_clock_skew: Option<i32>,
}

/// Every binding of `tenant` that holds a key (active or pending), oldest first.
pub async fn key_candidates(db: &sqlx::PgPool, tenant: TenantId) -> Result<Vec<KeyCandidate>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"SELECT id AS "id: BindingId", status AS "status: BindingStatus", api_key, pending_api_key, store_clock_skew_secs
           FROM connector_bindings
           WHERE tenant_id = $1 AND (api_key IS NOT NULL OR pending_api_key IS NOT NULL)
           ORDER BY created_at, id"#,
        tenant.0
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| KeyCandidate {
            binding_id: r.id,
            status: r.status,
            api_key: r.api_key,
            pending_api_key: r.pending_api_key,
            store_clock_skew: r.store_clock_skew_secs,
        })
        .collect())
}

/// Records the store's clock skew (its clock minus the ledger's, seconds), or clears it.
pub async fn record_store_clock(db: &sqlx::PgPool, id: BindingId, skew_secs: Option<i32>) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE connector_bindings SET store_clock_skew_secs = $2, store_clock_skew_at = now() WHERE id = $1",
        id.0,
        skew_secs
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Promotes a pending key that the store has just proven it holds (its request verified
/// with it): the pairing call's answer was lost, but the store did store the key.
pub async fn promote_pending_key(
    db: &sqlx::PgPool,
    keyring: &Keyring,
    id: BindingId,
    sealed_pending: &[u8],
) -> Result<(), Problem> {
    let key = keyring
        .open(sealed_pending, &pending_key_context(id))
        .map_err(Problem::internal)?;
    let sealed = keyring.seal(key.expose(), &api_key_context(id));
    sqlx::query!(
        "UPDATE connector_bindings
         SET api_key = $2, api_key_key_id = $3, pending_api_key = NULL, pending_api_key_key_id = NULL,
             pending_attempt = NULL, pending_since = NULL,
             status = CASE WHEN status NOT IN ('pairing', 'revoked') THEN status
                      -- A store paired again to a binding whose Sage side is still connected is live at once.
                      WHEN EXISTS (SELECT 1 FROM sage_connections c WHERE c.binding_id = connector_bindings.id AND c.status = 'connected')
                      THEN 'active' ELSE 'paired' END,
             magento_connection_status = 'active', magento_status_at = now(),
             paired_at = now(), revoked_at = NULL, updated_at = now()
         WHERE id = $1 AND pending_api_key = $4",
        id.0,
        sealed,
        keyring.active_id(),
        sealed_pending,
    )
    .execute(db)
    .await?;
    tracing::info!(binding_id = %id, "pending api_key confirmed by a signed request from the store");
    Ok(())
}

/// Records how the store answered the ledger: a 401 means it no longer holds our key
/// (`token_revoked`, shown in its admin as "re-pair required"); any answer proves it does.
pub async fn record_magento_answer(db: &sqlx::PgPool, id: BindingId, unauthorized: bool) -> Result<(), sqlx::Error> {
    let status = if unauthorized { "token_revoked" } else { "active" };
    sqlx::query!(
        "UPDATE connector_bindings SET magento_connection_status = $2, magento_status_at = now()
         WHERE id = $1 AND magento_connection_status IS DISTINCT FROM $2",
        id.0,
        status
    )
    .execute(db)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{BindingStatus::*, Move};

    const ALL: [Move; 9] = [
        Move::StorePaired,
        Move::StorePairedSageConnected,
        Move::SageConnected,
        Move::SageNeedsReauth,
        Move::SubscriptionLapsed,
        Move::SubscriptionRestored,
        Move::OperatorPause,
        Move::OperatorResume,
        Move::Disconnect,
    ];

    #[test]
    fn a_revoked_binding_comes_back_only_by_pairing_and_every_live_one_can_be_disconnected() {
        let leaving_revoked: Vec<Move> = ALL.into_iter().filter(|m| m.from().contains(&Revoked)).collect();
        assert_eq!(leaving_revoked, [Move::StorePaired, Move::StorePairedSageConnected]);
        for s in [Pairing, Paired, Active, NeedsReauth, Paused] {
            assert!(Move::Disconnect.from().contains(&s), "{s:?} cannot be disconnected");
        }
    }

    #[test]
    fn held_bindings_are_released_by_reconnecting_sage_and_only_active_ones_are_paused() {
        for held in [NeedsReauth, Paused] {
            assert!(Move::SageConnected.from().contains(&held));
            assert_eq!(Move::SageConnected.to(), Active);
        }
        assert_eq!(Move::OperatorPause.from(), [Active]);
        assert_eq!(Move::SubscriptionLapsed.from(), [Active]);
        assert_eq!(Move::SageNeedsReauth.from(), [Active, Paired]);
        // A binding still pairing has no Sage side to connect.
        assert!(!Move::SageConnected.from().contains(&Pairing));
    }
}
