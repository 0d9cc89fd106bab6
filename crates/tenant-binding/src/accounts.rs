//! Merchant accounts, API tokens, sign-in sessions and sign-in throttling.

use std::{net::SocketAddr, time::Duration};

use argon2::{
    Argon2,
    password_hash::{PasswordHasher as _, PasswordVerifier as _, phc::PasswordHash},
};
use axum::{
    extract::{ConnectInfo, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use ledger_core::{
    AccountId, AppState, FieldError, Problem, Secret, TenantId,
    audit::{self, Actor},
    crypto,
    extract::Json,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::{Merchant, session_cookie_name};

pub use crate::tokens::TOKEN_PREFIX;
const MIN_PASSWORD_CHARS: usize = 10;
/// Sign-in attempts tolerated within the window per email from one address, and per
/// address whatever the email (failures and attempts in flight; a success takes its
/// own back).
const MAX_ATTEMPTS_PER_EMAIL_AND_ADDRESS: i64 = 5;
const MAX_ATTEMPTS_PER_ADDRESS: i64 = 20;
/// Beyond this many attempts on one email from anywhere, attempts are spaced out
/// (doubling, at most `MAX_SLOWDOWN`) instead of locking the account.
const SLOWDOWN_AFTER_ATTEMPTS_PER_EMAIL: i64 = 10;
const MAX_SLOWDOWN: Duration = Duration::from_secs(300);
const ATTEMPT_WINDOW: Duration = Duration::from_secs(15 * 60);
/// Sign-ups per client address per hour.
const MAX_SIGNUPS_PER_ADDRESS: i64 = 5;
const SIGNUP_WINDOW: Duration = Duration::from_secs(3600);

/// What creating an account yields.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct NewAccount {
    pub account_id: AccountId,
    pub tenant_id: TenantId,
}

/// Lower-cases and checks an email address.
pub fn normalize_email(raw: &str) -> Result<String, FieldError> {
    let email = raw.trim().to_ascii_lowercase();
    let valid = email.len() <= 254
        && !email.chars().any(char::is_whitespace)
        && email
            .split_once('@')
            .is_some_and(|(local, domain)| !local.is_empty() && domain.contains('.'));
    if valid {
        Ok(email)
    } else {
        Err(FieldError {
            field: "email".into(),
            code: "invalid_format".into(),
            message: "enter an email address like name@example.com".into(),
        })
    }
}

pub fn check_password(password: &str) -> Result<(), FieldError> {
    if password.chars().count() >= MIN_PASSWORD_CHARS {
        Ok(())
    } else {
        Err(FieldError {
            field: "password".into(),
            code: "too_short".into(),
            message: format!("use at least {MIN_PASSWORD_CHARS} characters"),
        })
    }
}

/// Every hashing slot stayed taken for the whole wait.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("too many passwords are being checked at once")]
pub struct HashingBusy;

impl From<HashingBusy> for Problem {
    fn from(_: HashingBusy) -> Self {
        Problem::unavailable(
            "busy",
            "The ledger is checking many passwords at this moment. Try again in a few seconds.",
            2,
        )
    }
}

/// Where a password hash may run: within the server's slots (waiting briefly), or
/// unbounded (the CLI, one process doing one thing).
#[derive(Debug, Clone, Copy)]
pub enum Hashing<'a> {
    Slots {
        slots: &'a std::sync::Arc<tokio::sync::Semaphore>,
        wait: Duration,
    },
    Unbounded,
}

impl<'a> Hashing<'a> {
    /// The server's slots and wait (`LEDGER_PASSWORD_HASH_CONCURRENCY`, `…_WAIT`).
    pub fn of(state: &'a AppState) -> Self {
        Self::Slots {
            slots: &state.password_hashing,
            wait: state.settings.password_hash_wait,
        }
    }
}

/// Runs `work` (argon2, 19 MiB) on a blocking thread once a slot is free, waiting at most
/// the configured wait. The slot is held until the work ends, even if the request that asked
/// for it went away.
async fn hashing<T: Send + 'static>(
    limit: Hashing<'_>,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, HashingBusy> {
    let permit = match limit {
        Hashing::Slots { slots, wait } => Some(
            tokio::time::timeout(wait, slots.clone().acquire_owned())
                .await
                .map_err(|_| HashingBusy)?
                .map_err(|_| HashingBusy)?,
        ),
        Hashing::Unbounded => None,
    };
    Ok(tokio::task::spawn_blocking(move || {
        let out = work();
        drop(permit);
        out
    })
    .await
    .expect("the hashing task completes"))
}

/// argon2id with the crate's defaults (19 MiB, t=2, p=1), off the async threads.
pub async fn hash_password(password: Secret<String>, limit: Hashing<'_>) -> Result<String, HashingBusy> {
    hashing(limit, move || {
        Argon2::default()
            .hash_password(password.expose().as_bytes())
            .expect("hashing with valid params")
            .to_string()
    })
    .await
}

/// Verifies in constant work whether or not an account exists: without a stored
/// hash, a dummy hash is checked so timing does not reveal unknown emails.
pub async fn verify_password(
    password: Secret<String>,
    stored: Option<String>,
    limit: Hashing<'_>,
) -> Result<bool, HashingBusy> {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let dummy_needed = stored.is_none();
    hashing(limit, move || {
        let hash = stored.unwrap_or_else(|| {
            DUMMY
                .get_or_init(|| {
                    Argon2::default()
                        .hash_password(b"not-a-real-password")
                        .expect("hashing")
                        .to_string()
                })
                .clone()
        });
        let Ok(parsed) = PasswordHash::new(&hash) else {
            return false;
        };
        Argon2::default()
            .verify_password(password.expose().as_bytes(), &parsed)
            .is_ok()
            && !dummy_needed
    })
    .await
}

/// Why an account could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateAccountError {
    #[error("invalid account details: {0:?}")]
    Invalid(Vec<FieldError>),
    #[error("an account with this email already exists")]
    EmailTaken,
    #[error(transparent)]
    Busy(#[from] HashingBusy),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl From<CreateAccountError> for Problem {
    fn from(err: CreateAccountError) -> Self {
        match err {
            CreateAccountError::Invalid(errors) => Problem::validation(errors),
            CreateAccountError::EmailTaken => Problem::conflict(
                "email_taken",
                "An account with this email already exists; sign in instead.",
            )
            .with_field("email", "taken", "an account with this email already exists"),
            CreateAccountError::Busy(e) => e.into(),
            CreateAccountError::Database(e) => e.into(),
        }
    }
}

/// Creates an account with its first tenant. Without a password the account can use
/// API tokens only. Waits for a hashing slot as long as it takes (the CLI, tests).
pub async fn create_account(
    db: &sqlx::PgPool,
    email: &str,
    password: Option<Secret<String>>,
    is_operator: bool,
) -> Result<NewAccount, CreateAccountError> {
    create_account_within(db, email, password, is_operator, Hashing::Unbounded).await
}

/// Like [`create_account`], hashing within `limit` ([`CreateAccountError::Busy`] when
/// no slot frees up in time).
pub async fn create_account_within(
    db: &sqlx::PgPool,
    email: &str,
    password: Option<Secret<String>>,
    is_operator: bool,
    limit: Hashing<'_>,
) -> Result<NewAccount, CreateAccountError> {
    let mut errors = Vec::new();
    let email = normalize_email(email).map_err(|e| errors.push(e)).ok();
    if let Some(p) = &password
        && let Err(e) = check_password(p.expose())
    {
        errors.push(e);
    }
    let Some(email) = email.filter(|_| errors.is_empty()) else {
        return Err(CreateAccountError::Invalid(errors));
    };
    let password_hash = match password {
        Some(p) => Some(hash_password(p, limit).await?),
        None => None,
    };
    let account_id = AccountId::new();
    let tenant_id = TenantId::new();
    let tenant_name = email.split('@').nth(1).unwrap_or("My store").to_owned();
    let mut tx = db.begin().await.map_err(CreateAccountError::Database)?;
    let inserted = sqlx::query!(
        "INSERT INTO accounts (id, email, password_hash, is_operator) VALUES ($1, $2, $3, $4)",
        account_id.0,
        email,
        password_hash,
        is_operator,
    )
    .execute(&mut *tx)
    .await;
    match inserted {
        Err(sqlx::Error::Database(e)) if e.constraint() == Some("accounts_email_key") => {
            return Err(CreateAccountError::EmailTaken);
        }
        other => other.map_err(CreateAccountError::Database)?,
    };
    insert_tenant(&mut tx, account_id, tenant_id, &tenant_name)
        .await
        .map_err(CreateAccountError::Database)?;
    audit::record(
        &mut tx,
        audit::Entry {
            actor: Actor::Account(account_id.0),
            tenant_id: Some(tenant_id),
            binding_id: None,
            action: "account.created",
            details: serde_json::json!({ "email": email }),
            request_id: None,
        },
    )
    .await
    .map_err(CreateAccountError::Database)?;
    tx.commit().await.map_err(CreateAccountError::Database)?;
    Ok(NewAccount { account_id, tenant_id })
}

async fn insert_tenant(
    conn: &mut sqlx::PgConnection,
    account: AccountId,
    id: TenantId,
    name: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO tenants (id, account_id, name) VALUES ($1, $2, $3)",
        id.0,
        account.0,
        name
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Why a tenant was not created.
#[derive(Debug, thiserror::Error)]
pub enum CreateTenantError {
    #[error("{}: {}", .0.field, .0.message)]
    Name(FieldError),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl From<CreateTenantError> for Problem {
    fn from(err: CreateTenantError) -> Self {
        match err {
            CreateTenantError::Name(field) => Problem::validation(vec![field]),
            CreateTenantError::Database(e) => e.into(),
        }
    }
}

/// A further tenant of an account (e.g. a second brand with its own stores and Sage
/// businesses), named by the merchant (1 to 80 characters); audited.
pub async fn create_tenant(db: &sqlx::PgPool, account: AccountId, name: &str) -> Result<TenantId, CreateTenantError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 80 {
        return Err(CreateTenantError::Name(FieldError {
            field: "name".into(),
            code: "invalid_format".into(),
            message: "a name of 1 to 80 characters".into(),
        }));
    }
    let id = TenantId(uuid::Uuid::new_v4());
    let mut tx = db.begin().await?;
    insert_tenant(&mut tx, account, id, name).await?;
    audit::record(
        &mut tx,
        audit::Entry {
            actor: Actor::Account(account.0),
            tenant_id: Some(id),
            binding_id: None,
            action: "tenant.created",
            details: serde_json::json!({ "name": name }),
            request_id: None,
        },
    )
    .await?;
    tx.commit().await?;
    Ok(id)
}

/// Issues an API token valid for `ttl`; only its SHA-256 is stored, the token is
/// returned once.
pub async fn create_api_token(
    db: &sqlx::PgPool,
    account_id: AccountId,
    name: &str,
    ttl: Duration,
) -> Result<Secret<String>, sqlx::Error> {
    Ok(crate::tokens::issue(db, account_id, name, ttl).await?.token)
}

pub(crate) fn ring_sha256(data: &[u8]) -> Vec<u8> {
    crypto::sha256(data).to_vec()
}

/// A new session: the cookie value (returned once) and its CSRF token.
pub async fn create_session(
    db: &sqlx::PgPool,
    account_id: AccountId,
    ttl: std::time::Duration,
) -> Result<(Secret<String>, String), sqlx::Error> {
    let value = URL_SAFE_NO_PAD.encode(crypto::random_bytes::<32>());
    let csrf = URL_SAFE_NO_PAD.encode(crypto::random_bytes::<24>());
    let ttl_secs = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2);
    sqlx::query!(
        "INSERT INTO sessions (id_hash, account_id, csrf_token, expires_at)
         VALUES ($1, $2, $3, now() + make_interval(secs => $4))",
        ring_sha256(value.as_bytes()),
        account_id.0,
        csrf,
        ttl_secs as f64,
    )
    .execute(db)
    .await?;
    Ok((Secret::new(value), csrf))
}

/// The `Set-Cookie` value for a session (Secure whenever the public URL is https).
pub fn session_cookie(value: &Secret<String>, state: &AppState) -> HeaderValue {
    let secure = if state.settings.public_url.starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    let max_age = state.settings.session_ttl.min(state.settings.session_max_age).as_secs();
    HeaderValue::from_str(&format!(
        "{}={}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}",
        session_cookie_name(state),
        value.expose()
    ))
    .expect("cookie text is ASCII")
}

/// A `Set-Cookie` that removes the session cookie.
pub fn clear_cookie(state: &AppState) -> HeaderValue {
    let secure = if state.settings.public_url.starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    HeaderValue::from_str(&format!(
        "{}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0{secure}",
        session_cookie_name(state)
    ))
    .expect("cookie text is ASCII")
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct Credentials {
    pub email: String,
    /// At least 10 characters.
    #[schema(format = Password)]
    pub password: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SignedIn {
    pub account_id: AccountId,
    /// Send it as `x-csrf-token` with every state-changing request made with the cookie.
    pub csrf_token: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SignedUp {
    pub account_id: AccountId,
    pub tenant_id: TenantId,
    pub csrf_token: String,
}

fn signed_in_response<T: Serialize>(status: StatusCode, body: &T, cookie: HeaderValue) -> Response {
    let mut response = (status, axum::Json(body)).into_response();
    response.headers_mut().insert(header::SET_COOKIE, cookie);
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Create an account (with its first tenant) and sign in.
#[utoipa::path(post, path = "/v1/auth/signup", tag = "accounts", operation_id = "signup",
    request_body = Credentials,
    responses(
        (status = 201, description = "Account created; the session cookie is set", body = SignedUp),
        (status = 409, description = "Email already registered", body = ledger_core::ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Invalid email or password", body = ledger_core::ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn signup(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Json(body): Json<Credentials>,
) -> Result<Response, Problem> {
    let created = http_signup(
        &state,
        &body.email,
        body.password,
        &client_address(&state, &headers, peer),
    )
    .await?;
    let (cookie, csrf_token) = create_session(&state.db, created.account_id, state.settings.session_ttl).await?;
    let body = SignedUp {
        account_id: created.account_id,
        tenant_id: created.tenant_id,
        csrf_token,
    };
    Ok(signed_in_response(
        StatusCode::CREATED,
        &body,
        session_cookie(&cookie, &state),
    ))
}

/// The requesting client's address as text, honouring `LEDGER_TRUSTED_PROXY_HOPS`.
pub fn client_address(state: &AppState, headers: &HeaderMap, peer: SocketAddr) -> String {
    ledger_core::rate::client_ip(headers, peer.ip(), state.settings.trusted_proxy_hops).to_string()
}

/// A sign-up from the web (API or page): at most 5 per address per hour, counted before
/// the password is hashed; hashing waits briefly for a slot.
pub async fn http_signup(
    state: &AppState,
    email: &str,
    password: String,
    client_ip: &str,
) -> Result<NewAccount, SignupError> {
    let hit = ledger_core::rate::hit(&state.db, "signup:address", client_ip, SIGNUP_WINDOW)
        .await
        .map_err(CreateAccountError::from)?;
    if hit.exceeds(MAX_SIGNUPS_PER_ADDRESS) {
        return Err(SignupError::TooMany {
            retry_after: hit.retry_after(),
        });
    }
    Ok(create_account_within(&state.db, email, Some(Secret::new(password)), false, Hashing::of(state)).await?)
}

/// Why a sign-up from the web created no account.
#[derive(Debug, thiserror::Error)]
pub enum SignupError {
    /// Too many sign-ups from the caller's address; seconds until one is allowed again.
    #[error(
        "Too many accounts were created from your network in the last hour. Try again in {} minutes.",
        retry_after.div_ceil(60)
    )]
    TooMany { retry_after: u32 },
    #[error(transparent)]
    Create(#[from] CreateAccountError),
}

impl From<SignupError> for Problem {
    fn from(err: SignupError) -> Self {
        match err {
            SignupError::TooMany { retry_after } => Problem::too_many("too_many_signups", err.to_string(), retry_after),
            SignupError::Create(e) => e.into(),
        }
    }
}

/// A password could not be checked or stored right now (the refusals themselves are
/// answers, not errors).
#[derive(Debug, thiserror::Error)]
pub enum PasswordCheckError {
    #[error(transparent)]
    Busy(#[from] HashingBusy),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl From<PasswordCheckError> for Problem {
    fn from(err: PasswordCheckError) -> Self {
        match err {
            PasswordCheckError::Busy(e) => e.into(),
            PasswordCheckError::Database(e) => e.into(),
        }
    }
}

/// Sign in with email and password; sets the session cookie.
///
/// Failures never say which part was wrong. More than 5 attempts for one email from one
/// address, or 20 from one address, within 15 minutes answer 429 until the window
/// passes; beyond 10 on one email from anywhere, attempts are spaced out (429 with
/// Retry-After) rather than the account locked.
#[utoipa::path(post, path = "/v1/auth/signin", tag = "accounts", operation_id = "signin",
    request_body = Credentials,
    responses(
        (status = 200, description = "Signed in; the session cookie is set", body = SignedIn),
        (status = 401, description = "Email or password is incorrect", body = ledger_core::ProblemBody, content_type = "application/problem+json"),
        (status = 429, description = "Too many failed attempts", body = ledger_core::ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn signin(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Json(body): Json<Credentials>,
) -> Result<Response, Problem> {
    let client = client_address(&state, &headers, peer);
    match password_signin(&state, &body.email, body.password, &client).await? {
        Ok(session) => {
            end_session(&state, &headers).await?;
            let body = SignedIn {
                account_id: session.account_id,
                csrf_token: session.csrf_token.clone(),
            };
            Ok(signed_in_response(
                StatusCode::OK,
                &body,
                session_cookie(&session.cookie, &state),
            ))
        }
        Err(SigninRefusal {
            retry_after: Some(seconds),
            message,
        }) => Err(Problem::too_many("too_many_attempts", message, seconds)),
        Err(refusal) => Err(Problem::unauthorized("invalid_credentials", refusal.message)),
    }
}

/// A new sign-in session.
#[derive(Debug)]
pub struct NewSession {
    pub account_id: AccountId,
    /// The cookie value (shown once, never stored).
    pub cookie: Secret<String>,
    pub csrf_token: String,
}

/// Why a sign-in was refused; `message` never says which part was wrong.
#[derive(Debug)]
pub struct SigninRefusal {
    /// Set when throttled: seconds until an attempt is considered again.
    pub retry_after: Option<u32>,
    pub message: String,
}

/// Checks email and password with throttling per email and address, per address and
/// (slowing down) per email; shared by the JSON API and the sign-in pages. The attempt
/// is counted before the password is checked, so parallel guesses all count.
pub async fn password_signin(
    state: &AppState,
    email: &str,
    password: String,
    client_ip: &str,
) -> Result<Result<NewSession, SigninRefusal>, PasswordCheckError> {
    use ledger_core::rate;
    let email_key = email.trim().to_ascii_lowercase();
    let pair = format!("{email_key}\n{client_ip}");
    let by_pair = rate::hit(&state.db, "signin:email+address", &pair, ATTEMPT_WINDOW).await?;
    let by_address = rate::hit(&state.db, "signin:address", client_ip, ATTEMPT_WINDOW).await?;
    let by_email = rate::hit(&state.db, "signin:email", &email_key, ATTEMPT_WINDOW).await?;
    let throttled = |retry_after: u32| {
        Ok(Err(SigninRefusal {
            retry_after: Some(retry_after),
            message: format!(
                "Too many sign-in attempts. Wait {}, then try again.",
                if retry_after >= 120 {
                    format!("{} minutes", retry_after.div_ceil(60))
                } else {
                    format!("{retry_after} seconds")
                }
            ),
        }))
    };
    if by_pair.exceeds(MAX_ATTEMPTS_PER_EMAIL_AND_ADDRESS) {
        return throttled(by_pair.retry_after());
    }
    if by_address.exceeds(MAX_ATTEMPTS_PER_ADDRESS) {
        return throttled(by_address.retry_after());
    }
    if by_email.exceeds(SLOWDOWN_AFTER_ATTEMPTS_PER_EMAIL) {
        let doublings = (by_email.hits - SLOWDOWN_AFTER_ATTEMPTS_PER_EMAIL - 1).min(16) as u32;
        let gap = Duration::from_secs(1u64 << doublings).min(MAX_SLOWDOWN);
        let since = by_email.since_previous.unwrap_or(Duration::ZERO);
        if since < gap {
            // Not tried, so not counted: waiting the answer's Retry-After is enough.
            rate::undo(&state.db, "signin:email", &email_key).await?;
            return throttled((gap - since).as_secs_f64().ceil().max(1.0) as u32);
        }
    }
    let account = sqlx::query!(
        r#"SELECT id AS "id: AccountId", password_hash FROM accounts WHERE lower(email) = $1"#,
        email_key
    )
    .fetch_optional(&state.db)
    .await?;
    let stored = account.as_ref().and_then(|a| a.password_hash.clone());
    let ok = match verify_password(Secret::new(password), stored, Hashing::of(state)).await {
        Ok(ok) => ok,
        Err(busy) => {
            // Not an attempt: nothing was checked.
            rate::undo(&state.db, "signin:email+address", &pair).await?;
            rate::undo(&state.db, "signin:address", client_ip).await?;
            rate::undo(&state.db, "signin:email", &email_key).await?;
            return Err(busy.into());
        }
    };
    let Some(account) = account.filter(|_| ok) else {
        return Ok(Err(SigninRefusal {
            retry_after: None,
            message: "Email or password is incorrect.".to_owned(),
        }));
    };
    rate::reset(&state.db, "signin:email+address", &pair).await?;
    rate::reset(&state.db, "signin:email", &email_key).await?;
    rate::undo(&state.db, "signin:address", client_ip).await?;
    let ttl = state.settings.session_ttl.min(state.settings.session_max_age);
    let (cookie, csrf_token) = create_session(&state.db, account.id, ttl).await?;
    Ok(Ok(NewSession {
        account_id: account.id,
        cookie,
        csrf_token,
    }))
}

/// End the current session.
#[utoipa::path(post, path = "/v1/auth/signout", tag = "accounts", operation_id = "signout",
    security(("session" = []), ("bearer" = [])),
    responses((status = 204, description = "Signed out; the cookie is cleared")))]
pub async fn signout(
    State(state): State<AppState>,
    merchant: Merchant,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    end_session(&state, &headers).await?;
    let _ = merchant;
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(header::SET_COOKIE, clear_cookie(&state));
    Ok(response)
}

/// Changes an account's password after checking the current one; every other session
/// of the account ends. `Ok(Err(field errors))` when the input is refused.
pub async fn change_password(
    state: &AppState,
    account: AccountId,
    current: Secret<String>,
    new: Secret<String>,
    headers: &HeaderMap,
) -> Result<Result<(), Vec<FieldError>>, PasswordCheckError> {
    let db = &state.db;
    let slots = Hashing::of(state);
    let stored = sqlx::query_scalar!("SELECT password_hash FROM accounts WHERE id = $1", account.0)
        .fetch_one(db)
        .await?;
    if !verify_password(current, stored, slots).await? {
        return Ok(Err(vec![FieldError {
            field: "current_password".into(),
            code: "incorrect".into(),
            message: "That is not your current password.".into(),
        }]));
    }
    if let Err(e) = check_password(new.expose()) {
        return Ok(Err(vec![FieldError {
            field: "new_password".into(),
            ..e
        }]));
    }
    let hash = hash_password(new, slots).await?;
    let keep = crate::auth::cookie_value(headers, session_cookie_name(state)).map(|v| ring_sha256(v.as_bytes()));
    let mut tx = db.begin().await?;
    sqlx::query!("UPDATE accounts SET password_hash = $2 WHERE id = $1", account.0, hash)
        .execute(&mut *tx)
        .await?;
    sqlx::query!(
        "DELETE FROM sessions WHERE account_id = $1 AND ($2::bytea IS NULL OR id_hash <> $2)",
        account.0,
        keep
    )
    .execute(&mut *tx)
    .await?;
    audit::record(
        &mut tx,
        audit::Entry {
            actor: Actor::Account(account.0),
            tenant_id: None,
            binding_id: None,
            action: "account.password_changed",
            details: serde_json::json!({}),
            request_id: None,
        },
    )
    .await?;
    tx.commit().await?;
    Ok(Ok(()))
}

/// Deletes the session with cookie value `value`.
pub async fn end_session_value(db: &sqlx::PgPool, value: &Secret<String>) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "DELETE FROM sessions WHERE id_hash = $1",
        ring_sha256(value.expose().as_bytes())
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Deletes the request's session, if it carries one.
pub async fn end_session(state: &AppState, headers: &HeaderMap) -> Result<(), sqlx::Error> {
    end_session_named(&state.db, headers, session_cookie_name(state)).await
}

/// Deletes the session in cookie `name` of the request, if any (sign-in calls this
/// first: a new sign-in never keeps a session that existed before it).
pub async fn end_session_named(db: &sqlx::PgPool, headers: &HeaderMap, name: &str) -> Result<(), sqlx::Error> {
    if let Some(value) = crate::auth::cookie_value(headers, name) {
        sqlx::query!("DELETE FROM sessions WHERE id_hash = $1", ring_sha256(value.as_bytes()))
            .execute(db)
            .await?;
    }
    Ok(())
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TenantSummary {
    pub tenant_id: TenantId,
    pub name: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Me {
    pub account_id: AccountId,
    pub email: String,
    pub is_operator: bool,
    pub tenants: Vec<TenantSummary>,
}

/// The signed-in account and its tenants.
#[utoipa::path(get, path = "/v1/me", tag = "accounts", operation_id = "me",
    security(("bearer" = []), ("session" = [])),
    responses(
        (status = 200, body = Me),
        (status = 401, description = "Not signed in", body = ledger_core::ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn me(State(state): State<AppState>, merchant: Merchant) -> Result<axum::Json<Me>, Problem> {
    let account = sqlx::query!(
        "SELECT email, is_operator FROM accounts WHERE id = $1",
        merchant.account_id.0
    )
    .fetch_one(&state.db)
    .await?;
    let tenants = sqlx::query_as!(
        TenantSummary,
        r#"SELECT id AS "tenant_id: TenantId", name FROM tenants WHERE account_id = $1 ORDER BY created_at, id"#,
        merchant.account_id.0
    )
    .fetch_all(&state.db)
    .await?;
    Ok(axum::Json(Me {
        account_id: merchant.account_id,
        email: account.email,
        is_operator: account.is_operator,
        tenants,
    }))
}
