//! Process-wide state shared by handlers and workers of every feature crate.

use std::{
    any::{Any, TypeId},
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use sqlx::PgPool;

use crate::{Settings, crypto::Keyring, db};

/// Cheap to clone; everything inside is shared.
#[derive(Debug, Clone)]
pub struct AppState {
    pub db: PgPool,
    pub settings: Arc<Settings>,
    pub keyring: Arc<Keyring>,
    /// Password hashes computed at once (`LEDGER_PASSWORD_HASH_CONCURRENCY`): argon2id
    /// takes 19 MiB each, so unbounded parallel sign-ups would exhaust the pod.
    pub password_hashing: Arc<tokio::sync::Semaphore>,
    /// What the feature crates build once from the settings and share (the URL policy,
    /// the Sage OAuth client, the token cache): see [`AppState::part`].
    parts: Arc<Parts>,
}

/// One value per type, built on first use. Core sits below the crates that own these
/// types, so it cannot name them as fields; a process-wide static instead would be
/// shared by every state in the process (the tests run many apps in one process).
#[derive(Default)]
struct Parts(Mutex<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>);

impl std::fmt::Debug for Parts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let held = self.0.lock().unwrap_or_else(PoisonError::into_inner).len();
        f.debug_struct("Parts").field("held", &held).finish()
    }
}

impl AppState {
    /// Connects to the database and, when `migrate_on_start`, applies migrations.
    /// Fails with a [`crate::ConfigError`] when the master keys are missing.
    pub async fn connect(settings: Settings) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let keyring = settings.keyring()?;
        let pool = db::connect(&settings)
            .await
            .context("cannot connect to the database (DATABASE_URL)")?;
        if settings.migrate_on_start {
            db::migrate(&pool).await.context("applying migrations")?;
        }
        Ok(Self {
            db: pool,
            password_hashing: Arc::new(tokio::sync::Semaphore::new(settings.password_hash_concurrency)),
            settings: Arc::new(settings),
            keyring,
            parts: Arc::default(),
        })
    }

    /// This state's `T`, built by `build` the first time it is asked for. `build` runs
    /// without the lock held (it may ask for other parts); when two callers race, the
    /// first value stored wins and both get it.
    pub fn part<T: Any + Send + Sync>(&self, build: impl FnOnce(&Self) -> T) -> Arc<T> {
        self.parts.get_or_init(|| build(self))
    }
}

impl Parts {
    fn get_or_init<T: Any + Send + Sync>(&self, build: impl FnOnce() -> T) -> Arc<T> {
        let id = TypeId::of::<T>();
        let held = self.0.lock().unwrap_or_else(PoisonError::into_inner).get(&id).cloned();
        let any = match held {
            Some(any) => any,
            None => {
                let built: Arc<dyn Any + Send + Sync> = Arc::new(build());
                self.0
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .entry(id)
                    .or_insert(built)
                    .clone()
            }
        };
        any.downcast::<T>()
            .unwrap_or_else(|_| unreachable!("parts are keyed by their own TypeId"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Policy(u32);

    #[test]
    fn a_part_is_built_once_per_state_and_one_per_type() {
        let parts = Parts::default();
        let first = parts.get_or_init(|| Policy(1));
        let again = parts.get_or_init(|| Policy(2));
        assert!(Arc::ptr_eq(&first, &again), "the second ask gets the first value");
        assert_eq!(*again, Policy(1));
        // Another type is another part.
        assert_eq!(*parts.get_or_init(|| 7_u64), 7);
        // Another state (another app in the same process) builds its own.
        let other = Parts::default();
        assert_eq!(*other.get_or_init(|| Policy(3)), Policy(3));
        assert_eq!(*parts.get_or_init(|| Policy(4)), Policy(1));
    }
}
