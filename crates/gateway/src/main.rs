//! `ledger`: one binary, one subcommand per process type.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use ledger_core::{
    ConfigError, Settings,
    config::{CONFIG_FILE_ENV, Layers},
};
use ledger_gateway::{
    AppState,
    cli::{Cli, Command, KeysCommand, MerchantCommand, RunsCommand, SandboxCommand, TokensCommand},
    dev, http, metrics, openapi, server, shutdown, telemetry, worker,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    ledger_gateway::install_crypto_provider();

    if let Command::Openapi { check } = &cli.command {
        return openapi_command(check.as_deref());
    }

    let layers = match collect_layers(&cli) {
        Ok(layers) => layers,
        Err(err) => return config_failure(&err),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("starting the Tokio runtime");
    match runtime.block_on(run(cli.command, layers)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => match err.downcast_ref::<ConfigError>() {
            Some(config) => config_failure(config),
            None => {
                report(&format!("ledger: {err:#}"));
                ExitCode::FAILURE
            }
        },
    }
}

fn collect_layers(cli: &Cli) -> Result<Layers, ConfigError> {
    let from_env = std::env::var_os(CONFIG_FILE_ENV)
        .filter(|v| !v.is_empty())
        .map(std::path::PathBuf::from);
    let file = cli.config.clone().or(from_env);
    Layers::collect(file.as_deref(), &|name| std::env::var(name).ok())
}

/// Exit code 2 with one line naming the setting.
fn config_failure(err: &ConfigError) -> ExitCode {
    report(&format!("ledger: bad configuration: {err}"));
    ExitCode::from(2)
}

#[allow(
    clippy::print_stderr,
    reason = "the CLI's own error line, printed before or without logging"
)]
fn report(line: &str) {
    eprintln!("{line}");
}

/// The worker's own default metrics port, so `ledger serve` and `ledger worker` run side
/// by side on one host without configuration (each listener would otherwise take 9464).
pub const WORKER_METRICS_ADDR: &str = "127.0.0.1:9465";

/// Defaults that differ by process type (never over what a file or the environment set).
fn process_defaults(command: &Command, layers: &mut Layers) {
    if matches!(command, Command::Worker) {
        layers.default_to("metrics_addr", WORKER_METRICS_ADDR);
    }
}

async fn run(command: Command, mut layers: Layers) -> anyhow::Result<()> {
    process_defaults(&command, &mut layers);
    if let Command::Dev(args) = command {
        return dev::run(layers, args).await;
    }
    if let Command::Sandbox(SandboxCommand::Magento {
        addr,
        seed,
        drain_interval,
        backoff_divisor,
        profile,
    }) = command
    {
        return dev::run_magento_sandbox(addr, seed, drain_interval, backoff_divisor, profile).await;
    }
    let settings = Settings::from_layers(&layers)?;
    let _telemetry = telemetry::init(&settings)?;
    match command {
        Command::Migrate => {
            let pool = ledger_core::db::connect(&settings)
                .await
                .context("cannot connect to the database (DATABASE_URL)")?;
            ledger_core::db::migrate(&pool).await.context("applying migrations")?;
            tracing::info!(
                migrations = ledger_core::db::MIGRATOR.iter().count(),
                "database schema is current"
            );
            Ok(())
        }
        Command::Serve => {
            let listener = server::bind(settings.http_addr).await?;
            let metrics_listener = metrics::bind(settings.metrics_addr).await?;
            let state = ledger_gateway::connect_checked(settings).await?;
            let shutdown = shutdown::on_signals();
            tracing::info!(addr = %listener.local_addr()?, "serving");
            let metrics_task =
                metrics_listener.map(|l| tokio::spawn(metrics::serve(l, state.db.clone(), shutdown.clone())));
            let deadline = state.settings.shutdown_deadline;
            let header_read_timeout = state.settings.header_read_timeout;
            server::serve_with(listener, http::router(state), shutdown, deadline, header_read_timeout).await?;
            if let Some(task) = metrics_task {
                task.await??;
            }
            tracing::info!("stopped");
            Ok(())
        }
        Command::Worker => {
            let metrics_listener = metrics::bind(settings.metrics_addr).await?;
            let state = ledger_gateway::connect_checked(settings).await?;
            let shutdown = shutdown::on_signals();
            let metrics_task =
                metrics_listener.map(|l| tokio::spawn(metrics::serve(l, state.db.clone(), shutdown.clone())));
            tracing::info!("worker running");
            worker::run(state, shutdown).await?;
            if let Some(task) = metrics_task {
                task.await??;
            }
            tracing::info!("stopped");
            Ok(())
        }
        Command::Merchant(MerchantCommand::Create {
            email,
            password,
            password_stdin,
            operator,
        }) => {
            let password = if password_stdin {
                let mut line = String::new();
                std::io::stdin()
                    .read_line(&mut line)
                    .context("reading the password from standard input")?;
                Some(line.trim_end_matches(['\r', '\n']).to_owned())
            } else {
                if password.is_some() {
                    report(
                        "ledger: warning: --password is visible to other users (ps, shell history); use --password-stdin",
                    );
                }
                password
            };
            let pool = ledger_core::db::connect(&settings)
                .await
                .context("cannot connect to the database (DATABASE_URL)")?;
            if settings.migrate_on_start {
                ledger_core::db::migrate(&pool).await.context("applying migrations")?;
            }
            let created = ledger_tenant_binding::accounts::create_account(
                &pool,
                &email,
                password.map(ledger_core::Secret::new),
                operator,
            )
            .await
            .map_err(|e| match e {
                ledger_tenant_binding::accounts::CreateAccountError::Invalid(errors) => anyhow::anyhow!(
                    "{}",
                    errors
                        .iter()
                        .map(|e| format!("{}: {}", e.field, e.message))
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
                other => anyhow::Error::new(other),
            })?;
            let token = ledger_tenant_binding::accounts::create_api_token(
                &pool,
                created.account_id,
                "cli",
                settings.api_token_ttl,
            )
            .await?;
            print_json(&serde_json::json!({
                "account_id": created.account_id,
                "tenant_id": created.tenant_id,
                "token": token.expose(),
            }));
            Ok(())
        }
        Command::Tokens(action) => {
            let pool = ledger_core::db::connect(&settings)
                .await
                .context("cannot connect to the database (DATABASE_URL)")?;
            let email = match &action {
                TokensCommand::List { email }
                | TokensCommand::Create { email, .. }
                | TokensCommand::Revoke { email, .. } => email.trim().to_ascii_lowercase(),
            };
            let account: uuid::Uuid = sqlx::query_scalar("SELECT id FROM accounts WHERE lower(email) = $1")
                .bind(&email)
                .fetch_optional(&pool)
                .await?
                .with_context(|| format!("there is no account {email}"))?;
            let account = ledger_core::AccountId(account);
            use ledger_tenant_binding::tokens;
            match action {
                TokensCommand::List { .. } => {
                    for token in tokens::list(&pool, account).await? {
                        print_json(&serde_json::to_value(&token)?);
                    }
                }
                TokensCommand::Create { name, ttl, .. } => {
                    let issued = tokens::issue(&pool, account, &name, ttl.unwrap_or(settings.api_token_ttl)).await?;
                    print_json(&serde_json::json!({
                        "id": issued.id,
                        "token": issued.token.expose(),
                        "expires_at": issued.expires_at,
                    }));
                }
                TokensCommand::Revoke { id, .. } => {
                    if !tokens::revoke(&pool, account, id, ledger_core::audit::Actor::System).await? {
                        anyhow::bail!("{email} has no live API token {id}");
                    }
                    print_line(&format!("token {id} revoked"));
                }
            }
            Ok(())
        }
        Command::Runs(action) => {
            let state = ledger_gateway::connect_checked(settings).await?;
            let actor = ledger_core::audit::Actor::System;
            let line = match action {
                RunsCommand::Retry { run } => match ledger_sage_sync::runs::retry(&state, run, actor).await? {
                    true => format!("run {run} queued again"),
                    false => anyhow::bail!("run {run} does not exist or is not failed, dead or skipped"),
                },
                RunsCommand::RetryDead { binding } => {
                    format!(
                        "{} runs queued again",
                        ledger_sage_sync::runs::retry_dead(&state, binding, actor).await?
                    )
                }
                RunsCommand::Skip { run } => match ledger_sage_sync::runs::skip(&state, run, actor).await? {
                    true => format!("run {run} skipped"),
                    false => anyhow::bail!("run {run} does not exist or is already synced or skipped"),
                },
            };
            print_line(&line);
            Ok(())
        }
        Command::Keys(keys) => {
            let mut settings = settings;
            settings.migrate_on_start = false;
            let state = AppState::connect(settings).await?;
            match keys {
                KeysCommand::Rotate { batch } => {
                    let active = state.keyring.active_id().to_owned();
                    let report = ledger_sage_vault::rotation::rotate_all(&state, batch.max(1), |left| {
                        print_line(&format!("rotating to key {active}: {left} rows left"));
                    })
                    .await?;
                    let left: i64 = ledger_sage_vault::rotation::remaining(&state.db, &state.keyring)
                        .await?
                        .iter()
                        .map(|(_, n)| n)
                        .sum();
                    print_line(&format!(
                        "done: {} rewritten, {} already rewritten by live traffic, {left} rows left on older keys",
                        report.rewritten, report.superseded
                    ));
                    if !report.failed.is_empty() {
                        anyhow::bail!(
                            "{} values could not be opened: {}",
                            report.failed.len(),
                            report.failed.join("; ")
                        );
                    }
                    Ok(())
                }
                KeysCommand::Status => {
                    for (column, left) in ledger_sage_vault::rotation::remaining(&state.db, &state.keyring).await? {
                        print_line(&format!(
                            "{}.{}: {left} not on the active key",
                            column.table, column.column
                        ));
                    }
                    Ok(())
                }
            }
        }
        Command::Dev(_) | Command::Openapi { .. } | Command::Sandbox(_) => unreachable!("handled above"),
    }
}

#[allow(clippy::print_stdout, reason = "the command's output")]
fn print_json(value: &serde_json::Value) {
    println!("{value}");
}

#[allow(clippy::print_stdout, reason = "the command's output")]
fn print_line(line: &str) {
    println!("{line}");
}

#[allow(clippy::print_stdout, reason = "the document is the command's output")]
fn openapi_command(check: Option<&std::path::Path>) -> ExitCode {
    let generated = openapi::document_json();
    let Some(path) = check else {
        print!("{generated}");
        return ExitCode::SUCCESS;
    };
    let committed = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) => {
            report(&format!("ledger: cannot read {}: {err}", path.display()));
            return ExitCode::FAILURE;
        }
    };
    match openapi::drift(&committed, &generated) {
        None => ExitCode::SUCCESS,
        Some(difference) => {
            report(&format!(
                "ledger: {} is out of date ({difference}); regenerate it with `just openapi`",
                path.display()
            ));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serve_and_worker_default_to_their_own_metrics_ports_unless_configured() {
        let addr = |command: Command, env: &dyn Fn(&str) -> Option<String>| {
            let mut layers = Layers::collect(None, env).unwrap();
            process_defaults(&command, &mut layers);
            Settings::from_layers(&layers).unwrap().metrics_addr
        };
        let none = |_: &str| None;
        assert_eq!(addr(Command::Serve, &none), Some("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(addr(Command::Worker, &none), Some("127.0.0.1:9465".parse().unwrap()));
        let set = |k: &str| (k == "LEDGER_METRICS_ADDR").then(|| "0.0.0.0:9464".to_owned());
        assert_eq!(addr(Command::Worker, &set), Some("0.0.0.0:9464".parse().unwrap()));
    }
}
