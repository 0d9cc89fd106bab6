//! Sign-up and sign-out.

// A part of the pages module: its helpers and imports are this file's too.
use super::*;
use ledger_tenant_binding::accounts::{CreateAccountError, SignupError};

#[derive(Template)]
#[template(path = "signup.html")]
pub(super) struct SignupPage {
    pub(super) email: String,
    pub(super) error: Option<String>,
    pub(super) email_error: Option<String>,
    pub(super) password_error: Option<String>,
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
    pub(super) email: String,
    pub(super) password: String,
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
        // The ledger's own trouble is not the form's to show.
        Err(SignupError::Create(err @ (CreateAccountError::Busy(_) | CreateAccountError::Database(_)))) => {
            Err(err.into())
        }
        Err(refused) => {
            // The refusal as the API would answer it: the page shows the same words.
            let problem = Problem::from(refused);
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

pub async fn signout(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<Button>,
) -> Result<Response, Problem> {
    // Not [`CsrfForm`]: signing out without a session still clears the cookie.
    if let Some(merchant) = session_merchant(&state, &headers).await? {
        merchant.check_csrf(form.csrf_token())?;
        accounts::end_session(&state, &headers).await?;
    }
    let mut response = Redirect::to("/signin").into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, accounts::clear_cookie(&state));
    Ok(response)
}
