//! The account: password change, and disconnecting a binding.

// A part of the pages module: its helpers and imports are this file's too.
use super::*;

#[derive(Template)]
#[template(path = "account.html")]
pub(super) struct AccountPage {
    pub(super) nav: Nav,
    pub(super) csrf_token: String,
    pub(super) current_error: Option<String>,
    pub(super) new_error: Option<String>,
    pub(super) notice: Option<String>,
}

#[derive(Deserialize)]
pub struct AccountQuery {
    pub(super) changed: Option<String>,
}

pub async fn account_page(
    PageMerchant { merchant, .. }: PageMerchant<ForAccount>,
    Query(q): Query<AccountQuery>,
) -> Result<Response, Problem> {
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
    pub(super) csrf_token: String,
    pub(super) current_password: String,
    pub(super) new_password: String,
}
csrf_forms!(PasswordForm, DisconnectForm);

pub async fn account_submit(
    State(state): State<AppState>,
    headers: HeaderMap,
    CsrfForm(PageMerchant { merchant, .. }, form): CsrfForm<PageMerchant<ForAccount>, PasswordForm>,
) -> Result<Response, Problem> {
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
    pub(super) csrf_token: String,
    pub(super) confirm: Option<String>,
}

/// Disconnects a binding from the ledger side, as `POST /v1/bindings/{id}/disconnect`.
pub async fn disconnect(
    State(state): State<AppState>,
    CsrfForm(
        PageOwner {
            merchant,
            binding_id,
            tenant_id: tenant,
            ..
        },
        form,
    ): CsrfForm<PageOwner<ForOverview>, DisconnectForm>,
) -> Result<Response, Problem> {
    if form.confirm.is_none() {
        return Ok(Redirect::to(&format!("/dashboard/bindings/{binding_id}?confirm=1#disconnect")).into_response());
    }
    ledger_sage_vault::connect::disconnect_binding(&state, binding_id, tenant, Actor::Account(merchant.account_id.0))
        .await?;
    Ok(Redirect::to(&format!("/dashboard/bindings/{binding_id}?disconnected=1")).into_response())
}
