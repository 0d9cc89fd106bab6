//! `/embed/{tenant_id}`: the compact sync page the Magento admin frames with no
//! credential (contract §9). It may be framed only by the tenant's own store admins
//! (`frame-ancestors` lists their origins), authenticates the viewer by a ledger session
//! of its own (a partitioned `SameSite=None` cookie, since the main `Lax` cookie never
//! reaches a cross-site frame), and shows nothing but a sign-in form otherwise.

use std::net::SocketAddr;

use askama::Template;
use axum::{
    Form,
    extract::{ConnectInfo, Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Redirect, Response},
};
use ledger_core::{AppState, Problem, TenantId};
use ledger_tenant_binding::{
    accounts,
    auth::{EMBED_COOKIE, session_merchant_in},
};
use serde::Deserialize;

use crate::{pages::ago, render};

pub struct EmbedBinding {
    pub id: String,
    pub url: String,
    pub status: String,
    pub backlog: i64,
    pub failed: i64,
    pub last_sync: String,
}

pub struct EmbedRun {
    pub event: String,
    pub entity_id: i64,
    pub status: String,
    pub reason: String,
    pub at: String,
}

#[derive(Template)]
#[template(path = "embed.html")]
struct EmbedPage {
    tenant: String,
    public_url: String,
    /// `None`: not signed in (or not this tenant's owner) — the page shows only sign-in.
    data: Option<(Vec<EmbedBinding>, Vec<EmbedRun>)>,
    error: Option<String>,
}

/// The origins allowed to frame the page: the tenant's live stores.
async fn store_origins(state: &AppState, tenant: Option<TenantId>) -> Result<Vec<String>, Problem> {
    let Some(tenant) = tenant else { return Ok(Vec::new()) };
    let urls = sqlx::query_scalar!(
        "SELECT magento_base_url FROM connector_bindings WHERE tenant_id = $1 AND status NOT IN ('pairing', 'revoked')",
        tenant.0
    )
    .fetch_all(&state.db)
    .await?;
    let mut origins: Vec<String> = urls
        .iter()
        .filter_map(|u| url::Url::parse(u).ok())
        .map(|u| u.origin().ascii_serialization())
        .filter(|o| o != "null")
        .collect();
    origins.sort();
    origins.dedup();
    Ok(origins)
}

fn with_frame_policy(mut response: Response, origins: &[String]) -> Response {
    let ancestors = if origins.is_empty() {
        "'none'".to_owned()
    } else {
        origins.join(" ")
    };
    let csp = format!(
        "default-src 'self'; script-src 'none'; style-src 'self'; img-src 'self' data:; base-uri 'none'; \
         form-action 'self'; frame-ancestors {ancestors}"
    );
    if let Ok(v) = HeaderValue::from_str(&csp) {
        response.headers_mut().insert(header::CONTENT_SECURITY_POLICY, v);
    }
    response
}

async fn page(
    state: &AppState,
    headers: &HeaderMap,
    tenant: TenantId,
    error: Option<String>,
) -> Result<Response, Problem> {
    // The module's iframe sends no Referer (`referrerpolicy="no-referrer"`), so the page
    // cannot know which admin frames it: every live store of the tenant may. Knowing
    // the tenant id (the module's own configuration) is what it takes to learn them.
    let origins = store_origins(state, Some(tenant)).await?;
    let merchant = session_merchant_in(state, headers, EMBED_COOKIE).await?;
    let owned = match &merchant {
        Some(m) => m.tenant(&state.db, Some(tenant)).await.is_ok(),
        None => false,
    };
    let data = if owned { Some(load(state, tenant).await?) } else { None };
    let error = error.or_else(|| {
        (merchant.is_some() && !owned).then(|| "This ledger account cannot see this store's activity.".to_owned())
    });
    let response = render(&EmbedPage {
        tenant: tenant.to_string(),
        public_url: state.settings.public_url.trim_end_matches('/').to_owned(),
        data,
        error,
    });
    Ok(with_frame_policy(response, &origins))
}

/// The tenant of the path (`None`: answer [`not_found`]; the segment is never echoed).
fn tenant_of(text: &str) -> Option<TenantId> {
    text.parse::<uuid::Uuid>().ok().map(TenantId)
}

fn not_found() -> Response {
    let mut page = render(&crate::MessagePage {
        heading: "Not found".to_owned(),
        message: "There is nothing at this address. Check the ledger URL in the module's settings.".to_owned(),
        retry: None,
    });
    *page.status_mut() = StatusCode::NOT_FOUND;
    with_frame_policy(page, &[])
}

async fn load(state: &AppState, tenant: TenantId) -> Result<(Vec<EmbedBinding>, Vec<EmbedRun>), Problem> {
    let bindings = sqlx::query!(
        r#"SELECT b.id, b.magento_base_url, b.status,
                  (SELECT count(*) FROM sync_runs r WHERE r.binding_id = b.id AND r.status IN ('pending', 'running')) AS "backlog!",
                  (SELECT count(*) FROM sync_runs r WHERE r.binding_id = b.id AND r.status IN ('failed', 'dead')) AS "failed!",
                  (SELECT max(r.finished_at) FROM sync_runs r WHERE r.binding_id = b.id AND r.status = 'synced') AS last_sync
           FROM connector_bindings b WHERE b.tenant_id = $1 AND b.status NOT IN ('pairing', 'revoked')
           ORDER BY b.created_at"#,
        tenant.0
    )
    .fetch_all(&state.db)
    .await?
    .into_iter()
    .map(|r| EmbedBinding {
        id: r.id.to_string(),
        url: r.magento_base_url,
        status: r.status,
        backlog: r.backlog,
        failed: r.failed,
        last_sync: ago(r.last_sync),
    })
    .collect();
    let runs = sqlx::query!(
        r#"SELECT e.event_name, e.magento_entity_id, r.status, coalesce(r.error_code, r.skip_reason) AS reason, r.updated_at
           FROM sync_runs r JOIN received_events e ON e.id = r.event_id
           JOIN connector_bindings b ON b.id = r.binding_id
           WHERE b.tenant_id = $1 ORDER BY r.updated_at DESC LIMIT 15"#,
        tenant.0
    )
    .fetch_all(&state.db)
    .await?
    .into_iter()
    .map(|r| EmbedRun {
        event: r.event_name,
        entity_id: r.magento_entity_id,
        status: r.status,
        reason: r.reason.unwrap_or_default(),
        at: r.updated_at.format("%Y-%m-%d %H:%M").to_string(),
    })
    .collect();
    Ok((bindings, runs))
}

pub async fn embed(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
) -> Result<Response, Problem> {
    match tenant_of(&tenant) {
        Some(tenant) => page(&state, &headers, tenant, None).await,
        None => Ok(not_found()),
    }
}

#[derive(Deserialize)]
pub struct EmbedSignin {
    email: String,
    password: String,
}

/// Signs in inside the frame: the session goes into the embed cookie only.
pub async fn signin(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    Form(form): Form<EmbedSignin>,
) -> Result<Response, Problem> {
    let Some(tenant) = tenant_of(&tenant) else {
        return Ok(not_found());
    };
    let client = accounts::client_address(&state, &headers, peer);
    match accounts::password_signin(&state, &form.email, form.password, &client).await? {
        Ok(session) => {
            accounts::end_session_named(&state.db, &headers, EMBED_COOKIE).await?;
            // Cross-site frames need SameSite=None, which browsers accept only with Secure
            // (https); on plain http (ledger dev, same-site) Lax works.
            let https = state.settings.public_url.starts_with("https://");
            let attributes = if https {
                "SameSite=None; Secure; Partitioned"
            } else {
                "SameSite=Lax"
            };
            let cookie = format!(
                "{EMBED_COOKIE}={}; Path=/embed; HttpOnly; {attributes}; Max-Age={}",
                session.cookie.expose(),
                state.settings.session_ttl.as_secs()
            );
            let mut response = Redirect::to(&format!("/embed/{tenant}")).into_response();
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                response.headers_mut().insert(header::SET_COOKIE, v);
            }
            Ok(response)
        }
        Err(refusal) => {
            let mut response = page(&state, &headers, tenant, Some(refusal.message)).await?;
            *response.status_mut() = if refusal.retry_after.is_some() {
                StatusCode::TOO_MANY_REQUESTS
            } else {
                StatusCode::UNAUTHORIZED
            };
            Ok(response)
        }
    }
}
