//! The bindings list with health, tenants, and the Magento connect form.

// A part of the pages module: its helpers and imports are this file's too.
use super::*;

pub struct BindingRow {
    pub id: BindingId,
    pub url: String,
    pub status: String,
    pub magento: String,
    pub sage: String,
    pub business: String,
    pub backlog: i64,
    pub failed: i64,
    pub last_sync: String,
}

#[derive(Template)]
#[template(path = "bindings.html")]
pub(super) struct BindingsPage {
    pub(super) nav: Nav,
    pub(super) tenants: Vec<TenantOpt>,
    pub(super) bindings: Vec<BindingRow>,
    pub(super) csrf_token: String,
    pub(super) magento_url: String,
    pub(super) error: Option<String>,
    pub(super) url_error: Option<String>,
    pub(super) code_error: Option<String>,
}

/// What the header shows: sign-out (with its CSRF token) and the ops link.
pub struct Nav {
    pub csrf_token: String,
    pub operator: bool,
}

impl Nav {
    pub fn of(m: &Merchant) -> Self {
        Self {
            csrf_token: m.csrf_token().to_owned(),
            operator: m.is_operator,
        }
    }
}

/// The tenant the merchant is looking at (cookie `ledger_tenant`, checked against the
/// account on every request), else their first.
pub(super) const TENANT_COOKIE: &str = "ledger_tenant";

pub async fn current_tenant(state: &AppState, headers: &HeaderMap, merchant: &Merchant) -> Result<TenantId, Problem> {
    let chosen = ledger_tenant_binding::auth::cookie_value(headers, TENANT_COOKIE)
        .and_then(|v| v.parse::<uuid::Uuid>().ok())
        .map(TenantId);
    let tenant = match chosen {
        Some(t) => match merchant.tenant(&state.db, Some(t)).await {
            Ok(t) => Ok(t),
            Err(_) => merchant.tenant(&state.db, None).await,
        },
        None => merchant.tenant(&state.db, None).await,
    };
    Ok(tenant?)
}

pub struct TenantOpt {
    pub id: TenantId,
    pub name: String,
    pub selected: bool,
}

pub(super) async fn tenant_options(
    state: &AppState,
    merchant: &Merchant,
    current: TenantId,
) -> Result<Vec<TenantOpt>, Problem> {
    Ok(sqlx::query!(
        r#"SELECT id AS "id: TenantId", name FROM tenants WHERE account_id = $1 ORDER BY created_at, id"#,
        merchant.account_id.0
    )
    .fetch_all(&state.db)
    .await?
    .into_iter()
    .map(|r| TenantOpt {
        selected: r.id == current,
        id: r.id,
        name: r.name,
    })
    .collect())
}

pub(super) fn tenant_cookie(tenant: TenantId) -> axum::http::HeaderValue {
    axum::http::HeaderValue::from_str(&format!(
        "{TENANT_COOKIE}={tenant}; Path=/; HttpOnly; SameSite=Lax; Max-Age=31536000"
    ))
    .expect("a uuid is ASCII")
}

#[derive(Deserialize)]
pub struct SwitchForm {
    pub(super) csrf_token: String,
    pub(super) tenant_id: uuid::Uuid,
}

pub async fn switch_tenant(
    State(state): State<AppState>,
    CsrfForm(PageMerchant { merchant, .. }, form): CsrfForm<PageMerchant<ForBindings>, SwitchForm>,
) -> Result<Response, Problem> {
    let tenant = merchant.tenant(&state.db, Some(TenantId(form.tenant_id))).await?;
    let mut response = Redirect::to("/dashboard").into_response();
    response.headers_mut().insert(header::SET_COOKIE, tenant_cookie(tenant));
    Ok(response)
}

#[derive(Deserialize)]
pub struct NewTenantForm {
    pub(super) csrf_token: String,
    pub(super) name: String,
}

/// A new tenant (e.g. a second brand with its own stores and Sage businesses).
pub async fn create_tenant(
    State(state): State<AppState>,
    CsrfForm(PageMerchant { merchant, .. }, form): CsrfForm<PageMerchant<ForBindings>, NewTenantForm>,
) -> Result<Response, Problem> {
    let id = ledger_tenant_binding::accounts::create_tenant(&state.db, merchant.account_id, &form.name).await?;
    let mut response = Redirect::to("/dashboard").into_response();
    response.headers_mut().insert(header::SET_COOKIE, tenant_cookie(id));
    Ok(response)
}

pub(super) async fn binding_rows(state: &AppState, tenant: TenantId) -> Result<Vec<BindingRow>, Problem> {
    let rows = sqlx::query!(
        r#"SELECT b.id AS "id: BindingId", b.magento_base_url, b.status, b.magento_connection_status,
                  b.store_clock_skew_secs, c.status AS "sage_status?", c.business_name AS "business_name?",
                  (SELECT count(*) FROM sync_runs r WHERE r.binding_id = b.id AND r.status IN ('pending', 'running')) AS "backlog!",
                  (SELECT count(*) FROM sync_runs r WHERE r.binding_id = b.id AND r.status IN ('failed', 'dead')) AS "failed!",
                  (SELECT max(r.finished_at) FROM sync_runs r WHERE r.binding_id = b.id AND r.status = 'synced') AS last_sync
           FROM connector_bindings b LEFT JOIN sage_connections c ON c.binding_id = b.id
           WHERE b.tenant_id = $1 AND b.status <> 'pairing' ORDER BY b.created_at DESC"#,
        tenant.0
    )
    .fetch_all(&state.db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| BindingRow {
            id: r.id,
            url: r.magento_base_url,
            status: r.status,
            magento: crate::ops::with_clock(r.magento_connection_status, r.store_clock_skew_secs),
            sage: r.sage_status.unwrap_or_else(|| "not connected".to_owned()),
            business: r.business_name.unwrap_or_default(),
            backlog: r.backlog,
            failed: r.failed,
            last_sync: ago(r.last_sync),
        })
        .collect())
}

pub async fn bindings_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    PageMerchant { merchant, .. }: PageMerchant<ForBindings>,
) -> Result<Response, Problem> {
    let tenant = current_tenant(&state, &headers, &merchant).await?;
    Ok(render(&BindingsPage {
        nav: Nav::of(&merchant),
        tenants: tenant_options(&state, &merchant, tenant).await?,
        bindings: binding_rows(&state, tenant).await?,
        csrf_token: merchant.csrf_token().to_owned(),
        magento_url: String::new(),
        error: None,
        url_error: None,
        code_error: None,
    }))
}

#[derive(Deserialize)]
pub struct MagentoConnectForm {
    pub(super) csrf_token: String,
    pub(super) magento_base_url: String,
    pub(super) pairing_code: String,
}
csrf_forms!(SwitchForm, NewTenantForm, MagentoConnectForm);

pub async fn magento_connect(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    CsrfForm(PageMerchant { merchant, .. }, form): CsrfForm<PageMerchant<ForBindings>, MagentoConnectForm>,
) -> Result<Response, Problem> {
    let nav = Nav::of(&merchant);
    let csrf_token = merchant.csrf_token().to_owned();
    let tenant = current_tenant(&state, &headers, &merchant).await?;
    let tenants = tenant_options(&state, &merchant, tenant).await?;
    let request = ledger_pairing::ConnectRequest {
        magento_base_url: form.magento_base_url.clone(),
        pairing_code: form.pairing_code,
        tenant_id: Some(tenant),
    };
    let client = ledger_tenant_binding::accounts::client_address(&state, &headers, peer);
    match ledger_pairing::connect_store(&state, &merchant, client, request).await {
        Ok(connected) => Ok(Redirect::to(&format!("/dashboard/bindings/{}", connected.binding_id)).into_response()),
        Err(err) => {
            // The refusal as the API would answer it: the page shows the same words.
            let problem = Problem::from(err);
            // The ledger's own failures are not the form's to show.
            if problem.status == StatusCode::INTERNAL_SERVER_ERROR {
                return Err(problem);
            }
            let fields = by_field(&problem.errors);
            let mut response = render(&BindingsPage {
                nav,
                tenants,
                bindings: binding_rows(&state, tenant).await?,
                csrf_token,
                magento_url: form.magento_base_url,
                error: Some(problem.detail.clone()),
                url_error: fields.get("magento_base_url").cloned(),
                code_error: fields.get("pairing_code").cloned(),
            });
            *response.status_mut() = problem.status;
            Ok(response)
        }
    }
}
