//! `ledger dev`: the whole system on one machine, for trying the product and for demos.

mod demo;
pub mod postgres;

use std::path::PathBuf;

use anyhow::Context as _;
use ledger_core::{Secret, Settings, config::Layers};
use url::Url;

use crate::{http, metrics, server, shutdown, telemetry, worker};

#[derive(Debug, Clone, clap::Args)]
pub struct DevArgs {
    /// Database to create (if missing) and use on the server named by DATABASE_URL.
    #[arg(long, default_value = "ledger_dev", value_name = "NAME")]
    pub db_name: String,
    /// Folder for local state (a private PostgreSQL cluster when one is needed).
    #[arg(long, default_value = ".ledger-dev", value_name = "DIR")]
    pub data_dir: PathBuf,
    /// Do not start the sandbox store and the demo merchant.
    #[arg(long)]
    pub no_sandbox: bool,
    /// How often the sandbox store places a new order.
    #[arg(long, default_value = "15s", value_parser = parse_duration, value_name = "DURATION")]
    pub activity_every: std::time::Duration,
    /// The sandbox store's tax configuration: `uk` (Magento's defaults, prices without
    /// VAT), `uk-b2c` (prices and shipping with VAT, coupons), `ie-oss` (an Irish store
    /// charging EU destination VAT, posting to an Irish business) or `eur-website` (a EUR
    /// website on a GBP business).
    #[arg(long, default_value = "uk-b2c", value_parser = parse_profile, value_name = "NAME")]
    pub store_profile: ledger_sandbox::magento::catalogue::StoreProfile,
}

pub(crate) fn parse_profile(v: &str) -> Result<ledger_sandbox::magento::catalogue::StoreProfile, String> {
    use ledger_sandbox::magento::catalogue::StoreProfile;
    StoreProfile::named(v).ok_or_else(|| format!("one of {}", StoreProfile::NAMES.join(", ")))
}

fn parse_duration(v: &str) -> Result<std::time::Duration, String> {
    ledger_core::config::parse_duration(v)
}

/// Runs database, server and worker in this process until SIGTERM/SIGINT.
pub async fn run(mut layers: Layers, args: DevArgs) -> anyhow::Result<()> {
    layers.default_to("log_format", "pretty");
    layers.default_to("allow_insecure_magento", "true");
    layers.default_to("allow_private_magento", "true");
    if layers.is_default("master_keys") {
        layers.default_to("master_keys", dev_master_keys(&args.data_dir)?.into_inner());
    }
    // A sandbox Sage (OAuth consent page with business choice, API) unless real Sage
    // credentials were configured.
    let sage = if args.no_sandbox || !layers.is_default("sage_client_id") {
        None
    } else {
        let sage = demo::start_sage().await?;
        layers.default_to("sage_authorize_url", sage.sage.authorize_url());
        layers.default_to("sage_token_url", sage.sage.token_url());
        layers.default_to("sage_revoke_url", sage.sage.revoke_url());
        layers.default_to("sage_api_base", sage.sage.api_base());
        layers.default_to("sage_client_id", sage.sage.config().client_id.clone());
        layers.default_to("sage_client_secret", sage.sage.config().client_secret.clone());
        Some(sage)
    };
    let derive_public_url = layers.is_default("public_url");
    let mut settings = Settings::from_layers(&layers)?;
    let _telemetry = telemetry::init(&settings)?;
    let shutdown = shutdown::on_signals();

    let server_url = Url::parse(settings.database_url.expose()).context("DATABASE_URL is not a URL")?;
    let private = postgres::ensure_server(&server_url, &args.data_dir).await?;
    let database_url = postgres::ensure_database(&server_url, &args.db_name).await?;
    settings.database_url = Secret::new(database_url.to_string());
    settings.migrate_on_start = true;

    let listener = server::bind(settings.http_addr).await?;
    let api_addr = listener.local_addr()?;
    if derive_public_url {
        settings.public_url = format!("http://{api_addr}");
    }
    let metrics_listener = metrics::bind(settings.metrics_addr).await?;
    let metrics_addr = metrics_listener.as_ref().map(|l| l.local_addr()).transpose()?;
    let state = crate::connect_checked(settings).await?;

    let metrics_task = metrics_listener.map(|l| tokio::spawn(metrics::serve(l, state.db.clone(), shutdown.clone())));
    let worker_task = tokio::spawn(worker::run(state.clone(), shutdown.clone()));
    let deadline = state.settings.shutdown_deadline;
    let server_task = tokio::spawn(server::serve_with(
        listener,
        http::router(state.clone()),
        shutdown.clone(),
        deadline,
        state.settings.header_read_timeout,
    ));

    let demo = if args.no_sandbox {
        None
    } else {
        match demo::start(
            &state,
            sage.as_ref(),
            args.activity_every,
            args.store_profile.clone(),
            shutdown.clone(),
        )
        .await
        {
            Ok(demo) => Some(demo),
            Err(err) => {
                tracing::error!(error = %format!("{err:#}"), "the sandbox demo did not start; the ledger runs without it");
                None
            }
        }
    };
    banner(
        &state.settings.public_url,
        metrics_addr,
        &database_url,
        private.as_ref(),
        demo.as_ref(),
    );

    let served = server_task.await?;
    shutdown.cancel();
    worker_task.await??;
    if let Some(task) = metrics_task {
        task.await??;
    }
    state.db.close().await;
    if let Some(pg) = private {
        pg.stop().await;
    }
    served?;
    tracing::info!("ledger dev stopped");
    Ok(())
}

/// The dev master key, kept in the data folder so restarts can read what earlier runs sealed.
fn dev_master_keys(data_dir: &std::path::Path) -> anyhow::Result<Secret<String>> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = data_dir.join("master-keys");
    if let Ok(text) = std::fs::read_to_string(&path) {
        return Ok(Secret::new(text.trim().to_owned()));
    }
    std::fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let spec = ledger_core::crypto::Keyring::generate_spec("dev1");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    std::io::Write::write_all(&mut file, spec.expose().as_bytes())?;
    Ok(spec)
}

#[allow(clippy::print_stdout, reason = "the banner is what `ledger dev` is for")]
fn banner(
    public_url: &str,
    metrics: Option<std::net::SocketAddr>,
    database: &Url,
    private: Option<&postgres::PrivatePostgres>,
    demo: Option<&demo::Demo>,
) {
    let mut shown = database.clone();
    let _ = shown.set_password(None);
    println!("ledger dev is running; stop it with Ctrl-C.");
    println!("  API          {public_url}");
    println!("  API docs     {public_url}/docs");
    println!("  Readiness    {public_url}/readyz");
    if let Some(addr) = metrics {
        println!("  Metrics      http://{addr}/metrics");
    }
    match private {
        Some(pg) => println!(
            "  Database     {shown} (private server, data in {})",
            pg.data_dir().display()
        ),
        None => println!("  Database     {shown}"),
    }
    if let Some(demo) = demo {
        println!(
            "  Store        {} (sandbox Magento store \"{}\", paired as binding {})",
            demo.store.base_url, demo.profile, demo.binding_id
        );
        if let Some((sage_url, business)) = &demo.sage_business {
            println!("  Sage         {sage_url} (sandbox; the demo binding posts to \"{business}\")");
        }
        println!("  Dashboard    {public_url}/dashboard");
        println!("  Demo login   {} / {}", demo::DEMO_EMAIL, demo::DEMO_PASSWORD);
        println!("  API token    {}", demo.token.expose());
        println!(
            "  Try          curl -H 'Authorization: Bearer {}' {public_url}/v1/bindings",
            demo.token.expose()
        );
    }
}

/// `ledger sandbox magento`: a store on its own, until Ctrl-C.
#[allow(clippy::print_stdout, reason = "the command's output")]
pub async fn run_magento_sandbox(
    addr: std::net::SocketAddr,
    seed: u64,
    drain_interval: std::time::Duration,
    backoff_divisor: u64,
    profile: ledger_sandbox::magento::catalogue::StoreProfile,
) -> anyhow::Result<()> {
    use ledger_sandbox::magento::{RunningStore, Store, StoreConfig};
    let shutdown = shutdown::on_signals();
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let store = Store::new(StoreConfig {
        seed,
        drain_interval,
        backoff_divisor,
        profile: profile.clone(),
        ..StoreConfig::default()
    });
    let running = RunningStore::start(store.clone(), listener, shutdown.clone())?;
    println!("Sandbox Magento store at {} (\"{}\")", running.base_url, profile.name);
    println!(
        "  Pairing code   {} (valid 30 minutes; POST /sandbox/pairing-code for another)",
        store.generate_pairing_code()
    );
    println!("  Admin view     {}/", running.base_url);
    shutdown.cancelled().await;
    running.stop().await;
    Ok(())
}
