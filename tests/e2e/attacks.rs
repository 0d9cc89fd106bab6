#![allow(clippy::print_stderr, reason = "the suite reports its tally")]

//! The attack suite: every forged, stale, replayed or misdirected webhook is refused,
//! with a specific code, and changes nothing.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use ledger_e2e::{count, event_body, module_claims, now, post_event};
use ledger_magento_api::auth::{self, Claims, Subkeys};
use ledger_test_support::{PairedStore, TestApp};
use serde_json::Value;

/// Signs arbitrary header and claims JSON with `key`.
fn forge(header_json: &str, claims: &Value, key: &[u8]) -> String {
    let h = URL_SAFE_NO_PAD.encode(header_json);
    let p = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap());
    let input = format!("{h}.{p}");
    let tag = ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key), input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}

fn outbound(paired: &PairedStore) -> [u8; 32] {
    *Subkeys::derive(&paired.api_key()).outbound.expose()
}

fn sign(paired: &PairedStore, claims: &Claims) -> String {
    auth::sign(&outbound(paired), claims)
}

struct Case {
    name: &'static str,
    tenant: String,
    token: Option<String>,
    key: Option<String>,
    body: String,
    expect_status: u16,
    expect_code: &'static str,
}

#[tokio::test]
async fn the_attack_suite_is_refused_entirely() {
    let app = TestApp::spawn().await;
    let paired = app.paired_store().await;
    let other = app.paired_store().await; // another merchant's store
    let tenant = paired.tenant();
    let fresh = || module_claims(&tenant, now());
    let with = |f: &dyn Fn(&mut Claims)| {
        let mut c = fresh();
        f(&mut c);
        c
    };
    let claims_json = |c: &Claims| serde_json::to_value(c).unwrap();
    let key = Some("invoice.created:1".to_owned());
    let body = event_body(1);

    let replayed = sign(&paired, &fresh());
    // Spend the token once, legitimately.
    let first = post_event(
        &app,
        &tenant,
        "customer.upserted",
        Some(&replayed),
        Some("customer.upserted:1"),
        &event_body(1),
    )
    .await;
    assert_eq!(first.status(), 202);

    let mut float_iat = claims_json(&fresh());
    float_iat["iat"] = serde_json::json!(now() as f64 + 0.5);
    let mut array_aud = claims_json(&fresh());
    array_aud["aud"] = serde_json::json!(["byte8-ledger"]);
    let inbound = *Subkeys::derive(&paired.api_key()).inbound.expose();

    let cases = vec![
        Case {
            name: "no Authorization header",
            tenant: tenant.clone(),
            token: None,
            key: key.clone(),
            body: body.clone(),
            expect_status: 401,
            expect_code: "token_missing",
        },
        Case {
            name: "not a JWT",
            tenant: tenant.clone(),
            token: Some("garbage".into()),
            key: key.clone(),
            body: body.clone(),
            expect_status: 401,
            expect_code: "token_malformed",
        },
        Case {
            name: "alg none, unsigned",
            tenant: tenant.clone(),
            token: Some(format!(
                "{}.{}.",
                URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
                URL_SAFE_NO_PAD.encode(serde_json::to_vec(&fresh()).unwrap())
            )),
            key: key.clone(),
            body: body.clone(),
            expect_status: 401,
            expect_code: "token_algorithm_refused",
        },
        Case {
            name: "alg HS512",
            tenant: tenant.clone(),
            token: Some(forge(
                r#"{"alg":"HS512","typ":"JWT"}"#,
                &claims_json(&fresh()),
                &outbound(&paired),
            )),
            key: key.clone(),
            body: body.clone(),
            expect_status: 401,
            expect_code: "token_algorithm_refused",
        },
        Case {
            name: "alg RS256",
            tenant: tenant.clone(),
            token: Some(forge(
                r#"{"alg":"RS256","typ":"JWT"}"#,
                &claims_json(&fresh()),
                &outbound(&paired),
            )),
            key: key.clone(),
            body: body.clone(),
            expect_status: 401,
            expect_code: "token_algorithm_refused",
        },
        Case {
            name: "crit header (an extension the ledger would ignore)",
            tenant: tenant.clone(),
            token: Some(forge(
                r#"{"alg":"HS256","typ":"JWT","crit":["exp-override"],"exp-override":true}"#,
                &claims_json(&fresh()),
                &outbound(&paired),
            )),
            key: key.clone(),
            body: body.clone(),
            expect_status: 401,
            expect_code: "token_crit_refused",
        },
        Case {
            name: "wrong key",
            tenant: tenant.clone(),
            token: Some(auth::sign(b"an-attacker-chosen-32-byte-key!!", &fresh())),
            key: key.clone(),
            body: body.clone(),
            expect_status: 401,
            expect_code: "token_signature_invalid",
        },
        Case {
            name: "the raw api_key as HMAC key",
            tenant: tenant.clone(),
            token: Some(auth::sign(paired.api_key().as_bytes(), &fresh())),
            key: key.clone(),
            body: body.clone(),
            expect_status: 401,
            expect_code: "token_signature_invalid",
        },
        Case {
            name: "wrong subkey direction (inbound)",
            tenant: tenant.clone(),
            token: Some(auth::sign(&inbound, &fresh())),
            key: key.clone(),
            body: body.clone(),
            expect_status: 401,
            expect_code: "token_signature_invalid",
        },
        Case {
            name: "another store's key",
            tenant: tenant.clone(),
            token: Some(auth::sign(
                Subkeys::derive(&other.api_key()).outbound.expose(),
                &fresh(),
            )),
            key: key.clone(),
            body: body.clone(),
            expect_status: 401,
            expect_code: "token_signature_invalid",
        },
        Case {
            name: "iss byte8-ledger",
            tenant: tenant.clone(),
            token: Some(sign(&paired, &with(&|c| c.iss = "byte8-ledger".into()))),
            key: key.clone(),
            body: body.clone(),
            expect_status: 401,
            expect_code: "token_wrong_issuer",
        },
        Case {
            name: "aud magento",
            tenant: tenant.clone(),
            token: Some(sign(&paired, &with(&|c| c.aud = "magento".into()))),
            key: key.clone(),
            body: body.clone(),
            expect_status: 401,
            expect_code: "token_wrong_audience",
        },
        Case {
            name: "aud as an array",
            tenant: tenant.clone(),
            token: Some(forge(r#"{"alg":"HS256","typ":"JWT"}"#, &array_aud, &outbound(&paired))),
            key: key.clone(),
            body: body.clone(),
            expect_status: 401,
            expect_code: "token_wrong_audience",
        },
        Case {
            name: "sub is another tenant",
            tenant: tenant.clone(),
            token: Some(sign(&paired, &with(&|c| c.sub = other.tenant()))),
            key: key.clone(),
            body: body.clone(),
            expect_status: 401,
            expect_code: "token_wrong_subject",
        },
        Case {
            name: "path tenant is another tenant",
            tenant: other.tenant(),
            token: Some(sign(&paired, &module_claims(&other.tenant(), now()))),
            key: key.clone(),
            body: body.clone(),
            expect_status: 401,
            expect_code: "token_signature_invalid",
        },
        Case {
            name: "TTL over the 300 s ceiling",
            tenant: tenant.clone(),
            token: Some(sign(&paired, &with(&|c| c.exp = c.iat + 301))),
            key: key.clone(),
            body: body.clone(),
            expect_status: 401,
            expect_code: "token_ttl_too_long",
        },
        Case {
            name: "float iat",
            tenant: tenant.clone(),
            token: Some(forge(r#"{"alg":"HS256","typ":"JWT"}"#, &float_iat, &outbound(&paired))),
            key: key.clone(),
            body: body.clone(),
            expect_status: 401,
            expect_code: "token_claim_invalid",
        },
        Case {
            name: "empty jti",
            tenant: tenant.clone(),
            token: Some(sign(&paired, &with(&|c| c.jti = String::new()))),
            key: key.clone(),
            body: body.clone(),
            expect_status: 401,
            expect_code: "token_claim_invalid",
        },
        Case {
            name: "replayed jti",
            tenant: tenant.clone(),
            token: Some(replayed.clone()),
            key: key.clone(),
            body: body.clone(),
            expect_status: 401,
            expect_code: "token_replayed",
        },
        Case {
            name: "unknown tenant",
            tenant: uuid::Uuid::new_v4().to_string(),
            token: Some(sign(&paired, &fresh())),
            key: key.clone(),
            body: body.clone(),
            expect_status: 401,
            expect_code: "unknown_tenant",
        },
        Case {
            name: "tenant that is not a UUID",
            tenant: "tenant-1".into(),
            token: Some(sign(&paired, &module_claims("tenant-1", now()))),
            key: key.clone(),
            body: body.clone(),
            expect_status: 401,
            expect_code: "unknown_tenant",
        },
        Case {
            name: "missing Idempotency-Key",
            tenant: tenant.clone(),
            token: Some(sign(&paired, &fresh())),
            key: None,
            body: body.clone(),
            expect_status: 400,
            expect_code: "idempotency_key_missing",
        },
        Case {
            name: "oversized Idempotency-Key",
            tenant: tenant.clone(),
            token: Some(sign(&paired, &fresh())),
            key: Some("k".repeat(129)),
            body: body.clone(),
            expect_status: 400,
            expect_code: "idempotency_key_invalid",
        },
        Case {
            name: "body is not JSON",
            tenant: tenant.clone(),
            token: Some(sign(&paired, &fresh())),
            key: key.clone(),
            body: "{oops".into(),
            expect_status: 400,
            expect_code: "invalid_json",
        },
        Case {
            name: "body lacks magento_entity_id",
            tenant: tenant.clone(),
            token: Some(sign(&paired, &fresh())),
            key: key.clone(),
            body: r#"{"website_id":1}"#.into(),
            expect_status: 422,
            expect_code: "validation_failed",
        },
        Case {
            name: "oversized body",
            tenant: tenant.clone(),
            token: Some(sign(&paired, &fresh())),
            key: key.clone(),
            body: format!(
                r#"{{"magento_entity_id":1,"payload":{{"x":"{}"}}}}"#,
                "a".repeat(1024 * 1024)
            ),
            expect_status: 413,
            expect_code: "body_too_large",
        },
    ];

    let mut refused = 0;
    let total = cases.len();
    for case in &cases {
        let event = if case.name == "unknown event" {
            "order.created"
        } else {
            "invoice.created"
        };
        let res = post_event(
            &app,
            &case.tenant,
            event,
            case.token.as_deref(),
            case.key.as_deref(),
            &case.body,
        )
        .await;
        let status = res.status().as_u16();
        let content_type = res
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let body: Value = res.json().await.unwrap_or_default();
        assert_eq!(
            (status, body["code"].as_str().unwrap_or("")),
            (case.expect_status, case.expect_code),
            "{}: {body}",
            case.name
        );
        assert_eq!(content_type, "application/problem+json", "{}", case.name);
        assert!(
            body["detail"].as_str().is_some_and(|d| d.len() > 20),
            "{}: the detail says what to fix",
            case.name
        );
        assert!((400..500).contains(&status), "{}: never 5xx, never 2xx", case.name);
        refused += 1;
    }
    assert_eq!(refused, total);

    // Correctly signed but outside its validity window: a store clock off (issue 14),
    // answered 503 + Retry-After so the module retries rather than dead-letters it — and
    // still nothing is accepted.
    for (name, claims, code) in [
        ("expired", module_claims(&tenant, now() - 200), "token_expired"),
        (
            "nbf in the future",
            module_claims(&tenant, now() + 120),
            "token_not_yet_valid",
        ),
    ] {
        let res = post_event(
            &app,
            &tenant,
            "invoice.created",
            Some(&sign(&paired, &claims)),
            key.as_deref(),
            &body,
        )
        .await;
        assert_eq!(res.status(), 503, "{name}");
        assert_eq!(res.headers()["retry-after"], "60", "{name}");
        let problem: Value = res.json().await.unwrap();
        assert_eq!(problem["code"], "store_clock_skew", "{name}: {problem}");
        let detail = problem["detail"].as_str().unwrap();
        assert!(
            detail.contains("NTP") && detail.contains(code.trim_start_matches("token_").split('_').next().unwrap()),
            "{name}: {detail}"
        );
    }

    // An unknown event with a valid token: 404 (the module dead-letters it; retrying cannot help).
    let res = post_event(
        &app,
        &tenant,
        "order.created",
        Some(&sign(&paired, &fresh())),
        key.as_deref(),
        &body,
    )
    .await;
    assert_eq!(res.status(), 404);
    assert_eq!(res.json::<Value>().await.unwrap()["code"], "unknown_event");

    // A revoked binding.
    assert!(other.store.store.disconnect().await);
    let token = auth::sign(
        Subkeys::derive(&other.api_key_before_disconnect()).outbound.expose(),
        &module_claims(&other.tenant(), now()),
    );
    let res = post_event(
        &app,
        &other.tenant(),
        "invoice.created",
        Some(&token),
        key.as_deref(),
        &body,
    )
    .await;
    assert_eq!(
        (
            res.status().as_u16(),
            res.json::<Value>().await.unwrap()["code"].as_str().map(str::to_owned)
        ),
        (401, Some("binding_revoked".to_owned()))
    );

    // Nothing was stored but the one legitimate event.
    assert_eq!(count(&app, "SELECT count(*) FROM received_events").await, 1);
    assert_eq!(count(&app, "SELECT count(*) FROM jobs").await, 1);
    eprintln!(
        "attack suite: {refused}/{total} forged or malformed webhooks refused, plus unknown event and revoked binding"
    );
}

/// A store clock running ahead is tolerated within the leeway (default 30 s); beyond it
/// the correctly signed token is answered 503 so the module retries (issue 14).
#[tokio::test]
async fn clock_skew_within_leeway_is_tolerated() {
    let app = TestApp::spawn().await;
    let paired = app.paired_store().await;
    let tenant = paired.tenant();
    for (skew, expected) in [(20, 202), (-80, 202), (45, 503), (-95, 503)] {
        let token = sign(&paired, &module_claims(&tenant, now() + skew));
        let key = format!("customer.upserted:{}", 100 + skew);
        let res = post_event(
            &app,
            &tenant,
            "customer.upserted",
            Some(&token),
            Some(&key),
            &event_body(100 + skew),
        )
        .await;
        assert_eq!(res.status().as_u16(), expected, "skew {skew}s");
    }
}
