"""Shared by scripts/claim-cpu and scripts/ingest-cpu: a scratch database built from
`migrations/` with one bench tenant, statements as the crates compiled them (`.sqlx`),
and the machine's CPU time (/proc/stat) around a pgbench run."""

import glob
import json
import os
import re
import subprocess
import urllib.parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TENANT = "'00000000-0000-0000-0000-000000000002'"


def psql(url, *args, sql=None):
    cmd = ["psql", "-q", "-v", "ON_ERROR_STOP=1", url, *args]
    subprocess.run(cmd, input=sql, text=True, check=True, stdout=subprocess.DEVNULL)


def scratch(db):
    """(server URL, URL of `db` made afresh from the migrations, with the bench tenant)."""
    server = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    url = urllib.parse.urlunparse(urllib.parse.urlparse(server)._replace(path="/" + db))
    psql(server, "-c", f"DROP DATABASE IF EXISTS {db}", "-c", f"CREATE DATABASE {db}")
    for m in sorted(glob.glob(os.path.join(ROOT, "migrations", "*.sql"))):
        psql(url, "-f", m)
    psql(url, sql=f"""
        INSERT INTO accounts (id, email) VALUES ('00000000-0000-0000-0000-000000000001', 'bench@example.com');
        INSERT INTO tenants (id, account_id, name) VALUES ({TENANT}, '00000000-0000-0000-0000-000000000001', 'bench');""")
    return server, url


def compiled(find, params, script):
    """A statement as the crate compiled it (`.sqlx`), its parameters replaced by
    `params` (pgbench variables or SQL), in one line."""
    for f in glob.glob(os.path.join(ROOT, ".sqlx", "*.json")):
        q = json.load(open(f))["query"]
        if find(q):
            q = re.sub(r'AS "([a-z_]+)[?!]?(:[^"]*)?"', r"AS \1", q)
            # Highest first, so $1 does not eat $10–$19.
            for n in range(len(params), 0, -1):
                q = q.replace(f"${n}", params[n - 1])
            return " ".join(re.sub(r"--[^\n]*", "", q).split())
    raise SystemExit(f"{script}: a statement is not in .sqlx (run `just sqlx-prepare`)")


def cpu_jiffies():
    with open("/proc/stat") as f:
        user, nice, system = (int(x) for x in f.readline().split()[1:4])
    return user + nice + system


def cpu_ms_since(before):
    return (cpu_jiffies() - before) * 1000 / os.sysconf("SC_CLK_TCK")
