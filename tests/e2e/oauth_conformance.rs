//! The ledger's Sage OAuth client against an independent, standards-compliant OAuth 2.0
//! server (npm `oidc-provider`, configured like Sage): the full code flow with PKCE,
//! a refresh, and the refusal of a rotated refresh token.

use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
};

use ledger_sage_vault::oauth::{OAuthError, SageOAuth};
use ledger_test_support::{TestDb, test_settings};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn server_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("oauth-server")
}

/// Installs the server's npm dependencies on first use (from the committed lock file).
fn ensure_installed() {
    if server_dir().join("node_modules/oidc-provider").is_dir() {
        return;
    }
    let status = Command::new("npm")
        .args(["ci", "--silent", "--no-audit", "--no-fund"])
        .current_dir(server_dir())
        .status()
        .expect("npm is installed (Node.js)");
    assert!(status.success(), "npm ci in tests/oauth-server failed");
}

fn start(redirect_uri: &str) -> (Server, u16) {
    ensure_installed();
    let mut child = Command::new("node")
        .arg("server.js")
        .env("REDIRECT_URI", redirect_uri)
        .current_dir(server_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("node is installed");
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let port = line
        .trim()
        .strip_prefix("listening ")
        .unwrap_or_else(|| panic!("unexpected: {line}"))
        .parse()
        .unwrap();
    (Server(child), port)
}

/// Follows redirects by hand, carrying cookies, until the browser would land on `redirect_uri`.
async fn walk_to_callback(start: &str, redirect_uri: &str) -> url::Url {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut cookies: HashMap<String, String> = HashMap::new();
    let mut next = start.to_owned();
    for _ in 0..12 {
        let cookie_header: String = cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let res = http.get(&next).header("cookie", cookie_header).send().await.unwrap();
        for value in res.headers().get_all("set-cookie") {
            let pair = value.to_str().unwrap().split(';').next().unwrap();
            if let Some((k, v)) = pair.split_once('=') {
                cookies.insert(k.to_owned(), v.to_owned());
            }
        }
        let location = res
            .headers()
            .get("location")
            .unwrap_or_else(|| panic!("no redirect from {next}: {}", res.status()))
            .to_str()
            .unwrap();
        let url = url::Url::parse(&next).unwrap().join(location).unwrap();
        if url.as_str().starts_with(redirect_uri) {
            return url;
        }
        next = url.to_string();
    }
    panic!("too many redirects");
}

#[tokio::test]
async fn code_flow_refresh_and_rotated_token_reuse_against_oidc_provider() {
    let db = TestDb::new().await;
    let mut settings = test_settings(&db);
    settings.public_url = "http://127.0.0.1:9".to_owned();
    let redirect_uri = format!("{}/sage/callback", settings.public_url);
    let (_server, port) = start(&redirect_uri);
    let issuer = format!("http://127.0.0.1:{port}");
    settings.sage_authorize_url = format!("{issuer}/auth").parse().unwrap();
    settings.sage_token_url = format!("{issuer}/token").parse().unwrap();
    settings.sage_revoke_url = format!("{issuer}/token/revocation").parse().unwrap();
    settings.sage_client_id = "ledger-conformance".to_owned();
    settings.sage_client_secret = ledger_core::Secret::new("ledger-conformance-secret".to_owned());
    let oauth = SageOAuth::from_settings(&settings);

    // Authorization code with PKCE S256 and client_secret_post.
    let (authorize, state, verifier) = oauth.authorize_url("gb");
    let callback = walk_to_callback(authorize.as_str(), &redirect_uri).await;
    let params: HashMap<String, String> = callback.query_pairs().into_owned().collect();
    assert_eq!(params.get("state"), Some(state.expose()), "state round-trips");
    assert!(
        params.contains_key("iss"),
        "RFC 9207 iss is tolerated as an extra parameter"
    );
    let code = params.get("code").expect("a code").clone();
    let first = oauth.exchange_code(&code, &verifier).await.expect("code exchange");
    assert!(!first.refresh_token.expose().is_empty(), "a refresh token is issued");
    assert_eq!(first.access_expires_in.as_secs(), 300);

    // Refresh rotates the refresh token.
    let second = oauth.refresh(&first.refresh_token).await.expect("refresh");
    assert_ne!(second.refresh_token.expose(), first.refresh_token.expose());
    assert_ne!(second.access_token.expose(), first.access_token.expose());
    // Reusing the rotated token is refused (and the provider revokes the grant).
    assert_eq!(
        oauth.refresh(&first.refresh_token).await.unwrap_err(),
        OAuthError::InvalidGrant
    );
    assert_eq!(
        oauth.refresh(&second.refresh_token).await.unwrap_err(),
        OAuthError::InvalidGrant,
        "the whole grant died"
    );
    // A code is single-use.
    assert_eq!(
        oauth.exchange_code(&code, &verifier).await.unwrap_err(),
        OAuthError::InvalidGrant
    );
}

#[tokio::test]
async fn a_wrong_pkce_verifier_is_refused() {
    let db = TestDb::new().await;
    let mut settings = test_settings(&db);
    settings.public_url = "http://127.0.0.1:9".to_owned();
    let redirect_uri = format!("{}/sage/callback", settings.public_url);
    let (_server, port) = start(&redirect_uri);
    let issuer = format!("http://127.0.0.1:{port}");
    settings.sage_authorize_url = format!("{issuer}/auth").parse().unwrap();
    settings.sage_token_url = format!("{issuer}/token").parse().unwrap();
    settings.sage_client_id = "ledger-conformance".to_owned();
    settings.sage_client_secret = ledger_core::Secret::new("ledger-conformance-secret".to_owned());
    let oauth = SageOAuth::from_settings(&settings);
    let (authorize, _, _) = oauth.authorize_url("gb");
    let callback = walk_to_callback(authorize.as_str(), &redirect_uri).await;
    let code = callback
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .into_owned();
    let wrong = ledger_core::Secret::new("x".repeat(64));
    assert_eq!(
        oauth.exchange_code(&code, &wrong).await.unwrap_err(),
        OAuthError::InvalidGrant
    );
}
