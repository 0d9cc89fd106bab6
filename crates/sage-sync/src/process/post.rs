//! Posting a document exactly once, and checking Sage's totals against Magento's.

// A part of the processing module: its helpers and imports are this file's too.
use super::*;

pub(super) fn notes_message(mapped: &Mapped) -> Option<String> {
    (!mapped.notes.is_empty()).then(|| mapped.notes.join("; "))
}

pub(super) fn amount(v: &Value) -> Option<Decimal> {
    match v {
        Value::Number(n) => n.to_string().parse().ok(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// Sage's own totals must equal what the lines add up to (and so Magento's): `None`
/// when they do, else what differs (kept with the xref while the document is held).
pub(super) fn totals_mismatch(created: &Value, mapped: &Mapped, sage_id: &str) -> Option<Value> {
    let (net, tax, total) = (
        amount(&created["net_amount"]),
        amount(&created["tax_amount"]),
        amount(&created["total_amount"]),
    );
    let expected = mapped.totals;
    let differs = |got: Option<Decimal>, want: Decimal| got.is_some_and(|g| cents(g) != want);
    if !(differs(net, expected.net) || differs(tax, expected.tax) || differs(total, expected.total)) {
        return None;
    }
    let (net, tax, total) = (
        net.unwrap_or_default(),
        tax.unwrap_or_default(),
        total.unwrap_or_default(),
    );
    let message = format!(
        "Sage totals the document {sage_id} as net {net:.2} tax {tax:.2} total {total:.2}, but Magento's figures are net {:.2} tax {:.2} total {:.2} \
         (difference {:.2}). It stays failed until you resolve it: have the ledger void it and post it again (after fixing what caused it), \
         or accept it as it is in Sage.",
        expected.net,
        expected.tax,
        expected.total,
        total - expected.total
    );
    Some(json!({
        "sage_id": sage_id,
        "sage": { "net": money_text(net), "tax": money_text(tax), "total": money_text(total) },
        "magento": { "net": money_text(expected.net), "tax": money_text(expected.tax), "total": money_text(expected.total) },
        "message": message,
    }))
}

pub(super) fn money_text(d: Decimal) -> String {
    format!("{:.2}", cents(d))
}

pub(super) fn mismatch_failure(mismatch: &Value) -> Failure {
    Failure::new(
        ErrorClass::Validation,
        "total_mismatch",
        mismatch["message"]
            .as_str()
            .unwrap_or("Sage's totals differ from Magento's."),
    )
}

/// How a posted document with a totals mismatch is held: failed until the merchant
/// accepts it (as it is in Sage) or asks for it to be voided and posted again.
pub(super) enum Held {
    Failed(Failure),
    Accepted(String),
    Repost,
}

pub(super) fn held(x: &xref::Xref) -> Option<Held> {
    let mismatch = x.extra.get("mismatch").filter(|m| m.is_object())?;
    if let Some(accepted) = x.extra.get("mismatch_accepted").filter(|a| a.is_object()) {
        return Some(Held::Accepted(format!(
            "In Sage with a difference of {} from Magento's total, accepted by {}.",
            difference(mismatch),
            accepted["by"].as_str().unwrap_or("the merchant")
        )));
    }
    if x.extra["repost_requested"] == json!(true) {
        return Some(Held::Repost);
    }
    Some(Held::Failed(mismatch_failure(mismatch)))
}

pub(super) fn difference(mismatch: &Value) -> String {
    let total = |side: &str| amount(&mismatch[side]["total"]).unwrap_or_default();
    money_text(total("sage") - total("magento"))
}

/// Voids a held document in Sage so it can be posted again; refused (and the run says
/// why) when payments or allocations make it impossible.
pub(super) async fn void_for_repost(
    env: &mut Env<'_>,
    entity: &'static str,
    path: &str,
    sage_id: &str,
    increment: &str,
) -> Step<()> {
    let what = if entity == "invoice" { "invoice" } else { "credit note" };
    let current: Value = sage!(env.session.get(&format!("{path}/{sage_id}?mark_as_sent=false")).await);
    if amount(&current["outstanding_amount"]) != amount(&current["total_amount"]) {
        return Err(Failure::new(
            ErrorClass::Validation,
            "void_refused",
            format!(
                "The Sage {what} {} has payments or allocations, so it cannot be voided and posted again. Remove them in Sage, \
                 then retry; or accept it as it is.",
                current["displayed_as"].as_str().unwrap_or(sage_id)
            ),
        )
        .into());
    }
    let reason = encode(&format!(
        "Posted again by the ledger (Magento {what} {increment}): totals differed"
    ));
    sage!(
        env.session
            .delete(&format!("{path}/{sage_id}?void_reason={reason}"))
            .await
    );
    let db = env.state.db.clone();
    xref::reset_for_repost(
        &db,
        &XrefKey::document(env.run.binding, &env.business, entity, env.run.entity_id),
    )
    .await?;
    Ok(())
}

/// One document to post exactly once.
pub(super) struct Doc<'a> {
    pub(super) entity: &'static str,
    pub(super) id: i64,
    pub(super) path: &'static str,
    pub(super) wrapper: &'static str,
    pub(super) reference: &'a str,
    pub(super) contact_id: &'a str,
    /// The entity's xref as read under its lease.
    pub(super) previous: Option<xref::Xref>,
}

/// Posts a document once: looks it up by reference after an uncertain earlier attempt,
/// records `posting` with the idempotency id before sending, and marks a definite
/// refusal so a corrected retry gets a fresh idempotency id.
pub(super) async fn post_once(env: &mut Env<'_>, doc: Doc<'_>, mapped: Mapped) -> Step<Value> {
    let db = env.state.db.clone();
    let binding = env.run.binding;
    let previous = doc.previous.clone();
    if previous.as_ref().is_some_and(|x| x.state == xref::XrefState::Posting) {
        // The look-up may end the post here: the new contact's mark goes first.
        contact::record_contact(env).await?;
        if let Some(found) = find_by_reference(env, &doc, &mapped.body).await? {
            return Ok(found);
        }
    }
    let generation = previous.as_ref().map_or(0, xref::Xref::generation);
    let mut body = mapped.body;
    let idempotency = mapping::idempotency_id(&env.binding_text, doc.wrapper, &format!("{}:{generation}", doc.id));
    body["idempotency_id"] = json!(idempotency);
    let key = XrefKey::document(binding, &env.business, doc.entity, doc.id);
    // The mark and the post's budget entry in one round trip, when the session has a budget.
    let contact = env.contact_posted.take();
    let marked = match env.session.spend_request() {
        Some(spend) => match xref::mark_posting_spending(&db, &key, &idempotency, &spend, contact.as_ref()).await? {
            xref::Posting::Marked { call } => {
                env.session.spend_with(call);
                true
            }
            xref::Posting::Posted { call } => {
                env.session.spend_with(call);
                false
            }
            xref::Posting::BudgetSpent(until) => return Err(CallError::BudgetSpent(until).into()),
        },
        None => {
            if let Some(c) = &contact {
                xref::mark_contact_posted(&db, binding, &env.business, c).await?;
            }
            xref::mark_posting(&db, &key, &idempotency).await?
        }
    };
    if !marked {
        // Another attempt posted it meanwhile (its lease had lapsed): use that document.
        let sage_id = xref::get(&db, &key).await?.and_then(|x| x.sage_id).unwrap_or_default();
        return Ok(sage!(
            env.session.get::<Value>(&format!("{}/{sage_id}", doc.path)).await
        ));
    }
    match env.session.post::<Value>(doc.path, &json!({ doc.wrapper: body })).await {
        Ok(created) => Ok(created),
        Err(CallError::Sage(e @ SageError::Rejected { .. })) => {
            xref::mark_rejected(&db, &XrefKey::document(binding, &env.business, doc.entity, doc.id)).await?;
            Err(CallError::Sage(e).into())
        }
        Err(e) => Err(e.into()),
    }
}

/// Pages of Sage's answer read at most when looking for a document an earlier attempt
/// may have created (1,000 documents: far more than a narrowed search finds).
pub(super) const LOOKUP_MAX_PAGES: usize = 5;

/// Finds a document a previous attempt may have created (its answer was lost). The
/// search is narrowed to what that attempt could have created — the contact's documents
/// created or changed since the event arrived (less a margin for Sage's clock), by
/// reference, or for a payment on its date — and stops at the first match; beyond
/// [`LOOKUP_MAX_PAGES`] it fails rather than guess (posting again could duplicate).
pub(super) async fn find_by_reference(env: &mut Env<'_>, doc: &Doc<'_>, body: &Value) -> Step<Option<Value>> {
    let since = (env.run.created_at - chrono::Duration::minutes(10)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut path = format!(
        "{}?contact_id={}&updated_or_created_since={}&attributes=all&items_per_page={}",
        doc.path,
        doc.contact_id,
        encode(&since),
        ledger_sage_api::MAX_PAGE
    );
    match (doc.entity, body["date"].as_str()) {
        ("payment", Some(date)) => path.push_str(&format!("&from_date={date}&to_date={date}")),
        ("payment", None) => {}
        _ => path.push_str(&format!("&search={}", encode(doc.reference))),
    }
    let mut next = Some(path);
    for _ in 0..LOOKUP_MAX_PAGES {
        let Some(page_path) = next.take() else {
            return Ok(None);
        };
        let page: ledger_sage_api::Page<Value> = sage!(env.session.get(&page_path).await);
        // A document voided to be posted again has the same reference: never that one.
        if let Some(found) = page
            .items
            .into_iter()
            .find(|i| i["reference"].as_str() == Some(doc.reference) && i["status"]["id"] != "VOID")
        {
            return Ok(Some(found));
        }
        next = page.next.filter(|n| !n.is_empty());
    }
    if next.is_none() {
        return Ok(None);
    }
    Err(Stop::Failed(Failure::new(
        ErrorClass::Validation,
        "sage_lookup_too_wide",
        format!(
            "An earlier attempt may have created {} {} in Sage, but more than {} of the contact's documents changed \
             since the event arrived, so the ledger stopped looking rather than risk posting it twice. Look for \
             reference {} in Sage: if it is there, skip this run; if not, retry it.",
            doc.wrapper.replace('_', " "),
            doc.reference,
            LOOKUP_MAX_PAGES * ledger_sage_api::MAX_PAGE as usize,
            doc.reference
        ),
    )))
}

/// A query value, percent-encoded.
pub(super) fn encode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}
