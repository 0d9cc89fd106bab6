//! Credit notes: `creditmemo.created` posts a credit note and allocates it.

// A part of the processing module: its helpers and imports are this file's too.
use super::*;

pub(super) async fn credit_memo(env: &mut Env<'_>) -> Step<Outcome> {
    let id = env.run.entity_id;
    let memo = env
        .magento
        .creditmemo(id)
        .await
        .map_err(|e| from_magento(env.state, env.run.binding, e))?;
    if let Some(skipped) = document_policy(&env.settings, memo.website_id, None, &memo.created_at) {
        return Ok(skipped);
    }
    hold(env, &EntityKey::new("creditmemo", id)).await?;
    let existing = xref::get(
        &env.state.db,
        &XrefKey::document(env.run.binding, &env.business, "creditmemo", id),
    )
    .await?;
    // On the original invoice's contact (needed to allocate). A refund made from the
    // order names no invoice: the one it belongs to is found among the customer's
    // synced invoices when exactly one fits; otherwise it goes on the customer's contact
    // unallocated, and the run says why.
    let mut unlinked = None;
    let invoice_id = match memo.invoice_id {
        Some(invoice_id) => Some(invoice_id),
        None => match existing.as_ref().and_then(|x| x.extra["invoice_id"].as_i64()) {
            Some(found) => Some(found),
            None => match find_invoice(env, &memo).await? {
                Ok(found) => Some(found),
                Err(why) => {
                    unlinked = Some(why);
                    None
                }
            },
        },
    };
    let invoice = match invoice_id {
        Some(invoice_id) => {
            hold(env, &EntityKey::new("invoice", invoice_id)).await?;
            Some(require_invoice(env, invoice_id).await?)
        }
        None => None,
    };
    // A credit note booked with other totals than Magento's stays held until resolved.
    let mut existing = existing;
    let mut accepted = None;
    if let Some(x) = &existing
        && let Some(posted) = x.posted()
    {
        match held(x) {
            None => {}
            Some(Held::Failed(f)) => return Err(f.into()),
            Some(Held::Accepted(message)) => accepted = Some(message),
            Some(Held::Repost) => {
                let posted = posted.to_owned();
                void_for_repost(env, "creditmemo", "/sales_credit_notes", &posted, &memo.increment_id).await?;
                existing = xref::get(
                    &env.state.db,
                    &XrefKey::document(env.run.binding, &env.business, "creditmemo", id),
                )
                .await?;
            }
        }
    }
    // The note's open balance when this attempt has Sage's answer for it (just posted,
    // or found after an uncertain post: no allocation of the ledger's can exist yet).
    let mut note_open = None;
    let (sage_id, number, total, mut message) = match existing.as_ref().and_then(|x| x.posted().map(|p| (x, p))) {
        Some((x, posted)) => {
            let done = Outcome::Synced {
                sage_id: posted.to_owned(),
                reference: x.sage_reference.clone(),
                message: Some(accepted.clone().unwrap_or_else(|| "Already in Sage.".into())),
            };
            if invoice.is_none() || x.extra["allocated"].as_bool() == Some(true) {
                return Ok(done);
            }
            // Posted, but the allocation may not have happened: finish it below.
            let total = x.extra["totals"]["total"].clone();
            (
                posted.to_owned(),
                x.sage_reference.clone(),
                amount(&total).unwrap_or_default(),
                None,
            )
        }
        None => {
            let contact_id = match invoice.as_ref().and_then(|x| x.extra["contact_id"].as_str()) {
                Some(c) => c.to_owned(),
                None => {
                    ensure_contact(
                        env,
                        &memo.customer,
                        &memo.currency,
                        memo.grand_total,
                        ContactSource::Document,
                    )
                    .await?
                }
            };
            let treatment: Option<mapping::Treatment> = invoice
                .as_ref()
                .and_then(|x| serde_json::from_value(x.extra["treatment"].clone()).ok());
            let mapped = mapping::map_credit_note(&memo, &contact_id, treatment.as_ref(), &env.ctx())?;
            let reference = mapped.body["reference"].as_str().unwrap_or_default().to_owned();
            let created = post_once(
                env,
                Doc {
                    entity: "creditmemo",
                    id,
                    path: "/sales_credit_notes",
                    wrapper: "sales_credit_note",
                    reference: &reference,
                    contact_id: &contact_id,
                    previous: existing.clone(),
                },
                mapped.clone(),
            )
            .await?;
            let sage_id = sage_id_of(&created, "credit note")?;
            note_open = amount(&created["outstanding_amount"]);
            let number = created["credit_note_number"]
                .as_str()
                .or_else(|| created["displayed_as"].as_str())
                .map(str::to_owned);
            xref::mark_posted(
                &env.state.db,
                &XrefKey::document(env.run.binding, &env.business, "creditmemo", id),
                &sage_id,
                number.as_deref(),
                &{
                    let mut extra =
                        json!({ "contact_id": contact_id, "totals": mapped.totals, "invoice_id": invoice_id });
                    if let Some(m) = totals_mismatch(&created, &mapped, &sage_id) {
                        extra["mismatch"] = m;
                    }
                    extra
                },
            )
            .await?;
            if let Some(m) = totals_mismatch(&created, &mapped, &sage_id) {
                return Err(mismatch_failure(&m).into());
            }
            let mut message = notes_message(&mapped);
            if memo.invoice_id.is_none() {
                let said = match (invoice_id, &unlinked) {
                    (Some(found), _) => format!("Refunded from the order; matched to invoice {found}."),
                    (None, Some(why)) => format!(
                        "Refunded from the order and no invoice could be told apart ({why}): allocate it in Sage."
                    ),
                    (None, None) => String::new(),
                };
                message = Some(match message {
                    Some(m) => format!("{said} {m}"),
                    None => said,
                });
            }
            (sage_id, number, mapped.totals.total, message)
        }
    };
    // Allocated against the invoice as far as both are still open. The invoice's balance
    // is known from what the ledger posted and allocated (read from Sage for an invoice
    // posted before balances were kept, or when Sage refuses the known figure). The
    // note's is Sage's answer when this attempt posted it, else read: an earlier
    // attempt's allocation may have landed with its answer lost.
    if let Some(invoice) = invoice
        && let Some(invoice_sage_id) = invoice.sage_id.as_deref()
        && let Some(invoice_magento_id) = invoice_id
    {
        let contact_id = invoice.extra["contact_id"].as_str().unwrap_or_default().to_owned();
        let own = format!("creditmemo:{id}");
        let note_open = match note_open {
            Some(open) => open,
            None => {
                let note: Value = sage!(
                    env.session
                        .get(&format!("/sales_credit_notes/{sage_id}?mark_as_sent=false"))
                        .await
                );
                amount(&note["outstanding_amount"]).unwrap_or(total)
            }
        };
        let known = invoice.known_open(&own);
        // Whether the figure tried is the ledger's own (a refusal then reads Sage's).
        let mut from_ledger = known.is_some();
        let mut next_open = Some(match known {
            Some(open) => open,
            None => invoice_open(env, invoice_sage_id).await?,
        });
        let mut allocated = None;
        while let Some(open) = next_open.take() {
            let allocate = cents(open.min(note_open));
            if allocate <= Decimal::ZERO {
                break;
            }
            let date = mapping::date_of(&memo.created_at).unwrap_or_else(|| Utc::now().format("%Y-%m-%d").to_string());
            let body = mapping::map_allocation(
                id,
                &contact_id,
                &date,
                invoice_sage_id,
                &sage_id,
                allocate,
                &env.binding_text,
            );
            match env.session.post::<Value>("/contact_allocations", &body).await {
                Ok(_) => {}
                Err(e) => {
                    let failure = match from_sage(e) {
                        Ok(f) => f,
                        Err(o) => return Err(Stop::Outcome(o)),
                    };
                    if !(from_ledger && refused(&failure)) {
                        return Err(failure.into());
                    }
                    // The merchant paid or credited part of the invoice by hand in Sage.
                    let actual = invoice_open(env, invoice_sage_id).await?;
                    if actual == cents(open) {
                        return Err(failure.into());
                    }
                    from_ledger = false;
                    next_open = Some(actual);
                    continue;
                }
            }
            allocated = Some(allocate);
            message = Some(format!("Allocated {allocate} against the invoice."));
        }
        xref::mark_note_allocated(
            &env.state.db,
            &XrefKey::document(env.run.binding, &env.business, "creditmemo", id),
            invoice_magento_id,
            &own,
            allocated,
        )
        .await?;
    }
    Ok(Outcome::Synced {
        sage_id,
        reference: number,
        message,
    })
}

/// The synced invoice a refund made from the order belongs to: the customer's, in its
/// currency, holding every refunded item and at least the refunded total — when exactly
/// one fits.
pub(super) async fn find_invoice(
    env: &Env<'_>,
    memo: &ledger_magento_api::canonical::CreditMemo,
) -> Step<Result<i64, String>> {
    let customer = contact_of(&memo.customer).xref_id().to_string();
    let rows = sqlx::query!(
        r#"SELECT magento_entity_id, extra FROM entity_xref
           WHERE binding_id = $1 AND sage_business_id = $4 AND entity_type = 'invoice' AND state = 'posted'
             AND extra->>'customer' = $2 AND extra->>'currency' = $3
           ORDER BY magento_entity_id DESC LIMIT 100"#,
        env.run.binding.0,
        customer,
        memo.currency.to_uppercase(),
        env.business
    )
    .fetch_all(&env.state.db)
    .await?;
    let skus: Vec<&str> = memo
        .lines
        .iter()
        .filter(|l| l.qty > Decimal::ZERO)
        .map(|l| l.sku.as_str())
        .collect();
    let fits: Vec<i64> = rows
        .iter()
        .filter(|r| {
            let has = |sku: &str| {
                r.extra["skus"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|s| s.as_str() == Some(sku)))
            };
            let total = amount(&r.extra["totals"]["total"]).unwrap_or_default();
            skus.iter().all(|s| has(s)) && total >= cents(memo.grand_total)
        })
        .map(|r| r.magento_entity_id)
        .collect();
    Ok(match fits.as_slice() {
        [one] => Ok(*one),
        [] => Err("no synced invoice of this customer holds these items".to_owned()),
        many => Err(format!(
            "{} synced invoices of this customer could be the one",
            many.len()
        )),
    })
}
