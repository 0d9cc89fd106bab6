//! The merchant dashboard's web pages and the ops console: server-rendered (askama,
//! checked at compile time), calling the same domain code as the JSON API. Sign-in and
//! the Sage connect flow live here; the other pages in `pages` and `ops`.

mod diff;
mod embed;
mod extract;
mod ops;
mod pages;

use askama::Template;
use std::net::SocketAddr;

use axum::{
    Form, Router,
    extract::{ConnectInfo, Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{Html, IntoResponse, Redirect, Response},
    routing::{get, post},
};
use ledger_core::{AppState, BindingId, Problem, audit::Actor};
use ledger_sage_vault::{
    connect::{self, BusinessChoice, CallbackOutcome, CallbackParams},
    oauth::REGIONS,
};
use ledger_tenant_binding::{
    accounts,
    auth::{Merchant, session_merchant},
    bindings,
};
use serde::Deserialize;

use extract::{Button, CsrfForm, ForOverview, ForSageConnect, PageOwner, csrf_forms};

/// The pages' routes, with their state and security headers.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/assets/app.css", get(stylesheet))
        .route("/signin", get(signin_page).post(signin_submit))
        .route("/signup", get(pages::signup_page).post(pages::signup_submit))
        .route("/signout", post(pages::signout))
        .route("/dashboard", get(pages::bindings_page))
        .route("/dashboard/magento/connect", post(pages::magento_connect))
        .route("/dashboard/tenant", post(pages::switch_tenant))
        .route("/dashboard/tenants", post(pages::create_tenant))
        // Paths the module's documentation names (contract §9): all land on the stores
        // list, which holds the connect form and every binding's history link.
        .route(
            "/dashboard/connect-magento",
            get(|| async { Redirect::to("/dashboard#connect-heading") }),
        )
        .route(
            "/dashboard/connect",
            get(|| async { Redirect::to("/dashboard#connect-heading") }),
        )
        .route("/dashboard/sync", get(|| async { Redirect::to("/dashboard") }))
        .route("/dashboard/audit", get(pages::audit_page))
        .route(
            "/dashboard/account",
            get(pages::account_page).post(pages::account_submit),
        )
        .route("/dashboard/bindings/{binding_id}/disconnect", post(pages::disconnect))
        .route("/dashboard/bindings/{binding_id}", get(binding_page))
        .route(
            "/dashboard/bindings/{binding_id}/settings",
            get(pages::settings_page).post(pages::settings_submit),
        )
        .route(
            "/dashboard/bindings/{binding_id}/reference/refresh",
            post(pages::reference_refresh),
        )
        .route("/dashboard/bindings/{binding_id}/runs", get(pages::runs_page))
        .route(
            "/dashboard/bindings/{binding_id}/runs/retry-dead",
            post(pages::retry_dead),
        )
        .route(
            "/dashboard/bindings/{binding_id}/runs/retry-fixable",
            post(pages::retry_fixable),
        )
        .route("/dashboard/runs/{run_id}", get(pages::run_page))
        .route("/dashboard/runs/{run_id}/retry", post(pages::run_retry))
        .route("/dashboard/runs/{run_id}/resolve", post(pages::run_resolve))
        .route("/embed/{tenant_id}", get(embed::embed))
        .route("/embed/{tenant_id}/signin", post(embed::signin))
        .route("/ops", get(ops::console))
        .route("/ops/bindings/{binding_id}/{action}", post(ops::action))
        .route(
            "/dashboard/bindings/{binding_id}/sage/connect",
            get(connect_page).post(connect_submit),
        )
        .route("/dashboard/bindings/{binding_id}/sage/business", post(business_submit))
        .route("/dashboard/bindings/{binding_id}/sage/check", post(sage_check))
        .route("/sage/callback", get(callback))
        .route("/sage/callback/confirm", post(callback_confirm))
        .layer(axum::middleware::from_fn_with_state(state.clone(), same_origin_posts))
        .layer(axum::middleware::from_fn_with_state(state.clone(), security_headers))
        .with_state(state)
}

/// Every form post must come from this ledger's own pages: a browser says where a
/// request came from (`Sec-Fetch-Site`, else `Origin`), so a cross-site form — a login
/// CSRF on /signin or /signup, which carry no session token yet — is refused. Clients
/// that send neither header are not browsers and cannot be made to post by a site.
async fn same_origin_posts(
    State(state): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if req.method() == axum::http::Method::POST && !from_own_pages(req.headers(), &state.settings.public_url) {
        let mut page = render(&MessagePage {
            heading: "Refused".to_owned(),
            message: "This form was sent from another site. Open the ledger's own page and submit it there.".to_owned(),
            retry: None,
        });
        *page.status_mut() = StatusCode::FORBIDDEN;
        return page;
    }
    next.run(req).await
}

fn from_own_pages(headers: &HeaderMap, public_url: &str) -> bool {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        return matches!(site, "same-origin" | "none");
    }
    match headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        Some(origin) => url::Url::parse(public_url)
            .is_ok_and(|own| own.origin().ascii_serialization() == origin.trim_end_matches('/')),
        None => true,
    }
}

async fn stylesheet() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        include_str!("../assets/app.css"),
    )
}

/// Security headers for every page. `form-action` must allow the redirect to Sage's
/// authorize page, which a form post on the connect page ends in.
async fn security_headers(
    State(state): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let sage_origin = state.settings.sage_authorize_url.origin().ascii_serialization();
    let mut response = next.run(req).await;
    let headers = response.headers_mut();
    let csp = format!(
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; base-uri 'none'; \
         form-action 'self' {sage_origin}; frame-ancestors 'none'"
    );
    // A page with its own policy (the embed page's frame-ancestors) keeps it.
    if let Ok(v) = HeaderValue::from_str(&csp) {
        headers.entry(header::CONTENT_SECURITY_POLICY).or_insert(v);
    }
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // The callback URL carries Sage's code: never leak it in a Referer.
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

fn render(template: &impl Template) -> Response {
    match template.render() {
        Ok(html) => Html(html).into_response(),
        Err(err) => Problem::internal(err).into_response(),
    }
}

/// Only paths of this ledger are followed after sign-in (no open redirect): `next` is
/// resolved against the public origin as a browser would (which drops tabs and
/// newlines and reads `\` as `/`), and kept only when it stays on that origin.
fn safe_next(public_url: &str, next: Option<&str>) -> String {
    let fallback = || "/dashboard".to_owned();
    let Some(next) = next.filter(|n| n.starts_with('/')) else {
        return fallback();
    };
    let Ok(origin) = url::Url::parse(public_url) else {
        return fallback();
    };
    match origin.join(next) {
        Ok(target) if target.origin() == origin.origin() && !next.chars().any(char::is_control) => {
            let mut local = target.path().to_owned();
            if let Some(query) = target.query() {
                local.push('?');
                local.push_str(query);
            }
            // "//host" must never come out, even from an odd input.
            if local.starts_with("//") { fallback() } else { local }
        }
        _ => fallback(),
    }
}

#[derive(Template)]
#[template(path = "signin.html")]
struct SigninPage {
    next: String,
    email: String,
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
struct NextQuery {
    next: Option<String>,
}

async fn signin_page(State(state): State<AppState>, Query(q): Query<NextQuery>) -> Response {
    render(&SigninPage {
        next: safe_next(&state.settings.public_url, q.next.as_deref()),
        email: String::new(),
        error: None,
    })
}

#[derive(Debug, Deserialize)]
struct SigninForm {
    email: String,
    password: String,
    next: Option<String>,
}

async fn signin_submit(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<SigninForm>,
) -> Result<Response, Problem> {
    let next = safe_next(&state.settings.public_url, form.next.as_deref());
    let client = accounts::client_address(&state, &headers, peer);
    match accounts::password_signin(&state, &form.email, form.password, &client).await? {
        Ok(session) => {
            // A sign-in never keeps a session the browser had before (fixation).
            accounts::end_session(&state, &headers).await?;
            // 303: the browser follows with a GET.
            let mut response = Redirect::to(&next).into_response();
            response
                .headers_mut()
                .insert(header::SET_COOKIE, accounts::session_cookie(&session.cookie, &state));
            Ok(response)
        }
        Err(refusal) => {
            let mut response = render(&SigninPage {
                next,
                email: form.email,
                error: Some(refusal.message),
            });
            *response.status_mut() = if refusal.retry_after.is_some() {
                StatusCode::TOO_MANY_REQUESTS
            } else {
                StatusCode::UNAUTHORIZED
            };
            Ok(response)
        }
    }
}

#[derive(Template)]
#[template(path = "binding.html")]
struct BindingPage {
    nav: pages::Nav,
    csrf_token: String,
    binding_id: BindingId,
    backlog: i64,
    failed: i64,
    magento_url: String,
    status: String,
    magento_status: String,
    sage_status: String,
    business_name: String,
    region: String,
    notice: Option<String>,
    /// When Sage reported the subscription lapsed.
    lapsed_since: Option<String>,
    /// "store clock 95 s ahead — fix NTP" while the store's signed requests show it.
    store_clock: Option<String>,
}

#[derive(Debug, Deserialize)]
struct BindingQuery {
    connected: Option<String>,
    disconnected: Option<String>,
    /// After "Check again": `ok` or `lapsed`.
    checked: Option<String>,
}

async fn binding_page(
    State(state): State<AppState>,
    PageOwner {
        merchant, binding_id, ..
    }: PageOwner<ForOverview>,
    Query(q): Query<BindingQuery>,
) -> Result<Response, Problem> {
    let counts = sqlx::query!(
        r#"SELECT count(*) FILTER (WHERE status IN ('pending', 'running')) AS "backlog!",
                  count(*) FILTER (WHERE status IN ('failed', 'dead')) AS "failed!"
           FROM sync_runs WHERE binding_id = $1"#,
        binding_id.0
    )
    .fetch_one(&state.db)
    .await?;
    let binding = bindings::load(&state.db, binding_id)
        .await?
        .ok_or_else(|| Problem::not_found("binding_not_found", "No such binding."))?;
    let sage = connect::load_connection(&state.db, binding_id).await?;
    Ok(render(&BindingPage {
        nav: pages::Nav::of(&merchant),
        csrf_token: merchant.csrf_token().to_owned(),
        binding_id,
        backlog: counts.backlog,
        failed: counts.failed,
        magento_url: binding.magento_base_url,
        status: binding.status.as_str().to_owned(),
        magento_status: binding.magento_connection_status,
        store_clock: binding
            .store_clock_skew
            .map(|s| ledger_tenant_binding::magento::clock_warning(i64::from(s))),
        sage_status: sage.status,
        business_name: sage.business_name.unwrap_or_default(),
        region: sage.region.unwrap_or_default().to_uppercase(),
        notice: q
            .connected
            .map(|_| "Sage is connected.".to_owned())
            .or(q
                .disconnected
                .map(|_| "Disconnected. The store's events are refused from now on.".to_owned()))
            .or(q.checked.map(|c| match c.as_str() {
                "ok" => "Sage answered: the subscription is active again and syncing has resumed.".to_owned(),
                _ => {
                    "Sage still reports no active subscription. The ledger keeps checking every few minutes.".to_owned()
                }
            })),
        lapsed_since: (sage_status_lapsed(&state, binding_id).await?)
            .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string()),
    }))
}

/// When the connection's subscription was found lapsed, if it is.
async fn sage_status_lapsed(
    state: &AppState,
    binding: BindingId,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, Problem> {
    Ok(sqlx::query_scalar!(
        "SELECT updated_at FROM sage_connections WHERE binding_id = $1 AND status = 'subscription_lapsed'",
        binding.0
    )
    .fetch_optional(&state.db)
    .await?)
}

/// "Check again" on a lapsed subscription: ask Sage now (the workers do every few minutes).
async fn sage_check(
    State(state): State<AppState>,
    CsrfForm(PageOwner { binding_id, .. }, _): CsrfForm<PageOwner<ForOverview>, Button>,
) -> Result<Response, Problem> {
    let outcome = match ledger_sage_vault::reference::refresh(&state, binding_id).await {
        Ok(()) => "ok",
        Err(err) => {
            tracing::info!(binding = %binding_id, error = %err, "Sage still refuses after a check");
            "lapsed"
        }
    };
    Ok(Redirect::to(&format!("/dashboard/bindings/{binding_id}?checked={outcome}")).into_response())
}

#[derive(Template)]
#[template(path = "sage_connect.html")]
struct ConnectPage {
    binding_id: BindingId,
    magento_url: String,
    csrf_token: String,
    regions: &'static [(&'static str, &'static str)],
    error: Option<String>,
}

async fn connect_page(
    State(state): State<AppState>,
    PageOwner {
        merchant, binding_id, ..
    }: PageOwner<ForSageConnect>,
) -> Result<Response, Problem> {
    let binding = bindings::load(&state.db, binding_id)
        .await?
        .ok_or_else(|| Problem::not_found("binding_not_found", "No such binding."))?;
    Ok(render(&ConnectPage {
        binding_id,
        magento_url: binding.magento_base_url,
        csrf_token: merchant.csrf_token().to_owned(),
        regions: REGIONS,
        error: None,
    }))
}

#[derive(Debug, Deserialize)]
struct ConnectForm {
    csrf_token: String,
    region: String,
}

async fn connect_submit(
    State(state): State<AppState>,
    CsrfForm(
        PageOwner {
            merchant, binding_id, ..
        },
        form,
    ): CsrfForm<PageOwner<ForSageConnect>, ConnectForm>,
) -> Result<Response, Problem> {
    // The callback must come back to this browser: a forwarded consent link cannot
    // complete someone else's flow.
    let nonce = ledger_core::crypto::random_token();
    match connect::start(&state, binding_id, merchant.account_id, &form.region, Some(&nonce)).await {
        Ok(url) => {
            let mut response = Redirect::to(&url).into_response();
            response
                .headers_mut()
                .append(header::SET_COOKIE, flow_cookie(&state, &nonce, 600));
            Ok(response)
        }
        Err(problem) => {
            let binding = bindings::load(&state.db, binding_id)
                .await?
                .map(|b| b.magento_base_url)
                .unwrap_or_default();
            let mut response = render(&ConnectPage {
                binding_id,
                magento_url: binding,
                csrf_token: merchant.csrf_token().to_owned(),
                regions: REGIONS,
                error: Some(problem.detail.clone()),
            });
            *response.status_mut() = problem.status;
            Ok(response)
        }
    }
}

#[derive(Template)]
#[template(path = "sage_business.html")]
struct BusinessPage {
    binding_id: BindingId,
    csrf_token: String,
    businesses: Vec<BusinessChoice>,
}

#[derive(Template)]
#[template(path = "message.html")]
struct MessagePage {
    heading: String,
    message: String,
    retry: Option<String>,
}

/// The flow cookie: only sent back to the callback, gone after 10 minutes.
fn flow_cookie(state: &AppState, value: &str, max_age: u32) -> HeaderValue {
    let secure = if state.settings.public_url.starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    HeaderValue::from_str(&format!(
        "{}={value}; Path=/sage/callback; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}",
        connect::FLOW_COOKIE
    ))
    .expect("cookie text is ASCII")
}

#[derive(Template)]
#[template(path = "sage_confirm.html")]
struct ConfirmPage {
    grant_id: String,
    store_url: String,
    csrf_token: String,
    businesses: Vec<BusinessChoice>,
}

fn callback_failure_page(failure: &connect::CallbackFailure) -> Response {
    let mut response = render(&MessagePage {
        heading: "Sage was not connected".to_owned(),
        message: failure.message.clone(),
        retry: failure
            .binding_id
            .map(|b| format!("/dashboard/bindings/{b}/sage/connect")),
    });
    *response.status_mut() = StatusCode::BAD_REQUEST;
    response
}

fn callback_outcome(
    merchant: Option<&Merchant>,
    outcome: Result<CallbackOutcome, connect::CallbackFailure>,
) -> Response {
    let csrf_token = merchant.map(|m| m.csrf_token().to_owned()).unwrap_or_default();
    match outcome {
        Ok(CallbackOutcome::Connected { binding_id, .. }) => {
            Redirect::to(&format!("/dashboard/bindings/{binding_id}?connected=1")).into_response()
        }
        Ok(CallbackOutcome::ChooseBusiness { binding_id, businesses }) => render(&BusinessPage {
            binding_id,
            csrf_token,
            businesses,
        }),
        Ok(CallbackOutcome::Confirm(grant)) => render(&ConfirmPage {
            grant_id: grant.grant_id.to_string(),
            store_url: grant.store_url,
            csrf_token,
            businesses: grant.businesses,
        }),
        Err(failure) => callback_failure_page(&failure),
    }
}

/// Sage's redirect back (`{LEDGER_PUBLIC_URL}/sage/callback`).
async fn callback(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(params): Query<CallbackParams>,
) -> Result<Response, Problem> {
    let merchant = session_merchant(&state, &headers).await?;
    let browser = connect::CallbackBrowser {
        account: merchant.as_ref().map(|m| m.account_id),
        flow_nonce: ledger_tenant_binding::auth::cookie_value(&headers, connect::FLOW_COOKIE),
    };
    let outcome = connect::complete(&state, &params, browser).await;
    let mut response = callback_outcome(merchant.as_ref(), outcome);
    if browser.flow_nonce.is_some() {
        response
            .headers_mut()
            .append(header::SET_COOKIE, flow_cookie(&state, "", 0));
    }
    Ok(response)
}

#[derive(Debug, Deserialize)]
struct ConfirmForm {
    csrf_token: String,
    grant_id: uuid::Uuid,
    /// `connect` or `cancel`.
    decision: String,
}

/// The answer to "Connect Sage business X to store Y?" for API-started flows.
async fn callback_confirm(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<ConfirmForm>,
) -> Result<Response, Problem> {
    let Some(merchant) = session_merchant(&state, &headers).await? else {
        return Ok(callback_failure_page(&connect::CallbackFailure {
            binding_id: None,
            code: "signin_required",
            message: "Your session ended before you confirmed. Sign in, then start connecting Sage again.".into(),
        }));
    };
    merchant.check_csrf(&form.csrf_token)?;
    let accept = match form.decision.as_str() {
        "connect" => true,
        "cancel" => false,
        _ => {
            return Err(Problem::validation(vec![ledger_core::FieldError {
                field: "decision".into(),
                code: "invalid".into(),
                message: "must be connect or cancel".into(),
            }]));
        }
    };
    match connect::confirm(&state, form.grant_id, merchant.account_id, accept).await {
        Ok(None) => Ok(render(&MessagePage {
            heading: "Sage was not connected".to_owned(),
            message:
                "You cancelled, so nothing was connected and the ledger no longer holds access to that Sage business."
                    .to_owned(),
            retry: None,
        })),
        Ok(Some(outcome)) => Ok(callback_outcome(Some(&merchant), Ok(outcome))),
        Err(failure) => Ok(callback_failure_page(&failure)),
    }
}

#[derive(Debug, Deserialize)]
struct BusinessForm {
    csrf_token: String,
    business_id: String,
}
csrf_forms!(BusinessForm, ConnectForm);

async fn business_submit(
    State(state): State<AppState>,
    CsrfForm(
        PageOwner {
            merchant, binding_id, ..
        },
        form,
    ): CsrfForm<PageOwner<ForOverview>, BusinessForm>,
) -> Result<Response, Problem> {
    connect::choose(
        &state,
        binding_id,
        &form.business_id,
        Actor::Account(merchant.account_id.0),
    )
    .await?;
    Ok(Redirect::to(&format!("/dashboard/bindings/{binding_id}?connected=1")).into_response())
}
