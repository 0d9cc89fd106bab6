//! The chaos soak (issue 14): real `ledger worker` processes syncing a backlog of
//! invoices, payments and credit memos from many sandbox stores, each on its own Sage
//! business, on a private PostgreSQL, while the soak SIGKILLs workers, restarts
//! PostgreSQL mid-load, makes Sage answer 5xx, 429 and too slowly and drop answers after
//! committing, and moves one store's clock ±120 s. Then it stops the chaos, lets the
//! ledger finish and reports what must hold:
//!
//! - events acknowledged (202) vs events the ledger holds: none lost;
//! - Sage documents per Magento document: exactly one;
//! - runs not terminal at the end: none;
//! - time to recover once the database is back (goal < 5 s);
//! - the webhook answers the stores saw while the database was down (503 only).
//!
//! `cargo bench -p ledger-gateway --bench soak` (not a CI test: minutes). Sizes:
//! `SOAK_BINDINGS` (50), `SOAK_ORDERS` per store (200: 10,000 invoices), `SOAK_KILLS`
//! (100). Results also go to `target/bench/soak.json`.

#![allow(
    clippy::print_stdout,
    clippy::float_arithmetic,
    reason = "a soak prints what it measured"
)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::{
    collections::{BTreeMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use common::{Reaper, process, spawn};
use ledger_sandbox::{
    magento::{OutboxStatus, StoreConfig},
    sage::{SageConfig, SageFaults},
};
use ledger_test_support::TestApp;
use serde_json::{Value, json};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    // A private server on a free port, so restarting it disturbs nothing else. The soak
    // runs as a child of itself with DATABASE_URL pointing there (the test support reads it).
    if std::env::var_os("SOAK_CHILD").is_none() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let status = std::process::Command::new(std::env::current_exe().expect("this binary"))
            .args(std::env::args_os().skip(1))
            .env("SOAK_CHILD", "1")
            .env("DATABASE_URL", format!("postgres://postgres@127.0.0.1:{port}/postgres"))
            .status()
            .expect("running the soak");
        std::process::exit(status.code().unwrap_or(1));
    }
    let url = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(url));
}

/// Something small and random enough for choosing victims and faults.
struct Dice(u64);

impl Dice {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

fn kill(child: &std::process::Child) {
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &child.id().to_string()])
        .status();
}

/// One document kind in Sage's books against what the ledger synced.
#[derive(Debug, Default)]
struct Tally {
    found: usize,
    duplicated: usize,
    missing: usize,
}

async fn count(db: &sqlx::PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(db).await.unwrap_or(-1)
}

async fn run(url: String) {
    let dir = std::env::temp_dir().join("ledger-soak");
    let server = ledger_gateway::dev::postgres::ensure_server(&url.parse().expect("URL"), &dir)
        .await
        .expect("a private PostgreSQL")
        .expect("nothing else listens on the soak's port");
    let bindings = env_usize("SOAK_BINDINGS", 50);
    let orders = env_usize("SOAK_ORDERS", 200);
    let kills_wanted = env_usize("SOAK_KILLS", 100);

    let keys = ledger_core::crypto::Keyring::generate_spec("k1").expose().clone();
    let app = TestApp::builder()
        .sage(SageConfig {
            rate_limit: None,
            businesses: (0..bindings)
                .map(|i| (format!("Shop {i} Ltd"), "GB".to_owned()))
                .collect(),
            ..SageConfig::default()
        })
        .configure({
            let keys = keys.clone();
            move |s| {
                s.master_keys = Some(Arc::new(ledger_core::crypto::Keyring::parse(&keys).expect("keys")));
                s.binding_ingest_per_minute = u32::MAX;
                s.log_level = "error".into();
                s.db_max_connections = 20;
            }
        })
        .spawn()
        .await;
    let db = app.state.db.clone();
    let mut stores = Vec::new();
    for i in 0..bindings {
        let paired = app
            .paired_store_with(StoreConfig {
                seed: 1_000 + i as u64,
                backoff_divisor: 30,
                drain_interval: Duration::from_secs(3600),
                ..StoreConfig::default()
            })
            .await;
        app.connect_to_business(&paired, &format!("Shop {i} Ltd")).await;
        let business: String = sqlx::query_scalar("SELECT business_id FROM sage_connections WHERE binding_id = $1")
            .bind(paired.binding_id.0)
            .fetch_one(&db)
            .await
            .expect("business");
        app.map_payments(&paired, &business).await;
        stores.push((paired, business));
    }
    let stores = Arc::new(stores);
    println!("{bindings} stores paired, each on its own Sage business");

    let env = [
        ("LEDGER_JOB_LEASE", "5s"),
        ("LEDGER_SAGE_CALL_BUDGET", "100000"),
        ("LEDGER_SAGE_TIMEOUT", "2s"),
        ("LEDGER_LOG_LEVEL", "error"),
    ];
    let worker = || spawn(&mut process(&app, &keys, "worker", &env));
    let mut workers: Vec<Reaper> = vec![worker(), worker()];

    // Load: every store places its orders in slices while its outbox drains.
    let loading = Arc::new(AtomicBool::new(true));
    let draining = Arc::new(AtomicBool::new(true));
    let mut tasks = Vec::new();
    for k in 0..stores.len() {
        let (stores, loading, draining) = (stores.clone(), loading.clone(), draining.clone());
        tasks.push(tokio::spawn(async move {
            let store = &stores[k].0.store.store;
            let mut placed = 0;
            while draining.load(Ordering::Relaxed) {
                if placed < orders {
                    let n = (orders - placed).min(10);
                    store.simulate(n);
                    placed += n;
                } else if k == 0 {
                    loading.store(false, Ordering::Relaxed);
                }
                store.drain_once().await;
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        }));
    }

    // Chaos until the load is in and enough workers have died.
    let started = Instant::now();
    let mut dice = Dice(0x5eed_1234_abcd_ef01);
    let (mut kills, mut restarted) = (0, None);
    let skewed = &stores[0].0.store.store;
    let sage = app.sage().clone();
    let mut outage = None;
    while loading.load(Ordering::Relaxed) || kills < kills_wanted {
        tokio::time::sleep(Duration::from_millis(400 + dice.below(800))).await;
        let victim = usize::try_from(dice.below(workers.len() as u64)).unwrap_or(0);
        kill(&workers[victim]);
        let _ = workers[victim].0.wait();
        workers[victim] = worker();
        kills += 1;
        // Sage misbehaves in turns: 5xx, 429, too slow, answers lost after commit.
        sage.set_faults(match dice.below(5) {
            0 => SageFaults {
                api_status: 503,
                api_failures: 3,
                ..SageFaults::default()
            },
            1 => SageFaults {
                api_status: 429,
                api_failures: 3,
                ..SageFaults::default()
            },
            2 => SageFaults {
                api_delay_ms: 2_500,
                ..SageFaults::default()
            },
            3 => SageFaults {
                drop_after_commit: 3,
                ..SageFaults::default()
            },
            _ => SageFaults::default(),
        });
        let t = started.elapsed().as_secs();
        skewed.set_clock_skew(match t {
            20..40 => 120,
            40..60 => -120,
            _ => 0,
        });
        // PostgreSQL restarts once, a third of the way into the chaos.
        if restarted.is_none() && kills == kills_wanted / 3 {
            let down = Instant::now();
            server.restart().await.expect("restart PostgreSQL");
            let back = Instant::now();
            // Recovery: the first run finished after the database came back.
            let recovered = loop {
                let n: Option<i64> = sqlx::query_scalar(
                    "SELECT count(*) FROM sync_runs WHERE finished_at > now() - make_interval(secs => $1)",
                )
                .bind(back.elapsed().as_secs_f64())
                .fetch_one(&db)
                .await
                .ok();
                if n.unwrap_or(0) > 0 || back.elapsed() > Duration::from_secs(60) {
                    break back.elapsed();
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            restarted = Some((back - down, recovered));
            outage = Some((down, back + recovered));
        }
    }
    sage.set_faults(SageFaults::default());
    skewed.set_clock_skew(0);
    let chaos = started.elapsed();
    println!("chaos over after {:.0} s: {kills} SIGKILLs", chaos.as_secs_f64());

    // The ledger finishes: outboxes empty, every job done.
    let settle = Instant::now();
    loop {
        let open = count(&db, "SELECT count(*) FROM jobs WHERE status IN ('queued', 'running')").await;
        let pending: usize = stores
            .iter()
            .map(|(p, _)| {
                p.store
                    .store
                    .outbox()
                    .iter()
                    .filter(|r| r.status == OutboxStatus::Pending)
                    .count()
            })
            .sum();
        if open == 0 && pending == 0 {
            break;
        }
        if settle.elapsed() > Duration::from_secs(900) {
            println!("not settled after 15 minutes: {open} jobs, {pending} outbox rows open");
            break;
        }
        let _ = sqlx::query("UPDATE jobs SET run_at = now() WHERE status = 'queued' AND run_at > now()")
            .execute(&db)
            .await;
        let _ = sqlx::query("SELECT pg_notify('ledger_jobs', 'soak')")
            .execute(&db)
            .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    draining.store(false, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    for w in &workers {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &w.id().to_string()])
            .status();
    }

    // What must hold.
    let (mut acked, mut dead_lettered, mut lost) = (0, 0, 0);
    let (mut invoices, mut payments, mut credit_notes) = (Tally::default(), Tally::default(), Tally::default());
    let mut allocations_twice = 0;
    let mut outage_answers: BTreeMap<String, u64> = BTreeMap::new();
    for (paired, business) in stores.iter() {
        let store = &paired.store.store;
        let outbox = store.outbox();
        let held: HashSet<String> =
            sqlx::query_scalar::<_, String>("SELECT idempotency_key FROM received_events WHERE binding_id = $1")
                .bind(paired.binding_id.0)
                .fetch_all(&db)
                .await
                .expect("events")
                .into_iter()
                .collect();
        for row in &outbox {
            match row.status {
                OutboxStatus::Succeeded => {
                    acked += 1;
                    if !held.contains(&row.idempotency_key) {
                        lost += 1;
                    }
                }
                OutboxStatus::DeadLettered => dead_lettered += 1,
                OutboxStatus::Pending => {}
            }
        }
        // Sage's invoices by reference: one per Magento invoice the ledger synced.
        let books: Value = reqwest::get(format!(
            "{}/sandbox/businesses/{business}/books",
            app.sage.as_ref().expect("sage").base_url
        ))
        .await
        .expect("books")
        .json::<Value>()
        .await
        .expect("books body")["books"]
            .clone();
        // Each document kind by reference: one per Magento document the ledger synced,
        // none twice. Voided and deleted documents do not count.
        for (kind, event, tally) in [
            ("sales_invoices", "invoice.created", &mut invoices),
            ("contact_payments", "invoice.paid", &mut payments),
            ("sales_credit_notes", "creditmemo.created", &mut credit_notes),
        ] {
            let mut by_reference: BTreeMap<String, usize> = BTreeMap::new();
            for doc in books[kind].as_array().into_iter().flatten() {
                if doc["status"]["id"] != "VOID" && doc["deleted_at"].is_null() {
                    *by_reference
                        .entry(doc["reference"].as_str().unwrap_or_default().to_owned())
                        .or_default() += 1;
                }
            }
            let synced: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM sync_runs WHERE binding_id = $1 AND event_name = $2 AND status = 'synced'",
            )
            .bind(paired.binding_id.0)
            .bind(event)
            .fetch_one(&db)
            .await
            .unwrap_or(0);
            tally.found += by_reference.len();
            tally.duplicated += by_reference.values().filter(|n| **n > 1).count();
            tally.missing += usize::try_from(synced).unwrap_or(0).saturating_sub(by_reference.len());
        }
        // A credit note is allocated against its invoice once at most.
        let mut allocated: BTreeMap<String, usize> = BTreeMap::new();
        for a in books["contact_allocations"].as_array().into_iter().flatten() {
            for artefact in a["allocated_artefacts"].as_array().into_iter().flatten() {
                if artefact["amount"].as_str().is_some_and(|v| v.starts_with('-'))
                    || artefact["amount"].as_f64().is_some_and(|v| v < 0.0)
                {
                    *allocated
                        .entry(artefact["artefact_id"].as_str().unwrap_or_default().to_owned())
                        .or_default() += 1;
                }
            }
        }
        allocations_twice += allocated.values().filter(|n| **n > 1).count();
        if let Some((from, to)) = outage {
            for (status, n) in store.answers_between(from, to) {
                *outage_answers.entry(status).or_default() += n;
            }
        }
    }
    let not_terminal = count(
        &db,
        "SELECT count(*) FROM sync_runs WHERE status IN ('pending', 'running')",
    )
    .await;
    let failed = count(&db, "SELECT count(*) FROM sync_runs WHERE status IN ('failed', 'dead')").await;
    let runs = count(&db, "SELECT count(*) FROM sync_runs").await;
    let poisoned = count(
        &db,
        "SELECT count(*) FROM sync_runs WHERE error_code = 'job_lease_lost'",
    )
    .await;
    let (restart, recovery) = restarted.unwrap_or_default();
    let report = json!({
        "bindings": bindings, "orders_per_store": orders, "sigkills": kills,
        "chaos_seconds": chaos.as_secs_f64(), "settle_seconds": settle.elapsed().as_secs_f64(),
        "events_acknowledged": acked, "events_lost": lost, "events_dead_lettered": dead_lettered,
        "runs": runs, "runs_not_terminal": not_terminal, "runs_failed_or_dead": failed, "runs_poisoned": poisoned,
        "sage_invoices": invoices.found, "sage_invoices_duplicated": invoices.duplicated, "magento_invoices_missing_in_sage": invoices.missing,
        "sage_payments": payments.found, "sage_payments_duplicated": payments.duplicated, "magento_payments_missing_in_sage": payments.missing,
        "sage_credit_notes": credit_notes.found, "sage_credit_notes_duplicated": credit_notes.duplicated,
        "magento_credit_memos_missing_in_sage": credit_notes.missing, "credit_notes_allocated_twice": allocations_twice,
        "postgres_restart_seconds": restart.as_secs_f64(), "recovery_after_database_seconds": recovery.as_secs_f64(),
        "webhook_answers_during_outage": outage_answers,
    });
    println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench");
    let _ = std::fs::create_dir_all(&out);
    let _ = std::fs::write(out.join("soak.json"), report.to_string());
    drop(workers);
    drop(app);
    server.stop().await;
    assert_eq!(
        (
            lost,
            invoices.duplicated + payments.duplicated + credit_notes.duplicated + allocations_twice,
            invoices.missing + payments.missing + credit_notes.missing,
            not_terminal
        ),
        (0, 0, 0, 0),
        "the soak's invariants: nothing lost, duplicated, missing or left open"
    );
}
