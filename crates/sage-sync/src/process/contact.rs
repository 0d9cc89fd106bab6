//! Contacts: the customer of a document found, adopted or created once; `customer.upserted`.

// A part of the processing module: its helpers and imports are this file's too.
use super::*;

/// B2C routing (first match wins): disabled → individual; company and
/// always_individual_for_b2b → individual; an existing contact → individual; total at
/// or above the threshold → individual; else the web-sales contact.
pub(super) async fn contact_key(env: &Env<'_>, contact: &Contact, grand_total: Decimal) -> Step<ContactKey> {
    let individual = if contact.is_guest() {
        ContactKey::Guest(contact.email.clone())
    } else {
        ContactKey::Customer(contact.magento_id)
    };
    let b2c = &env.settings.b2c;
    if !b2c.enabled {
        return Ok(individual);
    }
    if b2c.always_individual_for_b2b && contact.company.as_deref().is_some_and(|c| !c.trim().is_empty()) {
        return Ok(individual);
    }
    let existing = sqlx::query_scalar!(
        "SELECT EXISTS (SELECT 1 FROM entity_xref WHERE binding_id = $1 AND sage_business_id = $3 AND entity_type = 'contact'
           AND magento_entity_id = $2 AND state = 'posted')",
        env.run.binding.0,
        individual.xref_id(),
        env.business
    )
    .fetch_one(&env.state.db)
    .await?
    .unwrap_or(false);
    if existing {
        return Ok(individual);
    }
    if b2c.min_total_for_individual > Decimal::ZERO && grand_total >= b2c.min_total_for_individual {
        return Ok(individual);
    }
    Ok(ContactKey::WebSales)
}

pub(super) fn payload_hash(body: &Value) -> String {
    mapping::idempotency_id("", "hash", &body.to_string())
}

/// Where a contact's data comes from: the customer's own record (`customer.upserted`:
/// its default addresses), or a document (its order's addresses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ContactSource {
    Customer,
    Document,
}

/// The Sage contact for a customer in a currency: from the xref, else adopted by
/// reference or email, else created. An existing one is refreshed when the store's
/// data changed (the module sends customer updates only once per 30 days) — from a
/// document, all but the delivery address: an order shipped elsewhere (a gift) carries
/// its address on the invoice and leaves the customer's default one in Sage alone.
pub(super) async fn ensure_contact(
    env: &mut Env<'_>,
    contact: &Contact,
    currency: &str,
    grand_total: Decimal,
    source: ContactSource,
) -> Step<String> {
    let plan = plan_contact(env, contact, currency, grand_total).await?;
    let held = hold_contact(env, &plan, None).await?;
    ensure_held(env, contact, plan, held, source).await
}

/// What a contact's lease asks and what follows it needs, worked out before the lease is
/// taken (so a document can take its own lease in the same statement).
pub(super) struct ContactPlan {
    key: ContactKey,
    currency: String,
    body: Value,
    identity: Value,
    hash: String,
    delivery_hash: String,
    xid: i64,
    looked_up: bool,
    email: String,
    /// The budget request for a create that follows for certain (see [`xref::ContactRead`]).
    pub(super) spend: Option<ledger_sage_vault::session::Spend>,
}

pub(super) async fn plan_contact(
    env: &Env<'_>,
    contact: &Contact,
    currency: &str,
    grand_total: Decimal,
) -> Step<ContactPlan> {
    let key = contact_key(env, contact, grand_total).await?;
    let currency = currency.to_uppercase();
    let body = mapping::map_contact(contact, &key, &currency, &env.ctx());
    let mut identity = body.clone();
    let delivery = identity
        .as_object_mut()
        .and_then(|o| o.remove("delivery_address"))
        .unwrap_or(Value::Null);
    let hash = payload_hash(&identity);
    let delivery_hash = payload_hash(&delivery);
    let xid = key.xref_id();
    // With an email to look up, that look-up finds every contact that could be this
    // customer: a reference Sage holds is then someone else's, and the create's refusal
    // says so — no search by reference first (one Sage call fewer per new customer).
    let looked_up = key != ContactKey::WebSales && !contact.email.is_empty();
    // The contact index's answer is read with the lease, for a customer not yet in Sage,
    // and the create's budget entry taken when the create follows for certain.
    let email = contact.email.trim().to_lowercase();
    let spend = if looked_up { env.session.spend_request() } else { None };
    Ok(ContactPlan {
        key,
        currency,
        body,
        identity,
        hash,
        delivery_hash,
        xid,
        looked_up,
        email,
        spend,
    })
}

/// Takes the contact's lease with what it reads — after `first`'s, a document's, in the
/// same round trip when given (see [`xref::lock_get`]).
pub(super) async fn hold_contact(
    env: &Env<'_>,
    plan: &ContactPlan,
    first: Option<(&EntityKey, &str, i64)>,
) -> Step<xref::Held> {
    hold_read(
        env,
        &EntityKey::contact(plan.xid, &plan.currency),
        "contact",
        plan.xid,
        &plan.currency,
        plan.looked_up.then_some(xref::ContactRead {
            email: &plan.email,
            fresh_secs: contact_index::FRESH_FOR_SECS,
            spend: plan.spend.as_ref(),
        }),
        first,
    )
    .await
}

/// [`ensure_contact`] once the contact's lease is held.
pub(super) async fn ensure_held(
    env: &mut Env<'_>,
    contact: &Contact,
    plan: ContactPlan,
    held: xref::Held,
    source: ContactSource,
) -> Step<String> {
    let ContactPlan {
        key,
        currency,
        body,
        identity,
        hash,
        delivery_hash,
        xid,
        looked_up,
        ..
    } = plan;
    let db = env.state.db.clone();
    let binding = env.run.binding;
    match held.spent {
        Some(Ok(call)) => env.session.spend_with(call),
        Some(Err(until)) => return Err(CallError::BudgetSpent(until).into()),
        None => {}
    }
    if let Some(x) = held.xref
        && let Some(id) = x.posted()
    {
        let id = id.to_owned();
        let identity_changed = x.extra["payload_hash"].as_str() != Some(hash.as_str());
        let delivery_changed =
            source == ContactSource::Customer && x.extra["delivery_hash"].as_str() != Some(delivery_hash.as_str());
        if (identity_changed || delivery_changed) && key != ContactKey::WebSales {
            let mut update = if source == ContactSource::Customer {
                body.clone()
            } else {
                identity.clone()
            };
            if let Some(o) = update.as_object_mut() {
                o.remove("reference"); // references stay as created
            }
            sage!(
                env.session
                    .put::<Value>(&format!("/contacts/{id}"), &json!({ "contact": update }))
                    .await
            );
            let mut hashes = json!({ "payload_hash": hash });
            if source == ContactSource::Customer {
                hashes["delivery_hash"] = json!(delivery_hash);
            }
            xref::merge_extra(&db, &XrefKey::contact(binding, &env.business, xid, &currency), &hashes).await?;
        }
        return Ok(id);
    }
    // Adopt only a contact that is provably this customer (same currency, and same email
    // unless it is the configured web-sales contact); a reference Sage already has for
    // anyone else is taken, and the next candidate is tried.
    let base_currency = env.facts.base_currency.clone();
    let same_customer = |c: &Value| {
        let currency_matches = c["currency"]["id"]
            .as_str()
            .unwrap_or(base_currency.as_str())
            .eq_ignore_ascii_case(&currency);
        let email_matches = c["email"]
            .as_str()
            .or_else(|| c["main_contact_person"]["email"].as_str())
            .is_some_and(|e| !contact.email.is_empty() && e.trim().eq_ignore_ascii_case(contact.email.trim()));
        currency_matches && (key == ContactKey::WebSales || email_matches)
    };
    let mut found = None;
    if looked_up {
        // Answered by the business's contact index when it is kept (no call when nobody
        // has the email: a new customer); each contact it names is read to confirm it.
        let by_email = match contacts_by_email(env, &contact.email, &currency, held.index).await? {
            Some(ids) => {
                let mut found = Vec::new();
                for id in ids {
                    match env.session.get::<Value>(&format!("/contacts/{id}")).await {
                        Ok(c) if c["deleted_at"].is_null() => found.push(c),
                        Ok(_) | Err(CallError::Sage(SageError::NotFound { .. })) => forget(env, &id).await?,
                        Err(e) => return Err(e.into()),
                    }
                }
                found
            }
            None => sage!(
                env.session
                    .list_all(&format!("/contacts?email={}&attributes=all", encode(&contact.email)))
                    .await
            ),
        };
        found = match by_email.into_iter().find(|c| same_customer(c)) {
            Some(c) => Some((sage_id_of(&c, "contact")?, c["reference"].as_str().map(str::to_owned))),
            None => None,
        };
    }
    let mut attempt = 0;
    let (id, reference) = loop {
        if let Some(adopted) = found.take() {
            break adopted;
        }
        if attempt >= mapping::REFERENCE_CANDIDATES {
            return Err(Failure::new(
                ErrorClass::Validation,
                "contact_reference_taken",
                format!(
                    "Every contact reference the ledger tried for {} is already used in Sage by another contact. \
                     Rename one of those contacts' references in Sage, then retry.",
                    contact.email
                ),
            )
            .into());
        }
        let body = mapping::map_contact_with(contact, &key, &currency, &env.ctx(), attempt);
        let reference = body["reference"].as_str().unwrap_or_default().to_owned();
        if !looked_up {
            let by_reference = sage!(
                env.session
                    .list_all(&format!("/contacts?search={}&attributes=all", encode(&reference)))
                    .await
            );
            if let Some(existing) = by_reference
                .iter()
                .find(|c| c["reference"].as_str() == Some(reference.as_str()))
            {
                if same_customer(existing) {
                    break (sage_id_of(existing, "contact")?, Some(reference));
                }
                attempt += 1;
                continue;
            }
        }
        let mut body = body;
        body["idempotency_id"] = json!(mapping::idempotency_id(
            &env.binding_text,
            "contact",
            &format!("{xid}:{currency}:{attempt}")
        ));
        match env
            .session
            .post::<Value>("/contacts", &json!({ "contact": body }))
            .await
        {
            Ok(created) => break (sage_id_of(&created, "contact")?, Some(reference)),
            // Taken by a contact the list does not show (a deleted one keeps its reference).
            Err(CallError::Sage(SageError::Rejected { errors, .. }))
                if errors.iter().any(|e| e.source == "reference") =>
            {
                attempt += 1;
            }
            Err(e) => return Err(e.into()),
        }
    };
    if id.is_empty() {
        return Err(Failure::new(
            ErrorClass::Internal,
            "sage_bad_response",
            "Sage answered a contact without an id.",
        )
        .into());
    }
    // Recorded with the document that follows, if one does (one commit fewer).
    defer_contact(
        env,
        xref::ContactMark {
            id: xid,
            currency,
            sage_id: id.clone(),
            reference,
            extra: json!({ "payload_hash": hash, "delivery_hash": delivery_hash }),
            email: looked_up.then(|| contact.email.clone()),
        },
    )
    .await?;
    Ok(id)
}

/// Holds a created contact's mark for the next document's posting statement; one still
/// held (two contacts in one attempt) is written now.
async fn defer_contact(env: &mut Env<'_>, mark: xref::ContactMark) -> Step<()> {
    record_contact(env).await?;
    env.contact_posted = Some(mark);
    Ok(())
}

/// Writes a created contact's mark still held (no document took it).
pub(super) async fn record_contact(env: &mut Env<'_>) -> Result<(), sqlx::Error> {
    if let Some(held) = env.contact_posted.take() {
        xref::mark_contact_posted(&env.state.db, env.run.binding, &env.business, &held).await?;
    }
    Ok(())
}

pub(super) async fn customer(env: &mut Env<'_>) -> Step<Outcome> {
    let id = env.run.entity_id;
    hold(env, &EntityKey::new("customer", id)).await?;
    let contact = env
        .magento
        .customer(id)
        .await
        .map_err(|e| from_magento(env.state, env.run.binding, e))?;
    let mut currencies = xref::contact_currencies(&env.state.db, env.run.binding, &env.business, id).await?;
    if currencies.is_empty() {
        currencies.push(env.facts.base_currency.as_str().to_owned());
    }
    let mut last = String::new();
    for currency in currencies {
        // A large total forces an individual contact even with B2C consolidation on.
        last = ensure_contact(env, &contact, &currency, Decimal::MAX, ContactSource::Customer).await?;
    }
    Ok(Outcome::Synced {
        sage_id: last,
        reference: Some(format!("M{id}")),
        message: None,
    })
}
