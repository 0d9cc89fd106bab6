//! The OAuth client for Sage, on the `oauth2` crate with a small adapter over our
//! reqwest (no redirects followed, bounded time). Client credentials go in the form
//! body (`AuthType::RequestBody`), the only way Sage documents.

use std::{future::Future, pin::Pin, time::Duration};

use ledger_core::{Secret, Settings};
use oauth2::{
    AsyncHttpClient, AuthType, AuthUrl, AuthorizationCode, Client, ClientId, ClientSecret, CsrfToken, EndpointNotSet,
    EndpointSet, ExtraTokenFields, HttpRequest, HttpResponse, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl,
    RefreshToken, RequestTokenError, RevocationUrl, Scope, StandardRevocableToken, StandardTokenResponse,
    TokenResponse, TokenUrl,
    basic::{
        BasicErrorResponse, BasicErrorResponseType, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse,
        BasicTokenType,
    },
};
use serde::{Deserialize, Serialize};

/// The fields Sage adds to the standard token response.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SageFields {
    pub refresh_token_expires_in: Option<u64>,
    pub requested_by_id: Option<String>,
}

impl ExtraTokenFields for SageFields {}

type SageTokenResponse = StandardTokenResponse<SageFields, BasicTokenType>;
type SageClient = Client<
    BasicErrorResponse,
    SageTokenResponse,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
    EndpointSet,
>;

/// Tokens from an exchange or a refresh.
#[derive(Debug, Clone)]
pub struct TokenSet {
    pub access_token: Secret<String>,
    pub access_expires_in: Duration,
    pub refresh_token: Secret<String>,
    pub refresh_expires_in: Duration,
    pub requested_by_id: Option<String>,
}

/// Why a token-endpoint call failed. Never carries a token or code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OAuthError {
    /// The code or refresh token is expired, used or revoked.
    #[error("Sage answered invalid_grant")]
    InvalidGrant,
    #[error("Sage refused the request: {0}")]
    Rejected(String),
    #[error("Sage's token endpoint is unavailable: {0}")]
    Transient(String),
}

/// Transport errors of the adapter.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TransportError(String);

/// `oauth2`'s HTTP hook, implemented over reqwest 0.13.
#[derive(Debug, Clone)]
pub struct ReqwestAdapter(reqwest::Client);

impl<'c> AsyncHttpClient<'c> for ReqwestAdapter {
    type Error = TransportError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, TransportError>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let response = self
                .0
                .request(parts.method, parts.uri.to_string())
                .headers(parts.headers)
                .body(body)
                .send()
                .await
                .map_err(|e| TransportError(ledger_core::http::describe(&e)))?;
            let mut builder = http::Response::builder().status(response.status());
            for (name, value) in response.headers() {
                builder = builder.header(name, value);
            }
            // Token answers are a few hundred bytes; error pages are cut short.
            let bytes = if response.status().is_success() {
                ledger_core::http::read_limited(response, ledger_core::http::SMALL_LIMIT)
                    .await
                    .map_err(|e| TransportError(e.to_string()))?
            } else {
                ledger_core::http::read_prefix(response, ledger_core::http::ERROR_LIMIT).await
            };
            builder.body(bytes).map_err(|e| TransportError(e.to_string()))
        })
    }
}

/// Maps the UI's region to Sage's `country` parameter.
pub fn country_for(region: &str) -> Option<&'static str> {
    Some(match region {
        "uk" | "gb" => "gb",
        "ie" => "ie",
        "ca" => "ca",
        "us" => "us",
        "es" => "es",
        "fr" => "fr",
        "de" => "de",
        _ => return None,
    })
}

/// The regions offered, in display order (Sage's current guide lists ca/gb/ie; the
/// others come from the older list and may not accept new connections).
pub const REGIONS: &[(&str, &str)] = &[
    ("uk", "United Kingdom"),
    ("ie", "Ireland"),
    ("ca", "Canada"),
    ("us", "United States"),
    ("es", "Spain"),
    ("fr", "France"),
    ("de", "Germany"),
];

/// A configured client.
#[derive(Debug, Clone)]
pub struct SageOAuth {
    client: SageClient,
    client_secret: Secret<String>,
    http: ReqwestAdapter,
}

impl SageOAuth {
    /// The state's client, built once (its HTTP client holds the connection pool to
    /// Sage's token endpoint).
    pub fn of(state: &ledger_core::AppState) -> std::sync::Arc<Self> {
        state.part(|s| Self::from_settings(&s.settings))
    }

    pub fn from_settings(settings: &Settings) -> Self {
        ledger_core::install_crypto_provider();
        let redirect = format!("{}/sage/callback", settings.public_url);
        let client = Client::new(ClientId::new(settings.sage_client_id.clone()))
            .set_client_secret(ClientSecret::new(settings.sage_client_secret.expose().clone()))
            .set_auth_uri(AuthUrl::from_url(settings.sage_authorize_url.clone()))
            .set_token_uri(TokenUrl::from_url(settings.sage_token_url.clone()))
            .set_revocation_url(RevocationUrl::from_url(settings.sage_revoke_url.clone()))
            .set_redirect_uri(RedirectUrl::new(redirect).expect("the public URL is a valid base"))
            .set_auth_type(AuthType::RequestBody);
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .tls_backend_preconfigured(ledger_core::tls_config())
            .connect_timeout(Duration::from_secs(5))
            .timeout(settings.sage_timeout)
            .build()
            .expect("HTTP client configuration is valid");
        Self {
            client,
            client_secret: settings.sage_client_secret.clone(),
            http: ReqwestAdapter(http),
        }
    }

    /// The URL to send the browser to, the `state` to remember and the PKCE verifier.
    pub fn authorize_url(&self, country: &str) -> (url::Url, Secret<String>, Secret<String>) {
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let (url, state) = self
            .client
            .authorize_url(|| CsrfToken::new_random_len(32))
            .add_scope(Scope::new("full_access".to_owned()))
            .add_extra_param("filter", "apiv3.1")
            .add_extra_param("country", country)
            .set_pkce_challenge(challenge)
            .url();
        (
            url,
            Secret::new(state.secret().clone()),
            Secret::new(verifier.secret().clone()),
        )
    }

    fn tokens(response: &SageTokenResponse) -> TokenSet {
        TokenSet {
            access_token: Secret::new(response.access_token().secret().clone()),
            access_expires_in: response.expires_in().unwrap_or(Duration::from_secs(300)),
            refresh_token: Secret::new(response.refresh_token().map(|r| r.secret().clone()).unwrap_or_default()),
            refresh_expires_in: Duration::from_secs(
                response.extra_fields().refresh_token_expires_in.unwrap_or(2_678_400),
            ),
            requested_by_id: response.extra_fields().requested_by_id.clone(),
        }
    }

    fn classify<E: std::error::Error + 'static>(err: RequestTokenError<E, BasicErrorResponse>) -> OAuthError {
        match err {
            RequestTokenError::ServerResponse(r) if *r.error() == BasicErrorResponseType::InvalidGrant => {
                OAuthError::InvalidGrant
            }
            RequestTokenError::ServerResponse(r) => OAuthError::Rejected(r.error().to_string()),
            RequestTokenError::Request(e) => OAuthError::Transient(e.to_string()),
            // A 5xx or an HTML error page from the token endpoint.
            RequestTokenError::Parse(_, body) => OAuthError::Transient(format!(
                "unexpected answer: {}",
                String::from_utf8_lossy(&body).chars().take(120).collect::<String>()
            )),
            RequestTokenError::Other(e) => OAuthError::Transient(e),
        }
    }

    /// Exchanges an authorization code (single use, 60 s) with its PKCE verifier.
    pub async fn exchange_code(&self, code: &str, verifier: &Secret<String>) -> Result<TokenSet, OAuthError> {
        let response = self
            .client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .set_pkce_verifier(PkceCodeVerifier::new(verifier.expose().clone()))
            .request_async(&self.http)
            .await
            .map_err(Self::classify)?;
        Ok(Self::tokens(&response))
    }

    /// Uses (and so kills) `refresh_token`, returning the new pair.
    pub async fn refresh(&self, refresh_token: &Secret<String>) -> Result<TokenSet, OAuthError> {
        let response = self
            .client
            .exchange_refresh_token(&RefreshToken::new(refresh_token.expose().clone()))
            .request_async(&self.http)
            .await
            .map_err(Self::classify)?;
        Ok(Self::tokens(&response))
    }

    /// Revokes a refresh token at Sage (access tokens cannot be revoked): a form post of
    /// `client_id`, `client_secret` and `token`, exactly as Sage documents it. (`oauth2`'s
    /// own revocation refuses non-https endpoints, which rules out the sandbox.)
    pub async fn revoke(&self, refresh_token: &Secret<String>) -> Result<(), OAuthError> {
        let url = self.client.revocation_url().url().clone();
        let form = [
            ("client_id", self.client.client_id().as_str()),
            ("client_secret", self.client_secret.expose().as_str()),
            ("token", refresh_token.expose().as_str()),
        ];
        let response = self
            .http
            .0
            .post(url)
            .form(&form)
            .send()
            .await
            .map_err(|e| OAuthError::Transient(ledger_core::http::describe(&e)))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(OAuthError::Rejected(format!("HTTP {}", response.status().as_u16())))
        }
    }
}
