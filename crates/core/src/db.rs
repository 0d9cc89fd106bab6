//! The database pool, the one migrator, and error classification.

use std::collections::HashMap;

use sqlx::{
    PgPool,
    migrate::{MigrateError, Migrator},
    postgres::{PgConnectOptions, PgPoolOptions},
};

use crate::Settings;

/// All migrations in `migrations/`, embedded at compile time. The only `migrate!` in the workspace.
pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations");

/// Pool options from settings.
pub fn pool_options(settings: &Settings) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(settings.db_max_connections)
        .min_connections(settings.db_min_connections)
        .acquire_timeout(settings.db_acquire_timeout)
        .idle_timeout(Some(settings.db_idle_timeout))
}

pub fn connect_options(url: &str) -> Result<PgConnectOptions, sqlx::Error> {
    url.parse::<PgConnectOptions>().map(|o| o.application_name("ledger"))
}

/// Connects, failing fast when the server is unreachable. Every connection carries a
/// statement timeout and an idle-in-transaction timeout, so a stuck request cannot
/// hold locks (or a connection) for ever, and plans each statement once (see
/// [`PLAN_CACHE_MODE`]).
pub async fn connect(settings: &Settings) -> Result<PgPool, sqlx::Error> {
    let limit = format!("{}ms", settings.db_statement_timeout.as_millis());
    pool_options(settings)
        .connect_with(connect_options(settings.database_url.expose())?.options([
            ("statement_timeout", limit.as_str()),
            ("idle_in_transaction_session_timeout", limit.as_str()),
            PLAN_CACHE_MODE,
        ]))
        .await
}

/// Every statement is prepared once per connection and keeps its generic plan. Left to
/// itself, Postgres plans each execution afresh whenever the custom plans of a
/// statement's first five runs looked cheaper than the generic one — a choice made
/// once per connection from the tables as they were then: a worker whose connections
/// were opened with 100 bindings kept replanning the claim (≈0.6 ms a run, more than
/// running it) after the table grew to 10,000 (`--bench queue`: 0.46 of the bare loop
/// against 0.73 with generic plans). The queries put their partial-index predicates in
/// as constants, so a generic plan serves them as well as a custom one.
pub const PLAN_CACHE_MODE: (&str, &str) = ("plan_cache_mode", "force_generic_plan");

/// Applies pending migrations. sqlx holds a Postgres advisory lock for the whole run,
/// so processes that start together apply each migration exactly once. Migrations run
/// without the statement timeout (an index build may take longer).
pub async fn migrate(pool: &PgPool) -> Result<(), MigrateError> {
    let options = (*pool.connect_options())
        .clone()
        .options([("statement_timeout", "0"), ("idle_in_transaction_session_timeout", "0")]);
    let unlimited = PgPoolOptions::new().max_connections(1).connect_with(options).await?;
    let result = MIGRATOR.run(&unlimited).await;
    unlimited.close().await;
    result
}

/// Migrations this build knows that the database has not applied (or applied with a
/// different checksum). Empty means the schema is current.
pub async fn pending_migrations(pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(pool)
        .await?;
    let applied: HashMap<i64, Vec<u8>> = if exists {
        sqlx::query_as::<_, (i64, Vec<u8>)>("SELECT version, checksum FROM _sqlx_migrations WHERE success")
            .fetch_all(pool)
            .await?
            .into_iter()
            .collect()
    } else {
        HashMap::new()
    };
    Ok(MIGRATOR
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .filter(|m| applied.get(&m.version).is_none_or(|sum| sum.as_slice() != &*m.checksum))
        .map(|m| format!("{}_{}", m.version, m.description))
        .collect())
}

/// True for failures a retry can cure: connectivity, pool exhaustion, shutdown,
/// serialization conflicts and deadlocks.
pub fn is_transient(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08") // connection exception
                || matches!(&*code, "57P01" | "57P02" | "57P03" | "53300" | "40001" | "40P01")
        }),
        _ => false,
    }
}
