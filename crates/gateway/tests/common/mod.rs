//! Running the `ledger` binary from tests: clean environments, reaping, signals.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::{
    process::{Child, Command},
    time::{Duration, Instant},
};

pub use ledger_test_support::TestApp;

pub const LEDGER: &str = env!("CARGO_BIN_EXE_ledger");

/// Kills the child if a test fails before it exits, so no process outlives the run.
pub struct Reaper(pub Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl std::ops::Deref for Reaper {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Reaper {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

pub fn spawn(cmd: &mut Command) -> Reaper {
    ledger_gateway::install_crypto_provider();
    Reaper(cmd.spawn().unwrap())
}

/// A clean environment: nothing from the developer's shell leaks into the child.
pub fn ledger() -> Command {
    let mut cmd = Command::new(LEDGER);
    cmd.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    cmd
}

pub fn terminate(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

pub fn wait_with_timeout(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("the process did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `ledger worker` against `app`'s database and sandbox Sage, with `keys` (the app's
/// master keys) and any extra settings.
pub fn worker(app: &TestApp, keys: &str, extra: &[(&str, &str)]) -> Command {
    process(app, keys, "worker", extra)
}

/// `ledger <command>` (serve or worker) configured like [`worker`].
pub fn process(app: &TestApp, keys: &str, command: &str, extra: &[(&str, &str)]) -> Command {
    let sage = app.sage();
    let mut cmd = ledger();
    cmd.arg(command)
        .env("DATABASE_URL", app.db.url())
        .env("LEDGER_MASTER_KEYS", keys)
        .env("LEDGER_METRICS_ADDR", "")
        .env("LEDGER_LOG_LEVEL", "warn")
        .env("LEDGER_MIGRATE_ON_START", "false")
        .env("LEDGER_ALLOW_INSECURE_MAGENTO", "true")
        .env("LEDGER_ALLOW_PRIVATE_MAGENTO", "true")
        .env("LEDGER_SAGE_AUTHORIZE_URL", sage.authorize_url())
        .env("LEDGER_SAGE_TOKEN_URL", sage.token_url())
        .env("LEDGER_SAGE_REVOKE_URL", sage.revoke_url())
        .env("LEDGER_SAGE_API_BASE", sage.api_base())
        .env("LEDGER_SAGE_CLIENT_ID", &sage.config().client_id)
        .env("LEDGER_SAGE_CLIENT_SECRET", &sage.config().client_secret)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    for (k, v) in extra {
        cmd.env(k, v);
    }
    cmd
}

/// A test app whose master keys the worker processes can share.
pub async fn app_with_keys(
    sage: ledger_sandbox::sage::SageConfig,
    configure: impl FnOnce(&mut ledger_core::Settings) + Send + 'static,
) -> (TestApp, String) {
    let keys = ledger_core::crypto::Keyring::generate_spec("k1").expose().clone();
    let app = TestApp::builder()
        .sage(sage)
        .configure({
            let keys = keys.clone();
            move |s| {
                s.master_keys = Some(std::sync::Arc::new(ledger_core::crypto::Keyring::parse(&keys).unwrap()));
                configure(s);
            }
        })
        .spawn()
        .await;
    (app, keys)
}
