//! Test support: every test gets its own database and, when it needs one, the real
//! server listening on `127.0.0.1:0`.
//!
//! Databases are copied from a migrated template (`ledger_tpl_<hash of migrations>`),
//! built once per migration set under an advisory lock so parallel test processes do
//! not race, and dropped when the [`TestDb`] is dropped.

mod app;
pub mod browser;
mod db;

pub use app::{PairedStore, TestApp, TestAppBuilder, TestMerchant, TestSession, Workers, point_at_sage, test_settings};
pub use db::{TestDb, admin_url};
