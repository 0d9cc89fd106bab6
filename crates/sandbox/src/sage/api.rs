//! Sage Accounting API v3.1 (sandbox): authentication, `X-Business`, the `$items`
//! envelope with `$next` paging, base-attribute lists unless `attributes=all`, and
//! Sage's error array.

use std::{collections::HashMap, sync::Arc};

use axum::{
    Json, Router,
    extract::{OriginalUri, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::{Value, json};

use super::{Business, Sage};

/// Sage's error body.
pub fn sage_error(status: StatusCode, data_code: &str, message: &str, source: &str) -> Response {
    (
        status,
        Json(json!([{ "$severity": "error", "$dataCode": data_code, "$message": message, "$source": source }])),
    )
        .into_response()
}

/// Who is calling: the business an API call acts on.
#[derive(Debug)]
pub struct Caller {
    pub business_id: String,
}

/// Checks the bearer token and picks the business (`X-Business`, else the lead one).
pub fn authenticate(sage: &Sage, headers: &HeaderMap) -> Result<Caller, Response> {
    let now = sage.now();
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    let mut inner = sage.lock();
    inner.stats.api_calls += 1;
    if inner.faults.api_failures > 0 {
        inner.faults.api_failures -= 1;
        let status = StatusCode::from_u16(inner.faults.api_status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        return Err(sage_error(
            status,
            "ServiceUnavailable",
            "The service is temporarily unavailable",
            "",
        ));
    }
    if inner.access.get(token).is_none_or(|g| g.expires_at <= now) {
        return Err(sage_error(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "Invalid or expired access token",
            "",
        ));
    }
    let business_id = match headers.get("X-Business").and_then(|v| v.to_str().ok()) {
        Some(id) if inner.businesses.contains_key(id) => id.to_owned(),
        Some(_) => {
            return Err(sage_error(
                StatusCode::FORBIDDEN,
                "AccessDenied",
                "You do not have access to this business",
                "X-Business",
            ));
        }
        None => inner.order.first().cloned().unwrap_or_default(),
    };
    if inner.businesses.get(&business_id).is_some_and(|b| b.lapsed) {
        return Err(sage_error(
            StatusCode::UNAUTHORIZED,
            "AuthorizationFailure",
            "No active subscription. (MSE)",
            "",
        ));
    }
    // Per-business rate limit over a sliding window.
    if let Some((limit, window_ms)) = sage.config.rate_limit {
        let now_ms = chrono::Utc::now().timestamp_millis() + inner.clock_offset * 1000;
        let business = inner.businesses.get_mut(&business_id).expect("checked above");
        while business.calls.front().is_some_and(|t| *t <= now_ms - window_ms) {
            business.calls.pop_front();
        }
        if business.calls.len() >= limit {
            business.rate_limited += 1;
            let wait_ms = business.calls.front().map_or(window_ms, |t| t + window_ms - now_ms);
            let retry_after = (wait_ms + 999) / 1000;
            let mut response = sage_error(
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequests",
                "Rate limit exceeded",
                "",
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, retry_after.max(1).into());
            return Err(response);
        }
        business.calls.push_back(now_ms);
    }
    let now_ms = chrono::Utc::now().timestamp_millis();
    if let Some(business) = inner.businesses.get_mut(&business_id) {
        business.accepted.push(now_ms);
    }
    Ok(Caller { business_id })
}

/// Applies the slow-Sage fault, then [`authenticate`].
pub async fn enter(sage: &Sage, headers: &HeaderMap) -> Result<Caller, Response> {
    let delay = sage.lock().faults.api_delay_ms;
    if delay > 0 {
        super::sleep(delay).await;
    }
    authenticate(sage, headers)
}

/// The `$items` envelope for one page of `items`, with an absolute `$next` link.
pub fn page(sage: &Sage, uri: &str, items: Vec<Value>, query: &HashMap<String, String>) -> Response {
    let per_page = query
        .get("items_per_page")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(20)
        .clamp(1, sage.config.max_items_per_page.min(200));
    let page = query
        .get("page")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(1)
        .max(1);
    let all = query.get("attributes").is_some_and(|a| a == "all");
    let total = items.len();
    let start = (page - 1) * per_page;
    let slice: Vec<Value> = items
        .into_iter()
        .skip(start)
        .take(per_page)
        .map(|item| {
            if all {
                item
            } else {
                json!({ "id": item["id"], "displayed_as": item["displayed_as"], "$path": item["$path"] })
            }
        })
        .collect();
    let link = |p: usize| {
        let path = uri.split('?').next().unwrap_or(uri);
        let mut params: Vec<(String, String)> = query
            .iter()
            .filter(|(k, _)| *k != "page" && *k != "items_per_page")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        params.sort();
        params.push(("items_per_page".into(), per_page.to_string()));
        params.push(("page".into(), p.to_string()));
        let q: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("{}{path}?{}", sage.base_url(), q.join("&"))
    };
    let next = (start + per_page < total).then(|| link(page + 1));
    let back = (page > 1).then(|| link(page - 1));
    Json(json!({
        "$total": total, "$page": page, "$next": next, "$back": back, "$itemsPerPage": per_page, "$items_per_page": per_page, "$items": slice,
    }))
    .into_response()
}

type Q = Query<HashMap<String, String>>;

fn list(
    sage: &Arc<Sage>,
    headers: &HeaderMap,
    uri: &str,
    query: &HashMap<String, String>,
    pick: impl FnOnce(&Business) -> Vec<Value>,
) -> Response {
    let caller = match authenticate(sage, headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let items = sage.with_business(&caller.business_id, pick).unwrap_or_default();
    page(sage, uri, items, query)
}

async fn businesses(
    State(sage): State<Arc<Sage>>,
    headers: HeaderMap,
    OriginalUri(uri): OriginalUri,
    Query(q): Q,
) -> Response {
    // Lists every business of the user; needs no X-Business.
    let mut headers = headers;
    headers.remove("X-Business");
    if let Err(r) = authenticate(&sage, &headers) {
        return r;
    }
    let items = sage
        .businesses()
        .iter()
        .map(|b| json!({ "id": b.id, "displayed_as": b.name, "$path": format!("/businesses/{}", b.id), "name": b.name, "country": b.country }))
        .collect();
    page(&sage, uri.path(), items, &q)
}

async fn lead_business(State(sage): State<Arc<Sage>>, headers: HeaderMap) -> Response {
    let mut headers = headers;
    headers.remove("X-Business");
    if let Err(r) = authenticate(&sage, &headers) {
        return r;
    }
    let lead = &sage.businesses()[0];
    Json(json!({ "id": lead.id, "displayed_as": lead.name, "$path": format!("/businesses/{}", lead.id), "name": lead.name })).into_response()
}

async fn tax_rates(
    State(sage): State<Arc<Sage>>,
    headers: HeaderMap,
    OriginalUri(uri): OriginalUri,
    Query(q): Q,
) -> Response {
    let destination = q.get("include_destination_vat_rates").is_some_and(|v| v == "true");
    list(&sage, &headers, uri.path(), &q, |b| {
        let mut rates = b.tax_rates.clone();
        if destination && b.destination_vat {
            rates.extend(b.destination_rates.iter().cloned());
        }
        rates
    })
}

async fn ledger_accounts(
    State(sage): State<Arc<Sage>>,
    headers: HeaderMap,
    OriginalUri(uri): OriginalUri,
    Query(q): Q,
) -> Response {
    let visible = q.get("visible_in").cloned();
    list(&sage, &headers, uri.path(), &q, |b| {
        b.ledger_accounts
            .iter()
            .filter(|a| match visible.as_deref() {
                Some("sales") => a["visible_in_sales"] == true,
                Some("expenses") => a["visible_in_expenses"] == true,
                _ => true,
            })
            .cloned()
            .collect()
    })
}

async fn bank_accounts(
    State(sage): State<Arc<Sage>>,
    headers: HeaderMap,
    OriginalUri(uri): OriginalUri,
    Query(q): Q,
) -> Response {
    list(&sage, &headers, uri.path(), &q, |b| b.bank_accounts.clone())
}

async fn currencies(
    State(sage): State<Arc<Sage>>,
    headers: HeaderMap,
    OriginalUri(uri): OriginalUri,
    Query(q): Q,
) -> Response {
    list(&sage, &headers, uri.path(), &q, |b| b.currencies.clone())
}

pub fn router() -> Router<Arc<Sage>> {
    Router::new()
        .route("/businesses", get(businesses))
        .route("/businesses/lead", get(lead_business))
        .route("/tax_rates", get(tax_rates))
        .route("/ledger_accounts", get(ledger_accounts))
        .route("/bank_accounts", get(bank_accounts))
        .route("/currencies", get(currencies))
        .route("/financial_settings", get(financial_settings))
        .route("/business_settings", get(business_settings))
        .merge(super::documents::router())
}

async fn financial_settings(State(sage): State<Arc<Sage>>, headers: HeaderMap) -> Response {
    match enter(&sage, &headers).await {
        Ok(caller) => Json(
            sage.with_business(&caller.business_id, Business::financial_settings)
                .unwrap_or_default(),
        )
        .into_response(),
        Err(r) => r,
    }
}

async fn business_settings(State(sage): State<Arc<Sage>>, headers: HeaderMap) -> Response {
    match enter(&sage, &headers).await {
        Ok(caller) => Json(
            sage.with_business(&caller.business_id, Business::business_settings)
                .unwrap_or_default(),
        )
        .into_response(),
        Err(r) => r,
    }
}
