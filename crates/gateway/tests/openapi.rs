//! The committed OpenAPI document must be what the code generates.

use ledger_gateway::openapi;

const COMMITTED: &str = include_str!("../../../openapi/ledger.json");

#[test]
fn committed_document_matches_the_code() {
    if let Some(difference) = openapi::drift(COMMITTED, &openapi::document_json()) {
        panic!("openapi/ledger.json is out of date ({difference}); regenerate it with `just openapi`");
    }
}

#[test]
fn a_changed_handler_is_reported_as_drift() {
    // Simulate a handler whose documented answer changed without regenerating the file.
    let mut changed: serde_json::Value = serde_json::from_str(&openapi::document_json()).unwrap();
    changed["paths"]["/readyz"]["get"]["responses"]["200"]["description"] = "Ready (changed)".into();
    let changed = serde_json::to_string_pretty(&changed).unwrap() + "\n";
    let difference = openapi::drift(COMMITTED, &changed).expect("drift is detected");
    assert!(
        difference.contains("$.paths./readyz.get.responses.200.description"),
        "{difference}"
    );

    // A removed operation is named too.
    let mut removed: serde_json::Value = serde_json::from_str(COMMITTED).unwrap();
    removed["paths"].as_object_mut().unwrap().remove("/healthz");
    let difference = openapi::drift(&(serde_json::to_string_pretty(&removed).unwrap() + "\n"), COMMITTED).unwrap();
    assert!(difference.contains("/healthz"), "{difference}");
}

#[test]
fn the_cli_check_fails_on_drift() {
    let stale = std::env::temp_dir().join(format!("stale-openapi-{}.json", std::process::id()));
    std::fs::write(&stale, COMMITTED.replace("\"3.1.0\"", "\"3.0.3\"")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ledger"))
        .args(["openapi", "--check"])
        .arg(&stale)
        .output()
        .unwrap();
    std::fs::remove_file(&stale).unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("$.openapi") && stderr.contains("just openapi"),
        "{stderr}"
    );

    let ok = std::process::Command::new(env!("CARGO_BIN_EXE_ledger"))
        .args([
            "openapi",
            "--check",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../../openapi/ledger.json"),
        ])
        .status()
        .unwrap();
    assert!(ok.success());
}
