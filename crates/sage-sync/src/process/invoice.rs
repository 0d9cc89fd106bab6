//! Invoices: `invoice.created` posts a sales invoice (and voids one Magento cancelled).

// A part of the processing module: its helpers and imports are this file's too.
use super::*;

pub(super) async fn invoice_created(env: &mut Env<'_>) -> Step<Outcome> {
    let id = env.run.entity_id;
    // Read before the lease: the invoice's lease is then taken with its contact's, in one
    // round trip (a skipped invoice needs neither).
    let inv = env
        .magento
        .invoice(id)
        .await
        .map_err(|e| from_magento(env.state, env.run.binding, e))?;
    if let Some(skipped) = document_policy(&env.settings, inv.website_id, Some(inv.store_id), &inv.created_at) {
        return Ok(skipped);
    }
    if inv.state != "paid" && !env.settings.sync_unpaid_invoices {
        return Ok(skip(
            "unpaid_invoice",
            "Only invoices paid at creation sync (sync_unpaid_invoices is off).",
        ));
    }
    if cents(inv.grand_total).is_zero() && !env.settings.sync_zero_value_invoices {
        return Ok(skip(
            "zero_value_invoice",
            "Zero-value invoices are not synced (sync_zero_value_invoices is off).",
        ));
    }
    let mut plan = plan_contact(env, &inv.customer, &inv.currency, inv.grand_total).await?;
    if inv.state == "cancelled" {
        // No contact is created for it: no budget entry to take with the lease.
        plan.spend = None;
    }
    let lease = EntityKey::new("invoice", id);
    let mut contact_held = hold_contact(env, &plan, Some((&lease, "invoice", id))).await?;
    let mut previous = contact_held.first_xref.take();
    if let Some(x) = &previous
        && let Some(sage_id) = x.posted()
    {
        if inv.state == "cancelled" {
            return cancel_posted_invoice(env, &inv, x).await;
        }
        match held(x) {
            None => {
                return Ok(Outcome::Synced {
                    sage_id: sage_id.to_owned(),
                    reference: x.sage_reference.clone(),
                    message: Some("Already in Sage; nothing posted again.".into()),
                });
            }
            Some(Held::Failed(f)) => return Err(f.into()),
            Some(Held::Accepted(message)) => {
                return Ok(Outcome::Synced {
                    sage_id: sage_id.to_owned(),
                    reference: x.sage_reference.clone(),
                    message: Some(message),
                });
            }
            Some(Held::Repost) => {
                let sage_id = sage_id.to_owned();
                void_for_repost(env, "invoice", "/sales_invoices", &sage_id, &inv.increment_id).await?;
                previous = xref::get(
                    &env.state.db,
                    &XrefKey::document(env.run.binding, &env.business, "invoice", id),
                )
                .await?;
            }
        }
    }
    if inv.state == "cancelled" {
        return Ok(skip(
            "invoice_cancelled",
            "The invoice was cancelled in Magento before it reached Sage; nothing is posted.",
        ));
    }
    let contact_id = ensure_held(env, &inv.customer, plan, contact_held, ContactSource::Document).await?;
    let mapped = mapping::map_invoice(&inv, &contact_id, &env.ctx())?;
    let reference = mapped.body["reference"].as_str().unwrap_or_default().to_owned();
    let created = post_once(
        env,
        Doc {
            entity: "invoice",
            id,
            path: "/sales_invoices",
            wrapper: "sales_invoice",
            reference: &reference,
            contact_id: &contact_id,
            previous,
        },
        mapped.clone(),
    )
    .await?;
    let sage_id = sage_id_of(&created, "invoice")?;
    let number = created["invoice_number"]
        .as_str()
        .or_else(|| created["displayed_as"].as_str())
        .map(str::to_owned);
    // What its payment and credit notes need: the contact, the rate, how it was booked,
    // and who bought what (to find it for a refund made from the order).
    let skus: Vec<&str> = inv.lines.iter().map(|l| l.sku.as_str()).collect();
    let extra = json!({
        "contact_id": contact_id, "currency": inv.currency.to_uppercase(), "exchange_rate": mapped.body.get("exchange_rate"),
        "totals": mapped.totals, "treatment": mapped.treatment, "customer": contact_of(&inv.customer).xref_id().to_string(),
        "skus": skus, "increment_id": inv.increment_id,
        // Its balance as the ledger changes it (payments and credit notes read it from
        // here instead of asking Sage): Sage's own total, nothing allocated yet.
        "sage_total": amount(&created["total_amount"]).map(money_text), "allocations": {},
    });
    let mismatch = totals_mismatch(&created, &mapped, &sage_id);
    let mut extra = extra;
    if let Some(m) = &mismatch {
        extra["mismatch"] = m.clone();
    }
    // Recorded with the attempt: nothing else is written before it ends.
    env.posted = Some(ledger_jobs::Posted {
        business: env.business.clone(),
        entity: "invoice",
        id,
        currency: String::new(),
        sage_id: sage_id.clone(),
        reference: number.clone(),
        extra,
    });
    if let Some(m) = &mismatch {
        return Err(mismatch_failure(m).into());
    }
    Ok(Outcome::Synced {
        sage_id,
        reference: number,
        message: notes_message(&mapped),
    })
}

/// The contact a customer's documents go to when B2C consolidation does not apply.
pub(super) fn contact_of(contact: &Contact) -> ContactKey {
    if contact.is_guest() {
        ContactKey::Guest(contact.email.clone())
    } else {
        ContactKey::Customer(contact.magento_id)
    }
}

/// An invoice cancelled in Magento after it was posted: voided in Sage, or credited in
/// full (the setting's choice; a paid or allocated invoice cannot be voided).
pub(super) async fn cancel_posted_invoice(
    env: &mut Env<'_>,
    inv: &ledger_magento_api::canonical::Invoice,
    x: &xref::Xref,
) -> Step<Outcome> {
    let sage_id = x.posted().unwrap_or_default().to_owned();
    if let Some(done) = x.extra["cancelled"].as_str() {
        return Ok(Outcome::Synced {
            sage_id,
            reference: x.sage_reference.clone(),
            message: Some(format!("Cancelled in Magento; already {done} in Sage.")),
        });
    }
    let current: Value = sage!(
        env.session
            .get(&format!("/sales_invoices/{sage_id}?mark_as_sent=false"))
            .await
    );
    let total = amount(&current["total_amount"]).unwrap_or_default();
    let outstanding = amount(&current["outstanding_amount"]).unwrap_or_default();
    let voidable = outstanding == total;
    let db = env.state.db.clone();
    let done = if env.settings.cancelled_invoice_action == policy::CancelledInvoiceAction::Void && voidable {
        let reason = encode(&format!("Cancelled in Magento (invoice {})", inv.increment_id));
        sage!(
            env.session
                .delete(&format!("/sales_invoices/{sage_id}?void_reason={reason}"))
                .await
        );
        "voided"
    } else {
        // A credit note mirroring the invoice, allocated against it.
        let contact_id = x.extra["contact_id"].as_str().unwrap_or_default().to_owned();
        let mapped = mapping::map_invoice(inv, &contact_id, &env.ctx())?;
        let mut body = mapped.body.as_object().cloned().unwrap_or_default();
        if let Some(lines) = body.remove("invoice_lines") {
            body.insert("credit_note_lines".into(), lines);
        }
        body.remove("due_date");
        let reference = format!("{}-X", mapped.body["reference"].as_str().unwrap_or_default());
        body.insert("reference".into(), json!(reference));
        body.insert("original_invoice_date".into(), mapped.body["date"].clone());
        body.insert(
            "notes".into(),
            json!(format!("Magento invoice {} was cancelled", inv.increment_id)),
        );
        body.insert(
            "idempotency_id".into(),
            json!(mapping::idempotency_id(
                &env.binding_text,
                "cancel_credit_note",
                &inv.magento_id.to_string()
            )),
        );
        let note: Value = sage!(
            env.session
                .post("/sales_credit_notes", &json!({ "sales_credit_note": body }))
                .await
        );
        let allocate = outstanding.min(mapped.totals.total);
        if allocate > Decimal::ZERO {
            let note_id = &sage_id_of(&note, "credit note")?;
            let date = mapped.body["date"].as_str().unwrap_or_default().to_owned();
            let allocation = mapping::map_allocation(
                -inv.magento_id,
                &contact_id,
                &date,
                &sage_id,
                note_id,
                allocate,
                &env.binding_text,
            );
            sage!(env.session.post::<Value>("/contact_allocations", &allocation).await);
            xref::record_allocation(
                &db,
                &XrefKey::document(env.run.binding, &env.business, "invoice", inv.magento_id),
                "cancelled",
                allocate,
            )
            .await?;
        }
        "credited"
    };
    xref::merge_extra(
        &db,
        &XrefKey::document(env.run.binding, &env.business, "invoice", inv.magento_id),
        &json!({ "cancelled": done }),
    )
    .await?;
    Ok(Outcome::Synced {
        sage_id,
        reference: x.sage_reference.clone(),
        message: Some(format!("Cancelled in Magento: {done} in Sage.")),
    })
}
