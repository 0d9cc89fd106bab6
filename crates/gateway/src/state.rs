//! Process-wide state shared by handlers and workers.

use std::sync::Arc;

use ledger_core::{Settings, db};
use sqlx::PgPool;

/// Cheap to clone; everything inside is shared.
#[derive(Debug, Clone)]
pub struct AppState {
    pub db: PgPool,
    pub settings: Arc<Settings>,
}

impl AppState {
    /// Connects to the database and, when `migrate_on_start`, applies migrations.
    pub async fn connect(settings: Settings) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let pool = db::connect(&settings)
            .await
            .context("cannot connect to the database (DATABASE_URL)")?;
        if settings.migrate_on_start {
            db::migrate(&pool).await.context("applying migrations")?;
        }
        Ok(Self {
            db: pool,
            settings: Arc::new(settings),
        })
    }
}
