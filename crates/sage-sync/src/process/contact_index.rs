//! The per-business index of Sage contacts by email: a new customer's look-up answered
//! from the ledger's own table instead of by a Sage call (one call fewer per new
//! customer). Loaded once, kept fresh by what the ledger creates and by reading what
//! changed in Sage since the last look (`updated_or_created_since`) when the index is
//! older than [`FRESH_FOR`] — one call a minute at most, shared by every document.

// A part of the processing module: its helpers and imports are this file's too.
use super::*;

/// How old the index may be before a look-up first reads what changed in Sage: a contact
/// made by hand in Sage within the last minute is the only one a look-up can miss.
pub(super) const FRESH_FOR_SECS: f64 = 60.0;

/// `updated_or_created_since` is on Sage's clock: read back this far before the last look.
const CLOCK_MARGIN: chrono::Duration = chrono::Duration::minutes(2);

/// Beyond this many contacts the index is not kept (its first load alone would cost more
/// calls than a busy day of look-ups): look-ups ask Sage, as before.
pub(super) const MAX_CONTACTS: u64 = 20_000;

/// The lease a load or refresh takes, so concurrent attempts do not all read Sage.
fn lease() -> EntityKey {
    EntityKey::new("contact_index", 0)
}

/// Each email a Sage contact is known by (its own and its main contact person's).
fn emails_of(contact: &Value) -> Vec<String> {
    let mut emails: Vec<String> = [&contact["email"], &contact["main_contact_person"]["email"]]
        .into_iter()
        .filter_map(Value::as_str)
        .map(|e| e.trim().to_lowercase())
        .filter(|e| !e.is_empty())
        .collect();
    emails.dedup();
    emails
}

/// The ids of the contacts Sage holds with `email` in `currency`, from the index (made
/// fresh first when stale); `None` when the index cannot answer now — another attempt is loading it, or
/// the business has too many contacts to index — and Sage must be asked. `state`: the
/// index as read with the contact's lease ([`xref::lock_get`]; `None`: never loaded).
pub(super) async fn contacts_by_email(
    env: &mut Env<'_>,
    email: &str,
    currency: &str,
    state: Option<xref::IndexRead>,
) -> Step<Option<Vec<String>>> {
    let db = env.state.db.clone();
    let binding = env.run.binding;
    let email = email.trim().to_lowercase();
    let currency = currency.to_uppercase();
    if state.as_ref().is_some_and(|s| s.too_large) {
        return Ok(None);
    }
    let complete = state.as_ref().is_some_and(|s| s.complete);
    if let Some(s) = state.as_ref().filter(|s| s.complete && s.fresh) {
        return Ok(Some(s.ids.clone()));
    }
    // Stale or never loaded: read Sage (one attempt at a time).
    if !xref::lock(&db, binding, &lease(), env.holder, env.state.settings.job_lease).await? {
        return Ok(None);
    }
    let started = Utc::now() - CLOCK_MARGIN;
    let since = state.and_then(|s| s.changed_since).filter(|_| complete);
    let Some(contacts) = read_contacts(env, since).await? else {
        sqlx::query!(
            "INSERT INTO sage_contact_index_state (binding_id, sage_business_id, too_large) VALUES ($1, $2, true)
             ON CONFLICT (binding_id, sage_business_id) DO UPDATE SET too_large = true",
            binding.0,
            env.business
        )
        .execute(&db)
        .await?;
        return Ok(None);
    };
    let (mut emails, mut currencies, mut ids, mut changed) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for c in &contacts {
        let Some(id) = c["id"].as_str() else { continue };
        changed.push(id.to_owned());
        // Sage leaves out the currency of a contact in the business's own.
        let currency = c["currency"]["id"]
            .as_str()
            .unwrap_or(env.facts.base_currency.as_str())
            .to_uppercase();
        for e in emails_of(c) {
            emails.push(e);
            currencies.push(currency.clone());
            ids.push(id.to_owned());
        }
    }
    let mut tx = db.begin().await?;
    // A changed contact's emails replace what the index held for it.
    sqlx::query!(
        "DELETE FROM sage_contact_index WHERE binding_id = $1 AND sage_business_id = $2 AND contact_id = ANY($3)",
        binding.0,
        env.business,
        &changed
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query!(
        "INSERT INTO sage_contact_index (binding_id, sage_business_id, email, currency, contact_id)
         SELECT $1, $2, e, k, c FROM UNNEST($3::text[], $4::text[], $5::text[]) AS t(e, k, c)
         ON CONFLICT DO NOTHING",
        binding.0,
        env.business,
        &emails,
        &currencies,
        &ids
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query!(
        "INSERT INTO sage_contact_index_state (binding_id, sage_business_id, complete, changed_since, refreshed_at)
         VALUES ($1, $2, true, $3, now())
         ON CONFLICT (binding_id, sage_business_id) DO UPDATE SET complete = true, changed_since = $3, refreshed_at = now()",
        binding.0,
        env.business,
        started
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;

    let ids = sqlx::query_scalar!(
        "SELECT contact_id FROM sage_contact_index
         WHERE binding_id = $1 AND sage_business_id = $2 AND email = $3 AND currency = $4
         ORDER BY contact_id",
        binding.0,
        env.business,
        email,
        currency
    )
    .fetch_all(&db)
    .await?;
    Ok(Some(ids))
}

/// Every contact changed since `since` (all of them when `None`: the first load), or
/// `None` when a first load finds more than [`MAX_CONTACTS`].
async fn read_contacts(env: &mut Env<'_>, since: Option<DateTime<Utc>>) -> Step<Option<Vec<Value>>> {
    let mut path = format!("/contacts?attributes=all&items_per_page={}", ledger_sage_api::MAX_PAGE);
    if let Some(since) = since {
        path.push_str("&updated_or_created_since=");
        path.push_str(&encode(&since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)));
    }
    let mut next = Some(path);
    let mut contacts = Vec::new();
    while let Some(page_path) = next.take() {
        let page: ledger_sage_api::Page<Value> = sage!(env.session.get(&page_path).await);
        if since.is_none() && page.total.is_some_and(|t| t > MAX_CONTACTS) {
            return Ok(None);
        }
        contacts.extend(page.items);
        next = page.next.filter(|n| !n.is_empty());
    }
    Ok(Some(contacts))
}

/// A contact Sage no longer has (deleted since it was indexed).
pub(super) async fn forget(env: &Env<'_>, contact_id: &str) -> Step<()> {
    sqlx::query!(
        "DELETE FROM sage_contact_index WHERE binding_id = $1 AND sage_business_id = $2 AND contact_id = $3",
        env.run.binding.0,
        env.business,
        contact_id
    )
    .execute(&env.state.db)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_contact_is_indexed_by_each_of_its_emails_once_trimmed_and_in_lower_case() {
        let c = json!({ "email": " Ada@Example.com", "main_contact_person": { "email": "ada@example.com" } });
        assert_eq!(emails_of(&c), ["ada@example.com"]);
        let c = json!({ "email": null, "main_contact_person": { "email": "Accounts@Firm.test" } });
        assert_eq!(emails_of(&c), ["accounts@firm.test"]);
        assert!(emails_of(&json!({ "email": "  " })).is_empty());
    }
}
