# Common tasks. CI (.ci/run) calls these recipes verbatim.

set shell := ["bash", "-euo", "pipefail", "-c"]

admin_url := env("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")

# Run everything locally (database, server, worker, sandboxes).
dev:
    cargo run -- dev

# The README's test command (installs Chromium and the OAuth test server when missing).
test:
    scripts/test

fmt-check:
    cargo fmt --all --check

clippy:
    cargo clippy --workspace --all-targets --locked -- -D warnings

# Regenerate the committed OpenAPI document.
openapi:
    cargo run -q -- openapi > openapi/ledger.json

# Fail when openapi/ledger.json differs from what the code generates.
openapi-check:
    cargo run -q -- openapi --check openapi/ledger.json

# Regenerate .sqlx/ (compile-time query data) against a freshly migrated database.
sqlx-prepare: (_sqlx "prepare")

# Fail when .sqlx/ is missing or stale for any query.
sqlx-check: (_sqlx "prepare --check")

_sqlx args:
    #!/usr/bin/env bash
    set -euo pipefail
    db="ledger_sqlx_$$"
    url="$(python3 -c 'import sys,urllib.parse as u; p=u.urlparse(sys.argv[1]); print(p._replace(path="/"+sys.argv[2]).geturl())' '{{admin_url}}' "$db")"
    psql '{{admin_url}}' -qc "CREATE DATABASE $db"
    trap "psql '{{admin_url}}' -qc 'DROP DATABASE IF EXISTS $db WITH (FORCE)'" EXIT
    DATABASE_URL="$url" cargo sqlx migrate run --source migrations >/dev/null
    DATABASE_URL="$url" cargo sqlx {{args}} --workspace -- --all-targets

# Parse and schema-check the Kubernetes manifests offline (strict: unknown fields fail).
deploy-check:
    kubernetes-validate --strict deploy/k8s/configmap.yaml deploy/k8s/gateway.yaml deploy/k8s/worker.yaml deploy/k8s/migrate-job.yaml
    python3 -c 'import yaml,sys; [list(yaml.safe_load_all(open(f))) for f in sys.argv[1:]]' deploy/k8s/*.yaml

# Property-based API testing with schemathesis against a running server.
api-fuzz:
    scripts/api-fuzz

# Dependency policy (deny.toml): licences, banned crates, sources. Offline: the RustSec
# advisory database is not reachable from CI here (see docs/security.md).
deny:
    cargo deny --offline --log-level error check --hide-inclusion-graph bans licenses sources

# Static checks: formatting, lints, offline query data, OpenAPI drift, manifests, dependencies.
lint: fmt-check clippy sqlx-check openapi-check deploy-check deny

# Everything CI runs, in order.
ci: lint test api-fuzz
