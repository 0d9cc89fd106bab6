//! Command-line interface of the `ledger` binary.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::dev::DevArgs;

/// The hosted side of the Magento 2 → Sage Business Cloud Accounting connector.
///
/// Settings come from built-in defaults, then an optional TOML file (--config or
/// LEDGER_CONFIG), then environment variables (LEDGER_*, DATABASE_URL); every setting
/// is documented in config/ledger.default.toml. Bad configuration exits with code 2.
#[derive(Debug, Parser)]
#[command(name = "ledger", version)]
pub struct Cli {
    /// Settings file (TOML, keys as in config/ledger.default.toml). Also: LEDGER_CONFIG.
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP API, the Magento webhooks and the web pages on LEDGER_HTTP_ADDR,
    /// with Prometheus metrics on LEDGER_METRICS_ADDR. Stops gracefully on SIGTERM/SIGINT.
    Serve,
    /// Run the background jobs (sync, callbacks to Magento, health pings, housekeeping).
    /// Any number of workers may share one database. Stops gracefully on SIGTERM/SIGINT.
    Worker,
    /// Apply pending database migrations and exit (safe to run while other processes start).
    Migrate,
    /// Run everything on this machine: creates and migrates the `ledger_dev` database
    /// (starting a private PostgreSQL when none answers at DATABASE_URL), then the server
    /// and the worker in one process, and prints the URLs.
    Dev(DevArgs),
    /// Operator commands for merchant accounts.
    #[command(subcommand)]
    Merchant(MerchantCommand),
    /// Operator actions on sync runs (the same as the API's).
    #[command(subcommand)]
    Runs(RunsCommand),
    /// An account's API tokens: list them, issue one (printed once), revoke one.
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// Master-key management for the secrets stored in the database.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Run a simulator on its own (for trying the ledger against a local "store").
    #[command(subcommand)]
    Sandbox(SandboxCommand),
    /// Print the OpenAPI document generated from the code, or with --check compare it
    /// with a committed file and fail when they differ.
    Openapi {
        /// The committed document to compare with (e.g. openapi/ledger.json).
        #[arg(long, value_name = "FILE")]
        check: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum MerchantCommand {
    /// Create an account with its first tenant and an API token; prints one JSON object
    /// with `account_id`, `tenant_id` and `token` (shown only this once).
    Create {
        /// The account's email (also its sign-in name).
        #[arg(long)]
        email: String,
        /// Sign-in password (at least 10 characters). Without it the account can use
        /// its API token only. Visible to other users of the machine (ps, shell
        /// history): prefer --password-stdin.
        #[arg(long, conflicts_with = "password_stdin")]
        password: Option<String>,
        /// Read the sign-in password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
        /// Make the account an operator (ops console access).
        #[arg(long)]
        operator: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// One line of JSON per token of the account (never the token itself).
    List {
        #[arg(long)]
        email: String,
    },
    /// Issue a token; prints one JSON object with `id`, `token` (shown only this once)
    /// and `expires_at`.
    Create {
        #[arg(long)]
        email: String,
        /// What the token is for.
        #[arg(long, default_value = "cli")]
        name: String,
        /// Lifetime, e.g. 30d (default LEDGER_API_TOKEN_TTL).
        #[arg(long, value_parser = ledger_core::config::parse_duration)]
        ttl: Option<std::time::Duration>,
    },
    /// Revoke a token by its id (it stops working at once).
    Revoke {
        #[arg(long)]
        email: String,
        #[arg(long)]
        id: uuid::Uuid,
    },
}

#[derive(Debug, Subcommand)]
pub enum SandboxCommand {
    /// A Magento store running the byte8 module: pairing, outbox drain, canonical
    /// entities, sync-state mirror. Prints its URL and a fresh pairing code; its admin
    /// view is at `/`, its controls under `/sandbox/*`.
    Magento {
        /// Where the store listens.
        #[arg(long, default_value = "127.0.0.1:8300")]
        addr: std::net::SocketAddr,
        /// Catalogue and order generation seed.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// How often the outbox cron runs (the module: 60s).
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        drain_interval: std::time::Duration,
        /// Divides the module's retry ladder (1 = real time).
        #[arg(long, default_value_t = 1)]
        backoff_divisor: u64,
        /// The store's tax configuration (as `ledger dev --store-profile`).
        #[arg(long, default_value = "uk", value_parser = crate::dev::parse_profile, value_name = "NAME")]
        profile: ledger_sandbox::magento::catalogue::StoreProfile,
    },
}

fn parse_duration(v: &str) -> Result<std::time::Duration, String> {
    ledger_core::config::parse_duration(v)
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Re-encrypt every stored secret under the active master key (the first in
    /// LEDGER_MASTER_KEYS), in batches, while the ledger keeps running. Prints the rows
    /// left after each batch; when it reports 0, older keys can be removed.
    Rotate {
        /// Rows per batch (each batch is one short transaction).
        #[arg(long, default_value_t = 200)]
        batch: i64,
    },
    /// How many stored secrets each key id protects.
    Status,
}

#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// Queue a failed, dead or skipped sync run again.
    Retry {
        /// The sync run id.
        run: uuid::Uuid,
    },
    /// Queue every dead and failed run of a binding again.
    RetryDead {
        #[arg(long)]
        binding: ledger_core::BindingId,
    },
    /// Give up on a pending, failed or dead run (recorded as skipped by an operator).
    Skip { run: uuid::Uuid },
}
