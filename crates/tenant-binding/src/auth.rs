//! Who is calling: a merchant by API token or by sign-in session.

use axum::{
    extract::{FromRequestParts, Path},
    http::{HeaderMap, Method, header, request::Parts},
    response::{IntoResponse, Response},
};
use ledger_core::{AccountId, AppState, BindingId, Problem, TenantId, audit::Actor, secret::constant_time_eq};

use crate::accounts::{TOKEN_PREFIX, ring_sha256};

pub const SESSION_COOKIE: &str = "ledger_session";
/// The session cookie's name when the ledger is served over https: the `__Host-` prefix
/// makes browsers refuse it unless it is Secure, host-only and for `/`, so a sibling
/// subdomain cannot plant or overwrite it.
pub const SECURE_SESSION_COOKIE: &str = "__Host-ledger_session";

/// The session cookie's name for this deployment.
pub fn session_cookie_name(state: &AppState) -> &'static str {
    session_cookie_name_for(&state.settings.public_url)
}

/// [`session_cookie_name`] for a public URL.
pub fn session_cookie_name_for(public_url: &str) -> &'static str {
    if public_url.starts_with("https://") {
        SECURE_SESSION_COOKIE
    } else {
        SESSION_COOKIE
    }
}
/// Header carrying the session's CSRF token on state-changing requests.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// How the merchant authenticated.
#[derive(Debug, Clone)]
pub enum AuthVia {
    /// `Authorization: Bearer lgr_…` (automation; no CSRF exposure).
    Token,
    /// The dashboard cookie; `csrf_token` is what forms and scripts must echo.
    Session { csrf_token: String },
}

/// An authenticated merchant account.
#[derive(Debug, Clone)]
pub struct Merchant {
    pub account_id: AccountId,
    pub is_operator: bool,
    pub via: AuthVia,
}

/// The value of cookie `name` in the request, if any.
pub fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn unauthenticated() -> Problem {
    Problem::unauthorized(
        "unauthenticated",
        "Sign in first (POST /v1/auth/signin), or send `Authorization: Bearer <API token>`.",
    )
}

impl FromRequestParts<AppState> for Merchant {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        if let Some(value) = parts.headers.get(header::AUTHORIZATION) {
            let token = value
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
                .map(str::trim)
                .filter(|t| t.starts_with(TOKEN_PREFIX))
                .ok_or_else(|| {
                    Problem::unauthorized(
                        "invalid_token",
                        "The Authorization header must be `Bearer lgr_…` (an API token).",
                    )
                })?;
            let row = sqlx::query!(
                r#"UPDATE api_tokens t SET last_used_at = now()
                   FROM accounts a
                   WHERE t.token_hash = $1 AND t.revoked_at IS NULL AND t.expires_at > now() AND a.id = t.account_id
                   RETURNING a.id AS "account_id: AccountId", a.is_operator"#,
                ring_sha256(token.as_bytes())
            )
            .fetch_optional(&state.db)
            .await?
            .ok_or_else(|| {
                Problem::unauthorized(
                    "invalid_token",
                    "The API token is unknown, expired or revoked; issue a new one (POST /v1/tokens or `ledger tokens create`).",
                )
            })?;
            return Ok(Self {
                account_id: row.account_id,
                is_operator: row.is_operator,
                via: AuthVia::Token,
            });
        }

        let Some(cookie) = cookie_value(&parts.headers, session_cookie_name(state)) else {
            return Err(unauthenticated());
        };
        let row = sqlx::query!(
            r#"UPDATE sessions s SET last_seen_at = now(),
                 expires_at = LEAST(now() + make_interval(secs => $2), s.created_at + make_interval(secs => $3))
               FROM accounts a
               WHERE s.id_hash = $1 AND s.expires_at > now() AND s.created_at > now() - make_interval(secs => $3)
                 AND a.id = s.account_id
               RETURNING a.id AS "account_id: AccountId", a.is_operator, s.csrf_token"#,
            ring_sha256(cookie.as_bytes()),
            state.settings.session_ttl.as_secs_f64(),
            state.settings.session_max_age.as_secs_f64(),
        )
        .fetch_optional(&state.db)
        .await?
        .ok_or_else(|| Problem::unauthorized("session_expired", "Your session has ended; sign in again."))?;

        let safe = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
        if !safe {
            let sent = parts.headers.get(CSRF_HEADER).map(|v| v.as_bytes()).unwrap_or_default();
            if !constant_time_eq(sent, row.csrf_token.as_bytes()) {
                return Err(Problem::forbidden(
                    "csrf_token_invalid",
                    "Send the session's CSRF token (from sign-in) in the x-csrf-token header.",
                ));
            }
        }
        Ok(Self {
            account_id: row.account_id,
            is_operator: row.is_operator,
            via: AuthVia::Session {
                csrf_token: row.csrf_token,
            },
        })
    }
}

/// The merchant behind a session cookie, for web pages: no CSRF check here (forms
/// carry the token in a field, which the page handler checks with [`Merchant::check_csrf`]).
pub async fn session_merchant(state: &AppState, headers: &HeaderMap) -> Result<Option<Merchant>, Problem> {
    session_merchant_in(state, headers, session_cookie_name(state)).await
}

/// The embedded page's session cookie: `SameSite=None; Secure; Partitioned`, scoped to
/// `/embed`, so a store's admin can frame the page (the main session cookie is `Lax`
/// and never reaches a cross-site frame).
pub const EMBED_COOKIE: &str = "ledger_embed";

/// Like [`session_merchant`], reading the session from cookie `name`.
pub async fn session_merchant_in(
    state: &AppState,
    headers: &HeaderMap,
    name: &str,
) -> Result<Option<Merchant>, Problem> {
    let Some(cookie) = cookie_value(headers, name) else {
        return Ok(None);
    };
    // Sliding within the idle TTL, never past the absolute lifetime from sign-in.
    let row = sqlx::query!(
        r#"UPDATE sessions s SET last_seen_at = now(),
             expires_at = LEAST(now() + make_interval(secs => $2), s.created_at + make_interval(secs => $3))
           FROM accounts a
           WHERE s.id_hash = $1 AND s.expires_at > now() AND s.created_at > now() - make_interval(secs => $3)
             AND a.id = s.account_id
           RETURNING a.id AS "account_id: AccountId", a.is_operator, s.csrf_token"#,
        ring_sha256(cookie.as_bytes()),
        state.settings.session_ttl.as_secs_f64(),
        state.settings.session_max_age.as_secs_f64(),
    )
    .fetch_optional(&state.db)
    .await?;
    Ok(row.map(|r| Merchant {
        account_id: r.account_id,
        is_operator: r.is_operator,
        via: AuthVia::Session {
            csrf_token: r.csrf_token,
        },
    }))
}

impl Merchant {
    /// The session's CSRF token (empty for API tokens, which need none).
    pub fn csrf_token(&self) -> &str {
        match &self.via {
            AuthVia::Session { csrf_token } => csrf_token,
            AuthVia::Token => "",
        }
    }

    /// Checks a form's CSRF field against the session's token.
    pub fn check_csrf(&self, submitted: &str) -> Result<(), Problem> {
        match &self.via {
            AuthVia::Token => Ok(()),
            AuthVia::Session { csrf_token } if constant_time_eq(submitted.as_bytes(), csrf_token.as_bytes()) => Ok(()),
            AuthVia::Session { .. } => Err(Problem::forbidden(
                "csrf_token_invalid",
                "This form has expired. Reload the page and submit it again.",
            )),
        }
    }

    /// The tenant to act on: `requested` when this account owns it, else the account's
    /// first tenant. Someone else's tenant is "not found", never "forbidden".
    pub async fn tenant(&self, db: &sqlx::PgPool, requested: Option<TenantId>) -> Result<TenantId, TenantError> {
        let found = sqlx::query_scalar!(
            r#"SELECT id AS "id: TenantId" FROM tenants
               WHERE account_id = $1 AND ($2::uuid IS NULL OR id = $2)
               ORDER BY created_at, id LIMIT 1"#,
            self.account_id.0,
            requested.map(|t| t.0),
        )
        .fetch_optional(db)
        .await?;
        found.ok_or(match requested {
            Some(t) => TenantError::NotYours(t),
            None => TenantError::NoTenant,
        })
    }

    /// The binding's tenant when this account owns the binding. Operators get no
    /// exception here: what they may do on other merchants' bindings goes through
    /// [`Merchant::binding_access`] with one of the [`OperatorAction`]s.
    pub async fn binding_tenant(&self, db: &sqlx::PgPool, binding_id: BindingId) -> Result<TenantId, Problem> {
        let found = sqlx::query_scalar!(
            r#"SELECT b.tenant_id AS "tenant_id: TenantId" FROM connector_bindings b
               JOIN tenants t ON t.id = b.tenant_id
               WHERE b.id = $1 AND t.account_id = $2"#,
            binding_id.0,
            self.account_id.0,
        )
        .fetch_optional(db)
        .await?;
        found.ok_or_else(|| Problem::not_found("binding_not_found", format!("You have no binding {binding_id}.")))
    }

    /// The binding's tenant and who acts: the owner as `account:<id>`, or an operator
    /// as `operator:<id>` for one of the operator actions. Anyone else: not found.
    pub async fn binding_access(
        &self,
        db: &sqlx::PgPool,
        binding_id: BindingId,
        action: OperatorAction,
    ) -> Result<Access, Problem> {
        let row = sqlx::query!(
            r#"SELECT b.tenant_id AS "tenant_id: TenantId", t.account_id = $2 AS "owned!"
               FROM connector_bindings b JOIN tenants t ON t.id = b.tenant_id
               WHERE b.id = $1"#,
            binding_id.0,
            self.account_id.0,
        )
        .fetch_optional(db)
        .await?;
        match row {
            Some(r) if r.owned => Ok(Access {
                tenant_id: r.tenant_id,
                actor: Actor::Account(self.account_id.0),
            }),
            Some(r) if self.is_operator => {
                tracing::info!(operator = %self.account_id, binding = %binding_id, action = ?action, "operator action");
                Ok(Access {
                    tenant_id: r.tenant_id,
                    actor: Actor::Operator(self.account_id.0),
                })
            }
            _ => Err(Problem::not_found(
                "binding_not_found",
                format!("You have no binding {binding_id}."),
            )),
        }
    }
}

/// The only things an operator may do on a binding they do not own: look at its runs
/// and reference data, retry or skip runs, pause and resume it, refresh its Sage token
/// or reference data. Settings, pairing, Sage connect and disconnect stay the owner's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperatorAction {
    ViewRuns,
    RetryRuns,
    SkipRuns,
    ViewReference,
    RefreshReference,
    Pause,
    Resume,
    RefreshToken,
}

/// Who may act on a binding, and how the audit trail names them.
#[derive(Debug, Clone)]
pub struct Access {
    pub tenant_id: TenantId,
    pub actor: Actor,
}

/// The binding named by the path's `binding_id`, when the caller owns it: a handler that
/// takes one cannot skip the ownership check. Anyone else's binding (an operator's
/// included) is "not found" — operators act through [`BindingAccess`].
#[derive(Debug, Clone)]
pub struct OwnedBinding {
    pub merchant: Merchant,
    pub binding_id: BindingId,
    pub tenant_id: TenantId,
}

impl FromRequestParts<AppState> for OwnedBinding {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let (merchant, binding_id) = caller_and_binding(parts, state).await?;
        let tenant_id = merchant
            .binding_tenant(&state.db, binding_id)
            .await
            .map_err(IntoResponse::into_response)?;
        Ok(Self {
            merchant,
            binding_id,
            tenant_id,
        })
    }
}

/// The caller first (401 before anything about the path), then the path's binding id.
async fn caller_and_binding(parts: &mut Parts, state: &AppState) -> Result<(Merchant, BindingId), Response> {
    let merchant = Merchant::from_request_parts(parts, state)
        .await
        .map_err(IntoResponse::into_response)?;
    let Path(binding_id) = Path::<BindingId>::from_request_parts(parts, state)
        .await
        .map_err(IntoResponse::into_response)?;
    Ok((merchant, binding_id))
}

/// One of the [`OperatorAction`]s, as a type, so that [`BindingAccess`] names the action
/// in the handler's signature.
pub trait ForAction: Send + Sync {
    const ACTION: OperatorAction;
}

/// The actions, as types for [`BindingAccess`].
pub mod action {
    use super::{ForAction, OperatorAction};

    macro_rules! actions {
        ($($name:ident),*) => {$(
            #[derive(Debug, Clone, Copy)]
            pub struct $name;
            impl ForAction for $name {
                const ACTION: OperatorAction = OperatorAction::$name;
            }
        )*};
    }
    actions!(
        ViewRuns,
        RetryRuns,
        SkipRuns,
        ViewReference,
        RefreshReference,
        Pause,
        Resume,
        RefreshToken
    );
}

/// The binding named by the path's `binding_id`, when the caller owns it or is an
/// operator doing `A` (see [`Merchant::binding_access`]); anyone else: not found.
#[derive(Debug, Clone)]
pub struct BindingAccess<A> {
    pub merchant: Merchant,
    pub binding_id: BindingId,
    pub access: Access,
    action: std::marker::PhantomData<A>,
}

impl<A: ForAction> FromRequestParts<AppState> for BindingAccess<A> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let (merchant, binding_id) = caller_and_binding(parts, state).await?;
        let access = merchant
            .binding_access(&state.db, binding_id, A::ACTION)
            .await
            .map_err(IntoResponse::into_response)?;
        Ok(Self {
            merchant,
            binding_id,
            access,
            action: std::marker::PhantomData,
        })
    }
}

/// Why [`Merchant::tenant`] found no tenant to act on.
#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    #[error("You have no tenant {0}.")]
    NotYours(TenantId),
    #[error("This account has no tenant yet.")]
    NoTenant,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl From<TenantError> for Problem {
    fn from(err: TenantError) -> Self {
        match err {
            TenantError::NotYours(_) => Problem::not_found("tenant_not_found", err.to_string()).with_field(
                "tenant_id",
                "not_found",
                "not one of your tenants",
            ),
            TenantError::NoTenant => Problem::not_found("tenant_not_found", err.to_string()),
            TenantError::Database(e) => e.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_https_the_session_cookie_is_host_only() {
        assert_eq!(
            session_cookie_name_for("https://ledger.byte8.io"),
            "__Host-ledger_session"
        );
        assert_eq!(session_cookie_name_for("http://127.0.0.1:8080"), "ledger_session");
    }

    #[test]
    fn cookies_are_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, "a=1; ledger_session=abc; b=2".parse().unwrap());
        assert_eq!(cookie_value(&headers, "ledger_session"), Some("abc"));
        assert_eq!(cookie_value(&headers, "missing"), None);
    }
}
