//! Migrations: applied once even when several processes start together.

use ledger_core::db;
use ledger_test_support::TestDb;

#[tokio::test]
async fn concurrent_migrations_apply_each_version_once() {
    let test_db = TestDb::empty().await;
    let mut pools = Vec::new();
    for _ in 0..4 {
        pools.push(test_db.pool().await);
    }
    let mut runs = tokio::task::JoinSet::new();
    for pool in pools.clone() {
        runs.spawn(async move { db::migrate(&pool).await });
    }
    while let Some(result) = runs.join_next().await {
        result.unwrap().expect("every concurrent migrate succeeds");
    }
    let pool = &pools[0];
    let (applied, distinct): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT version) FROM _sqlx_migrations")
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(applied, distinct);
    assert_eq!(applied as usize, db::MIGRATOR.iter().count());
    assert!(db::pending_migrations(pool).await.unwrap().is_empty());
}

#[tokio::test]
async fn pending_migrations_are_listed_on_an_empty_database() {
    let test_db = TestDb::empty().await;
    let pool = test_db.pool().await;
    let pending = db::pending_migrations(&pool).await.unwrap();
    assert_eq!(pending.len(), db::MIGRATOR.iter().count());
    assert!(pending[0].contains("audit log"), "{pending:?}");
}
