//! Merchant accounts: sign-up, sign-in sessions with CSRF protection, throttling, API
//! tokens and the operator CLI.

use ledger_test_support::TestApp;
use serde_json::Value;

fn session_cookie(res: &reqwest::Response) -> String {
    let cookie = res.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    cookie.split(';').next().unwrap().to_owned()
}

#[tokio::test]
async fn signup_signin_session_and_csrf() {
    let app = TestApp::spawn().await;
    let credentials = serde_json::json!({ "email": "Shop.Owner@Example.com", "password": "a-long-enough-secret" });
    let res = app
        .http
        .post(app.url("/v1/auth/signup"))
        .json(&credentials)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let cookie = session_cookie(&res);
    let body: Value = res.json().await.unwrap();
    let csrf = body["csrf_token"].as_str().unwrap().to_owned();

    let me: Value = app
        .http
        .get(app.url("/v1/me"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["email"], "shop.owner@example.com");
    assert_eq!(me["tenants"].as_array().unwrap().len(), 1);

    let again = app
        .http
        .post(app.url("/v1/auth/signup"))
        .json(&credentials)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409);

    // State-changing requests with the cookie need the CSRF token.
    let res = app
        .http
        .post(app.url("/v1/auth/signout"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    assert_eq!(res.json::<Value>().await.unwrap()["code"], "csrf_token_invalid");
    let res = app
        .http
        .post(app.url("/v1/auth/signout"))
        .header("cookie", &cookie)
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let res = app
        .http
        .get(app.url("/v1/me"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401, "the session is gone");

    let res = app
        .http
        .post(app.url("/v1/auth/signin"))
        .json(&credentials)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let cookie = session_cookie(&res);
    assert_eq!(
        app.http
            .get(app.url("/v1/me"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn failures_do_not_say_which_part_was_wrong_and_are_throttled() {
    let app = TestApp::spawn().await;
    let merchant_email = "owner@example.com";
    let signup = serde_json::json!({ "email": merchant_email, "password": "a-long-enough-secret" });
    app.http
        .post(app.url("/v1/auth/signup"))
        .json(&signup)
        .send()
        .await
        .unwrap();

    let attempt = |email: &str, password: &str| {
        app.http
            .post(app.url("/v1/auth/signin"))
            .json(&serde_json::json!({ "email": email, "password": password }))
            .send()
    };
    let wrong_password: Value = attempt(merchant_email, "not-the-password")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let unknown_email: Value = attempt("nobody@example.com", "not-the-password")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(wrong_password["code"], "invalid_credentials");
    assert_eq!(
        (wrong_password["detail"].clone(), wrong_password["status"].clone()),
        (unknown_email["detail"].clone(), unknown_email["status"].clone())
    );

    for _ in 0..4 {
        assert_eq!(
            attempt(merchant_email, "still-wrong-password").await.unwrap().status(),
            401
        );
    }
    // Five failures for this account: even the right password waits now.
    let res = attempt(merchant_email, "a-long-enough-secret").await.unwrap();
    assert_eq!(res.status(), 429);
    assert!(res.headers().contains_key("retry-after"));
    assert_eq!(res.json::<Value>().await.unwrap()["code"], "too_many_attempts");
}

#[tokio::test]
async fn validation_names_the_fields() {
    let app = TestApp::spawn().await;
    let res = app
        .http
        .post(app.url("/v1/auth/signup"))
        .json(&serde_json::json!({ "email": "nope", "password": "short" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 422);
    let body: Value = res.json().await.unwrap();
    let fields: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["email", "password"]);
    let res = app
        .http
        .post(app.url("/v1/auth/signup"))
        .header("content-type", "text/plain")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 415);
    let res = app
        .http
        .post(app.url("/v1/auth/signup"))
        .json(&serde_json::json!({ "email": "a@b.co" }))
        .send()
        .await
        .unwrap();
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        (body["errors"][0]["field"].as_str(), body["errors"][0]["code"].as_str()),
        (Some("password"), Some("required"))
    );
}

#[tokio::test]
async fn api_tokens_authenticate_and_unknown_ones_do_not() {
    let app = TestApp::spawn().await;
    let merchant = app.merchant().await;
    let me: Value = app
        .http
        .get(app.url("/v1/me"))
        .bearer_auth(&merchant.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["account_id"], merchant.account_id.to_string());
    let res = app
        .http
        .get(app.url("/v1/me"))
        .bearer_auth("lgr_not-a-real-token")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let res = app
        .http
        .get(app.url("/v1/me"))
        .bearer_auth("eyJhbGciOiJIUzI1NiJ9.e30.x")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    // Only the token's hash is stored.
    let stored: Vec<u8> = sqlx::query_scalar("SELECT token_hash FROM api_tokens")
        .fetch_one(&app.state.db)
        .await
        .unwrap();
    assert_eq!(stored.len(), 32);
}
