//! Settings: defaults < file < environment.
//!
//! The defaults layer is `config/ledger.default.toml` itself, compiled in, so the
//! commented file is the documentation of every setting and cannot drift from the
//! code (a test checks both directions). Every value is parsed here, once; a bad
//! one fails with a message naming the setting's environment variable.

use std::{
    collections::BTreeMap,
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use url::Url;

use std::sync::Arc;

use crate::{Secret, crypto::Keyring};

/// The compiled-in defaults file.
pub const DEFAULTS_TOML: &str = include_str!("../../../config/ledger.default.toml");

/// One setting: its key in files and its environment variable.
#[derive(Debug, Clone, Copy)]
pub struct SettingSpec {
    pub key: &'static str,
    pub env: &'static str,
}

macro_rules! specs {
    ($($key:literal => $env:literal),* $(,)?) => {
        /// Every setting the ledger reads.
        pub const SETTINGS: &[SettingSpec] = &[$(SettingSpec { key: $key, env: $env }),*];
    };
}

specs! {
    "database_url" => "DATABASE_URL",
    "db_max_connections" => "LEDGER_DB_MAX_CONNECTIONS",
    "db_min_connections" => "LEDGER_DB_MIN_CONNECTIONS",
    "db_acquire_timeout" => "LEDGER_DB_ACQUIRE_TIMEOUT",
    "db_idle_timeout" => "LEDGER_DB_IDLE_TIMEOUT",
    "migrate_on_start" => "LEDGER_MIGRATE_ON_START",
    "http_addr" => "LEDGER_HTTP_ADDR",
    "public_url" => "LEDGER_PUBLIC_URL",
    "metrics_addr" => "LEDGER_METRICS_ADDR",
    "request_timeout" => "LEDGER_REQUEST_TIMEOUT",
    "body_limit_bytes" => "LEDGER_BODY_LIMIT_BYTES",
    "shutdown_deadline" => "LEDGER_SHUTDOWN_DEADLINE",
    "log_level" => "LEDGER_LOG_LEVEL",
    "log_format" => "LEDGER_LOG_FORMAT",
    "otlp_endpoint" => "LEDGER_OTLP_ENDPOINT",
    "master_keys" => "LEDGER_MASTER_KEYS",
    "session_ttl" => "LEDGER_SESSION_TTL",
    "session_max_age" => "LEDGER_SESSION_MAX_AGE",
    "api_token_ttl" => "LEDGER_API_TOKEN_TTL",
    "trusted_proxy_hops" => "LEDGER_TRUSTED_PROXY_HOPS",
    "password_hash_concurrency" => "LEDGER_PASSWORD_HASH_CONCURRENCY",
    "password_hash_wait" => "LEDGER_PASSWORD_HASH_WAIT",
    "header_read_timeout" => "LEDGER_HEADER_READ_TIMEOUT",
    "db_statement_timeout" => "LEDGER_DB_STATEMENT_TIMEOUT",
    "binding_ingest_per_minute" => "LEDGER_BINDING_INGEST_PER_MINUTE",
    "ingest_commit_window" => "LEDGER_INGEST_COMMIT_WINDOW",
    "allow_insecure_magento" => "LEDGER_ALLOW_INSECURE_MAGENTO",
    "allow_private_magento" => "LEDGER_ALLOW_PRIVATE_MAGENTO",
    "magento_clock_leeway" => "LEDGER_MAGENTO_CLOCK_LEEWAY",
    "magento_connect_timeout" => "LEDGER_MAGENTO_CONNECT_TIMEOUT",
    "magento_request_timeout" => "LEDGER_MAGENTO_REQUEST_TIMEOUT",
    "sage_authorize_url" => "LEDGER_SAGE_AUTHORIZE_URL",
    "sage_token_url" => "LEDGER_SAGE_TOKEN_URL",
    "sage_revoke_url" => "LEDGER_SAGE_REVOKE_URL",
    "sage_api_base" => "LEDGER_SAGE_API_BASE",
    "sage_client_id" => "LEDGER_SAGE_CLIENT_ID",
    "sage_client_secret" => "LEDGER_SAGE_CLIENT_SECRET",
    "sage_timeout" => "LEDGER_SAGE_TIMEOUT",
    "sage_refresh_margin" => "LEDGER_SAGE_REFRESH_MARGIN",
    "sage_keepalive_after" => "LEDGER_SAGE_KEEPALIVE_AFTER",
    "sage_reference_ttl" => "LEDGER_SAGE_REFERENCE_TTL",
    "sage_call_budget" => "LEDGER_SAGE_CALL_BUDGET",
    "sage_call_window" => "LEDGER_SAGE_CALL_WINDOW",
    "worker_concurrency" => "LEDGER_WORKER_CONCURRENCY",
    "binding_concurrency" => "LEDGER_BINDING_CONCURRENCY",
    "job_lease" => "LEDGER_JOB_LEASE",
    "job_max_attempts" => "LEDGER_JOB_MAX_ATTEMPTS",
    "job_poll_interval" => "LEDGER_JOB_POLL_INTERVAL",
    "retain_event_bodies" => "LEDGER_RETAIN_EVENT_BODIES",
    "retain_sync_runs" => "LEDGER_RETAIN_SYNC_RUNS",
    "retain_finished_jobs" => "LEDGER_RETAIN_FINISHED_JOBS",
    "retain_audit" => "LEDGER_RETAIN_AUDIT",
}

/// Environment variable naming the optional settings file.
pub const CONFIG_FILE_ENV: &str = "LEDGER_CONFIG";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

/// The parsed configuration of one process.
#[derive(Debug, Clone)]
pub struct Settings {
    pub database_url: Secret<String>,
    pub db_max_connections: u32,
    pub db_min_connections: u32,
    pub db_acquire_timeout: Duration,
    pub db_idle_timeout: Duration,
    pub migrate_on_start: bool,
    pub http_addr: SocketAddr,
    /// Origin without a trailing slash, e.g. `https://ledger.byte8.io`.
    pub public_url: String,
    pub metrics_addr: Option<SocketAddr>,
    pub request_timeout: Duration,
    pub body_limit_bytes: usize,
    pub shutdown_deadline: Duration,
    pub log_level: String,
    pub log_format: LogFormat,
    pub otlp_endpoint: Option<Url>,
    /// Parsed `LEDGER_MASTER_KEYS`; required by processes that touch secrets.
    pub master_keys: Option<Arc<Keyring>>,
    pub session_ttl: Duration,
    /// A session ends this long after sign-in, however active.
    pub session_max_age: Duration,
    /// Lifetime of a new API token.
    pub api_token_ttl: Duration,
    /// Reverse proxies in front of `serve` whose `X-Forwarded-For` entry is trusted
    /// (0: the TCP peer is the client).
    pub trusted_proxy_hops: usize,
    /// Password hashes computed at once per process (argon2id takes 19 MiB each).
    pub password_hash_concurrency: usize,
    /// How long a sign-in or sign-up waits for a hashing slot before answering 503.
    pub password_hash_wait: Duration,
    /// A client must send its request headers within this long.
    pub header_read_timeout: Duration,
    /// Longest SQL statement (and idle transaction) the server allows a connection.
    pub db_statement_timeout: Duration,
    /// Webhooks accepted per binding per minute; beyond it 503 + Retry-After.
    pub binding_ingest_per_minute: u32,
    /// How long concurrent webhooks gather to share one commit (0ms: each commits alone).
    pub ingest_commit_window: Duration,
    /// Allow `http://` Magento stores (development only).
    pub allow_insecure_magento: bool,
    /// Allow Magento stores on loopback/private/link-local addresses (development only).
    pub allow_private_magento: bool,
    /// Clock skew tolerated on the module's JWT time claims.
    pub magento_clock_leeway: Duration,
    pub magento_connect_timeout: Duration,
    pub magento_request_timeout: Duration,
    pub sage_authorize_url: Url,
    pub sage_token_url: Url,
    pub sage_revoke_url: Url,
    /// Without a trailing slash, e.g. `https://api.accounting.sage.com/v3.1`.
    pub sage_api_base: String,
    pub sage_client_id: String,
    pub sage_client_secret: Secret<String>,
    /// Bound on each call to Sage (OAuth and API).
    pub sage_timeout: Duration,
    /// Access tokens are refreshed when they expire within this margin.
    pub sage_refresh_margin: Duration,
    /// Connections idle longer than this are refreshed, so quiet shops never reach
    /// the 31-day refresh-token expiry.
    pub sage_keepalive_after: Duration,
    /// Reference data older than this is fetched again.
    pub sage_reference_ttl: Duration,
    /// Calls allowed per Sage business in any `sage_call_window`, across every process.
    pub sage_call_budget: u32,
    pub sage_call_window: Duration,
    /// Jobs one worker process runs at once.
    pub worker_concurrency: usize,
    /// Jobs of one binding running at once, across every process.
    pub binding_concurrency: u32,
    /// How long a claimed job is leased (renewed while it runs).
    pub job_lease: Duration,
    /// Attempts before a retrying job is dead.
    pub job_max_attempts: u32,
    /// Fallback polling when no notification arrives.
    pub job_poll_interval: Duration,
    /// Received event bodies (they hold customers' personal data) are emptied after this.
    pub retain_event_bodies: Duration,
    /// Finished sync runs (with their attempts, jobs and events) are deleted after this.
    pub retain_sync_runs: Duration,
    /// Done or cancelled jobs are deleted after this.
    pub retain_finished_jobs: Duration,
    /// The audit trail is kept longest.
    pub retain_audit: Duration,
}

/// Where a value came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Default,
    File(PathBuf),
    Environment,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Default => f.write_str("built-in default"),
            Self::File(path) => write!(f, "file {}", path.display()),
            Self::Environment => f.write_str("environment"),
        }
    }
}

/// A configuration problem. `Display` is one line that names the setting.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConfigError {
    #[error("{setting} is invalid ({origin}): {message}")]
    Invalid {
        setting: String,
        origin: Origin,
        message: String,
    },
    #[error("{setting} is required: {message}")]
    Missing { setting: String, message: String },
    #[error("{setting}: cannot read settings file {path}: {message}")]
    File {
        setting: String,
        path: PathBuf,
        message: String,
    },
    #[error("{setting}: unknown key `{key}` in {path}; the known keys are listed in config/ledger.default.toml")]
    UnknownKey {
        setting: String,
        key: String,
        path: PathBuf,
    },
}

impl ConfigError {
    /// The environment variable (or file setting) at fault.
    pub fn setting(&self) -> &str {
        match self {
            Self::Invalid { setting, .. }
            | Self::Missing { setting, .. }
            | Self::File { setting, .. }
            | Self::UnknownKey { setting, .. } => setting,
        }
    }
}

/// Raw values by key, each with its origin.
#[derive(Debug, Clone, Default)]
pub struct Layers {
    values: BTreeMap<&'static str, (String, Origin)>,
}

impl Layers {
    /// Defaults, then the file (if any), then the environment as seen through `env`.
    pub fn collect(file: Option<&Path>, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut layers = Self::default();
        layers
            .merge_toml(DEFAULTS_TOML, &Origin::Default)
            .expect("the built-in defaults file is valid");
        if let Some(path) = file {
            let file_err = |message: String| ConfigError::File {
                setting: CONFIG_FILE_ENV.to_owned(),
                path: path.to_owned(),
                message,
            };
            let text = std::fs::read_to_string(path).map_err(|e| file_err(e.to_string()))?;
            layers.merge_toml(&text, &Origin::File(path.to_owned()))?;
        }
        for spec in SETTINGS {
            if let Some(value) = env(spec.env) {
                layers.values.insert(spec.key, (value, Origin::Environment));
            }
        }
        Ok(layers)
    }

    fn merge_toml(&mut self, text: &str, origin: &Origin) -> Result<(), ConfigError> {
        let path = match origin {
            Origin::File(path) => path.clone(),
            _ => PathBuf::from("<defaults>"),
        };
        let table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::File {
            setting: CONFIG_FILE_ENV.to_owned(),
            path: path.clone(),
            message: e.to_string().replace('\n', " "),
        })?;
        for (key, value) in table {
            let Some(spec) = SETTINGS.iter().find(|s| s.key == key) else {
                return Err(ConfigError::UnknownKey {
                    setting: CONFIG_FILE_ENV.to_owned(),
                    key,
                    path,
                });
            };
            let text = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => {
                    return Err(ConfigError::Invalid {
                        setting: spec.env.to_owned(),
                        origin: origin.clone(),
                        message: format!("expected a string, integer or boolean, found {}", other.type_str()),
                    });
                }
            };
            self.values.insert(spec.key, (text, origin.clone()));
        }
        Ok(())
    }

    /// Sets `key` only where neither a file nor the environment did: how `ledger dev`
    /// chooses friendlier defaults without overriding the operator.
    pub fn default_to(&mut self, key: &'static str, value: impl Into<String>) {
        let key = spec(key).key;
        if self
            .values
            .get(key)
            .is_none_or(|(_, origin)| *origin == Origin::Default)
        {
            self.values.insert(key, (value.into(), Origin::Default));
        }
    }

    /// True when `key` still has its built-in default.
    pub fn is_default(&self, key: &str) -> bool {
        self.values
            .get(key)
            .is_none_or(|(_, origin)| *origin == Origin::Default)
    }

    /// The raw value and origin of `key`, if any layer set it.
    pub fn raw(&self, key: &str) -> Option<(&str, &Origin)> {
        self.values.get(key).map(|(v, o)| (v.as_str(), o))
    }

    fn parse<T>(&self, key: &'static str, parse: impl FnOnce(&str) -> Result<T, String>) -> Result<T, ConfigError> {
        let spec = spec(key);
        let (value, origin) = self.values.get(key).ok_or_else(|| ConfigError::Missing {
            setting: spec.env.to_owned(),
            message: format!("set {} or `{key}` in the settings file", spec.env),
        })?;
        parse(value).map_err(|message| ConfigError::Invalid {
            setting: spec.env.to_owned(),
            origin: origin.clone(),
            message,
        })
    }
}

fn spec(key: &str) -> SettingSpec {
    *SETTINGS
        .iter()
        .find(|s| s.key == key)
        .expect("setting is declared in SETTINGS")
}

impl Settings {
    /// The master keys, or the error that names the missing setting.
    pub fn keyring(&self) -> Result<Arc<Keyring>, ConfigError> {
        self.master_keys.clone().ok_or_else(|| ConfigError::Missing {
            setting: spec("master_keys").env.to_owned(),
            message: "set it to comma-separated `id:base64` 32-byte keys, the active key first \
                      (generate one with `openssl rand -base64 32`)"
                .to_owned(),
        })
    }

    /// Loads from the process environment and the optional file
    /// (`file` argument, else `LEDGER_CONFIG`).
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let from_env = std::env::var_os(CONFIG_FILE_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from);
        let file = file.map(Path::to_path_buf).or(from_env);
        Self::from_layers(&Layers::collect(file.as_deref(), &|name| std::env::var(name).ok())?)
    }

    pub fn from_layers(l: &Layers) -> Result<Self, ConfigError> {
        Ok(Self {
            database_url: l.parse("database_url", parse_postgres_url)?,
            db_max_connections: l.parse("db_max_connections", parse_positive)?,
            db_min_connections: l.parse("db_min_connections", |v| v.parse().map_err(|_| not_a_number(v)))?,
            db_acquire_timeout: l.parse("db_acquire_timeout", parse_duration)?,
            db_idle_timeout: l.parse("db_idle_timeout", parse_duration)?,
            migrate_on_start: l.parse("migrate_on_start", parse_bool)?,
            http_addr: l.parse("http_addr", parse_addr)?,
            public_url: l.parse("public_url", parse_origin)?,
            metrics_addr: l.parse("metrics_addr", |v| {
                if v.is_empty() {
                    Ok(None)
                } else {
                    parse_addr(v).map(Some)
                }
            })?,
            request_timeout: l.parse("request_timeout", parse_duration)?,
            body_limit_bytes: l.parse("body_limit_bytes", parse_positive)?,
            shutdown_deadline: l.parse("shutdown_deadline", parse_duration)?,
            log_level: l.parse("log_level", |v| Ok(v.to_owned()))?,
            log_format: l.parse("log_format", |v| match v {
                "json" => Ok(LogFormat::Json),
                "pretty" => Ok(LogFormat::Pretty),
                _ => Err(format!("`{v}` is not a log format; use \"json\" or \"pretty\"")),
            })?,
            otlp_endpoint: l.parse("otlp_endpoint", |v| {
                if v.is_empty() {
                    Ok(None)
                } else {
                    parse_http_url(v).map(Some)
                }
            })?,
            master_keys: match l.values.get("master_keys") {
                None => None,
                Some(_) => l.parse("master_keys", |v| Keyring::parse(v).map(|k| Some(Arc::new(k))))?,
            },
            session_ttl: l.parse("session_ttl", parse_duration)?,
            session_max_age: l.parse("session_max_age", parse_duration)?,
            api_token_ttl: l.parse("api_token_ttl", parse_duration)?,
            trusted_proxy_hops: l.parse("trusted_proxy_hops", |v| v.trim().parse().map_err(|_| not_a_number(v)))?,
            password_hash_concurrency: l.parse("password_hash_concurrency", parse_positive)?,
            password_hash_wait: l.parse("password_hash_wait", parse_duration)?,
            header_read_timeout: l.parse("header_read_timeout", parse_duration)?,
            db_statement_timeout: l.parse("db_statement_timeout", parse_duration)?,
            binding_ingest_per_minute: l.parse("binding_ingest_per_minute", parse_positive)?,
            ingest_commit_window: l.parse("ingest_commit_window", |v| {
                parse_duration(v).and_then(|d| {
                    if d <= Duration::from_millis(50) {
                        Ok(d)
                    } else {
                        Err(format!(
                            "`{v}` is too long: every webhook waits for it; at most 50ms (1ms is plenty)"
                        ))
                    }
                })
            })?,
            allow_insecure_magento: l.parse("allow_insecure_magento", parse_bool)?,
            allow_private_magento: l.parse("allow_private_magento", parse_bool)?,
            magento_clock_leeway: l.parse("magento_clock_leeway", parse_duration)?,
            magento_connect_timeout: l.parse("magento_connect_timeout", parse_duration)?,
            magento_request_timeout: l.parse("magento_request_timeout", parse_duration)?,
            sage_authorize_url: l.parse("sage_authorize_url", parse_http_url)?,
            sage_token_url: l.parse("sage_token_url", parse_http_url)?,
            sage_revoke_url: l.parse("sage_revoke_url", parse_http_url)?,
            sage_api_base: l.parse("sage_api_base", |v| {
                parse_http_url(v).map(|u| u.as_str().trim_end_matches('/').to_owned())
            })?,
            sage_client_id: l.parse("sage_client_id", |v| Ok(v.trim().to_owned()))?,
            sage_client_secret: l.parse("sage_client_secret", |v| Ok(Secret::new(v.to_owned())))?,
            sage_timeout: l.parse("sage_timeout", parse_duration)?,
            sage_refresh_margin: l.parse("sage_refresh_margin", parse_duration)?,
            sage_keepalive_after: l.parse("sage_keepalive_after", parse_duration)?,
            sage_reference_ttl: l.parse("sage_reference_ttl", parse_duration)?,
            sage_call_budget: l.parse("sage_call_budget", parse_positive)?,
            sage_call_window: l.parse("sage_call_window", parse_duration)?,
            worker_concurrency: l.parse("worker_concurrency", parse_positive)?,
            binding_concurrency: l.parse("binding_concurrency", parse_positive)?,
            job_lease: l.parse("job_lease", parse_duration)?,
            job_max_attempts: l.parse("job_max_attempts", parse_positive)?,
            job_poll_interval: l.parse("job_poll_interval", parse_duration)?,
            retain_event_bodies: l.parse("retain_event_bodies", parse_duration)?,
            retain_sync_runs: l.parse("retain_sync_runs", parse_duration)?,
            retain_finished_jobs: l.parse("retain_finished_jobs", parse_duration)?,
            retain_audit: l.parse("retain_audit", parse_duration)?,
        })
        .and_then(|s: Self| {
            if s.db_min_connections > s.db_max_connections {
                return Err(ConfigError::Invalid {
                    setting: spec("db_min_connections").env.to_owned(),
                    origin: l.values["db_min_connections"].1.clone(),
                    message: format!(
                        "{} is more than LEDGER_DB_MAX_CONNECTIONS ({})",
                        s.db_min_connections, s.db_max_connections
                    ),
                });
            }
            Ok(s)
        })
    }
}

fn not_a_number(v: &str) -> String {
    format!("`{v}` is not a whole number")
}

fn parse_positive<T: std::str::FromStr + PartialOrd + Default>(v: &str) -> Result<T, String> {
    match v.trim().parse::<T>() {
        Ok(n) if n > T::default() => Ok(n),
        Ok(_) => Err(format!("`{v}` must be greater than zero")),
        Err(_) => Err(not_a_number(v)),
    }
}

fn parse_bool(v: &str) -> Result<bool, String> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!("`{v}` is not a boolean; use true or false")),
    }
}

fn parse_addr(v: &str) -> Result<SocketAddr, String> {
    v.trim()
        .parse()
        .map_err(|_| format!("`{v}` is not a socket address like 127.0.0.1:8080 or [::]:8080"))
}

/// Parses `500ms`, `10s`, `5m`, `2h`, `7d`.
pub fn parse_duration(v: &str) -> Result<Duration, String> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (digits, unit) = v.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{v}` is not a duration like 500ms, 10s, 5m, 2h or 7d"))?;
    let secs = |mult: u64| n.checked_mul(mult).map(Duration::from_secs);
    let d = match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86_400),
        _ => None,
    };
    d.ok_or_else(|| format!("`{v}` is not a duration like 500ms, 10s, 5m, 2h or 7d (a unit is required)"))
}

fn parse_http_url(v: &str) -> Result<Url, String> {
    let url = Url::parse(v.trim()).map_err(|e| format!("`{v}` is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(format!("`{v}` must be an absolute http(s) URL"));
    }
    Ok(url)
}

/// A public origin (scheme, host, optional port and path prefix), kept without a trailing `/`.
fn parse_origin(v: &str) -> Result<String, String> {
    let url = parse_http_url(v)?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("`{v}` must not carry a query or fragment"));
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

fn parse_postgres_url(v: &str) -> Result<Secret<String>, String> {
    // Never echo the value: it may contain a password.
    let url = Url::parse(v.trim()).map_err(|_| "not a URL; expected postgres://user@host:port/database".to_owned())?;
    if !matches!(url.scheme(), "postgres" | "postgresql") {
        return Err("must start with postgres:// or postgresql://".to_owned());
    }
    Ok(Secret::new(v.trim().to_owned()))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        move |k| map.get(k).cloned()
    }

    fn load(file: Option<&Path>, env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        Settings::from_layers(&Layers::collect(file, &env_of(env))?)
    }

    fn temp_file(text: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("ledger-config-{}.toml", uuid::Uuid::new_v4()));
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn defaults_alone_are_valid() {
        let s = load(None, &[]).unwrap();
        assert_eq!(s.http_addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(s.request_timeout, Duration::from_secs(10));
        assert_eq!(s.body_limit_bytes, 1024 * 1024);
        assert_eq!(s.otlp_endpoint, None);
        assert_eq!(s.public_url, "http://127.0.0.1:8080");
    }

    #[test]
    fn file_overrides_defaults_and_environment_overrides_file() {
        let path = temp_file("http_addr = \"127.0.0.1:9000\"\nrequest_timeout = \"3s\"\ndb_max_connections = 4\n");
        let s = load(Some(&path), &[]).unwrap();
        assert_eq!(s.http_addr.port(), 9000);
        assert_eq!(s.request_timeout, Duration::from_secs(3));
        assert_eq!(s.db_max_connections, 4);

        let s = load(Some(&path), &[("LEDGER_HTTP_ADDR", "127.0.0.1:9100")]).unwrap();
        assert_eq!(s.http_addr.port(), 9100, "environment wins over the file");
        assert_eq!(
            s.request_timeout,
            Duration::from_secs(3),
            "file still wins over defaults"
        );
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn bad_value_names_the_setting_and_origin() {
        let err = load(None, &[("LEDGER_HTTP_ADDR", "nope")]).unwrap_err();
        assert_eq!(err.setting(), "LEDGER_HTTP_ADDR");
        let line = err.to_string();
        assert!(
            line.contains("LEDGER_HTTP_ADDR") && line.contains("environment") && !line.contains('\n'),
            "{line}"
        );

        let path = temp_file("request_timeout = \"10\"\n");
        let err = load(Some(&path), &[]).unwrap_err();
        assert_eq!(err.setting(), "LEDGER_REQUEST_TIMEOUT");
        assert!(err.to_string().contains("unit is required"));
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn unknown_file_key_is_refused() {
        let path = temp_file("htp_addr = \"127.0.0.1:1\"\n");
        let err = load(Some(&path), &[]).unwrap_err();
        assert!(
            matches!(err, ConfigError::UnknownKey { ref key, .. } if key == "htp_addr"),
            "{err}"
        );
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn database_url_errors_never_echo_the_value() {
        let err = load(None, &[("DATABASE_URL", "mysql://root:hunter2@db/x")]).unwrap_err();
        assert_eq!(err.setting(), "DATABASE_URL");
        assert!(!err.to_string().contains("hunter2"));
        let s = load(None, &[("DATABASE_URL", "postgres://u:hunter2@db/x")]).unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn min_connections_above_max_is_refused() {
        let err = load(None, &[("LEDGER_DB_MIN_CONNECTIONS", "21")]).unwrap_err();
        assert_eq!(err.setting(), "LEDGER_DB_MIN_CONNECTIONS");
    }

    #[test]
    fn master_keys_are_parsed_at_load_and_required_on_use() {
        let s = load(None, &[]).unwrap();
        assert_eq!(s.keyring().unwrap_err().setting(), "LEDGER_MASTER_KEYS");
        let spec = Keyring::generate_spec("k1");
        let s = load(None, &[("LEDGER_MASTER_KEYS", spec.expose())]).unwrap();
        assert_eq!(s.keyring().unwrap().active_id(), "k1");
        assert!(
            !format!("{s:?}").contains(&spec.expose()[3..]),
            "Debug never shows key material"
        );
        let err = load(None, &[("LEDGER_MASTER_KEYS", "k1:short")]).unwrap_err();
        assert_eq!(err.setting(), "LEDGER_MASTER_KEYS");
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(7 * 86_400));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn defaults_file_documents_every_setting_and_nothing_else() {
        let table: toml::Table = toml::from_str(DEFAULTS_TOML).unwrap();
        for spec in SETTINGS {
            let documented = table.contains_key(spec.key) || DEFAULTS_TOML.contains(&format!("# {} =", spec.key));
            assert!(documented, "`{}` is missing from config/ledger.default.toml", spec.key);
            let env_ok = spec.env == format!("LEDGER_{}", spec.key.to_ascii_uppercase()) || spec.key == "database_url";
            assert!(env_ok, "{} does not follow the LEDGER_<KEY> rule", spec.env);
        }
        for key in table.keys() {
            assert!(
                SETTINGS.iter().any(|s| s.key == key),
                "`{key}` in the defaults file is not a setting"
            );
        }
    }
}
