//! API tokens: issued with an expiry, listed and revoked by their account (API, page and
//! `ledger tokens`). Only a token's SHA-256 is stored; the token is shown once.

use axum::{
    extract::{Path, State},
    http::StatusCode,
};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use ledger_core::{
    AccountId, AppState, FieldError, Problem, Secret,
    audit::{self, Actor},
    crypto,
    extract::Json,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::{AuthVia, Merchant};

/// API tokens start with this, so leaked ones are easy to find by scanners.
pub const TOKEN_PREFIX: &str = "lgr_";
/// The longest lifetime a token may be given.
const MAX_TTL_DAYS: i64 = 366;

/// A token just issued: the secret is in `token`, shown this once.
#[derive(Debug)]
pub struct Issued {
    pub id: uuid::Uuid,
    pub token: Secret<String>,
    pub expires_at: DateTime<Utc>,
}

/// Issues an API token for `account`, valid for `ttl`.
pub async fn issue(
    db: &sqlx::PgPool,
    account: AccountId,
    name: &str,
    ttl: std::time::Duration,
) -> Result<Issued, sqlx::Error> {
    let token = format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(crypto::random_bytes::<32>()));
    let id = uuid::Uuid::new_v4();
    let expires_at = sqlx::query_scalar!(
        "INSERT INTO api_tokens (id, account_id, token_hash, name, expires_at)
         VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5)) RETURNING expires_at",
        id,
        account.0,
        crypto::sha256(token.as_bytes()).to_vec(),
        name,
        ttl.as_secs_f64(),
    )
    .fetch_one(db)
    .await?;
    Ok(Issued {
        id,
        token: Secret::new(token),
        expires_at,
    })
}

/// A token as its owner sees it (never the token itself).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TokenInfo {
    pub id: uuid::Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub expires_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// Neither revoked nor expired.
    pub active: bool,
}

/// The account's tokens, newest first.
pub async fn list(db: &sqlx::PgPool, account: AccountId) -> Result<Vec<TokenInfo>, sqlx::Error> {
    sqlx::query_as!(
        TokenInfo,
        r#"SELECT id, name, created_at, last_used_at, expires_at, revoked_at,
                  (revoked_at IS NULL AND expires_at > now()) AS "active!"
           FROM api_tokens WHERE account_id = $1 ORDER BY created_at DESC, id"#,
        account.0
    )
    .fetch_all(db)
    .await
}

/// Revokes one of the account's tokens; false when it has no such (live) token.
pub async fn revoke(db: &sqlx::PgPool, account: AccountId, id: uuid::Uuid, actor: Actor) -> Result<bool, sqlx::Error> {
    let mut tx = db.begin().await?;
    let name = sqlx::query_scalar!(
        "UPDATE api_tokens SET revoked_at = now() WHERE id = $1 AND account_id = $2 AND revoked_at IS NULL RETURNING name",
        id,
        account.0
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(name) = name else { return Ok(false) };
    audit::record(
        &mut tx,
        audit::Entry {
            actor,
            tenant_id: None,
            binding_id: None,
            action: "api_token.revoked",
            details: serde_json::json!({ "token_id": id, "name": name }),
            request_id: None,
        },
    )
    .await?;
    tx.commit().await?;
    Ok(true)
}

/// Your API tokens (never the tokens themselves).
#[utoipa::path(get, path = "/v1/tokens", tag = "accounts", operation_id = "list_tokens",
    security(("bearer" = []), ("session" = [])),
    responses(
        (status = 200, body = Vec<TokenInfo>),
        (status = 401, description = "Not signed in", body = ledger_core::ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn list_tokens(
    State(state): State<AppState>,
    merchant: Merchant,
) -> Result<axum::Json<Vec<TokenInfo>>, Problem> {
    Ok(axum::Json(list(&state.db, merchant.account_id).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct NewToken {
    /// What the token is for, e.g. "deploy script".
    pub name: String,
    /// Days until it expires (1–366; default LEDGER_API_TOKEN_TTL).
    #[serde(default)]
    pub ttl_days: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct IssuedToken {
    pub id: uuid::Uuid,
    /// Send as `Authorization: Bearer …`. Shown only in this answer.
    pub token: String,
    pub expires_at: DateTime<Utc>,
}

/// Issue an API token. Only a signed-in person can (a token cannot mint its successor,
/// which would make expiry meaningless).
#[utoipa::path(post, path = "/v1/tokens", tag = "accounts", operation_id = "create_token",
    security(("session" = [])),
    request_body = NewToken,
    responses(
        (status = 201, body = IssuedToken),
        (status = 403, description = "Called with an API token", body = ledger_core::ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Invalid name or lifetime", body = ledger_core::ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn create_token(
    State(state): State<AppState>,
    merchant: Merchant,
    Json(body): Json<NewToken>,
) -> Result<(StatusCode, axum::Json<IssuedToken>), Problem> {
    if matches!(merchant.via, AuthVia::Token) {
        return Err(Problem::forbidden(
            "session_required",
            "Sign in to issue API tokens; an API token cannot issue another.",
        ));
    }
    let mut errors = Vec::new();
    let name = body.name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        errors.push(FieldError {
            field: "name".into(),
            code: "invalid".into(),
            message: "give the token a name of 1 to 100 characters".into(),
        });
    }
    let ttl = match body.ttl_days {
        None => state.settings.api_token_ttl,
        Some(days) if (1..=MAX_TTL_DAYS).contains(&days) => std::time::Duration::from_secs(days as u64 * 86_400),
        Some(_) => {
            errors.push(FieldError {
                field: "ttl_days".into(),
                code: "out_of_range".into(),
                message: format!("between 1 and {MAX_TTL_DAYS} days"),
            });
            std::time::Duration::ZERO
        }
    };
    if !errors.is_empty() {
        return Err(Problem::validation(errors));
    }
    let issued = issue(&state.db, merchant.account_id, name, ttl).await?;
    let mut tx = state.db.begin().await?;
    audit::record(
        &mut tx,
        audit::Entry {
            actor: Actor::Account(merchant.account_id.0),
            tenant_id: None,
            binding_id: None,
            action: "api_token.created",
            details: serde_json::json!({ "token_id": issued.id, "name": name, "expires_at": issued.expires_at }),
            request_id: None,
        },
    )
    .await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(IssuedToken {
            id: issued.id,
            token: issued.token.expose().clone(),
            expires_at: issued.expires_at,
        }),
    ))
}

/// Revoke one of your API tokens (it stops working at once).
#[utoipa::path(delete, path = "/v1/tokens/{token_id}", tag = "accounts", operation_id = "revoke_token",
    security(("bearer" = []), ("session" = [])),
    params(("token_id" = uuid::Uuid, Path, description = "The token's id (from the list)")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 404, description = "No such live token of yours", body = ledger_core::ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn revoke_token(
    State(state): State<AppState>,
    merchant: Merchant,
    Path(id): Path<uuid::Uuid>,
) -> Result<StatusCode, Problem> {
    if revoke(
        &state.db,
        merchant.account_id,
        id,
        Actor::Account(merchant.account_id.0),
    )
    .await?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Problem::not_found(
            "token_not_found",
            format!("You have no live API token {id}; list them with GET /v1/tokens."),
        ))
    }
}
