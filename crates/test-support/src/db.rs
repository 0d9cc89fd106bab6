use std::time::Duration;

use ledger_core::db::MIGRATOR;
use sqlx::{Connection as _, Executor as _, PgConnection, PgPool, postgres::PgPoolOptions};
use tokio::sync::OnceCell;

/// `DATABASE_URL`, or the local server with trust auth.
pub fn admin_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

fn with_database(url: &str, name: &str) -> String {
    let mut url = url::Url::parse(url).expect("DATABASE_URL is a URL");
    url.set_path(&format!("/{name}"));
    url.to_string()
}

/// A fresh, migrated database, dropped (with any open connections) on drop.
#[derive(Debug)]
pub struct TestDb {
    name: String,
    url: String,
}

impl TestDb {
    pub async fn new() -> Self {
        let template = template().await;
        let name = format!("ledger_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&admin_url())
            .await
            .expect("connecting to PostgreSQL at DATABASE_URL");
        admin
            .execute(sqlx::AssertSqlSafe(format!(
                "CREATE DATABASE {name} TEMPLATE {template}"
            )))
            .await
            .expect("creating the test database");
        let _ = admin.close().await;
        Self {
            url: with_database(&admin_url(), &name),
            name,
        }
    }

    /// A database with no schema at all (for testing migrations themselves).
    pub async fn empty() -> Self {
        let name = format!("ledger_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&admin_url())
            .await
            .expect("connecting to PostgreSQL at DATABASE_URL");
        admin
            .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .expect("creating the test database");
        let _ = admin.close().await;
        Self {
            url: with_database(&admin_url(), &name),
            name,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// A small pool on this database.
    pub async fn pool(&self) -> PgPool {
        PgPoolOptions::new()
            .max_connections(5)
            .acquire_timeout(Duration::from_secs(10))
            .connect(&self.url)
            .await
            .expect("connecting to the test database")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside async context: use a private runtime on a plain thread.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(async {
                let mut admin = PgConnection::connect(&admin_url()).await?;
                admin
                    .execute(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .await?;
                admin.close().await
            })
            .map_err(std::io::Error::other)
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            // Leaving a database behind is not a test failure; the next run ignores it.
            let _ = std::io::Write::write_all(&mut std::io::stderr(), b"warning: a test database was not dropped\n");
        }
    }
}

/// The migrated template's name, building it once per migration set.
async fn template() -> String {
    static NAME: OnceCell<String> = OnceCell::const_new();
    NAME.get_or_init(|| async {
        let name = format!("ledger_tpl_{:016x}", migrations_hash());
        build_template(&name).await.expect("building the template database");
        name
    })
    .await
    .clone()
}

fn migrations_hash() -> u64 {
    // FNV-1a over every migration's version and checksum: a new or edited migration
    // yields a new template.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for m in MIGRATOR.iter() {
        for byte in m.version.to_le_bytes().iter().chain(m.checksum.iter()) {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

async fn build_template(name: &str) -> Result<(), sqlx::Error> {
    let mut admin = PgConnection::connect(&admin_url()).await?;
    // Session lock: concurrent test processes wait here while one builds.
    sqlx::query("SELECT pg_advisory_lock(hashtext($1))")
        .bind(name)
        .execute(&mut admin)
        .await?;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(name)
        .fetch_one(&mut admin)
        .await?;
    if !exists {
        // Build under another name and rename, so a crash never leaves a half-built template.
        let building = format!("{name}_building");
        admin
            .execute(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {building} WITH (FORCE)"
            )))
            .await?;
        admin
            .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {building}")))
            .await?;
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect(&with_database(&admin_url(), &building))
            .await?;
        ledger_core::db::migrate(&pool).await?;
        pool.close().await;
        admin
            .execute(sqlx::AssertSqlSafe(format!(
                "ALTER DATABASE {building} RENAME TO {name}"
            )))
            .await?;
    }
    sqlx::query("SELECT pg_advisory_unlock(hashtext($1))")
        .bind(name)
        .execute(&mut admin)
        .await?;
    admin.close().await
}
