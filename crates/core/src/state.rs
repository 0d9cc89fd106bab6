//! Process-wide state shared by handlers and workers of every feature crate.

use std::sync::Arc;

use sqlx::PgPool;

use crate::{Settings, crypto::Keyring, db};

/// Cheap to clone; everything inside is shared.
#[derive(Debug, Clone)]
pub struct AppState {
    pub db: PgPool,
    pub settings: Arc<Settings>,
    pub keyring: Arc<Keyring>,
    /// Password hashes computed at once (`LEDGER_PASSWORD_HASH_CONCURRENCY`): argon2id
    /// takes 19 MiB each, so unbounded parallel sign-ups would exhaust the pod.
    pub password_hashing: Arc<tokio::sync::Semaphore>,
}

impl AppState {
    /// Connects to the database and, when `migrate_on_start`, applies migrations.
    /// Fails with a [`crate::ConfigError`] when the master keys are missing.
    pub async fn connect(settings: Settings) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let keyring = settings.keyring()?;
        let pool = db::connect(&settings)
            .await
            .context("cannot connect to the database (DATABASE_URL)")?;
        if settings.migrate_on_start {
            db::migrate(&pool).await.context("applying migrations")?;
        }
        Ok(Self {
            db: pool,
            password_hashing: Arc::new(tokio::sync::Semaphore::new(settings.password_hash_concurrency)),
            settings: Arc::new(settings),
            keyring,
        })
    }
}
