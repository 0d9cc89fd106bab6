//! The merchant's pages beyond sign-in and Sage connect: sign-up and sign-out, the
//! bindings list with health and the Magento connect form, sync settings, sync history
//! with retries, and the audit trail. Each page calls the same domain code as the JSON
//! API, so the two never disagree.

use std::collections::BTreeMap;

use askama::Template;
use axum::{
    Form,
    extract::{ConnectInfo, Path, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Redirect, Response},
};
use chrono::{DateTime, Utc};
use ledger_core::{AppState, BindingId, FieldError, Problem, Secret, TenantId, audit::Actor};
use ledger_sage_sync::{
    policy::{self, Settings},
    runs::{self, RunFilter},
};
use ledger_sage_vault::reference::{self, Reference};
use ledger_tenant_binding::{
    accounts,
    auth::{Merchant, OperatorAction, session_merchant},
    bindings,
};
use serde::Deserialize;

use crate::{owner, render, signin_redirect};

/// "3 minutes ago", for freshness labels.
pub(crate) fn ago(at: Option<DateTime<Utc>>) -> String {
    let Some(at) = at else { return "never".to_owned() };
    let secs = (Utc::now() - at).num_seconds().max(0);
    match secs {
        0..=59 => "just now".to_owned(),
        60..=3599 => format!("{} min ago", secs / 60),
        3600..=86_399 => format!("{} h ago", secs / 3600),
        _ => format!("{} days ago", secs / 86_400),
    }
}

/// Field errors by field name, for inline messages.
fn by_field(errors: &[FieldError]) -> BTreeMap<String, String> {
    errors
        .iter()
        .map(|e| (e.field.clone(), format!("{} ({})", e.message, e.code)))
        .collect()
}

// --- Sign-up and sign-out ---------------------------------------------------------

#[derive(Template)]
#[template(path = "signup.html")]
struct SignupPage {
    email: String,
    error: Option<String>,
    email_error: Option<String>,
    password_error: Option<String>,
}

pub async fn signup_page() -> Response {
    render(&SignupPage {
        email: String::new(),
        error: None,
        email_error: None,
        password_error: None,
    })
}

#[derive(Deserialize)]
pub struct SignupForm {
    email: String,
    password: String,
}

pub async fn signup_submit(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<SignupForm>,
) -> Result<Response, Problem> {
    let client = accounts::client_address(&state, &headers, peer);
    match accounts::http_signup(&state, &form.email, form.password, &client).await {
        Ok(created) => {
            let (cookie, _) =
                accounts::create_session(&state.db, created.account_id, state.settings.session_ttl).await?;
            let mut response = Redirect::to("/dashboard").into_response();
            response
                .headers_mut()
                .insert(header::SET_COOKIE, accounts::session_cookie(&cookie, &state));
            Ok(response)
        }
        Err(problem) => {
            if problem.status.is_server_error() {
                return Err(problem);
            }
            let fields = by_field(&problem.errors);
            let mut response = render(&SignupPage {
                email: form.email,
                error: Some(problem.detail.clone()),
                email_error: fields.get("email").cloned(),
                password_error: fields.get("password").cloned(),
            });
            *response.status_mut() = problem.status;
            if let Some(seconds) = problem.retry_after {
                response.headers_mut().insert(header::RETRY_AFTER, seconds.into());
            }
            Ok(response)
        }
    }
}

#[derive(Deserialize)]
pub struct CsrfForm {
    csrf_token: String,
}

impl CsrfForm {
    pub fn csrf_token(&self) -> &str {
        &self.csrf_token
    }
}

pub async fn signout(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Result<Response, Problem> {
    if let Some(merchant) = session_merchant(&state, &headers).await? {
        merchant.check_csrf(&form.csrf_token)?;
        accounts::end_session(&state, &headers).await?;
    }
    let mut response = Redirect::to("/signin").into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, accounts::clear_cookie(&state));
    Ok(response)
}

// --- Bindings list with health, and the Magento connect form -----------------------

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
struct BindingsPage {
    nav: Nav,
    tenants: Vec<TenantOpt>,
    bindings: Vec<BindingRow>,
    csrf_token: String,
    magento_url: String,
    error: Option<String>,
    url_error: Option<String>,
    code_error: Option<String>,
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
const TENANT_COOKIE: &str = "ledger_tenant";

pub async fn current_tenant(state: &AppState, headers: &HeaderMap, merchant: &Merchant) -> Result<TenantId, Problem> {
    let chosen = ledger_tenant_binding::auth::cookie_value(headers, TENANT_COOKIE)
        .and_then(|v| v.parse::<uuid::Uuid>().ok())
        .map(TenantId);
    match chosen {
        Some(t) => match merchant.tenant(&state.db, Some(t)).await {
            Ok(t) => Ok(t),
            Err(_) => merchant.tenant(&state.db, None).await,
        },
        None => merchant.tenant(&state.db, None).await,
    }
}

pub struct TenantOpt {
    pub id: TenantId,
    pub name: String,
    pub selected: bool,
}

async fn tenant_options(state: &AppState, merchant: &Merchant, current: TenantId) -> Result<Vec<TenantOpt>, Problem> {
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

fn tenant_cookie(tenant: TenantId) -> axum::http::HeaderValue {
    axum::http::HeaderValue::from_str(&format!(
        "{TENANT_COOKIE}={tenant}; Path=/; HttpOnly; SameSite=Lax; Max-Age=31536000"
    ))
    .expect("a uuid is ASCII")
}

#[derive(Deserialize)]
pub struct SwitchForm {
    csrf_token: String,
    tenant_id: uuid::Uuid,
}

pub async fn switch_tenant(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<SwitchForm>,
) -> Result<Response, Problem> {
    let Some(merchant) = session_merchant(&state, &headers).await? else {
        return Ok(signin_redirect("/dashboard"));
    };
    merchant.check_csrf(&form.csrf_token)?;
    let tenant = merchant.tenant(&state.db, Some(TenantId(form.tenant_id))).await?;
    let mut response = Redirect::to("/dashboard").into_response();
    response.headers_mut().insert(header::SET_COOKIE, tenant_cookie(tenant));
    Ok(response)
}

#[derive(Deserialize)]
pub struct NewTenantForm {
    csrf_token: String,
    name: String,
}

/// A new tenant (e.g. a second brand with its own stores and Sage businesses).
pub async fn create_tenant(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<NewTenantForm>,
) -> Result<Response, Problem> {
    let Some(merchant) = session_merchant(&state, &headers).await? else {
        return Ok(signin_redirect("/dashboard"));
    };
    merchant.check_csrf(&form.csrf_token)?;
    let id = ledger_tenant_binding::accounts::create_tenant(&state.db, merchant.account_id, &form.name).await?;
    let mut response = Redirect::to("/dashboard").into_response();
    response.headers_mut().insert(header::SET_COOKIE, tenant_cookie(id));
    Ok(response)
}

async fn binding_rows(state: &AppState, tenant: TenantId) -> Result<Vec<BindingRow>, Problem> {
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

pub async fn bindings_page(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, Problem> {
    let Some(merchant) = session_merchant(&state, &headers).await? else {
        return Ok(signin_redirect("/dashboard"));
    };
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
    csrf_token: String,
    magento_base_url: String,
    pairing_code: String,
}

pub async fn magento_connect(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<MagentoConnectForm>,
) -> Result<Response, Problem> {
    let Some(merchant) = session_merchant(&state, &headers).await? else {
        return Ok(signin_redirect("/dashboard"));
    };
    merchant.check_csrf(&form.csrf_token)?;
    let nav = Nav::of(&merchant);
    let csrf_token = merchant.csrf_token().to_owned();
    let tenant = current_tenant(&state, &headers, &merchant).await?;
    let tenants = tenant_options(&state, &merchant, tenant).await?;
    let request = ledger_pairing::ConnectRequest {
        magento_base_url: form.magento_base_url.clone(),
        pairing_code: form.pairing_code,
        tenant_id: Some(tenant),
    };
    match ledger_pairing::connect(
        State(state.clone()),
        ConnectInfo(peer),
        headers.clone(),
        merchant,
        ledger_core::extract::Json(request),
    )
    .await
    {
        Ok((_, connected)) => {
            Ok(Redirect::to(&format!("/dashboard/bindings/{}", connected.0.binding_id)).into_response())
        }
        Err(problem) if problem.status.is_server_error() && problem.code == "internal_error" => Err(problem),
        Err(problem) => {
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

// --- Settings ---------------------------------------------------------------------------

pub struct Opt {
    pub value: String,
    pub label: String,
    pub selected: bool,
}

pub struct Select {
    pub name: String,
    pub label: String,
    pub options: Vec<Opt>,
    pub error: Option<String>,
}

pub struct Toggle {
    pub name: &'static str,
    pub label: &'static str,
    pub checked: bool,
    pub error: Option<String>,
}

pub struct TaxRow {
    pub index: usize,
    pub pct: String,
    pub select: Select,
}

pub struct B2cView {
    pub enabled: bool,
    pub always_individual_for_b2b: bool,
    pub name: String,
    pub email: String,
    pub reference: String,
    pub min_total: String,
    pub reference_error: Option<String>,
    pub min_total_error: Option<String>,
}

pub struct Knobs {
    pub person_first: bool,
    /// `shipping`, `billing` or `origin`.
    pub tax_based_on: &'static str,
    pub time_zone: String,
    pub time_zone_error: Option<String>,
    /// `1=EUR, 2=USD`.
    pub website_currencies: String,
    pub website_currencies_error: Option<String>,
    pub cancel_with_credit_note: bool,
    pub sync_since: String,
    pub sync_since_error: Option<String>,
    pub website_filter: String,
    pub website_filter_error: Option<String>,
    pub store_filter: String,
    pub store_filter_error: Option<String>,
}

#[derive(Template)]
#[template(path = "settings.html")]
struct SettingsPage {
    nav: Nav,
    b2c: B2cView,
    knobs: Knobs,
    binding_id: BindingId,
    magento_url: String,
    csrf_token: String,
    toggles: Vec<Toggle>,
    selects: Vec<Select>,
    prefix: String,
    prefix_error: Option<String>,
    tax_rows: Vec<TaxRow>,
    tax_error: Option<String>,
    methods: Vec<Select>,
    methods_note: Option<String>,
    reference_age: String,
    notice: Option<String>,
    error: Option<String>,
    /// After a save: the runs the change can fix, offered for retry.
    fixable: Option<FixableOffer>,
}

/// "This change can fix N runs: retry them?"
pub struct FixableOffer {
    /// Comma-separated codes for the retry form.
    pub codes: String,
    pub count: u64,
    pub summary: String,
}

fn label_of(item: &serde_json::Value) -> String {
    let id = item["id"].as_str().unwrap_or_default();
    let name = item["displayed_as"]
        .as_str()
        .or_else(|| item["name"].as_str())
        .unwrap_or(id);
    match item["nominal_code"].as_i64() {
        Some(code) if !name.contains(&code.to_string()) => format!("{code} {name}"),
        _ => name.to_owned(),
    }
}

/// Options from the reference cache; a stored id Sage no longer lists stays visible as
/// "(missing) id" so saving does not silently change it.
fn options(reference: &Reference, kind: &str, current: Option<&str>, none: Option<&str>) -> Vec<Opt> {
    let mut out = Vec::new();
    if let Some(none) = none {
        out.push(Opt {
            value: String::new(),
            label: none.to_owned(),
            selected: current.is_none(),
        });
    }
    let items = reference
        .kinds
        .get(kind)
        .map(|l| l.items.as_slice())
        .unwrap_or_default();
    for item in items {
        let id = item["id"].as_str().unwrap_or_default();
        out.push(Opt {
            value: id.to_owned(),
            label: label_of(item),
            selected: current == Some(id),
        });
    }
    if let Some(c) = current
        && !c.is_empty()
        && !items.iter().any(|i| i["id"].as_str() == Some(c))
    {
        out.push(Opt {
            value: c.to_owned(),
            label: format!("(missing) {c}"),
            selected: true,
        });
    }
    out
}

/// The store's payment methods, live; `None` when the store cannot be asked.
async fn store_methods(state: &AppState, binding: &bindings::Binding) -> Option<Vec<(String, String)>> {
    let base = url::Url::parse(&binding.magento_base_url).ok()?;
    let key = bindings::api_key(state, binding.binding_id).await.ok()?;
    let policy = ledger_magento_api::UrlPolicy::from_settings(&state.settings);
    let client = ledger_magento_api::MagentoClient::new(&base, &binding.tenant_id.to_string(), &key, &policy)
        .await
        .ok()?
        .with_store_clock(binding.store_clock_skew);
    let methods = client.payment_methods().await.ok()??;
    Some(
        methods
            .into_iter()
            .filter(|m| m.is_active)
            .map(|m| {
                let label = m.label.clone().unwrap_or_else(|| m.code.clone());
                (m.code, label)
            })
            .collect(),
    )
}

#[allow(clippy::too_many_arguments, reason = "one page's worth of state")]
async fn settings_view(
    state: &AppState,
    merchant: &Merchant,
    binding: &bindings::Binding,
    s: &Settings,
    errors: &[FieldError],
    notice: Option<String>,
    error: Option<String>,
) -> Result<SettingsPage, Problem> {
    let reference = reference::load(&state.db, binding.binding_id).await?;
    let fields = by_field(errors);
    let err = |name: &str| fields.get(name).cloned();
    let toggles = vec![
        Toggle {
            name: "sync_unpaid_invoices",
            label: "Sync unpaid invoices",
            checked: s.sync_unpaid_invoices,
            error: err("sync_unpaid_invoices"),
        },
        Toggle {
            name: "sync_zero_value_invoices",
            label: "Sync zero-value invoices",
            checked: s.sync_zero_value_invoices,
            error: err("sync_zero_value_invoices"),
        },
        Toggle {
            name: "sync_products",
            label: "Sync products",
            checked: s.sync_products,
            error: err("sync_products"),
        },
        Toggle {
            name: "sync_stock",
            label: "Sync stock levels (with products)",
            checked: s.sync_stock,
            error: err("sync_stock"),
        },
        Toggle {
            name: "catalog_prices_include_tax",
            label: "Catalogue prices include VAT (as Magento's \"Catalog Prices\" setting): product prices sent to Sage say so",
            checked: s.catalog_prices_include_tax,
            error: err("catalog_prices_include_tax"),
        },
    ];
    let select = |name: &str, label: &str, kind: &str, current: &Option<String>, none: Option<&str>| Select {
        name: name.to_owned(),
        label: label.to_owned(),
        options: options(&reference, kind, current.as_deref(), none),
        error: err(name),
    };
    let selects = vec![
        select(
            "default_ledger_account_id",
            "Sales ledger account",
            "ledger_accounts_sales",
            &s.default_ledger_account_id,
            Some("— choose —"),
        ),
        select(
            "default_tax_rate_id",
            "Default tax rate",
            "tax_rates",
            &s.default_tax_rate_id,
            Some("— none —"),
        ),
        select(
            "default_bank_account_id",
            "Default bank account",
            "bank_accounts",
            &s.default_bank_account_id,
            Some("— none —"),
        ),
        select(
            "default_purchase_ledger_account_id",
            "Purchase ledger account (products)",
            "ledger_accounts_expenses",
            &s.default_purchase_ledger_account_id,
            Some("— none —"),
        ),
        select(
            "shipping_ledger_account_id",
            "Ledger account for shipping booked as a line",
            "ledger_accounts_sales",
            &s.shipping_ledger_account_id,
            Some("— the sales account —"),
        ),
        select(
            "unexplained_difference_account_id",
            "Account for amounts Magento's totals hold that its documents do not itemise (payment fees, gift cards)",
            "ledger_accounts_sales",
            &s.unexplained_difference_account_id,
            Some("— none: such a document fails, naming the difference —"),
        ),
    ];
    let mut tax_rows: Vec<TaxRow> = s
        .tax_rate_map
        .iter()
        .enumerate()
        .map(|(index, (pct, id))| TaxRow {
            index,
            pct: pct.clone(),
            select: Select {
                name: format!("tax_rate_{index}"),
                label: format!("Sage tax rate for {pct}%"),
                options: options(&reference, "tax_rates", Some(id), Some("— remove —")),
                error: err(&format!("tax_rate_map.{pct}")),
            },
        })
        .collect();
    let index = tax_rows.len();
    tax_rows.push(TaxRow {
        index,
        pct: String::new(),
        select: Select {
            name: format!("tax_rate_{index}"),
            label: "Sage tax rate for a new percentage".to_owned(),
            options: options(&reference, "tax_rates", None, Some("— none —")),
            error: None,
        },
    });
    let tax_error = errors
        .iter()
        .find(|e| e.field.starts_with("tax_rate_map.") && e.code == "invalid_format")
        .map(|e| {
            format!(
                "{}: {} ({})",
                e.field.trim_start_matches("tax_rate_map."),
                e.message,
                e.code
            )
        });

    let live = store_methods(state, binding).await;
    let methods_note = live
        .is_none()
        .then(|| "The store could not be asked for its payment methods; the ones already mapped are shown.".to_owned());
    let mut codes: Vec<(String, String)> = live.unwrap_or_default();
    for code in s.payment_method_map.keys() {
        if !codes.iter().any(|(c, _)| c == code) {
            codes.push((code.clone(), code.clone()));
        }
    }
    let methods = codes
        .into_iter()
        .map(|(code, label)| {
            let current = s.payment_method_map.get(&code).cloned().flatten();
            Select {
                name: format!("pm.{code}"),
                label: format!("{label} ({code})"),
                options: options(
                    &reference,
                    "bank_accounts",
                    current.as_deref(),
                    Some("Leave unpaid in Sage"),
                ),
                error: err(&format!("payment_method_map.{code}")),
            }
        })
        .collect();
    let list = |v: &[i64]| v.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
    let b2c = B2cView {
        enabled: s.b2c.enabled,
        always_individual_for_b2b: s.b2c.always_individual_for_b2b,
        name: s.b2c.fallback_contact_name.clone(),
        email: s.b2c.fallback_contact_email.clone().unwrap_or_default(),
        reference: s.b2c.fallback_contact_reference.clone(),
        min_total: s.b2c.min_total_for_individual.to_string(),
        reference_error: err("b2c.fallback_contact_reference"),
        min_total_error: err("b2c.min_total_for_individual"),
    };
    let knobs = Knobs {
        person_first: s.customer_name_priority == policy::NamePriority::Person,
        tax_based_on: match s.tax_based_on {
            policy::TaxBasis::Shipping => "shipping",
            policy::TaxBasis::Billing => "billing",
            policy::TaxBasis::Origin => "origin",
        },
        time_zone: s.time_zone.clone().unwrap_or_default(),
        time_zone_error: err("time_zone"),
        website_currencies: s
            .website_base_currencies
            .iter()
            .map(|(w, c)| format!("{w}={c}"))
            .collect::<Vec<_>>()
            .join(", "),
        website_currencies_error: fields
            .iter()
            .find(|(f, _)| f.starts_with("website_base_currencies"))
            .map(|(_, e)| e.clone()),
        cancel_with_credit_note: s.cancelled_invoice_action == policy::CancelledInvoiceAction::CreditNote,
        sync_since: s.sync_since.map(|d| d.to_string()).unwrap_or_default(),
        sync_since_error: err("sync_since"),
        website_filter: list(&s.website_filter),
        website_filter_error: err("website_filter"),
        store_filter: list(&s.store_filter),
        store_filter_error: err("store_filter"),
    };
    Ok(SettingsPage {
        nav: Nav::of(merchant),
        b2c,
        knobs,
        binding_id: binding.binding_id,
        magento_url: binding.magento_base_url.clone(),
        csrf_token: merchant.csrf_token().to_owned(),
        toggles,
        selects,
        prefix: s.invoice_number_prefix.clone().unwrap_or_default(),
        prefix_error: err("invoice_number_prefix"),
        tax_rows,
        tax_error,
        methods,
        methods_note,
        reference_age: ago(reference.fetched_at),
        notice,
        error,
        fixable: None,
    })
}

async fn binding_of(state: &AppState, id: BindingId) -> Result<bindings::Binding, Problem> {
    bindings::load(&state.db, id)
        .await?
        .ok_or_else(|| Problem::not_found("binding_not_found", "No such binding."))
}

#[derive(Deserialize)]
pub struct NoticeQuery {
    saved: Option<String>,
    refreshed: Option<String>,
    /// Codes the saved change addresses (comma-separated).
    fix: Option<String>,
}

pub async fn settings_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(binding_id): Path<BindingId>,
    Query(q): Query<NoticeQuery>,
) -> Result<Response, Problem> {
    let merchant = match owner(
        &state,
        &headers,
        binding_id,
        &format!("/dashboard/bindings/{binding_id}/settings"),
    )
    .await?
    {
        Ok(m) => m,
        Err(r) => return Ok(r),
    };
    let binding = binding_of(&state, binding_id).await?;
    let settings = policy::load(&state, binding_id).await?;
    let notice = q
        .saved
        .map(|_| "Settings saved. They apply to events that arrive from now on, and to every retry.".to_owned())
        .or(q.refreshed.map(|_| "Sage reference data refreshed.".to_owned()));
    let mut view = settings_view(&state, &merchant, &binding, &settings, &[], notice, None).await?;
    let codes: Vec<String> = q
        .fix
        .as_deref()
        .unwrap_or_default()
        .split(',')
        .filter(|c| policy::FIXABLE_CODES.contains(c))
        .map(str::to_owned)
        .collect();
    if !codes.is_empty() {
        let counts = runs::fixable_counts(&state.db, binding_id, &codes).await?;
        let count: u64 = counts.values().sum();
        if count > 0 {
            view.fixable = Some(FixableOffer {
                codes: counts.keys().cloned().collect::<Vec<_>>().join(","),
                count,
                summary: counts
                    .iter()
                    .map(|(code, n)| format!("{n} {code}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
    }
    Ok(render(&view))
}

#[derive(Deserialize)]
pub struct RetryFixableForm {
    csrf_token: String,
    codes: String,
}

/// "Retry them" after a settings change: the runs held back by the codes it addresses.
pub async fn retry_fixable(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(binding_id): Path<BindingId>,
    Form(form): Form<RetryFixableForm>,
) -> Result<Response, Problem> {
    let merchant = match owner(
        &state,
        &headers,
        binding_id,
        &format!("/dashboard/bindings/{binding_id}/settings"),
    )
    .await?
    {
        Ok(m) => m,
        Err(r) => return Ok(r),
    };
    merchant.check_csrf(&form.csrf_token)?;
    let codes: Vec<String> = form.codes.split(',').map(str::to_owned).collect();
    let codes = runs::known_fixable(&codes)?;
    let n = runs::retry_fixable(&state, binding_id, &codes, Actor::Account(merchant.account_id.0)).await?;
    Ok(Redirect::to(&format!("/dashboard/bindings/{binding_id}/runs?retried={n}")).into_response())
}

/// The submitted form over the stored settings (knobs the form does not show are kept).
/// The form's fields by name (the first of repeated names), so reading them is linear in
/// the form, however many tax-rate rows it has.
fn form_index(form: &[(String, String)]) -> std::collections::HashMap<&str, &str> {
    let mut index = std::collections::HashMap::with_capacity(form.len());
    for (k, v) in form {
        index.entry(k.as_str()).or_insert(v.as_str());
    }
    index
}

fn apply_form(mut s: Settings, form: &[(String, String)]) -> Settings {
    let index = form_index(form);
    let get = |name: &str| index.get(name).map(|v| v.trim().to_owned());
    let id = |name: &str| get(name).filter(|v| !v.is_empty());
    s.sync_unpaid_invoices = get("sync_unpaid_invoices").is_some();
    s.sync_zero_value_invoices = get("sync_zero_value_invoices").is_some();
    s.sync_products = get("sync_products").is_some();
    s.sync_stock = get("sync_stock").is_some();
    s.default_ledger_account_id = id("default_ledger_account_id");
    s.default_tax_rate_id = id("default_tax_rate_id");
    s.default_bank_account_id = id("default_bank_account_id");
    s.default_purchase_ledger_account_id = id("default_purchase_ledger_account_id");
    s.shipping_ledger_account_id = id("shipping_ledger_account_id");
    s.unexplained_difference_account_id = id("unexplained_difference_account_id");
    s.catalog_prices_include_tax = get("catalog_prices_include_tax").is_some();
    s.tax_based_on = match get("tax_based_on").as_deref() {
        Some("billing") => policy::TaxBasis::Billing,
        Some("origin") => policy::TaxBasis::Origin,
        _ => policy::TaxBasis::Shipping,
    };
    s.cancelled_invoice_action = match get("cancelled_invoice_action").as_deref() {
        Some("credit_note") => policy::CancelledInvoiceAction::CreditNote,
        _ => policy::CancelledInvoiceAction::Void,
    };
    s.time_zone = id("time_zone");
    // "1=EUR, 2=USD"; a malformed pair is reported by `form_errors`.
    s.website_base_currencies = get("website_base_currencies")
        .unwrap_or_default()
        .split(',')
        .filter_map(|pair| pair.split_once('='))
        .map(|(w, c)| (w.trim().to_owned(), c.trim().to_owned()))
        .collect();
    s.invoice_number_prefix = id("invoice_number_prefix");
    s.customer_name_priority = match get("customer_name_priority").as_deref() {
        Some("Person") => policy::NamePriority::Person,
        _ => policy::NamePriority::Company,
    };
    // Unparseable text is kept out of the typed settings; `form_errors` reports it.
    s.sync_since = id("sync_since").and_then(|d| chrono::NaiveDate::parse_from_str(&d, "%Y-%m-%d").ok());
    let ids = |name: &str| -> Vec<i64> {
        get(name)
            .unwrap_or_default()
            .split(',')
            .filter_map(|v| v.trim().parse().ok())
            .collect()
    };
    s.website_filter = ids("website_filter");
    s.store_filter = ids("store_filter");
    s.b2c.enabled = get("b2c.enabled").is_some();
    s.b2c.always_individual_for_b2b = get("b2c.always_individual_for_b2b").is_some();
    if let Some(name) = id("b2c.fallback_contact_name") {
        s.b2c.fallback_contact_name = name;
    }
    s.b2c.fallback_contact_email = id("b2c.fallback_contact_email");
    s.b2c.fallback_contact_reference = get("b2c.fallback_contact_reference").unwrap_or_default();
    if let Some(min) = get("b2c.min_total_for_individual") {
        s.b2c.min_total_for_individual = if min.is_empty() {
            rust_decimal::Decimal::ZERO
        } else {
            min.parse().unwrap_or(rust_decimal::Decimal::NEGATIVE_ONE)
        };
    }
    s.tax_rate_map = BTreeMap::new();
    for (k, pct) in form {
        if let Some(index) = k.strip_prefix("tax_pct_")
            && !pct.trim().is_empty()
            && let Some(rate) = id(&format!("tax_rate_{index}"))
        {
            s.tax_rate_map.insert(pct.trim().to_owned(), rate);
        }
    }
    // "Leave unpaid" is the default for an unlisted method: only record it for methods
    // the map already named, so saving the page does not add noise.
    let before = std::mem::take(&mut s.payment_method_map);
    s.payment_method_map = form
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix("pm.")
                .map(|code| (code.to_owned(), Some(v.clone()).filter(|v| !v.is_empty())))
        })
        .filter(|(code, account)| account.is_some() || before.contains_key(code))
        .collect();
    s
}

/// Text fields the typed settings cannot hold when malformed: named here so the page
/// can say what to fix instead of silently dropping the value.
fn form_errors(form: &[(String, String)]) -> Vec<FieldError> {
    let index = form_index(form);
    let get = |name: &str| index.get(name).map(|v| v.trim().to_owned());
    let mut errors = Vec::new();
    let mut bad = |field: &str, message: &str| {
        errors.push(FieldError {
            field: field.to_owned(),
            code: "invalid_format".to_owned(),
            message: message.to_owned(),
        });
    };
    if let Some(d) = get("sync_since").filter(|d| !d.is_empty())
        && chrono::NaiveDate::parse_from_str(&d, "%Y-%m-%d").is_err()
    {
        bad("sync_since", "a date as YYYY-MM-DD");
    }
    if get("website_base_currencies").is_some_and(|v| {
        v.split(',')
            .any(|p| !p.trim().is_empty() && p.split_once('=').is_none())
    }) {
        bad(
            "website_base_currencies",
            "website id = currency pairs, e.g. 1=EUR, 2=USD",
        );
    }
    for name in ["website_filter", "store_filter"] {
        if get(name).is_some_and(|v| {
            v.split(',')
                .any(|p| !p.trim().is_empty() && p.trim().parse::<i64>().is_err())
        }) {
            bad(name, "ids separated by commas, e.g. 1, 2");
        }
    }
    if get("b2c.min_total_for_individual").is_some_and(|v| !v.is_empty() && v.parse::<rust_decimal::Decimal>().is_err())
    {
        bad("b2c.min_total_for_individual", "an amount such as 250.00");
    }
    errors
}

pub async fn settings_submit(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(binding_id): Path<BindingId>,
    Form(form): Form<Vec<(String, String)>>,
) -> Result<Response, Problem> {
    let merchant = match owner(
        &state,
        &headers,
        binding_id,
        &format!("/dashboard/bindings/{binding_id}/settings"),
    )
    .await?
    {
        Ok(m) => m,
        Err(r) => return Ok(r),
    };
    let csrf = form
        .iter()
        .find(|(k, _)| k == "csrf_token")
        .map(|(_, v)| v.as_str())
        .unwrap_or_default();
    merchant.check_csrf(csrf)?;
    let tenant = merchant.binding_tenant(&state.db, binding_id).await?;
    let binding = binding_of(&state, binding_id).await?;
    let before = policy::load(&state, binding_id).await?;
    let submitted = apply_form(before.clone(), &form);
    let format_errors = form_errors(&form);
    let saved = if format_errors.is_empty() {
        policy::save(
            &state,
            binding_id,
            tenant,
            submitted.clone(),
            Actor::Account(merchant.account_id.0),
        )
        .await
    } else {
        Err(Problem::validation(format_errors))
    };
    match saved {
        Ok(after) => {
            // Offer to retry what the change can fix (the page counts them).
            let fix = policy::fixable_codes(&before, &after).join(",");
            let query = if fix.is_empty() {
                String::new()
            } else {
                format!("&fix={fix}")
            };
            Ok(Redirect::to(&format!("/dashboard/bindings/{binding_id}/settings?saved=1{query}")).into_response())
        }
        Err(problem) if problem.status == StatusCode::UNPROCESSABLE_ENTITY => {
            // Nothing was saved: show the submitted values with each field's error.
            let view = settings_view(
                &state,
                &merchant,
                &binding,
                &submitted,
                &problem.errors,
                None,
                Some(format!("Nothing was saved. {}", problem.detail)),
            )
            .await?;
            let mut response = render(&view);
            *response.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
            Ok(response)
        }
        Err(problem) => Err(problem),
    }
}

pub async fn reference_refresh(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(binding_id): Path<BindingId>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, Problem> {
    let merchant = match owner(
        &state,
        &headers,
        binding_id,
        &format!("/dashboard/bindings/{binding_id}/settings"),
    )
    .await?
    {
        Ok(m) => m,
        Err(r) => return Ok(r),
    };
    merchant.check_csrf(&form.csrf_token)?;
    reference::refresh(&state, binding_id).await.map_err(|e| {
        Problem::unavailable(
            "reference_refresh_failed",
            format!("Sage could not be asked for its reference data right now ({e}); try again shortly."),
            30,
        )
    })?;
    Ok(Redirect::to(&format!("/dashboard/bindings/{binding_id}/settings?refreshed=1")).into_response())
}

// --- Sync history ----------------------------------------------------------------------

pub struct RunRow {
    pub id: uuid::Uuid,
    pub event: String,
    pub entity_id: i64,
    pub status: String,
    pub reason: String,
    pub attempts: i32,
    pub created: String,
    pub took: String,
    pub sage: String,
    pub retryable: bool,
    /// Failed because Sage booked it with other totals: re-post or accept.
    pub held: bool,
}

fn run_row(r: &runs::Run) -> RunRow {
    RunRow {
        id: r.sync_run_id,
        event: r.event_name.clone(),
        entity_id: r.magento_entity_id,
        status: r.status.clone(),
        reason: [
            r.error_class.as_deref(),
            r.error_code.as_deref().or(r.skip_reason.as_deref()),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" · "),
        attempts: r.attempts,
        created: r.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
        took: match (r.started_at, r.finished_at) {
            (Some(s), Some(f)) => format!("{} ms", (f - s).num_milliseconds().max(0)),
            _ => String::new(),
        },
        sage: r
            .sage_reference
            .clone()
            .or_else(|| r.sage_id.clone())
            .unwrap_or_default(),
        retryable: matches!(r.status.as_str(), "failed" | "dead" | "skipped_by_policy"),
        held: matches!(r.status.as_str(), "failed" | "dead")
            && matches!(r.error_code.as_deref(), Some("total_mismatch" | "void_refused"))
            && matches!(r.entity_type.as_str(), "invoice" | "creditmemo"),
    }
}

#[derive(Template)]
#[template(path = "runs.html")]
struct RunsPage {
    nav: Nav,
    binding_id: BindingId,
    magento_url: String,
    csrf_token: String,
    runs: Vec<RunRow>,
    reason: String,
    entity: String,
    since: String,
    statuses: Vec<Opt>,
    dead: i64,
    notice: Option<String>,
}

#[derive(Deserialize, Default)]
pub struct RunsQuery {
    status: Option<String>,
    reason: Option<String>,
    entity: Option<String>,
    since: Option<String>,
    retried: Option<u64>,
}

pub async fn runs_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(binding_id): Path<BindingId>,
    Query(q): Query<RunsQuery>,
) -> Result<Response, Problem> {
    let merchant = match owner(
        &state,
        &headers,
        binding_id,
        &format!("/dashboard/bindings/{binding_id}/runs"),
    )
    .await?
    {
        Ok(m) => m,
        Err(r) => return Ok(r),
    };
    let binding = binding_of(&state, binding_id).await?;
    let clean = |v: &Option<String>| v.clone().map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
    let filter = RunFilter {
        status: clean(&q.status),
        reason: clean(&q.reason),
        entity_id: clean(&q.entity).and_then(|e| e.parse().ok()),
        since: clean(&q.since)
            .and_then(|d| chrono::NaiveDate::parse_from_str(&d, "%Y-%m-%d").ok())
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map(|d| d.and_utc()),
        limit: Some(200),
    };
    let list = runs::list(&state.db, binding_id, &filter).await?;
    let dead = sqlx::query_scalar!(
        r#"SELECT count(*) AS "n!" FROM sync_runs WHERE binding_id = $1 AND status IN ('dead', 'failed')"#,
        binding_id.0
    )
    .fetch_one(&state.db)
    .await?;
    Ok(render(&RunsPage {
        nav: Nav::of(&merchant),
        binding_id,
        magento_url: binding.magento_base_url,
        csrf_token: merchant.csrf_token().to_owned(),
        runs: list.iter().map(run_row).collect(),
        reason: filter.reason.unwrap_or_default(),
        entity: clean(&q.entity).unwrap_or_default(),
        since: clean(&q.since).unwrap_or_default(),
        statuses: ["pending", "running", "synced", "skipped_by_policy", "failed", "dead"]
            .into_iter()
            .map(|v| Opt {
                value: v.to_owned(),
                label: v.to_owned(),
                selected: filter.status.as_deref() == Some(v),
            })
            .collect(),
        dead,
        notice: q.retried.map(|n| format!("{n} run(s) queued again.")),
    }))
}

pub struct AttemptRow {
    pub attempt: i32,
    pub started: String,
    pub took: String,
    pub outcome: String,
    pub code: String,
    pub message: String,
    pub calls: String,
}

/// One body the ledger sent Sage in one attempt, compared with the last attempt that
/// made the same call.
pub struct SentBody {
    pub attempt: i32,
    pub call: String,
    pub outcome: String,
    pub note: String,
    pub lines: Vec<crate::diff::Line>,
}

/// The payload diff: every POST/PUT body of every attempt, each against the same call's
/// body in the attempt before it (an unchanged body is named, not repeated).
fn sent_bodies(attempts: &[runs::Attempt]) -> Vec<SentBody> {
    let mut last: std::collections::HashMap<String, (i32, &serde_json::Value)> = std::collections::HashMap::new();
    let mut out = Vec::new();
    for a in attempts {
        let calls = a.request.as_ref().and_then(|r| r["sage_calls"].as_array());
        for c in calls.into_iter().flatten() {
            let Some(body) = c.get("body").filter(|b| !b.is_null()) else {
                continue;
            };
            let call = format!(
                "{} {}",
                c["method"].as_str().unwrap_or_default(),
                c["route"].as_str().unwrap_or_default()
            );
            let (note, lines) = match last.get(&call) {
                None => ("First time this call was made.".to_owned(), crate::diff::plain(body)),
                Some((n, prev)) if *prev == body => (format!("Same body as attempt {n}."), Vec::new()),
                Some((n, prev)) => (
                    format!("Changed since attempt {n}: + added, - removed."),
                    crate::diff::json_lines(prev, body),
                ),
            };
            out.push(SentBody {
                attempt: a.attempt,
                call: call.clone(),
                outcome: c["outcome"].as_str().unwrap_or_default().to_owned(),
                note,
                lines,
            });
            last.insert(call, (a.attempt, body));
        }
    }
    out
}

#[derive(Template)]
#[template(path = "run.html")]
struct RunPage {
    nav: Nav,
    binding_id: BindingId,
    csrf_token: String,
    run: RunRow,
    message: String,
    trace_id: String,
    attempts: Vec<AttemptRow>,
    sent: Vec<SentBody>,
    payload: String,
    notice: Option<String>,
}

/// The run and the signed-in merchant allowed to see it (its owner, or an operator).
async fn run_access(
    state: &AppState,
    headers: &HeaderMap,
    run: uuid::Uuid,
    action: OperatorAction,
) -> Result<Result<(Merchant, runs::RunDetail, Actor), Response>, Problem> {
    let Some(merchant) = session_merchant(state, headers).await? else {
        return Ok(Err(signin_redirect(&format!("/dashboard/runs/{run}"))));
    };
    let not_found = || Problem::not_found("run_not_found", "No such sync run.");
    let detail = runs::detail(&state.db, run).await?.ok_or_else(not_found)?;
    // Someone else's run is "no such run": nothing about its binding is named.
    let access = merchant
        .binding_access(&state.db, detail.run.binding_id, action)
        .await
        .map_err(|_| not_found())?;
    Ok(Ok((merchant, detail, access.actor)))
}

#[derive(Deserialize)]
pub struct RunQuery {
    retried: Option<String>,
}

pub async fn run_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(run): Path<uuid::Uuid>,
    Query(q): Query<RunQuery>,
) -> Result<Response, Problem> {
    let (merchant, detail, _) = match run_access(&state, &headers, run, OperatorAction::ViewRuns).await? {
        Ok(v) => v,
        Err(r) => return Ok(r),
    };
    let attempts = detail
        .attempts_detail
        .iter()
        .map(|a| AttemptRow {
            attempt: a.attempt,
            started: a.started_at.format("%Y-%m-%d %H:%M:%S").to_string(),
            took: format!("{} ms", (a.finished_at - a.started_at).num_milliseconds().max(0)),
            outcome: a.outcome.clone(),
            code: [a.error_class.as_deref(), a.error_code.as_deref()]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(" · "),
            message: a.message.clone().unwrap_or_default(),
            calls: a
                .request
                .as_ref()
                .map(|r| r["sage_calls"].as_array().map_or(0, Vec::len))
                .map_or_else(String::new, |n| format!("{n} Sage call(s)")),
        })
        .collect();
    Ok(render(&RunPage {
        nav: Nav::of(&merchant),
        binding_id: detail.run.binding_id,
        csrf_token: merchant.csrf_token().to_owned(),
        message: detail.run.message.clone().unwrap_or_default(),
        trace_id: detail.run.trace_id.clone().unwrap_or_default(),
        run: run_row(&detail.run),
        attempts,
        sent: sent_bodies(&detail.attempts_detail),
        payload: detail
            .event
            .as_ref()
            .map(|e| serde_json::to_string_pretty(e).unwrap_or_default())
            .unwrap_or_default(),
        notice: q.retried.map(|_| "Queued again; reload to follow it.".to_owned()),
    }))
}

pub async fn run_retry(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(run): Path<uuid::Uuid>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, Problem> {
    let (merchant, _, actor) = match run_access(&state, &headers, run, OperatorAction::RetryRuns).await? {
        Ok(v) => v,
        Err(r) => return Ok(r),
    };
    merchant.check_csrf(&form.csrf_token)?;
    if !runs::retry(&state, run, actor).await? {
        return Err(Problem::conflict(
            "run_not_retryable",
            "Only failed, dead or skipped runs can be retried; this one is pending, running or synced.",
        ));
    }
    Ok(Redirect::to(&format!("/dashboard/runs/{run}?retried=1")).into_response())
}

#[derive(Deserialize)]
pub struct ResolveForm {
    csrf_token: String,
    /// `repost` or `accept`.
    action: String,
}

/// The held document's buttons: void and post again, or accept it as it is in Sage.
pub async fn run_resolve(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(run): Path<uuid::Uuid>,
    Form(form): Form<ResolveForm>,
) -> Result<Response, Problem> {
    let (merchant, _, actor) = match run_access(&state, &headers, run, OperatorAction::RetryRuns).await? {
        Ok(v) => v,
        Err(r) => return Ok(r),
    };
    merchant.check_csrf(&form.csrf_token)?;
    let resolution = match form.action.as_str() {
        "repost" => runs::Resolution::Repost,
        "accept" => runs::Resolution::Accept,
        _ => {
            return Err(Problem::validation(vec![FieldError {
                field: "action".into(),
                code: "invalid".into(),
                message: "must be repost or accept".into(),
            }]));
        }
    };
    if !runs::resolve(&state, run, resolution, actor).await? {
        return Err(Problem::conflict(
            "run_not_held",
            "This run holds no document with a totals difference to resolve.",
        ));
    }
    Ok(Redirect::to(&format!("/dashboard/runs/{run}?retried=1")).into_response())
}

pub async fn retry_dead(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(binding_id): Path<BindingId>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, Problem> {
    let merchant = match owner(
        &state,
        &headers,
        binding_id,
        &format!("/dashboard/bindings/{binding_id}/runs"),
    )
    .await?
    {
        Ok(m) => m,
        Err(r) => return Ok(r),
    };
    merchant.check_csrf(&form.csrf_token)?;
    let n = runs::retry_dead(&state, binding_id, Actor::Account(merchant.account_id.0)).await?;
    Ok(Redirect::to(&format!("/dashboard/bindings/{binding_id}/runs?retried={n}")).into_response())
}

// --- Audit trail ---------------------------------------------------------------------

pub struct AuditRow {
    pub at: String,
    pub actor: String,
    pub action: String,
    pub binding: String,
    pub details: String,
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    nav: Nav,
    rows: Vec<AuditRow>,
}

pub async fn audit_page(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, Problem> {
    let Some(merchant) = session_merchant(&state, &headers).await? else {
        return Ok(signin_redirect("/dashboard/audit"));
    };
    let tenant = current_tenant(&state, &headers, &merchant).await?;
    let rows = sqlx::query!(
        r#"SELECT a.at, a.actor, a.action, a.binding_id, a.details, acc.email AS "email?"
           FROM audit_log a
           LEFT JOIN accounts acc ON a.actor IN ('account:' || acc.id::text, 'operator:' || acc.id::text)
           WHERE a.tenant_id = $1 OR a.binding_id IN (SELECT id FROM connector_bindings WHERE tenant_id = $1)
              OR (a.tenant_id IS NULL AND a.binding_id IS NULL AND a.actor = $2)
           ORDER BY a.id DESC LIMIT 200"#,
        tenant.0,
        Actor::Account(merchant.account_id.0).as_text()
    )
    .fetch_all(&state.db)
    .await?;
    let rows = rows
        .into_iter()
        .map(|r| AuditRow {
            at: r.at.format("%Y-%m-%d %H:%M:%S").to_string(),
            actor: r.email.unwrap_or(r.actor),
            action: r.action,
            binding: r.binding_id.map(|b| b.to_string()).unwrap_or_default(),
            details: summarize(&r.details),
        })
        .collect();
    Ok(render(&AuditPage {
        nav: Nav::of(&merchant),
        rows,
    }))
}

/// A settings change as "field: before → after"; other details as compact JSON.
fn summarize(details: &serde_json::Value) -> String {
    if let (Some(before), Some(after)) = (details["before"].as_object(), details["after"].as_object()) {
        let changes: Vec<String> = after
            .iter()
            .filter(|(k, v)| before.get(*k) != Some(*v))
            .map(|(k, v)| format!("{k}: {} → {v}", before.get(k).cloned().unwrap_or_default()))
            .collect();
        return if changes.is_empty() {
            "no change".to_owned()
        } else {
            changes.join("; ")
        };
    }
    let text = details.to_string();
    if text == "{}" { String::new() } else { text }
}

// --- Account: password change, and disconnecting a binding ------------------------------

#[derive(Template)]
#[template(path = "account.html")]
struct AccountPage {
    nav: Nav,
    csrf_token: String,
    current_error: Option<String>,
    new_error: Option<String>,
    notice: Option<String>,
}

#[derive(Deserialize)]
pub struct AccountQuery {
    changed: Option<String>,
}

pub async fn account_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<AccountQuery>,
) -> Result<Response, Problem> {
    let Some(merchant) = session_merchant(&state, &headers).await? else {
        return Ok(signin_redirect("/dashboard/account"));
    };
    Ok(render(&AccountPage {
        nav: Nav::of(&merchant),
        csrf_token: merchant.csrf_token().to_owned(),
        current_error: None,
        new_error: None,
        notice: q
            .changed
            .map(|_| "Password changed; your other sessions were signed out.".to_owned()),
    }))
}

#[derive(Deserialize)]
pub struct PasswordForm {
    csrf_token: String,
    current_password: String,
    new_password: String,
}

pub async fn account_submit(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<PasswordForm>,
) -> Result<Response, Problem> {
    let Some(merchant) = session_merchant(&state, &headers).await? else {
        return Ok(signin_redirect("/dashboard/account"));
    };
    merchant.check_csrf(&form.csrf_token)?;
    match accounts::change_password(
        &state,
        merchant.account_id,
        Secret::new(form.current_password),
        Secret::new(form.new_password),
        &headers,
    )
    .await?
    {
        Ok(()) => Ok(Redirect::to("/dashboard/account?changed=1").into_response()),
        Err(errors) => {
            let fields = by_field(&errors);
            let mut response = render(&AccountPage {
                nav: Nav::of(&merchant),
                csrf_token: merchant.csrf_token().to_owned(),
                current_error: fields.get("current_password").cloned(),
                new_error: fields.get("new_password").cloned(),
                notice: None,
            });
            *response.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
            Ok(response)
        }
    }
}

#[derive(Deserialize)]
pub struct DisconnectForm {
    csrf_token: String,
    confirm: Option<String>,
}

/// Disconnects a binding from the ledger side, as `POST /v1/bindings/{id}/disconnect`.
pub async fn disconnect(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(binding_id): Path<BindingId>,
    Form(form): Form<DisconnectForm>,
) -> Result<Response, Problem> {
    let merchant = match owner(
        &state,
        &headers,
        binding_id,
        &format!("/dashboard/bindings/{binding_id}"),
    )
    .await?
    {
        Ok(m) => m,
        Err(r) => return Ok(r),
    };
    merchant.check_csrf(&form.csrf_token)?;
    if form.confirm.is_none() {
        return Ok(Redirect::to(&format!("/dashboard/bindings/{binding_id}?confirm=1#disconnect")).into_response());
    }
    let tenant = merchant.binding_tenant(&state.db, binding_id).await?;
    ledger_sage_vault::connect::disconnect_binding(&state, binding_id, tenant, Actor::Account(merchant.account_id.0))
        .await?;
    Ok(Redirect::to(&format!("/dashboard/bindings/{binding_id}?disconnected=1")).into_response())
}
