//! Products: `product.upserted` finds or creates the Sage product or service.

// A part of the processing module: its helpers and imports are this file's too.
use super::*;

pub(super) async fn product(env: &mut Env<'_>) -> Step<Outcome> {
    let id = env.run.entity_id;
    hold(env, &EntityKey::new("product", id)).await?;
    let p = env
        .magento
        .product(id)
        .await
        .map_err(|e| from_magento(env.state, env.run.binding, e))?;
    let kind = match p.product_type.as_str() {
        "simple" if p.manage_stock && env.settings.sync_stock => "stock_item",
        "simple" => "product",
        "virtual" | "downloadable" => "service",
        other => {
            return Ok(skip(
                "PRODUCT_TYPE_NOT_SUPPORTED",
                format!("{other} products are not synced; their simple children are."),
            ));
        }
    };
    let mapping::Item {
        path,
        wrapper,
        mut body,
    } = mapping::map_item(&p, kind, &env.settings)?;
    let db = env.state.db.clone();
    let existing = xref::get(&db, &XrefKey::document(env.run.binding, &env.business, "product", id)).await?;
    let sage_id = match existing.as_ref().and_then(|x| x.posted()) {
        Some(sage_id) => {
            let sage_id = sage_id.to_owned();
            sage!(
                env.session
                    .put::<Value>(&format!("{path}/{sage_id}"), &json!({ wrapper: body }))
                    .await
            );
            sage_id
        }
        None => {
            let found = sage!(
                env.session
                    .list_all(&format!("{path}?search={}&attributes=all", encode(&p.sku)))
                    .await
            )
            .into_iter()
            .find(|i| i["item_code"].as_str() == Some(p.sku.as_str()));
            match found {
                Some(f) => sage_id_of(&f, "product")?,
                None => {
                    body["idempotency_id"] =
                        json!(mapping::idempotency_id(&env.binding_text, wrapper, &id.to_string()));
                    let created: Value = sage!(env.session.post(path, &json!({ wrapper: body })).await);
                    sage_id_of(&created, "product")?
                }
            }
        }
    };
    xref::mark_posted(
        &db,
        &XrefKey::document(env.run.binding, &env.business, "product", id),
        &sage_id,
        Some(&p.sku),
        &json!({ "kind": kind }),
    )
    .await?;
    let mut message = None;
    if kind == "stock_item"
        && let Some(qty) = p.stock_qty
    {
        let item: Value = sage!(env.session.get(&format!("/stock_items/{sage_id}")).await);
        let in_stock = amount(&item["quantity_in_stock"]).unwrap_or_default();
        let diff = qty - in_stock;
        if !diff.is_zero() {
            let movement = mapping::map_stock_movement(
                &p,
                &sage_id,
                diff,
                &Utc::now().format("%Y-%m-%d").to_string(),
                &env.binding_text,
            );
            sage!(env.session.post::<Value>("/stock_movements", &movement).await);
            message = Some(format!("Stock moved by {diff} to {qty}."));
        }
    }
    Ok(Outcome::Synced {
        sage_id,
        reference: Some(p.sku),
        message,
    })
}
