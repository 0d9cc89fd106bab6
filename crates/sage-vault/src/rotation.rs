//! Online master-key rotation: every sealed column is re-encrypted under the active
//! key in small batches while traffic flows. Each batch locks only its rows
//! (`FOR UPDATE SKIP LOCKED`) and writes with compare-and-swap on the old ciphertext,
//! so a concurrent writer (a token refresh, a re-pairing) always wins; old keys stay
//! readable until nothing uses them.

use ledger_core::{
    AppState,
    crypto::{self, Keyring},
};

/// A column holding sealed values. The authenticated data is `{table}.{column}:{id}`.
#[derive(Debug, Clone, Copy)]
pub struct SealedColumn {
    pub table: &'static str,
    pub column: &'static str,
    pub key_id_column: &'static str,
    /// SQL giving the row id as text, as used in the authenticated data.
    pub id_text: &'static str,
}

/// Every sealed column in the schema.
pub const SEALED_COLUMNS: &[SealedColumn] = &[
    SealedColumn {
        table: "connector_bindings",
        column: "api_key",
        key_id_column: "api_key_key_id",
        id_text: "id::text",
    },
    SealedColumn {
        table: "connector_bindings",
        column: "pending_api_key",
        key_id_column: "pending_api_key_key_id",
        id_text: "id::text",
    },
    SealedColumn {
        table: "sage_connections",
        column: "access_token",
        key_id_column: "access_token_key_id",
        id_text: "binding_id::text",
    },
    SealedColumn {
        table: "sage_connections",
        column: "refresh_token",
        key_id_column: "refresh_token_key_id",
        id_text: "binding_id::text",
    },
    SealedColumn {
        table: "sage_pending_grants",
        column: "access_token",
        key_id_column: "access_token_key_id",
        id_text: "id::text",
    },
    SealedColumn {
        table: "sage_pending_grants",
        column: "refresh_token",
        key_id_column: "refresh_token_key_id",
        id_text: "id::text",
    },
    SealedColumn {
        table: "sage_oauth_states",
        column: "pkce_verifier",
        key_id_column: "pkce_verifier_key_id",
        id_text: "encode(state_hash, 'hex')",
    },
];

impl SealedColumn {
    fn context(&self, id: &str) -> String {
        format!("{}.{}:{id}", self.table, self.column)
    }
}

/// Rows of each column not yet under the active key.
pub async fn remaining(db: &sqlx::PgPool, keyring: &Keyring) -> Result<Vec<(SealedColumn, i64)>, sqlx::Error> {
    let mut out = Vec::new();
    for col in SEALED_COLUMNS {
        let sql = format!(
            "SELECT count(*) FROM {t} WHERE {c} IS NOT NULL AND {k} IS DISTINCT FROM $1",
            t = col.table,
            c = col.column,
            k = col.key_id_column
        );
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .bind(keyring.active_id())
            .fetch_one(db)
            .await?;
        out.push((*col, n));
    }
    Ok(out)
}

/// Key ids in use that the keyring cannot open: start-up refuses to run with them.
pub async fn unknown_keys_in_use(db: &sqlx::PgPool, keyring: &Keyring) -> Result<Vec<String>, sqlx::Error> {
    let mut unknown = Vec::new();
    for col in SEALED_COLUMNS {
        let sql = format!(
            "SELECT DISTINCT {k} FROM {t} WHERE {c} IS NOT NULL",
            t = col.table,
            c = col.column,
            k = col.key_id_column
        );
        let ids: Vec<Option<String>> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_all(db).await?;
        for id in ids.into_iter().flatten() {
            if !keyring.key_ids().any(|k| k == id) && !unknown.contains(&id) {
                unknown.push(id);
            }
        }
    }
    Ok(unknown)
}

/// What one rotation pass did.
#[derive(Debug, Clone, Default)]
pub struct RotationReport {
    pub rewritten: u64,
    /// Rows skipped because a concurrent writer changed them first (they are on the
    /// active key already).
    pub superseded: u64,
    pub failed: Vec<String>,
}

/// Re-encrypts up to `batch` rows of `col`; returns how many it handled.
pub async fn rotate_batch(
    state: &AppState,
    col: &SealedColumn,
    batch: i64,
    report: &mut RotationReport,
) -> Result<usize, sqlx::Error> {
    let keyring = &state.keyring;
    let mut tx = state.db.begin().await?;
    let select = format!(
        "SELECT {id} AS id, {c} AS sealed FROM {t} WHERE {c} IS NOT NULL AND {k} IS DISTINCT FROM $1 LIMIT $2 FOR UPDATE SKIP LOCKED",
        id = col.id_text,
        c = col.column,
        t = col.table,
        k = col.key_id_column
    );
    let rows: Vec<(String, Vec<u8>)> = sqlx::query_as(sqlx::AssertSqlSafe(select))
        .bind(keyring.active_id())
        .bind(batch)
        .fetch_all(&mut *tx)
        .await?;
    let update = format!(
        "UPDATE {t} SET {c} = $1, {k} = $2 WHERE {id} = $3 AND {c} = $4",
        t = col.table,
        c = col.column,
        k = col.key_id_column,
        id = col.id_text
    );
    for (id, sealed) in &rows {
        let context = col.context(id);
        match keyring.open(sealed, &context) {
            Ok(plain) => {
                let resealed = keyring.seal(plain.expose(), &context);
                let updated = sqlx::query(sqlx::AssertSqlSafe(update.clone()))
                    .bind(&resealed)
                    .bind(keyring.active_id())
                    .bind(id)
                    .bind(sealed)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if updated == 1 {
                    report.rewritten += 1;
                } else {
                    report.superseded += 1;
                }
            }
            Err(err) => report.failed.push(format!(
                "{}.{} {id}: {err} (key {})",
                col.table,
                col.column,
                crypto::key_id_of(sealed).unwrap_or("?")
            )),
        }
    }
    tx.commit().await?;
    Ok(rows.len())
}

/// Rotates every column to the active key, batch by batch, calling `progress` after
/// each batch with the rows left. Ends when nothing (openable) is left.
pub async fn rotate_all(
    state: &AppState,
    batch: i64,
    mut progress: impl FnMut(i64),
) -> Result<RotationReport, sqlx::Error> {
    let mut report = RotationReport::default();
    for col in SEALED_COLUMNS {
        loop {
            let failed_before = report.failed.len();
            let handled = rotate_batch(state, col, batch, &mut report).await?;
            let left: i64 = remaining(&state.db, &state.keyring).await?.iter().map(|(_, n)| n).sum();
            progress(left);
            // Stop on an empty batch, or when the batch held only rows we cannot open.
            if handled == 0 || report.failed.len() - failed_before == handled {
                break;
            }
        }
    }
    Ok(report)
}
