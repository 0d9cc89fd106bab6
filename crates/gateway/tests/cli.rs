//! The `ledger` binary as operators run it: exit codes, signals, `ledger dev`.

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use ledger_test_support::{TestDb, admin_url};

mod common;
use common::*;

#[test]
fn bad_configuration_exits_2_naming_the_setting() {
    let out = ledger()
        .arg("serve")
        .env("LEDGER_HTTP_ADDR", "not-an-address")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("LEDGER_HTTP_ADDR"), "{stderr}");

    let out = ledger()
        .arg("worker")
        .env("LEDGER_SHUTDOWN_DEADLINE", "forever")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("LEDGER_SHUTDOWN_DEADLINE"));

    // Missing master keys stop start-up, naming the setting (but never echoing a value).
    let db_less = ledger()
        .arg("serve")
        .env("DATABASE_URL", "postgres://127.0.0.1:1/x")
        .output()
        .unwrap();
    assert_eq!(db_less.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&db_less.stderr).contains("LEDGER_MASTER_KEYS is required"));
    let bad = ledger()
        .arg("serve")
        .env("LEDGER_MASTER_KEYS", "k1:c2VjcmV0LWJ1dC1zaG9ydA==")
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("LEDGER_MASTER_KEYS") && !stderr.contains("c2VjcmV0"),
        "{stderr}"
    );

    let file = std::env::temp_dir().join(format!("ledger-bad-{}.toml", std::process::id()));
    std::fs::write(&file, "http_adr = \"127.0.0.1:1\"\n").unwrap();
    let out = ledger().arg("serve").arg("--config").arg(&file).output().unwrap();
    std::fs::remove_file(&file).unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("http_adr"));
}

#[test]
fn help_explains_every_command() {
    let out = ledger().arg("--help").output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    for command in ["serve", "worker", "migrate", "dev", "openapi"] {
        assert!(
            text.contains(&format!("  {command} ")),
            "{command} missing from --help:\n{text}"
        );
    }
}

/// Reads the child's stderr JSON logs until one has `fields.message == message`.
fn wait_for_log(child: &mut Child, message: &str) -> serde_json::Value {
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push(line.clone());
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
            && v["fields"]["message"] == message
        {
            // Keep draining so the child never blocks on a full pipe.
            std::thread::spawn(move || lines.for_each(drop));
            return v;
        }
    }
    panic!(
        "the process exited before logging `{message}`: {:?}\n{}",
        child.wait(),
        seen.join("\n")
    );
}

#[tokio::test]
async fn serve_stops_on_sigterm_with_exit_0() {
    let db = TestDb::new().await;
    let mut child = spawn(
        ledger()
            .arg("serve")
            .env("DATABASE_URL", db.url())
            .env(
                "LEDGER_MASTER_KEYS",
                ledger_core::crypto::Keyring::generate_spec("k1").expose(),
            )
            .env("LEDGER_HTTP_ADDR", "127.0.0.1:0")
            .env("LEDGER_METRICS_ADDR", "")
            .env("LEDGER_SHUTDOWN_DEADLINE", "3s")
            .stderr(Stdio::piped()),
    );
    let log = wait_for_log(&mut child, "serving");
    let addr = log["fields"]["addr"].as_str().unwrap().to_owned();
    let res = reqwest::get(format!("http://{addr}/readyz")).await.unwrap();
    assert_eq!(res.status(), 200);
    terminate(&child);
    let status = wait_with_timeout(&mut child, Duration::from_secs(5));
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn migrate_then_worker_runs_and_stops() {
    let db = TestDb::empty().await;
    let status = ledger().arg("migrate").env("DATABASE_URL", db.url()).status().unwrap();
    assert!(status.success());
    let pool = db.pool().await;
    assert!(ledger_core::db::pending_migrations(&pool).await.unwrap().is_empty());

    let mut child = spawn(
        ledger()
            .arg("worker")
            .env("DATABASE_URL", db.url())
            .env(
                "LEDGER_MASTER_KEYS",
                ledger_core::crypto::Keyring::generate_spec("k1").expose(),
            )
            .env("LEDGER_METRICS_ADDR", "127.0.0.1:0")
            .stderr(Stdio::piped()),
    );
    wait_for_log(&mut child, "worker running");
    terminate(&child);
    assert_eq!(wait_with_timeout(&mut child, Duration::from_secs(5)).code(), Some(0));
}

/// `ledger dev` against the running server: ready within 5 s, exits 0 on SIGTERM.
#[tokio::test]
async fn dev_is_ready_within_five_seconds() {
    let db_name = format!("ledger_dev_test_{}", std::process::id());
    let started = Instant::now();
    let mut child = spawn(
        ledger()
            .args(["dev", "--db-name", &db_name])
            .env("DATABASE_URL", admin_url())
            .env("LEDGER_HTTP_ADDR", "127.0.0.1:0")
            .env("LEDGER_METRICS_ADDR", "127.0.0.1:0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    );
    let api = banner_url(&mut child, "API");
    let ready = reqwest::get(format!("{api}/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200);
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(5), "ready after {elapsed:?}");
    terminate(&child);
    assert_eq!(wait_with_timeout(&mut child, Duration::from_secs(10)).code(), Some(0));
    drop_database(&db_name).await;
}

/// `ledger dev` is a working demo with no configuration: the sandbox store's invoices,
/// payments and credit notes land in the sandbox Sage business and the store's chips
/// turn Synced.
#[tokio::test]
async fn dev_posts_the_demo_store_to_the_sandbox_sage() {
    let db_name = format!("ledger_dev_demo_{}", std::process::id());
    let mut child = spawn(
        ledger()
            .args(["dev", "--db-name", &db_name, "--activity-every", "200ms"])
            .env("DATABASE_URL", admin_url())
            .env("LEDGER_HTTP_ADDR", "127.0.0.1:0")
            .env("LEDGER_METRICS_ADDR", "")
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    );
    let banner = banner_lines(&mut child, &["Store", "Sage"]);
    let (store, sage) = (&banner[0], &banner[1]);
    let http = reqwest::Client::new();
    let businesses: serde_json::Value = http
        .get(format!("{sage}/sandbox/businesses"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let business = businesses[0]["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(120);
    let (books, mirror) = loop {
        let books: serde_json::Value = http
            .get(format!("{sage}/sandbox/businesses/{business}/books"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let mirror: serde_json::Value = http
            .get(format!("{store}/sandbox/mirror"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let posted = |kind: &str| books["books"][kind].as_array().map_or(0, Vec::len);
        let synced_chips = mirror
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["sync_status"] == "synced")
            .count();
        if posted("sales_invoices") > 0
            && posted("contact_payments") > 0
            && posted("sales_credit_notes") > 0
            && synced_chips > 0
        {
            break (books, mirror);
        }
        assert!(
            Instant::now() < deadline,
            "the demo did not post every kind within 120 s: {books:#}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let invoice_chip = mirror
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["entity_type"] == "invoice" && r["sync_status"] == "synced")
        .expect("an invoice chip turned Synced");
    let sage_id = invoice_chip["provider_entity_id"].as_str().unwrap();
    assert!(
        books["books"]["sales_invoices"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["id"] == sage_id),
        "the chip names the Sage invoice"
    );
    terminate(&child);
    assert_eq!(wait_with_timeout(&mut child, Duration::from_secs(10)).code(), Some(0));
    drop_database(&db_name).await;
}

/// Reads `ledger dev`'s banner until every label was seen, returning their URLs in order.
fn banner_lines(child: &mut Child, labels: &[&str]) -> Vec<String> {
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut found = vec![None; labels.len()];
    for line in lines.by_ref() {
        let line = line.unwrap();
        let mut words = line.split_whitespace();
        if let Some(i) = words.next().and_then(|w| labels.iter().position(|l| *l == w)) {
            found[i] = words.next().map(str::to_owned);
        }
        if found.iter().all(Option::is_some) {
            std::thread::spawn(move || lines.for_each(drop));
            return found.into_iter().flatten().collect();
        }
    }
    panic!("ledger dev exited before printing {labels:?}");
}

/// With nothing listening at DATABASE_URL, `ledger dev` starts its own PostgreSQL.
#[tokio::test]
async fn dev_starts_a_private_postgres_when_none_answers() {
    let port = free_port();
    let mut child = spawn(
        ledger()
            .args(["dev"])
            .env("DATABASE_URL", format!("postgres://postgres@127.0.0.1:{port}/postgres"))
            .env("LEDGER_HTTP_ADDR", "127.0.0.1:0")
            .env("LEDGER_METRICS_ADDR", "")
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    );
    let database_line = {
        let api = banner_url(&mut child, "API");
        let ready = reqwest::get(format!("{api}/readyz")).await.unwrap();
        assert_eq!(ready.status(), 200);
        api
    };
    assert!(!database_line.is_empty());
    terminate(&child);
    assert_eq!(wait_with_timeout(&mut child, Duration::from_secs(30)).code(), Some(0));
    // The private server was stopped with the process.
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "private PostgreSQL still listening"
    );
    let _ = std::fs::remove_dir_all(format!("/var/tmp/ledger-dev/pg-{port}"));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Reads `ledger dev`'s banner until the line labelled `label`, returning its URL.
fn banner_url(child: &mut Child, label: &str) -> String {
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let mut words = line.split_whitespace();
        if words.next() == Some(label) {
            let url = words.next().unwrap().to_owned();
            std::thread::spawn(move || lines.for_each(drop));
            return url;
        }
    }
    panic!("ledger dev exited before printing its {label} URL");
}

async fn drop_database(name: &str) {
    use sqlx::{Connection as _, Executor as _};
    let mut admin = sqlx::PgConnection::connect(&admin_url()).await.unwrap();
    admin
        .execute(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .await
        .unwrap();
}

#[tokio::test]
async fn the_cli_creates_a_merchant_and_prints_one_json_object() {
    let db = TestDb::new().await;
    let out = ledger()
        .args([
            "merchant",
            "create",
            "--email",
            "cli@example.com",
            "--password",
            "a-long-enough-secret",
        ])
        .env("DATABASE_URL", db.url())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1);
    let created: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    for key in ["account_id", "tenant_id", "token"] {
        assert!(created[key].is_string(), "{key} in {stdout}");
    }
    assert!(created["token"].as_str().unwrap().starts_with("lgr_"));

    let out = ledger()
        .args(["merchant", "create", "--email", "cli@example.com"])
        .env("DATABASE_URL", db.url())
        .output()
        .unwrap();
    assert!(!out.status.success(), "a taken email fails");
}

/// Two `ledger worker` processes run the Sage keep-alive for the same idle connection at
/// start-up: exactly one refresh reaches Sage, with no invalid_grant.
#[tokio::test]
async fn two_worker_processes_refresh_a_connection_once() {
    use ledger_test_support::TestApp;
    let keys = ledger_core::crypto::Keyring::generate_spec("k1");
    let app = TestApp::builder()
        .sage(ledger_sandbox::sage::SageConfig::default())
        .configure({
            let keys = keys.expose().clone();
            move |s| s.master_keys = Some(std::sync::Arc::new(ledger_core::crypto::Keyring::parse(&keys).unwrap()))
        })
        .spawn()
        .await;
    let paired = app.paired_store().await;
    assert_eq!(app.connect_sage(&paired).await.status(), 303);
    sqlx::query(
        "UPDATE sage_connections SET last_refreshed_at = now() - interval '2 hours', access_expires_at = now()",
    )
    .execute(&app.state.db)
    .await
    .unwrap();
    let sage = app.sage();
    let worker = || {
        spawn(
            ledger()
                .arg("worker")
                .env("DATABASE_URL", app.db.url())
                .env("LEDGER_MASTER_KEYS", keys.expose())
                .env("LEDGER_METRICS_ADDR", "")
                .env("LEDGER_SAGE_KEEPALIVE_AFTER", "1h")
                .env("LEDGER_SAGE_AUTHORIZE_URL", sage.authorize_url())
                .env("LEDGER_SAGE_TOKEN_URL", sage.token_url())
                .env("LEDGER_SAGE_REVOKE_URL", sage.revoke_url())
                .env("LEDGER_SAGE_API_BASE", sage.api_base())
                .env("LEDGER_SAGE_CLIENT_ID", &sage.config().client_id)
                .env("LEDGER_SAGE_CLIENT_SECRET", &sage.config().client_secret)
                .stderr(Stdio::null()),
        )
    };
    let (first, second) = (worker(), worker());
    let started = Instant::now();
    while sage.stats().refreshes == 0 && started.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Give the slower process time to finish its own pass.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for child in [&first, &second] {
        terminate(child);
    }
    let stats = sage.stats();
    assert_eq!(stats.refreshes, 1, "exactly one refresh across both processes");
    assert_eq!(stats.invalid_grants, 0);
    drop((first, second));
}

/// `ledger runs retry|skip|retry-dead`: the operators' actions from a shell, recorded in
/// the audit trail as the system's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_retry_and_skip_runs_from_the_cli() {
    let (app, keys) = app_with_keys(ledger_sandbox::sage::SageConfig::default(), |_| {}).await;
    let paired = app.connected_store().await;
    // Sage refuses the first three invoices (422): three failed runs.
    app.sage().set_faults(ledger_sandbox::sage::SageFaults {
        reject_kind: "sales_invoice".into(),
        reject_writes: 3,
        ..ledger_sandbox::sage::SageFaults::default()
    });
    let workers = app.start_workers();
    let store = &paired.store.store;
    for _ in 0..3 {
        store.place_order(false);
    }
    store.drain_once().await;
    assert!(app.wait_idle(Duration::from_secs(30)).await);
    let failed: Vec<uuid::Uuid> =
        sqlx::query_scalar("SELECT id FROM sync_runs WHERE status = 'failed' ORDER BY magento_entity_id")
            .fetch_all(&app.state.db)
            .await
            .unwrap();
    assert_eq!(failed.len(), 3);
    let runs = |args: &[&str]| {
        let out = ledger()
            .arg("runs")
            .args(args)
            .env("DATABASE_URL", app.db.url())
            .env("LEDGER_MASTER_KEYS", &keys)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let status = |run: uuid::Uuid| {
        let db = app.state.db.clone();
        async move {
            sqlx::query_scalar::<_, String>("SELECT status FROM sync_runs WHERE id = $1")
                .bind(run)
                .fetch_one(&db)
                .await
                .unwrap()
        }
    };

    let (ok, out, err) = runs(&["retry", &failed[0].to_string()]);
    assert!(ok, "{err}");
    assert!(out.contains("queued again"), "{out}");
    let (ok, _, err) = runs(&["skip", &failed[1].to_string()]);
    assert!(ok, "{err}");
    assert_eq!(status(failed[1]).await, "skipped_by_policy");
    assert!(app.wait_idle(Duration::from_secs(30)).await);
    assert_eq!(status(failed[0]).await, "synced");
    // A synced run cannot be retried: a non-zero exit that says why.
    let (ok, _, err) = runs(&["retry", &failed[0].to_string()]);
    assert!(!ok);
    assert!(err.contains("not failed, dead or skipped"), "{err}");
    let (ok, out, err) = runs(&["retry-dead", "--binding", &paired.binding_id.to_string()]);
    assert!(ok, "{err}");
    assert!(out.contains("1 runs queued again"), "{out}");
    assert!(app.wait_idle(Duration::from_secs(30)).await);
    assert_eq!(status(failed[2]).await, "synced");
    let system_actions: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE action IN ('run.retried', 'run.skipped') AND actor = 'system'",
    )
    .fetch_one(&app.state.db)
    .await
    .unwrap();
    assert_eq!(system_actions, 3);
    workers.stop().await;
}

/// `ledger tokens`: issue, list, revoke; a revoked or expired token is refused at once,
/// and `--password-stdin` keeps the password off the command line.
#[tokio::test]
async fn tokens_are_listed_issued_with_an_expiry_and_revoked() {
    use std::io::Write as _;
    let db = TestDb::new().await;
    let mut child = ledger()
        .args([
            "merchant",
            "create",
            "--email",
            "tokens@example.com",
            "--password-stdin",
        ])
        .env("DATABASE_URL", db.url())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"a-long-enough-secret\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let hash: Option<String> = sqlx::query_scalar("SELECT password_hash FROM accounts")
        .fetch_one(&db.pool().await)
        .await
        .unwrap();
    assert!(
        hash.is_some_and(|h| h.starts_with("$argon2id$")),
        "the password was read from stdin"
    );

    let run = |args: &[&str]| {
        let out = ledger()
            .arg("tokens")
            .args(args)
            .env("DATABASE_URL", db.url())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let issued: serde_json::Value = serde_json::from_str(&run(&[
        "create",
        "--email",
        "tokens@example.com",
        "--name",
        "deploy",
        "--ttl",
        "2d",
    ]))
    .unwrap();
    let expires = chrono::DateTime::parse_from_rfc3339(issued["expires_at"].as_str().unwrap()).unwrap();
    let left = expires.signed_duration_since(chrono::Utc::now()).num_hours();
    assert!((46..=48).contains(&left), "expires in two days: {left} h");
    let listed = run(&["list", "--email", "tokens@example.com"]);
    assert_eq!(
        listed.lines().count(),
        2,
        "the merchant's first token and this one: {listed}"
    );
    assert!(!listed.contains("lgr_"), "never the token itself");
    let id = issued["id"].as_str().unwrap();
    assert!(run(&["revoke", "--email", "tokens@example.com", "--id", id]).contains("revoked"));
    let listed = run(&["list", "--email", "tokens@example.com"]);
    let deploy: serde_json::Value = listed
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|t| t["name"] == "deploy")
        .unwrap();
    assert_eq!(deploy["active"], false);
    assert!(deploy["revoked_at"].is_string());
    let again = ledger()
        .args(["tokens", "revoke", "--email", "tokens@example.com", "--id", id])
        .env("DATABASE_URL", db.url())
        .output()
        .unwrap();
    assert!(!again.status.success(), "revoking twice fails and says so");
}

/// `ledger serve` with an HTTP proxy in its environment still calls stores directly, at
/// the addresses it checked (a proxy would resolve the name again, past the SSRF filter).
#[tokio::test]
async fn store_calls_never_go_through_an_environment_proxy() {
    use std::sync::{Arc, atomic::AtomicUsize, atomic::Ordering};
    let db = TestDb::new().await;
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_url = format!("http://{}", proxy.local_addr().unwrap());
    let proxied = Arc::new(AtomicUsize::new(0));
    let seen = proxied.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = proxy.accept().await {
            seen.fetch_add(1, Ordering::Relaxed);
            drop(socket);
        }
    });
    let mut child = spawn(
        ledger()
            .arg("serve")
            .env("DATABASE_URL", db.url())
            .env(
                "LEDGER_MASTER_KEYS",
                ledger_core::crypto::Keyring::generate_spec("k1").expose(),
            )
            .env("LEDGER_HTTP_ADDR", "127.0.0.1:0")
            .env("LEDGER_METRICS_ADDR", "")
            .env("LEDGER_ALLOW_INSECURE_MAGENTO", "true")
            .env("LEDGER_ALLOW_PRIVATE_MAGENTO", "true")
            .env("HTTP_PROXY", &proxy_url)
            .env("http_proxy", &proxy_url)
            .env("HTTPS_PROXY", &proxy_url)
            .env("ALL_PROXY", &proxy_url)
            .env_remove("NO_PROXY")
            .env_remove("no_proxy")
            .stderr(Stdio::piped()),
    );
    let log = wait_for_log(&mut child, "serving");
    let addr = log["fields"]["addr"].as_str().unwrap().to_owned();
    let pool = db.pool().await;
    let account = ledger_tenant_binding::accounts::create_account(&pool, "proxy@example.com", None, false)
        .await
        .unwrap();
    let token =
        ledger_tenant_binding::accounts::create_api_token(&pool, account.account_id, "test", Duration::from_secs(3600))
            .await
            .unwrap();
    let store = ledger_sandbox::magento::RunningStore::spawn(ledger_sandbox::magento::StoreConfig::default())
        .await
        .unwrap();
    let code = store.store.generate_pairing_code();
    let res = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(format!("http://{addr}/v1/magento/connect"))
        .bearer_auth(token.expose())
        .json(&serde_json::json!({ "magento_base_url": store.base_url, "pairing_code": code }))
        .send()
        .await
        .unwrap();
    let status = res.status();
    assert_eq!(status, 201, "{}", res.text().await.unwrap_or_default());
    assert_eq!(proxied.load(Ordering::Relaxed), 0, "nothing went to the proxy");
    terminate(&child);
    wait_with_timeout(&mut child, Duration::from_secs(5));
}
