//! The store's admin view: connection, health tile, outbox and the "Sage Status" chips.

use serde_json::{Value, json};

use super::{OutboxStatus, Store};

/// The module's HealthTile decision (contract §5.3), in its order.
pub fn tile_verdict(connected: bool, health: &Value) -> Value {
    let text = |path: &[&str]| {
        let mut v = health;
        for p in path {
            v = &v[*p];
        }
        v.as_str().unwrap_or_default().to_owned()
    };
    let int = |path: &[&str]| health[path[0]][path[1]].as_i64().unwrap_or(0);
    if !connected {
        return json!({ "state": "unknown", "headline": "Not connected to Sage" });
    }
    if health.as_object().is_none_or(|o| o.is_empty()) {
        return json!({ "state": "unknown", "headline": "Ledger unreachable" });
    }
    let magento = text(&["tenant", "magento_connection_status"]);
    let binding = text(&["binding", "status"]);
    if magento == "token_revoked" {
        return json!({ "state": "error", "headline": "Connection revoked — re-pair required" });
    }
    if magento == "pending" || binding.is_empty() {
        return json!({ "state": "warning", "headline": "Finish setup at ledger.byte8.io" });
    }
    if binding != "active" {
        return json!({ "state": "error", "headline": format!("Binding {binding}") });
    }
    if int(&["sync", "failed_24h"]) > 0 {
        return json!({ "state": "error", "headline": format!("{} failed in the last 24 h", int(&["sync", "failed_24h"])) });
    }
    if int(&["sync", "pending_count"]) > 0 {
        return json!({ "state": "warning", "headline": format!("{} pending", int(&["sync", "pending_count"])) });
    }
    json!({ "state": "connected", "headline": format!("Connected to Sage ({})", text(&["binding", "region"]).to_uppercase()) })
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

pub fn render(store: &Store, summary: &Value) -> String {
    let chip = |status: &str| match status {
        "synced" => "✓ Synced",
        "pending" => "⏳ Pending",
        "skipped" => "⏸ Skipped",
        "failed" => "✗ Failed",
        _ => "—",
    };
    let mut mirror_rows = String::new();
    for row in store.mirror().iter().rev().take(200) {
        let tip = row
            .provider_reference
            .clone()
            .or_else(|| row.provider_entity_id.clone())
            .or_else(|| row.skip_reason.as_ref().map(|r| format!("Skipped: {r}")))
            .or_else(|| row.error_code.as_ref().map(|e| format!("Error: {e}")))
            .unwrap_or_default();
        mirror_rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td title=\"{}\">{}</td><td>{}</td><td>{}</td></tr>",
            escape(&row.entity_type),
            row.magento_entity_id,
            escape(&tip),
            chip(&row.sync_status),
            escape(&tip),
            escape(
                row.last_sync_at
                    .as_deref()
                    .map(|t| format!("{t} UTC"))
                    .as_deref()
                    .unwrap_or("")
            ),
        ));
    }
    let mut outbox_rows = String::new();
    for row in store.outbox().iter().rev().take(200) {
        let status = match row.status {
            OutboxStatus::Pending => "pending",
            OutboxStatus::Succeeded => "succeeded",
            OutboxStatus::DeadLettered => "dead_lettered",
        };
        outbox_rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{status}</td><td>{}</td><td>{}</td></tr>",
            row.id,
            escape(&row.event_name),
            escape(&row.idempotency_key),
            row.attempts,
            escape(row.last_error.as_deref().unwrap_or("")),
        ));
    }
    format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="5"><title>Sandbox Magento store</title>
<style>body{{font:14px/1.4 system-ui,sans-serif;margin:1.5rem;color:#222}}table{{border-collapse:collapse;width:100%;margin-bottom:2rem}}
td,th{{border-bottom:1px solid #ddd;padding:.3rem .5rem;text-align:left;vertical-align:top}}code{{background:#f2f2f2;padding:0 .2rem}}</style></head>
<body><h1>Sandbox Magento store</h1>
<p>Storefront <code>{base}</code> · paired: <strong>{connected}</strong> · tenant <code>{tenant}</code> · ledger <code>{ledger}</code></p>
<p>Outbox: {pending} pending, {succeeded} succeeded, {dead} dead-lettered. Controls: <code>POST /sandbox/pairing-code</code>,
<code>POST /sandbox/simulate {{"orders":5}}</code>, <code>POST /sandbox/drain</code>, <code>GET /sandbox/tile</code>.</p>
<h2>Sage Status (sync-state mirror)</h2><table><tr><th>Entity</th><th>Id</th><th>Chip</th><th>Detail</th><th>Last sync</th></tr>{mirror_rows}</table>
<h2>Outbox</h2><table><tr><th>#</th><th>Event</th><th>Key</th><th>Status</th><th>Attempts</th><th>Last error</th></tr>{outbox_rows}</table>
</body></html>"#,
        base = escape(summary["magento_base_url"].as_str().unwrap_or("")),
        connected = summary["connected"],
        tenant = escape(summary["tenant_id"].as_str().unwrap_or("—")),
        ledger = escape(summary["ledger_base_url"].as_str().unwrap_or("")),
        pending = summary["outbox"]["pending"],
        succeeded = summary["outbox"]["succeeded"],
        dead = summary["outbox"]["dead_lettered"],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The module's HealthTileTest cases.
    #[test]
    fn tile_decisions_match_the_module() {
        assert_eq!(tile_verdict(true, &json!([]))["state"], "unknown");
        let revoked = json!({"tenant":{"magento_connection_status":"token_revoked"},"binding":{"status":"active","region":"uk"},"sync":{"pending_count":0,"failed_24h":0}});
        assert_eq!(tile_verdict(true, &revoked)["state"], "error");
        let pending = json!({"tenant":{"magento_connection_status":"pending"},"binding":{},"sync":{}});
        assert_eq!(tile_verdict(true, &pending)["state"], "warning");
        let ok = json!({"tenant":{"magento_connection_status":"active"},"binding":{"status":"active","region":"uk"},"sync":{"last_run_at":"2026-04-20T12:00:00Z","pending_count":0,"failed_24h":0}});
        assert_eq!(tile_verdict(true, &ok)["state"], "connected");
        assert!(tile_verdict(true, &ok)["headline"].as_str().unwrap().contains("(UK)"));
        let failed = json!({"tenant":{"magento_connection_status":"active"},"binding":{"status":"active","region":"gb"},"sync":{"pending_count":0,"failed_24h":3}});
        assert_eq!(tile_verdict(true, &failed)["state"], "error");
        let busy = json!({"tenant":{"magento_connection_status":"active"},"binding":{"status":"active","region":"uk"},"sync":{"pending_count":5,"failed_24h":0}});
        assert_eq!(tile_verdict(true, &busy)["state"], "warning");
        let bad = json!({"tenant":{"magento_connection_status":"active"},"binding":{"status":"revoked"},"sync":{}});
        assert!(
            tile_verdict(true, &bad)["headline"]
                .as_str()
                .unwrap()
                .contains("revoked")
        );
        let setup = json!({"tenant":{"magento_connection_status":"active"},"binding":{"status":""},"sync":{}});
        assert_eq!(
            tile_verdict(true, &setup)["headline"],
            "Finish setup at ledger.byte8.io"
        );
    }
}
