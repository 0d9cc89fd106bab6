//! Sage's OAuth 2.0 server: authorize (consent and business list), token (code with
//! PKCE, rotating refresh tokens), revoke.

use std::{collections::HashMap, sync::Arc};

use axum::{
    Form, Json,
    body::Body,
    extract::{Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{Html, IntoResponse, Redirect, Response},
};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use serde_json::json;

use super::{AccessGrant, CodeGrant, RefreshGrant, Sage, random_hex, sleep};

type Params = HashMap<String, String>;

fn error_page(message: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Html(format!(
            "<!doctype html><title>Sage sign-in error</title><h1>Something went wrong</h1><p>{message}</p>"
        )),
    )
        .into_response()
}

fn redirect_with(redirect_uri: &str, pairs: &[(&str, &str)]) -> Response {
    let query = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish();
    let separator = if redirect_uri.contains('?') { '&' } else { '?' };
    Redirect::to(&format!("{redirect_uri}{separator}{query}")).into_response()
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Checks an authorize request; on success returns the redirect URI.
fn validate(sage: &Sage, p: &Params) -> Result<String, Response> {
    if p.get("client_id") != Some(&sage.config.client_id) {
        return Err(error_page("Unknown client_id."));
    }
    let Some(redirect_uri) = p.get("redirect_uri").filter(|r| !r.is_empty()) else {
        return Err(error_page("redirect_uri is required."));
    };
    // Callback URLs must match a registered one character for character.
    if !sage.config.redirect_uris.is_empty() && !sage.config.redirect_uris.contains(redirect_uri) {
        return Err(error_page(
            "The redirect_uri does not match the application's registered callback URL.",
        ));
    }
    let state = p.get("state").cloned().unwrap_or_default();
    if p.get("response_type").map(String::as_str) != Some("code") {
        return Err(redirect_with(
            redirect_uri,
            &[("error", "unsupported_response_type"), ("state", &state)],
        ));
    }
    if let Some(method) = p.get("code_challenge_method")
        && !matches!(method.as_str(), "S256" | "plain")
    {
        return Err(redirect_with(
            redirect_uri,
            &[("error", "invalid_request"), ("state", &state)],
        ));
    }
    if let Some(challenge) = p.get("code_challenge")
        && !(43..=128).contains(&challenge.len())
    {
        return Err(redirect_with(
            redirect_uri,
            &[("error", "invalid_request"), ("state", &state)],
        ));
    }
    if let Some(country) = p.get("country") {
        // The chosen country must match a business's region.
        let wanted = country.to_ascii_uppercase();
        if !sage.businesses().iter().any(|b| b.country == wanted) {
            return Err(redirect_with(
                redirect_uri,
                &[
                    ("error", "access_denied"),
                    ("error_description", "No business in the selected country"),
                    ("state", &state),
                ],
            ));
        }
    }
    Ok(redirect_uri.clone())
}

fn issue_code(sage: &Sage, p: &Params, redirect_uri: &str) -> Response {
    let country = p
        .get("country")
        .map_or_else(|| sage.businesses()[0].country.clone(), |c| c.to_ascii_uppercase());
    let code = format!("{country}/{}", random_hex(20));
    let challenge = p.get("code_challenge").map(|c| {
        (
            c.clone(),
            p.get("code_challenge_method")
                .cloned()
                .unwrap_or_else(|| "plain".into()),
        )
    });
    let now = sage.now();
    {
        let mut inner = sage.lock();
        inner.stats.authorizations += 1;
        inner.codes.insert(
            code.clone(),
            CodeGrant {
                client_id: sage.config.client_id.clone(),
                redirect_uri: redirect_uri.to_owned(),
                challenge,
                issued_at: now,
                used: false,
            },
        );
    }
    let state = p.get("state").cloned().unwrap_or_default();
    redirect_with(
        redirect_uri,
        &[("code", &code), ("country", &country), ("state", &state)],
    )
}

/// `GET /oauth2/auth/central`.
pub async fn authorize(State(sage): State<Arc<Sage>>, Query(p): Query<Params>) -> Response {
    let redirect_uri = match validate(&sage, &p) {
        Ok(r) => r,
        Err(response) => return response,
    };
    let state = p.get("state").cloned().unwrap_or_default();
    let deny = std::mem::take(&mut sage.lock().faults.deny_next_authorize);
    if deny {
        return redirect_with(&redirect_uri, &[("error", "access_denied"), ("state", &state)]);
    }
    if sage.config.auto_approve {
        return issue_code(&sage, &p, &redirect_uri);
    }
    let hidden: String = p
        .iter()
        .map(|(k, v)| format!(r#"<input type="hidden" name="{}" value="{}">"#, escape(k), escape(v)))
        .collect();
    let businesses: String = sage
        .businesses()
        .iter()
        .map(|b| format!("<li>{} ({})</li>", escape(&b.name), escape(&b.country)))
        .collect();
    Html(format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sage Accounting — authorise access</title>
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem;color:#222}}
button{{font:inherit;padding:.6rem 1.2rem;margin-right:.5rem;border-radius:4px;border:1px solid #0a7a3c;background:#00d639;cursor:pointer}}
button.deny{{background:#fff;border-color:#999}}button:focus-visible{{outline:3px solid #005fcc}}</style></head>
<body><h1>Sage Accounting (sandbox)</h1>
<p><strong>ledger</strong> wants full access to your Sage Accounting data for these businesses:</p><ul>{businesses}</ul>
<form method="post" action="/oauth2/consent">{hidden}
<button type="submit" name="decision" value="allow" id="allow">Allow access</button>
<button type="submit" name="decision" value="deny" id="deny" class="deny">Deny</button></form></body></html>"#
    ))
    .into_response()
}

/// `POST /oauth2/consent`: the user's decision on the consent page.
pub async fn consent(State(sage): State<Arc<Sage>>, Form(p): Form<Params>) -> Response {
    let redirect_uri = match validate(&sage, &p) {
        Ok(r) => r,
        Err(response) => return response,
    };
    if p.get("decision").map(String::as_str) == Some("allow") {
        issue_code(&sage, &p, &redirect_uri)
    } else {
        let state = p.get("state").cloned().unwrap_or_default();
        redirect_with(&redirect_uri, &[("error", "access_denied"), ("state", &state)])
    }
}

fn oauth_error(status: StatusCode, error: &str) -> Response {
    (status, Json(json!({ "error": error }))).into_response()
}

/// A response whose body fails mid-way: the client sees the connection drop after the
/// server already acted ("commit, then drop the response").
pub(crate) fn dropped() -> Response {
    struct Broken;
    impl futures_core::Stream for Broken {
        type Item = Result<Vec<u8>, std::io::Error>;
        fn poll_next(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            std::task::Poll::Ready(Some(Err(std::io::Error::other("connection dropped by the sandbox"))))
        }
    }
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, "4096")
        .body(Body::from_stream(Broken))
        .expect("response")
}

fn token_pair(sage: &Sage) -> (String, serde_json::Value) {
    let now = sage.now();
    let access = format!("sbx_at_{}", random_hex(32));
    let refresh = format!("sbx_rt_{}", random_hex(32));
    let mut inner = sage.lock();
    inner.access.insert(
        access.clone(),
        AccessGrant {
            expires_at: now + sage.config.access_ttl_secs,
        },
    );
    inner.refresh.insert(
        refresh.clone(),
        RefreshGrant {
            expires_at: now + sage.config.refresh_ttl_secs,
            used: false,
            revoked: false,
        },
    );
    let body = json!({
        "access_token": access,
        "scope": "full_access",
        "token_type": "bearer",
        "expires_in": sage.config.access_ttl_secs,
        "refresh_token": refresh,
        "refresh_token_expires_in": sage.config.refresh_ttl_secs,
        "requested_by_id": "9b5ac1f4-5d16-4f2c-9a2e-0c7b0a6f1e11",
    });
    (refresh, body)
}

fn pkce_matches(challenge: &(String, String), verifier: Option<&String>) -> bool {
    let Some(verifier) = verifier else { return false };
    match challenge.1.as_str() {
        "S256" => {
            URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes())) == challenge.0
        }
        _ => *verifier == challenge.0,
    }
}

/// `POST /oauth2/token` (form-encoded; client credentials in the body).
pub async fn token(State(sage): State<Arc<Sage>>, headers: HeaderMap, Form(p): Form<Params>) -> Response {
    let (delay, failure) = {
        let mut inner = sage.lock();
        let f = &mut inner.faults;
        let failure = (f.token_failures > 0).then(|| {
            f.token_failures -= 1;
            f.token_status
        });
        (f.token_delay_ms, failure)
    };
    if delay > 0 {
        sleep(delay).await;
    }
    if let Some(status) = failure {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        return (status, "Service Unavailable").into_response();
    }
    // Sage documents body credentials only; Basic is refused.
    if headers.get(header::AUTHORIZATION).is_some() {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
    }
    if p.get("client_id") != Some(&sage.config.client_id) || p.get("client_secret") != Some(&sage.config.client_secret)
    {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
    }
    let now = sage.now();
    let body = match p.get("grant_type").map(String::as_str) {
        Some("authorization_code") => {
            let code = p.get("code").cloned().unwrap_or_default();
            let mut inner = sage.lock();
            let valid = inner.codes.get_mut(&code).filter(|g| {
                !g.used
                    && now - g.issued_at <= sage.config.code_ttl_secs
                    && p.get("redirect_uri") == Some(&g.redirect_uri)
                    && g.client_id == sage.config.client_id
                    && g.challenge
                        .as_ref()
                        .is_none_or(|c| pkce_matches(c, p.get("code_verifier")))
            });
            match valid {
                Some(grant) => {
                    grant.used = true;
                    inner.stats.code_exchanges += 1;
                }
                None => {
                    inner.stats.invalid_grants += 1;
                    return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
                }
            }
            drop(inner);
            token_pair(&sage).1
        }
        Some("refresh_token") => {
            let presented = p.get("refresh_token").cloned().unwrap_or_default();
            let mut inner = sage.lock();
            let valid = inner
                .refresh
                .get_mut(&presented)
                .filter(|g| !g.used && !g.revoked && g.expires_at > now);
            match valid {
                Some(grant) => {
                    grant.used = true; // rotation: the old token dies on use
                    inner.stats.refreshes += 1;
                }
                None => {
                    inner.stats.invalid_grants += 1;
                    return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
                }
            }
            drop(inner);
            token_pair(&sage).1
        }
        _ => return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type"),
    };
    let drop_it = {
        let mut inner = sage.lock();
        let n = &mut inner.faults.drop_token_responses;
        let fire = *n > 0;
        *n = n.saturating_sub(1);
        fire
    };
    if drop_it {
        return dropped();
    }
    (StatusCode::OK, [(header::CACHE_CONTROL, "no-store")], Json(body)).into_response()
}

/// `POST /oauth2/revoke`: revokes a refresh token (access tokens cannot be revoked).
pub async fn revoke(State(sage): State<Arc<Sage>>, Form(p): Form<Params>) -> Response {
    if p.get("client_id") != Some(&sage.config.client_id) || p.get("client_secret") != Some(&sage.config.client_secret)
    {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
    }
    let mut inner = sage.lock();
    if let Some(token) = p.get("token")
        && let Some(grant) = inner.refresh.get_mut(token)
    {
        grant.revoked = true;
    }
    inner.stats.revocations += 1;
    Json(json!({ "success": "ok" })).into_response()
}
