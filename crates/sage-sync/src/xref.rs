//! `entity_xref`: which Sage object each Magento entity became, per binding, Sage
//! business and currency (a binding moved to another business starts fresh there).
//! Written around every post: `posting` before (with the idempotency id), `posted` after,
//! `rejected` after a definite refusal (the next post uses a new idempotency id).

use ledger_core::BindingId;
use rust_decimal::Decimal;
use serde_json::Value;

/// Where an entity's post stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum XrefState {
    /// Sent (or about to be) under `idempotency_id`; the outcome is not known yet.
    Posting,
    Posted,
    /// Sage refused it for good: the next post uses a new idempotency id.
    Rejected,
}

/// One entity's row: which binding and Sage business, which Magento entity, and the
/// currency (a customer has a contact per currency; "" for every other entity).
#[derive(Debug, Clone, Copy)]
pub struct XrefKey<'a> {
    pub binding: BindingId,
    pub business: &'a str,
    pub entity: &'a str,
    pub id: i64,
    pub currency: &'a str,
}

impl<'a> XrefKey<'a> {
    /// A document's or product's row (no currency of its own).
    pub fn document(binding: BindingId, business: &'a str, entity: &'a str, id: i64) -> Self {
        Self {
            binding,
            business,
            entity,
            id,
            currency: "",
        }
    }

    /// A customer's contact in `currency`.
    pub fn contact(binding: BindingId, business: &'a str, id: i64, currency: &'a str) -> Self {
        Self {
            binding,
            business,
            entity: "contact",
            id,
            currency,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Xref {
    pub state: XrefState,
    pub sage_id: Option<String>,
    pub sage_reference: Option<String>,
    pub idempotency_id: Option<String>,
    pub extra: Value,
}

impl Xref {
    pub fn posted(&self) -> Option<&str> {
        (self.state == XrefState::Posted)
            .then_some(self.sage_id.as_deref())
            .flatten()
    }

    /// How many definite refusals preceded (feeds the idempotency id).
    pub fn generation(&self) -> i64 {
        self.extra["generation"].as_i64().unwrap_or(0)
    }

    /// What a posted invoice still owes as far as the ledger knows: Sage's total less
    /// what the ledger allocated to it, leaving out `own`'s allocation (the document
    /// asking, whose earlier attempt may have recorded one). `None` for an invoice posted
    /// before the ledger kept balances. Something the merchant recorded in Sage by hand is
    /// not known: Sage refuses an allocation above what is owed, and the refusal reads it.
    pub fn known_open(&self, own: &str) -> Option<Decimal> {
        let total = decimal(&self.extra["sage_total"])?;
        let allocated: Decimal = self.extra["allocations"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| k.as_str() != own)
            .filter_map(|(_, v)| decimal(v))
            .sum();
        Some((total - allocated).max(Decimal::ZERO))
    }
}

fn decimal(v: &Value) -> Option<Decimal> {
    match v {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.to_string().parse().ok(),
        _ => None,
    }
}

/// Records what `by` (a payment, a credit note) allocated to a posted invoice, keyed by
/// the allocating document so that recording it again after a retry changes nothing.
pub async fn record_allocation(
    db: &sqlx::PgPool,
    invoice: &XrefKey<'_>,
    by: &str,
    amount: Decimal,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        r#"UPDATE entity_xref
           SET extra = extra || jsonb_build_object('allocations',
                 COALESCE(extra->'allocations', '{}'::jsonb) || jsonb_build_object($5::text, $6::text)),
               updated_at = now()
           WHERE binding_id = $1 AND sage_business_id = $2 AND entity_type = $3 AND magento_entity_id = $4 AND currency = ''"#,
        invoice.binding.0,
        invoice.business,
        invoice.entity,
        invoice.id,
        by,
        format!("{:.2}", amount.round_dp(2)),
    )
    .execute(db)
    .await?;
    Ok(())
}

pub async fn get(db: &sqlx::PgPool, key: &XrefKey<'_>) -> Result<Option<Xref>, sqlx::Error> {
    let row = sqlx::query!(
        r#"SELECT state AS "state: XrefState", sage_id, sage_reference, idempotency_id, extra FROM entity_xref
         WHERE binding_id = $1 AND sage_business_id = $5 AND entity_type = $2 AND magento_entity_id = $3 AND currency = $4"#,
        key.binding.0,
        key.entity,
        key.id,
        key.currency,
        key.business
    )
    .fetch_optional(db)
    .await?;
    Ok(row.map(|r| Xref {
        state: r.state,
        sage_id: r.sage_id,
        sage_reference: r.sage_reference,
        idempotency_id: r.idempotency_id,
        extra: r.extra,
    }))
}

/// Every currency a customer's contact exists in.
pub async fn contact_currencies(
    db: &sqlx::PgPool,
    binding: BindingId,
    business: &str,
    id: i64,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar!(
        "SELECT currency FROM entity_xref WHERE binding_id = $1 AND sage_business_id = $3 AND entity_type = 'contact'
           AND magento_entity_id = $2 AND state = 'posted'
         ORDER BY created_at",
        binding.0,
        id,
        business
    )
    .fetch_all(db)
    .await
}

/// Takes (or renews) the lease on `key` for `holder` until `ttl` from now; false when
/// another holder has it.
pub async fn lock(
    db: &sqlx::PgPool,
    binding: BindingId,
    key: &ledger_jobs::EntityKey,
    holder: uuid::Uuid,
    ttl: std::time::Duration,
) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query_scalar!(
        r#"INSERT INTO sync_locks (binding_id, key, holder, until) VALUES ($1, $2, $3, now() + make_interval(secs => $4))
           ON CONFLICT (binding_id, key) DO UPDATE SET holder = $3, until = EXCLUDED.until
           WHERE sync_locks.holder = $3 OR sync_locks.until < now()
           RETURNING 1 AS "one!""#,
        binding.0,
        key.as_str(),
        holder,
        ttl.as_secs_f64()
    )
    .fetch_optional(db)
    .await?
    .is_some())
}

/// The contact index's state and its answer for one email in one currency, read with a
/// contact's lease ([`lock_get`]).
#[derive(Debug, Clone)]
pub struct IndexRead {
    pub complete: bool,
    pub too_large: bool,
    pub changed_since: Option<chrono::DateTime<chrono::Utc>>,
    /// Refreshed within the freshness window asked for.
    pub fresh: bool,
    pub ids: Vec<String>,
}

/// What [`lock_get`] read with the lease: the entity's xref and, when asked for, the
/// contact index's state (`None`: not asked for, or the index was never loaded).
#[derive(Debug)]
pub struct Held {
    pub xref: Option<Xref>,
    /// The xref of the entity leased first ([`lock_get`]'s `first`), when one was.
    pub first_xref: Option<Xref>,
    pub index: Option<IndexRead>,
    /// The budget entry taken for a contact's create that follows for certain (see
    /// [`lock_get`]); `Err`: the budget is spent until then.
    pub spent: Option<Result<i64, chrono::DateTime<chrono::Utc>>>,
}

/// What [`lock_get`] reads with a contact's lease: the business's contact index for a
/// (lowercased) email, fresh within `fresh_secs`; and, on `spend`'s terms, the budget
/// entry for the contact's create when that follows for certain — no contact posted
/// for the customer, and a complete, fresh index that knows nobody with the email.
#[derive(Debug, Clone, Copy)]
pub struct ContactRead<'a> {
    pub email: &'a str,
    pub fresh_secs: f64,
    pub spend: Option<&'a ledger_sage_vault::session::Spend>,
}

/// Which lease of [`lock_get`] another holder has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Busy {
    First,
    Entity,
}

/// [`lock`], then the entity's xref — and, for a contact, what [`ContactRead`] asks —
/// in one round trip; `Err(Busy)` when another holder has the lease. With `first`, that
/// entity is leased first and its xref read too (a document and its contact); the
/// entity's lease is then taken only if `first`'s was, and a contact's create budget only
/// when `first`'s xref is not posted (a posted document needs no contact). The read shares the
/// statement's snapshot, which can predate the previous holder's last write by the
/// moment it took to release: a stale answer is harmless, as [`mark_posting`] refuses
/// to re-post a posted entity and contacts are adopted by reference before any is
/// created.
pub async fn lock_get(
    db: &sqlx::PgPool,
    lease: &ledger_jobs::EntityKey,
    holder: uuid::Uuid,
    ttl: std::time::Duration,
    key: &XrefKey<'_>,
    contact: Option<ContactRead<'_>>,
    first: Option<(&ledger_jobs::EntityKey, &XrefKey<'_>)>,
) -> Result<Result<Held, Busy>, sqlx::Error> {
    let email = contact.map(|c| c.email);
    let fresh_secs = contact.map_or(0.0, |c| c.fresh_secs);
    let spend = contact.and_then(|c| c.spend);
    let row = sqlx::query!(
        r#"WITH l0 AS (
             INSERT INTO sync_locks (binding_id, key, holder, until)
             SELECT $1, $15, $3, now() + make_interval(secs => $4) WHERE $15::text IS NOT NULL
             ON CONFLICT (binding_id, key) DO UPDATE SET holder = $3, until = EXCLUDED.until
             WHERE sync_locks.holder = $3 OR sync_locks.until < now()
             RETURNING 1 AS one
           ), first_locked AS MATERIALIZED (
             SELECT $15::text IS NULL OR EXISTS (SELECT 1 FROM l0) AS ok
           ), l AS (
             INSERT INTO sync_locks (binding_id, key, holder, until)
             SELECT $1, $2, $3, now() + make_interval(secs => $4) FROM first_locked WHERE ok
             ON CONFLICT (binding_id, key) DO UPDATE SET holder = $3, until = EXCLUDED.until
             WHERE sync_locks.holder = $3 OR sync_locks.until < now()
             RETURNING 1 AS one
           ), got AS MATERIALIZED (
             SELECT (SELECT ok FROM first_locked) AS first_locked, EXISTS (SELECT 1 FROM l) AS locked,
                    x0.state AS first_state, x0.sage_id AS first_sage_id, x0.sage_reference AS first_reference,
                    x0.idempotency_id AS first_idempotency_id, x0.extra AS first_extra,
                    x.state, x.sage_id, x.sage_reference, x.idempotency_id, x.extra,
                    s.binding_id IS NOT NULL AS indexed, s.complete, s.too_large, s.changed_since,
                    COALESCE(s.refreshed_at > now() - make_interval(secs => $10), false) AS fresh,
                    CASE WHEN s.binding_id IS NOT NULL THEN ARRAY(
                      SELECT i.contact_id FROM sage_contact_index i
                      WHERE i.binding_id = $1 AND i.sage_business_id = $8 AND i.email = $9 AND i.currency = $7
                      ORDER BY i.contact_id) END AS index_ids
             FROM (SELECT 1) one
             LEFT JOIN entity_xref x ON x.binding_id = $1 AND x.sage_business_id = $8 AND x.entity_type = $5
               AND x.magento_entity_id = $6 AND x.currency = $7
             LEFT JOIN sage_contact_index_state s ON $9::text IS NOT NULL AND s.binding_id = $1 AND s.sage_business_id = $8
             LEFT JOIN entity_xref x0 ON $15::text IS NOT NULL AND x0.binding_id = $1 AND x0.sage_business_id = $8
               AND x0.entity_type = $16 AND x0.magento_entity_id = $17 AND x0.currency = $18
           ), settled AS (
             UPDATE sage_calls SET at = clock_timestamp() WHERE id = $14
           ), taken AS MATERIALIZED (
             -- Only when the create follows for certain (else no entry is taken).
             SELECT a.call_id, a.free_at FROM ledger_budget_acquire($11, $12, $13) a
             WHERE $11::text IS NOT NULL AND (
               SELECT g.locked AND g.state IS DISTINCT FROM 'posted' AND g.first_state IS DISTINCT FROM 'posted'
                      AND g.indexed AND g.complete AND NOT g.too_large
                      AND g.fresh AND cardinality(g.index_ids) = 0
               FROM got g)
           )
           SELECT g.first_locked AS "first_locked!", g.locked AS "locked!",
                  g.first_state AS "first_state?: XrefState", g.first_sage_id AS "first_sage_id?",
                  g.first_reference AS "first_reference?", g.first_idempotency_id AS "first_idempotency_id?",
                  g.first_extra AS "first_extra?",
                  g.state AS "state?: XrefState", g.sage_id AS "sage_id?",
                  g.sage_reference AS "sage_reference?", g.idempotency_id AS "idempotency_id?", g.extra AS "extra?",
                  g.indexed AS "indexed!", g.complete AS "complete?", g.too_large AS "too_large?",
                  g.changed_since AS "changed_since?", g.fresh AS "fresh!", g.index_ids AS "index_ids?",
                  EXISTS (SELECT 1 FROM taken) AS "asked!", (SELECT call_id FROM taken) AS call_id,
                  (SELECT free_at FROM taken) AS free_at
           FROM got g"#,
        key.binding.0,
        lease.as_str(),
        holder,
        ttl.as_secs_f64(),
        key.entity,
        key.id,
        key.currency,
        key.business,
        email,
        fresh_secs,
        spend.map(|s| s.business.as_str()),
        spend.map_or(0.0, |s| s.window_secs),
        spend.map_or(0, |s| s.limit),
        spend.and_then(|s| s.settle),
        first.map(|(lease, _)| lease.as_str()),
        first.map(|(_, k)| k.entity),
        first.map_or(0, |(_, k)| k.id),
        first.map(|(_, k)| k.currency),
    )
    .fetch_one(db)
    .await?;
    if !row.first_locked {
        return Ok(Err(Busy::First));
    }
    if !row.locked {
        return Ok(Err(Busy::Entity));
    }
    let index = row.indexed.then(|| IndexRead {
        complete: row.complete.unwrap_or(false),
        too_large: row.too_large.unwrap_or(false),
        changed_since: row.changed_since,
        fresh: row.fresh,
        ids: row.index_ids.unwrap_or_default(),
    });
    let spent = row
        .asked
        .then(|| row.call_id.ok_or_else(|| row.free_at.unwrap_or_else(chrono::Utc::now)));
    Ok(Ok(Held {
        first_xref: row.first_state.map(|state| Xref {
            state,
            sage_id: row.first_sage_id,
            sage_reference: row.first_reference,
            idempotency_id: row.first_idempotency_id,
            extra: row.first_extra.unwrap_or(Value::Null),
        }),
        xref: row.state.map(|state| Xref {
            state,
            sage_id: row.sage_id,
            sage_reference: row.sage_reference,
            idempotency_id: row.idempotency_id,
            extra: row.extra.unwrap_or(Value::Null),
        }),
        index,
        spent,
    }))
}

/// Records that a post is about to be sent; false when the entity is already posted (a
/// concurrent attempt finished first), in which case nothing changes.
pub async fn mark_posting(db: &sqlx::PgPool, key: &XrefKey<'_>, idempotency: &str) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query!(
        "INSERT INTO entity_xref (binding_id, entity_type, magento_entity_id, currency, state, idempotency_id, sage_business_id)
         VALUES ($1, $2, $3, $4, 'posting', $5, $6)
         ON CONFLICT (binding_id, sage_business_id, entity_type, magento_entity_id, currency)
         DO UPDATE SET state = 'posting', idempotency_id = $5, updated_at = now()
         WHERE entity_xref.state <> 'posted'",
        key.binding.0,
        key.entity,
        key.id,
        key.currency,
        idempotency,
        key.business
    )
    .execute(db)
    .await?
    .rows_affected()
        == 1)
}

/// What [`mark_posting_spending`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Posting {
    /// Marked `posting`, with the post's budget entry taken.
    Marked { call: i64 },
    /// Already posted (a concurrent attempt finished first): nothing marked; the entry
    /// taken is for the look-up of what it posted.
    Posted { call: i64 },
    /// The business's budget is spent until then: nothing marked, nothing taken.
    BudgetSpent(chrono::DateTime<chrono::Utc>),
}

/// [`mark_posting`] and the post's Sage budget entry (settling the previous call's) in
/// one round trip: the entry first, and the mark only once it is taken, so a spent
/// budget leaves no `posting` mark (that would cost a look-up before the next try).
pub async fn mark_posting_spending(
    db: &sqlx::PgPool,
    key: &XrefKey<'_>,
    idempotency: &str,
    spend: &ledger_sage_vault::session::Spend,
    contact: Option<&ContactMark>,
) -> Result<Posting, sqlx::Error> {
    let row = sqlx::query!(
        r#"WITH taken AS MATERIALIZED (
             SELECT call_id, free_at FROM ledger_budget_acquire($7, $8, $9, $10)
           ), marked AS (
             INSERT INTO entity_xref (binding_id, entity_type, magento_entity_id, currency, state, idempotency_id, sage_business_id)
             SELECT $1, $2, $3, $4, 'posting', $5, $6 FROM taken WHERE taken.call_id IS NOT NULL
             ON CONFLICT (binding_id, sage_business_id, entity_type, magento_entity_id, currency)
             DO UPDATE SET state = 'posting', idempotency_id = $5, updated_at = now()
             WHERE entity_xref.state <> 'posted'
             RETURNING 1 AS one
           ), contact AS (
             -- The document's contact, created just before it (see mark_contact_posted):
             -- recorded whatever the budget says, as it is in Sage.
             INSERT INTO entity_xref (binding_id, entity_type, magento_entity_id, currency, state, sage_id, sage_reference, sage_business_id, extra)
             SELECT $1, 'contact', $11, $12, 'posted', $13, $14, $6, $15 WHERE $13::text IS NOT NULL
             ON CONFLICT (binding_id, sage_business_id, entity_type, magento_entity_id, currency)
             DO UPDATE SET state = 'posted', sage_id = $13, sage_reference = $14, extra = entity_xref.extra || $15, updated_at = now()
           ), indexed AS (
             INSERT INTO sage_contact_index (binding_id, sage_business_id, email, currency, contact_id)
             SELECT binding_id, sage_business_id, $16, upper($12), $13 FROM sage_contact_index_state
             WHERE binding_id = $1 AND sage_business_id = $6 AND complete AND NOT too_large AND $16 <> '' AND $13::text IS NOT NULL
             ON CONFLICT DO NOTHING
           )
           -- Settling lets the commit skip the WAL flush; the mark must not: it is the
           -- record that a post may be out, so the commit waits for the disk again.
           SELECT t.call_id, t.free_at, EXISTS (SELECT 1 FROM marked) AS "marked!",
                  set_config('synchronous_commit', s.reset_val, true) AS "durable!"
           FROM taken t, pg_settings s WHERE s.name = 'synchronous_commit'"#,
        key.binding.0,
        key.entity,
        key.id,
        key.currency,
        idempotency,
        key.business,
        spend.business,
        spend.window_secs,
        spend.limit,
        spend.settle,
        contact.map(|c| c.id),
        contact.map(|c| c.currency.as_str()),
        contact.map(|c| c.sage_id.as_str()),
        contact.and_then(|c| c.reference.as_deref()),
        contact.map(|c| &c.extra),
        contact.and_then(|c| c.email.as_deref()).map(|e| e.trim().to_lowercase()).unwrap_or_default(),
    )
    .fetch_one(db)
    .await?;
    Ok(match (row.call_id, row.marked) {
        (Some(call), true) => Posting::Marked { call },
        (Some(call), false) => Posting::Posted { call },
        (None, _) => Posting::BudgetSpent(row.free_at.unwrap_or_else(chrono::Utc::now)),
    })
}

/// Records the Sage object a post created (or that a look-up found).
pub async fn mark_posted(
    db: &sqlx::PgPool,
    key: &XrefKey<'_>,
    sage_id: &str,
    reference: Option<&str>,
    extra: &Value,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO entity_xref (binding_id, entity_type, magento_entity_id, currency, state, sage_id, sage_reference, sage_business_id, extra)
         VALUES ($1, $2, $3, $4, 'posted', $5, $6, $7, $8)
         ON CONFLICT (binding_id, sage_business_id, entity_type, magento_entity_id, currency)
         DO UPDATE SET state = 'posted', sage_id = $5, sage_reference = $6,
                       extra = entity_xref.extra || $8, updated_at = now()",
        key.binding.0,
        key.entity,
        key.id,
        key.currency,
        sage_id,
        reference,
        key.business,
        extra
    )
    .execute(db)
    .await?;
    Ok(())
}

/// A payment posted, and what it allocated recorded on its invoice (the payment's row
/// shares the invoice's id), in one statement.
pub async fn mark_payment_posted(
    db: &sqlx::PgPool,
    payment: &XrefKey<'_>,
    sage_id: &str,
    reference: &str,
    allocated: Decimal,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        r#"WITH posted AS (
             INSERT INTO entity_xref (binding_id, entity_type, magento_entity_id, currency, state, sage_id, sage_reference, sage_business_id)
             VALUES ($1, 'payment', $2, '', 'posted', $3, $4, $5)
             ON CONFLICT (binding_id, sage_business_id, entity_type, magento_entity_id, currency)
             DO UPDATE SET state = 'posted', sage_id = $3, sage_reference = $4, updated_at = now()
           )
           UPDATE entity_xref
           SET extra = extra || jsonb_build_object('allocations',
                 COALESCE(extra->'allocations', '{}'::jsonb) || jsonb_build_object('payment', $6::text)),
               updated_at = now()
           WHERE binding_id = $1 AND sage_business_id = $5 AND entity_type = 'invoice' AND magento_entity_id = $2 AND currency = ''"#,
        payment.binding.0,
        payment.id,
        sage_id,
        reference,
        payment.business,
        format!("{:.2}", allocated.round_dp(2)),
    )
    .execute(db)
    .await?;
    Ok(())
}

/// A credit note's allocation done: the note marked allocated and, when it allocated
/// something, the amount recorded on its invoice under `by`, in one statement.
pub async fn mark_note_allocated(
    db: &sqlx::PgPool,
    note: &XrefKey<'_>,
    invoice_id: i64,
    by: &str,
    allocated: Option<Decimal>,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        r#"WITH note AS (
             UPDATE entity_xref SET extra = extra || '{"allocated": true}'::jsonb, updated_at = now()
             WHERE binding_id = $1 AND sage_business_id = $2 AND entity_type = $3 AND magento_entity_id = $4 AND currency = ''
           )
           UPDATE entity_xref
           SET extra = extra || jsonb_build_object('allocations',
                 COALESCE(extra->'allocations', '{}'::jsonb) || jsonb_build_object($6::text, $7::text)),
               updated_at = now()
           WHERE binding_id = $1 AND sage_business_id = $2 AND entity_type = 'invoice' AND magento_entity_id = $5 AND currency = ''
             AND $7::text IS NOT NULL"#,
        note.binding.0,
        note.business,
        note.entity,
        note.id,
        invoice_id,
        by,
        allocated.map(|a| format!("{:.2}", a.round_dp(2))),
    )
    .execute(db)
    .await?;
    Ok(())
}

/// A contact created or adopted, to record `posted` (with the next document's posting
/// mark when one follows: [`mark_posting_spending`]).
#[derive(Debug, Clone)]
pub struct ContactMark {
    /// The contact's xref id (a customer's id, or a guest's or the web-sales key).
    pub id: i64,
    pub currency: String,
    pub sage_id: String,
    pub reference: Option<String>,
    pub extra: Value,
    /// The email it was looked up by, added to the business's contact index when kept.
    pub email: Option<String>,
}

/// Records a contact posted (created or adopted) and, when the business's contact index
/// is kept, indexes it under the customer's email, in one statement.
pub async fn mark_contact_posted(
    db: &sqlx::PgPool,
    binding: BindingId,
    business: &str,
    mark: &ContactMark,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        r#"WITH posted AS (
             INSERT INTO entity_xref (binding_id, entity_type, magento_entity_id, currency, state, sage_id, sage_reference, sage_business_id, extra)
             VALUES ($1, 'contact', $2, $3, 'posted', $4, $5, $6, $7)
             ON CONFLICT (binding_id, sage_business_id, entity_type, magento_entity_id, currency)
             DO UPDATE SET state = 'posted', sage_id = $4, sage_reference = $5, extra = entity_xref.extra || $7, updated_at = now()
           )
           INSERT INTO sage_contact_index (binding_id, sage_business_id, email, currency, contact_id)
           SELECT binding_id, sage_business_id, $8, upper($3), $4 FROM sage_contact_index_state
           WHERE binding_id = $1 AND sage_business_id = $6 AND complete AND NOT too_large AND $8 <> ''
           ON CONFLICT DO NOTHING"#,
        binding.0,
        mark.id,
        mark.currency,
        mark.sage_id,
        mark.reference,
        business,
        mark.extra,
        mark.email.as_deref().map(|e| e.trim().to_lowercase()).unwrap_or_default(),
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Sage refused the post for good: the next one uses a new idempotency id.
pub async fn mark_rejected(db: &sqlx::PgPool, key: &XrefKey<'_>) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE entity_xref SET state = 'rejected',
                extra = jsonb_set(extra, '{generation}', to_jsonb(COALESCE((extra->>'generation')::int, 0) + 1)), updated_at = now()
         WHERE binding_id = $1 AND sage_business_id = $5 AND entity_type = $2 AND magento_entity_id = $3 AND currency = $4
           AND state = 'posting'",
        key.binding.0,
        key.entity,
        key.id,
        key.currency,
        key.business
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Merges facts into a posted xref's `extra`.
pub async fn merge_extra(db: &sqlx::PgPool, key: &XrefKey<'_>, extra: &Value) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE entity_xref SET extra = extra || $5, updated_at = now()
         WHERE binding_id = $1 AND sage_business_id = $6 AND entity_type = $2 AND magento_entity_id = $3 AND currency = $4",
        key.binding.0,
        key.entity,
        key.id,
        key.currency,
        extra,
        key.business
    )
    .execute(db)
    .await?;
    Ok(())
}

/// After the Sage document of a mismatched entity was voided: the entity is posted
/// again, under a new idempotency id, and the voided document is remembered.
pub async fn reset_for_repost(db: &sqlx::PgPool, key: &XrefKey<'_>) -> Result<(), sqlx::Error> {
    sqlx::query!(
        r#"UPDATE entity_xref SET state = 'rejected', sage_id = NULL, sage_reference = NULL,
                extra = (extra - 'mismatch' - 'repost_requested')
                        || jsonb_build_object('generation', COALESCE((extra->>'generation')::int, 0) + 1,
                                              'voided', COALESCE(extra->'voided', '[]'::jsonb) || to_jsonb(sage_id)),
                updated_at = now()
           WHERE binding_id = $1 AND sage_business_id = $2 AND entity_type = $3 AND magento_entity_id = $4 AND currency = $5"#,
        key.binding.0,
        key.business,
        key.entity,
        key.id,
        key.currency
    )
    .execute(db)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn invoice(extra: Value) -> Xref {
        Xref {
            state: XrefState::Posted,
            sage_id: Some("si".into()),
            sage_reference: None,
            idempotency_id: None,
            extra,
        }
    }

    #[test]
    fn known_open_is_the_total_less_other_documents_allocations() {
        let x =
            invoice(json!({ "sage_total": "120.00", "allocations": { "payment": "20.00", "creditmemo:7": "30.50" } }));
        assert_eq!(x.known_open("creditmemo:9"), Some("69.50".parse().unwrap()));
        // A document's own earlier allocation is left out: its retry computes the same amount.
        assert_eq!(x.known_open("creditmemo:7"), Some("100.00".parse().unwrap()));
        assert_eq!(x.known_open("payment"), Some("89.50".parse().unwrap()));
        // Never below nothing; unknown for an invoice posted before balances were kept.
        let over = invoice(json!({ "sage_total": "10.00", "allocations": { "payment": "20.00" } }));
        assert_eq!(over.known_open("creditmemo:1"), Some(Decimal::ZERO));
        assert_eq!(
            invoice(json!({ "totals": { "total": "10.00" } })).known_open("payment"),
            None
        );
    }
}
