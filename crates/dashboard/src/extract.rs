//! Who may see a page or post a form, as extractors: a handler names the check in its
//! signature and cannot forget it. Not signed in is a redirect to sign-in that comes back
//! to the page; someone else's binding or run is "not found", never "forbidden".

use std::marker::PhantomData;

use axum::{
    Form,
    extract::{FromRequest, FromRequestParts, Path, Request},
    http::request::Parts,
    response::{IntoResponse, Redirect, Response},
};
use ledger_core::{AppState, BindingId, Problem, TenantId, audit::Actor};
use ledger_sage_sync::runs;
use ledger_tenant_binding::auth::{ForAction, Merchant, session_merchant};
use serde::de::DeserializeOwned;

use crate::render;

/// Sign-in, coming back to `path` afterwards.
pub(crate) fn signin_redirect(path: &str) -> Response {
    let next: String = url::form_urlencoded::byte_serialize(path.as_bytes()).collect();
    Redirect::to(&format!("/signin?next={next}")).into_response()
}

/// A page of the signed-in merchant, for [`PageMerchant`]: where sign-in comes back to.
pub(crate) trait MerchantPage: Send + Sync {
    const PATH: &'static str;
}

/// A page of a binding, for [`PageOwner`]: where sign-in comes back to.
pub(crate) trait PageOf: Send + Sync {
    /// The page's path under `/dashboard/bindings/{binding_id}`.
    const SUFFIX: &'static str;
}

macro_rules! pages {
    ($trait:ident, $konst:ident: $($(#[$doc:meta])* $name:ident = $path:literal),* $(,)?) => {$(
        $(#[$doc])*
        pub(crate) struct $name;
        impl $trait for $name {
            const $konst: &'static str = $path;
        }
    )*};
}

pages!(MerchantPage, PATH:
    /// The stores list (with the tenants and the Magento connect form).
    ForBindings = "/dashboard",
    /// The account page.
    ForAccount = "/dashboard/account",
    /// The audit trail.
    ForAudit = "/dashboard/audit",
);

pages!(PageOf, SUFFIX:
    /// The binding's own page.
    ForOverview = "",
    /// Its Sage connect page.
    ForSageConnect = "/sage/connect",
    /// Its settings page.
    ForSettings = "/settings",
    /// Its sync history.
    ForHistory = "/runs",
);

/// The signed-in merchant behind a guard, for [`CsrfForm`] to check the form against.
pub(crate) trait SignedIn {
    fn merchant(&self) -> &Merchant;
}

/// The signed-in merchant, on one of their own pages `P`.
pub(crate) struct PageMerchant<P> {
    pub(crate) merchant: Merchant,
    page: PhantomData<P>,
}

impl<P: MerchantPage> FromRequestParts<AppState> for PageMerchant<P> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        match session_merchant(state, &parts.headers).await {
            Ok(Some(merchant)) => Ok(Self {
                merchant,
                page: PhantomData,
            }),
            Ok(None) => Err(signin_redirect(P::PATH)),
            Err(problem) => Err(problem.into_response()),
        }
    }
}

impl<P> SignedIn for PageMerchant<P> {
    fn merchant(&self) -> &Merchant {
        &self.merchant
    }
}

/// The signed-in merchant who owns the path's `binding_id`, taken by every page and form
/// of a binding so that none can skip the check. Not signed in: a redirect to sign-in
/// that comes back to the binding's page `P`; anyone else's binding: not found.
pub(crate) struct PageOwner<P> {
    pub(crate) merchant: Merchant,
    pub(crate) binding_id: BindingId,
    pub(crate) tenant_id: TenantId,
    page: PhantomData<P>,
}

impl<P: PageOf> FromRequestParts<AppState> for PageOwner<P> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let Path(binding_id) = Path::<BindingId>::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let Some(merchant) = session_merchant(state, &parts.headers)
            .await
            .map_err(IntoResponse::into_response)?
        else {
            return Err(signin_redirect(&format!(
                "/dashboard/bindings/{binding_id}{}",
                P::SUFFIX
            )));
        };
        let tenant_id = merchant
            .binding_tenant(&state.db, binding_id)
            .await
            .map_err(IntoResponse::into_response)?;
        Ok(Self {
            merchant,
            binding_id,
            tenant_id,
            page: PhantomData,
        })
    }
}

impl<P> SignedIn for PageOwner<P> {
    fn merchant(&self) -> &Merchant {
        &self.merchant
    }
}

/// The path's sync run, for its binding's owner or an operator doing `A` (who is named
/// in the audit trail as such); anyone else: "no such run", nothing about its binding named.
pub(crate) struct RunAccess<A> {
    pub(crate) merchant: Merchant,
    pub(crate) run: runs::RunDetail,
    pub(crate) actor: Actor,
    action: PhantomData<A>,
}

impl<A: ForAction> FromRequestParts<AppState> for RunAccess<A> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let Path(run) = Path::<uuid::Uuid>::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let Some(merchant) = session_merchant(state, &parts.headers)
            .await
            .map_err(IntoResponse::into_response)?
        else {
            return Err(signin_redirect(&format!("/dashboard/runs/{run}")));
        };
        let not_found = || Problem::not_found("run_not_found", "No such sync run.").into_response();
        let detail = runs::detail(&state.db, run)
            .await
            .map_err(|e| Problem::from(e).into_response())?
            .ok_or_else(not_found)?;
        let access = merchant
            .binding_access(&state.db, detail.run.binding_id, A::ACTION)
            .await
            .map_err(|_| not_found())?;
        Ok(Self {
            merchant,
            run: detail,
            actor: access.actor,
            action: PhantomData,
        })
    }
}

impl<A> SignedIn for RunAccess<A> {
    fn merchant(&self) -> &Merchant {
        &self.merchant
    }
}

/// The signed-in operator; anyone else gets a 404 page (the console's existence is not news).
pub(crate) struct Operator(pub(crate) Merchant);

impl FromRequestParts<AppState> for Operator {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        match session_merchant(state, &parts.headers).await {
            Ok(Some(m)) if m.is_operator => Ok(Self(m)),
            Ok(Some(_)) => {
                let mut page = render(&crate::MessagePage {
                    heading: "Not found".to_owned(),
                    message: "There is nothing at this address.".to_owned(),
                    retry: None,
                });
                *page.status_mut() = axum::http::StatusCode::NOT_FOUND;
                Err(page)
            }
            Ok(None) => Err(signin_redirect("/ops")),
            Err(problem) => Err(problem.into_response()),
        }
    }
}

impl SignedIn for Operator {
    fn merchant(&self) -> &Merchant {
        &self.0
    }
}

/// A form that carries the session's CSRF token.
pub(crate) trait CsrfToken {
    fn csrf_token(&self) -> &str;
}

/// A form with nothing but its CSRF token (a button).
#[derive(serde::Deserialize)]
pub(crate) struct Button {
    csrf_token: String,
}

impl CsrfToken for Button {
    fn csrf_token(&self) -> &str {
        &self.csrf_token
    }
}

/// A form read as its fields in order (the settings form, whose fields are the
/// settings'); a missing token is an empty one, which never matches.
impl CsrfToken for Vec<(String, String)> {
    fn csrf_token(&self) -> &str {
        self.iter()
            .find(|(k, _)| k == "csrf_token")
            .map(|(_, v)| v.as_str())
            .unwrap_or_default()
    }
}

/// The form `T` posted by the signed-in merchant behind guard `G`, its CSRF token
/// checked against `G`'s session before the handler runs.
pub(crate) struct CsrfForm<G, T>(pub(crate) G, pub(crate) T);

impl<G, T> FromRequest<AppState> for CsrfForm<G, T>
where
    G: FromRequestParts<AppState, Rejection = Response> + SignedIn + Send,
    T: DeserializeOwned + CsrfToken + Send,
{
    type Rejection = Response;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = request.into_parts();
        let guard = G::from_request_parts(&mut parts, state).await?;
        let Form(form) = Form::<T>::from_request(Request::from_parts(parts, body), state)
            .await
            .map_err(IntoResponse::into_response)?;
        guard
            .merchant()
            .check_csrf(form.csrf_token())
            .map_err(IntoResponse::into_response)?;
        Ok(Self(guard, form))
    }
}

/// Implements [`CsrfToken`] for forms with a `csrf_token` field.
macro_rules! csrf_forms {
    ($($form:ty),* $(,)?) => {$(
        impl $crate::extract::CsrfToken for $form {
            fn csrf_token(&self) -> &str {
                &self.csrf_token
            }
        }
    )*};
}
pub(crate) use csrf_forms;
