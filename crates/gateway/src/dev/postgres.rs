//! A private PostgreSQL for `ledger dev` when none answers at DATABASE_URL.
//!
//! Uses the machine's own PostgreSQL binaries (initdb, pg_ctl). PostgreSQL refuses to run
//! as root, so as root the cluster is created and run by the `postgres` user through
//! `runuser`, in a folder that user can reach.

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail};
use sqlx::{Connection as _, PgConnection};
use tokio::process::Command;
use url::Url;

/// A cluster this process started; stop it with [`PrivatePostgres::stop`].
#[derive(Debug)]
pub struct PrivatePostgres {
    bin: PathBuf,
    dir: PathBuf,
    as_postgres: bool,
}

impl PrivatePostgres {
    pub fn data_dir(&self) -> &Path {
        &self.dir
    }

    /// Restarts the server (fast shutdown: open connections are cut), waiting until it
    /// accepts connections again.
    pub async fn restart(&self) -> anyhow::Result<()> {
        let pg_ctl = self.bin.join("pg_ctl");
        // With its log file again: otherwise the new server writes to pg_ctl's output,
        // which then never ends.
        let log = self.dir.join("server.log");
        let args = [
            "-D".as_ref(),
            self.dir.as_os_str(),
            "-l".as_ref(),
            log.as_os_str(),
            "-m".as_ref(),
            "fast".as_ref(),
            "-w".as_ref(),
            "restart".as_ref(),
        ];
        run(&mut command(self.as_postgres, &pg_ctl, &args))
            .await
            .context("restarting the private PostgreSQL failed")
    }

    pub async fn stop(self) {
        let pg_ctl = self.bin.join("pg_ctl");
        let args = [
            "-D".as_ref(),
            self.dir.as_os_str(),
            "-m".as_ref(),
            "fast".as_ref(),
            "-w".as_ref(),
            "stop".as_ref(),
        ];
        match command(self.as_postgres, &pg_ctl, &args).output().await {
            Ok(out) if out.status.success() => tracing::info!("private PostgreSQL stopped"),
            Ok(out) => {
                tracing::warn!(stderr = %String::from_utf8_lossy(&out.stderr), "stopping private PostgreSQL failed")
            }
            Err(err) => tracing::warn!(error = %err, "stopping private PostgreSQL failed"),
        }
    }
}

/// Returns `None` when a server already answers at `url`; otherwise starts a private one
/// listening where `url` points (which must be this machine).
pub async fn ensure_server(url: &Url, data_dir: &Path) -> anyhow::Result<Option<PrivatePostgres>> {
    let options = ledger_core::db::connect_options(url.as_str())?;
    match tokio::time::timeout(Duration::from_secs(3), PgConnection::connect_with(&options)).await {
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
            return Ok(None);
        }
        Ok(Err(sqlx::Error::Io(err))) if err.kind() == std::io::ErrorKind::ConnectionRefused && is_local(url) => {}
        Ok(Err(err)) => bail!("the PostgreSQL server at DATABASE_URL refused the connection: {err}"),
        Err(_) => bail!("the PostgreSQL server at DATABASE_URL did not answer within 3 s"),
    }

    let bin = find_bindir().context(
        "no PostgreSQL server answers at DATABASE_URL and no PostgreSQL binaries (initdb, pg_ctl) were found; \
         install PostgreSQL (Debian: apt-get install postgresql) or point DATABASE_URL at a running server",
    )?;
    let port = url.port().unwrap_or(5432);
    let host = url.host_str().unwrap_or("127.0.0.1").trim_matches(['[', ']']);
    let listen = if host == "localhost" { "127.0.0.1" } else { host };
    let user = if url.username().is_empty() {
        "postgres"
    } else {
        url.username()
    };
    let as_postgres = is_root();
    let dir = if as_postgres {
        // Root's working folders are often unreachable for the postgres user.
        PathBuf::from(format!("/var/tmp/ledger-dev/pg-{port}"))
    } else {
        std::path::absolute(data_dir)?.join(format!("pg-{port}"))
    };

    if !dir.join("PG_VERSION").exists() {
        tracing::info!(dir = %dir.display(), "creating a private PostgreSQL cluster");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        if as_postgres {
            run(Command::new("chown")
                .arg("-R")
                .arg("postgres:postgres")
                .arg(dir.parent().unwrap_or(&dir)))
            .await?;
        }
        let initdb = bin.join("initdb");
        let args = [
            "-D".as_ref(),
            dir.as_os_str(),
            "-U".as_ref(),
            user.as_ref(),
            "--auth=trust".as_ref(),
            "-E".as_ref(),
            "UTF8".as_ref(),
        ];
        run(&mut command(as_postgres, &initdb, &args))
            .await
            .context("initdb failed")?;
    }
    let options = format!(
        "-c listen_addresses={listen} -p {port} -c unix_socket_directories={}",
        dir.display()
    );
    let log = dir.join("server.log");
    let pg_ctl = bin.join("pg_ctl");
    let args = [
        "-D".as_ref(),
        dir.as_os_str(),
        "-l".as_ref(),
        log.as_os_str(),
        "-w".as_ref(),
        "-t".as_ref(),
        "60".as_ref(),
        "-o".as_ref(),
        options.as_ref(),
        "start".as_ref(),
    ];
    run(&mut command(as_postgres, &pg_ctl, &args))
        .await
        .with_context(|| format!("starting the private PostgreSQL failed; see {}", log.display()))?;
    tracing::info!(port, dir = %dir.display(), "private PostgreSQL started");
    Ok(Some(PrivatePostgres { bin, dir, as_postgres }))
}

/// Creates database `name` on the server at `server_url` if missing; returns its URL.
pub async fn ensure_database(server_url: &Url, name: &str) -> anyhow::Result<Url> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        bail!("--db-name must be lower-case letters, digits and underscores, got `{name}`");
    }
    let options = ledger_core::db::connect_options(server_url.as_str())?;
    let mut conn = PgConnection::connect_with(&options)
        .await
        .context("connecting to PostgreSQL (DATABASE_URL)")?;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(name)
        .fetch_one(&mut conn)
        .await?;
    if !exists {
        // The name was checked above; identifiers cannot be bound as parameters.
        let created = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut conn)
            .await;
        match created {
            Ok(_) => tracing::info!(database = name, "created database"),
            // Another process created it between our check and our CREATE.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
            Err(e) => return Err(e).context("creating the dev database"),
        }
    }
    let _ = conn.close().await;
    let mut url = server_url.clone();
    url.set_path(&format!("/{name}"));
    Ok(url)
}

fn is_local(url: &Url) -> bool {
    // postgres:// is not a "special" scheme, so the url crate keeps IPs as opaque host text.
    match url.host_str().map(|h| h.trim_matches(['[', ']'])) {
        None | Some("localhost") => true,
        Some(host) => host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback()),
    }
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// `pg_ctl`'s folder: from PATH, else the newest Debian install.
fn find_bindir() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .find(|dir| dir.join("pg_ctl").is_file() && dir.join("initdb").is_file());
    on_path.or_else(|| {
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| e.ok())
            .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
            .filter(|(_, bin)| bin.join("pg_ctl").is_file())
            .collect();
        versions.sort();
        versions.pop().map(|(_, bin)| bin)
    })
}

fn command(as_postgres: bool, program: &Path, args: &[&std::ffi::OsStr]) -> Command {
    let mut cmd = if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    cmd.args(args).current_dir("/");
    cmd
}

async fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output().await.with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{:?} failed: {}",
            cmd.as_std().get_program(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
