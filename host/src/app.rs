//! The application core. One [`App`] owns the store, the rules, the plugin
//! host, the secrets and the mail settings; focused services hang off it,
//! one module each. Every operation takes the caller and checks, here and
//! only here, what that caller may do, so the CLI, the HTTP API, the demo
//! and the console all get the same answer.
//!
//! | service | module | what it does |
//! |---|---|---|
//! | [`App::tasks`] | `tasks` | timed tasks: add, list, show, enable, remove, run now |
//! | [`App::runs`] | `runs` | background runs: query, cancel, delete, messages |
//! | [`App::imports`] | `review` | imports: plan, commit, confirm, request, code, approve; one-off files |
//! | [`App::rules`] | `workbench` | admin rules: list, show, test, save |
//! | [`App::collections`] | `collections` | records: load, read a page |
//! | [`App::outbox`] | `outbox` | emails: list, send |
//! | [`App::users`] | `accounts` | users, tokens and secrets |
//! | [`App::plugins`] | `registry` | plugins: install, inspect, grant, revoke, remove |
//! | [`App::jobs`] | `jobs` | a file imported by hand, a notifier run once |
//! | [`App::storage`] | `storage` | schema migration, index check, backup |
//! | [`App::engine`] | `engine` | fire due tasks, dispatch, execute, sweep |
//! | [`App::health`] | `health` | readiness, and the gauges of the metrics |
//!
//! Every job, whoever starts it, runs through `jobs`: an import or a
//! notifier writes a run with its messages, its ledger and its outbox in
//! the same way for a schedule, run-now, `import file` and `notify run`.

mod accounts;
mod audit_log;
mod collections;
mod engine;
mod health;
mod jobs;
mod outbox;
mod registry;
mod review;
mod runs;
mod sources;
mod storage;
mod tasks;
mod throttle;
mod workbench;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};

pub use accounts::{Accounts, Removal};
pub use audit_log::AuditLog;
pub use collections::{Collections, Page};
pub use engine::{Clock, Engine, ManualClock, STALL_VARIABLE, SchedulerConfig, SystemClock};
pub use health::{Health, Part, Readiness, STALE_TICK};
pub use jobs::{FileImport, JobError, JobReport, Jobs, NotifyOnce};
pub use outbox::Outbox;
pub use registry::Registry;
pub use review::{ImportReview, Proof};
pub use runs::{Count, Kinds, PageAt, RunPage, Runs, Sort, kind_name};
pub use sources::Sources;
pub use storage::Storage;
pub use tasks::{History, Submit, Tasks};
pub use workbench::{Draft, RowVerdict, RuleTest, Workbench, test_rule};

use crate::config::Config;
use crate::imports;
use crate::plugins::PluginHost;
use crate::rules::RuleSet;
use crate::store::{self, Backend};
use crate::users::{Role, User};

/// What went wrong with an operation, by what the caller should do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No such task or run (or not one this user may see).
    #[error("{0}")]
    NotFound(String),
    /// The user may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// Not in this state.
    #[error("{0}")]
    Conflict(String),
    /// The request is wrong.
    #[error("{0}")]
    Invalid(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// The host could not write what it was asked to (a full or read-only disk).
    #[error("{0}")]
    Failed(String),
    /// Asked too often: wait, then try again.
    #[error("{0}")]
    TooMany(String),
}

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a data directory could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The data directory cannot be created.
    #[error("cannot create the data directory {}: {source}", path.display())]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// `schoolbell.toml` is unreadable or wrong.
    #[error(transparent)]
    Config(#[from] crate::config::Error),
    /// Rules that do not compile, each with its file, line and column.
    #[error("{}", .0.join("\n"))]
    Rules(Vec<String>),
    /// A running `schoolbell serve` holds the store.
    #[error(
        "the store in {} is in use by `schoolbell serve` (pid {pid}); while it runs, use its HTTP API at http://{listen}/api/v1 (token: `Authorization: Bearer ...`), or stop it first",
        data.display()
    )]
    InUse {
        /// The data directory.
        data: PathBuf,
        /// The server's process.
        pid: u64,
        /// Where its API listens.
        listen: String,
    },
    /// The store cannot be opened.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// The plugin runtime cannot start.
    #[error(transparent)]
    Plugins(#[from] crate::plugins::Error),
    /// `SCHOOLBELL_NOW` is not an instant.
    #[error("{0}")]
    Clock(String),
    /// The secrets key cannot be read or made.
    #[error(transparent)]
    Secrets(#[from] crate::secrets::Error),
}

/// The application: what every face drives.
pub struct App {
    data: Option<PathBuf>,
    /// The file the configuration was read from, read again on reload.
    config_path: Option<PathBuf>,
    config: Config,
    store: Arc<dyn Backend>,
    host: Arc<PluginHost>,
    clock: Arc<dyn Clock>,
    /// What imports reach sources with: folders, credentials, staging, limits.
    access: imports::Access,
    /// The key approval codes are MACed under: derived from `secret.key`,
    /// or random for an app without a data directory.
    approval_key: [u8; 32],
    engine: engine::State,
    /// Decisions on held imports one at a time, so two confirmations of
    /// the same run cannot both commit it.
    import_lock: Mutex<()>,
    /// The migration made when the store was opened.
    migrated: Option<crate::store::Migrated>,
    /// When this process opened the app.
    started_at: chrono::DateTime<chrono::Utc>,
    /// Bumped whenever a run is written: the console's live views wait on it.
    runs_changed: tokio::sync::watch::Sender<u64>,
    /// Where hosts share the store: how many rule versions it held when
    /// this host last loaded the rules from it.
    rules_seen: std::sync::atomic::AtomicU64,
    /// The console's live streams open at once (they outlive requests, so
    /// the API's concurrency limit does not count them).
    live_streams: Arc<tokio::sync::Semaphore>,
    /// Failed sign-ins by client address and user name.
    throttle: throttle::Throttle,
    /// Live views open, by user.
    live_per_user: Arc<Mutex<HashMap<String, usize>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl App {
    /// Opens a data directory: `schoolbell.toml`, the rules (from `rules`,
    /// else the config's `rules_dir`, else `./rules`), the store, the
    /// compile cache and the secrets.
    pub fn open(data: &Path, rules: Option<&Path>) -> Result<Arc<App>, OpenError> {
        App::open_with(data, rules, None)
    }

    /// [`App::open`], reading the configuration from `config` (an operator's
    /// `/etc/schoolbell/schoolbell.toml`, say) instead of the data directory's.
    pub fn open_with(data: &Path, rules: Option<&Path>, config: Option<&Path>) -> Result<Arc<App>, OpenError> {
        crate::secrets::private_dir(data).map_err(|source| OpenError::DataDir { path: data.into(), source })?;
        let config_path = config.map_or_else(|| data.join(crate::config::FILE_NAME), Path::to_path_buf);
        let config = Config::load_file(&config_path)?;
        let rules_dir = match (rules, &config.rules_dir) {
            (Some(dir), _) => dir.to_path_buf(),
            (None, Some(dir)) if dir.is_relative() => data.join(dir),
            (None, Some(dir)) => dir.clone(),
            (None, None) => PathBuf::from("rules"),
        };
        let rules = RuleSet::load_dir(&rules_dir, config.rules.clone())
            .map_err(|errors| OpenError::Rules(errors.iter().map(|e| e.to_string()).collect()))?;
        let (store, migrated) =
            crate::store::open(data, &data.join("backups"), &config.store).map_err(|e| in_use(data, e))?;
        if let Some(m) = &migrated {
            tracing::warn!(from = m.from, to = m.to, backup = %m.backup.display(), "The store was migrated.");
        }
        let clock = clock_from_env()?;
        let rules_seen = if store.shared() { workbench::share(&*store, &rules, &rules, clock.now())? } else { 0 };
        let host = Arc::new(PluginHost::new(store, Arc::new(rules), &data.join("cache"), config.sandbox.clone())?);
        let key = match &config.secret_key {
            Some(path) if path.is_relative() => data.join(path),
            Some(path) => path.clone(),
            None => data.join("secret.key"),
        };
        let secrets = crate::secrets::Secrets::open(&key)?;
        let mut app = App::build(host, clock, config);
        app.rules_seen = std::sync::atomic::AtomicU64::new(rules_seen);
        app.data = Some(data.to_path_buf());
        app.config_path = Some(config_path);
        app.migrated = migrated;
        app.approval_key = secrets.approval_key();
        app.access.secrets = Some(secrets);
        app.access.staging = data.join("staging");
        Ok(Arc::new(app))
    }

    /// An app over a plugin host that is already open (benchmarks, tests):
    /// no data directory, so no secrets.
    pub fn new(host: Arc<PluginHost>, clock: Arc<dyn Clock>, config: Config) -> Arc<App> {
        Arc::new(App::build(host, clock, config))
    }

    fn build(host: Arc<PluginHost>, clock: Arc<dyn Clock>, config: Config) -> App {
        // Counters recorded before the recorder exists would be lost.
        crate::metrics::install();
        App {
            data: None,
            config_path: None,
            store: host.store().clone(),
            host,
            clock,
            access: imports::Access {
                folders: config.sandbox.folders.clone(),
                limits: config.imports.clone(),
                ..Default::default()
            },
            approval_key: {
                let mut key = [0u8; 32];
                // Without randomness no code can be issued; `code` says so.
                let _ = getrandom::fill(&mut key);
                key
            },
            engine: engine::State::default(),
            import_lock: Mutex::new(()),
            migrated: None,
            started_at: chrono::Utc::now(),
            runs_changed: tokio::sync::watch::Sender::new(0),
            rules_seen: std::sync::atomic::AtomicU64::new(0),
            live_streams: Arc::new(tokio::sync::Semaphore::new(config.api.max_concurrent_requests.max(1))),
            throttle: Default::default(),
            live_per_user: Default::default(),
            config,
        }
    }

    /// The audit log.
    pub fn audit_log(&self) -> AuditLog<'_> {
        AuditLog { app: self }
    }

    /// Import sources.
    pub fn sources(&self) -> Sources<'_> {
        Sources { app: self }
    }

    /// Timed tasks.
    pub fn tasks(&self) -> Tasks<'_> {
        Tasks { app: self }
    }

    /// Background runs.
    pub fn runs(&self) -> Runs<'_> {
        Runs { app: self }
    }

    /// Import review and one-off imports.
    pub fn imports(&self) -> ImportReview<'_> {
        ImportReview { app: self }
    }

    /// Collections of records.
    pub fn collections(&self) -> Collections<'_> {
        Collections { app: self }
    }

    /// One-off jobs: a file imported by hand, a notifier run once.
    pub fn jobs(&self) -> Jobs<'_> {
        Jobs { app: self }
    }

    /// The rules workbench.
    pub fn rules(&self) -> Workbench<'_> {
        Workbench { app: self }
    }

    /// The outbox.
    pub fn outbox(&self) -> Outbox<'_> {
        Outbox { app: self }
    }

    /// Users, tokens and secrets.
    pub fn users(&self) -> Accounts<'_> {
        Accounts { app: self }
    }

    /// The plugin registry.
    pub fn plugins(&self) -> Registry<'_> {
        Registry { app: self }
    }

    /// Readiness and the gauges monitoring reads.
    pub fn health(&self) -> Health<'_> {
        Health { app: self }
    }

    /// The store: check, backup, migration.
    pub fn storage(&self) -> Storage<'_> {
        Storage { app: self }
    }

    /// The engine: fires, dispatches, executes and sweeps.
    pub fn engine(self: &Arc<Self>) -> Engine<'_> {
        Engine { app: self }
    }

    /// The clock.
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// The district's default zone.
    pub fn zone(&self) -> &str {
        &self.config.scheduler.zone
    }

    /// The configuration it was opened with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The data directory, when opened from one.
    pub fn data_dir(&self) -> Option<&Path> {
        self.data.as_deref()
    }

    /// The user a bearer token belongs to.
    /// A failed sign-in is recorded in the audit log (with the token's id,
    /// never the token).
    ///
    /// `from` is the client's address: after five failures a minute from
    /// one address, each further attempt waits (see [`throttle`]).
    pub fn authenticate(&self, token: &str, from: &str) -> Result<User, crate::users::Error> {
        self.authenticate_within(token, from, None)
    }

    /// A console session's token: [`App::authenticate`], and within the
    /// console's own lifetimes (`[console] idle_minutes` since its last use,
    /// `max_hours` since sign-in), apart from API tokens'. An expired
    /// session is removed.
    pub fn authenticate_console(&self, token: &str, from: &str) -> Result<User, crate::users::Error> {
        let limits = &self.config.console;
        let session = crate::users::SessionLimits {
            idle: chrono::Duration::minutes(limits.idle_minutes as i64),
            max: chrono::Duration::hours(limits.max_hours as i64),
        };
        self.authenticate_within(token, from, Some(session))
    }

    fn authenticate_within(
        &self,
        token: &str,
        from: &str,
        session: Option<crate::users::SessionLimits>,
    ) -> Result<User, crate::users::Error> {
        let keys = [throttle::address(from)];
        if let Some(wait) = self.throttle.wait(&keys, std::time::Instant::now()) {
            return Err(crate::users::Error::Throttled(wait.as_secs().max(1)));
        }
        let result = crate::users::authenticate(&*self.store, token, self.now(), self.config.api.token_days, session);
        // A session that ran out of time is no guess.
        if let Err(e) = &result
            && !matches!(e, crate::users::Error::SessionEnded(_))
        {
            let id = crate::users::token_hash(token)[..12].to_string();
            self.failed_sign_in(&keys, from, &id, &e.to_string())?;
        }
        result
    }

    /// Counts a failed sign-in and audits it: the first of a minute from
    /// an address on its own, the rest of that minute as one entry with
    /// their count, so failures cannot flood the log.
    fn failed_sign_in(&self, keys: &[String], from: &str, target: &str, why: &str) -> Result<(), store::Error> {
        match self.throttle.failed(keys, std::time::Instant::now()) {
            throttle::Counted::First { earlier } => {
                if earlier > 0 {
                    let detail = format!("{earlier} more failed sign-ins from {from} in the minute before");
                    self.audit("-", "sign-in.failed", from, Some(detail))?;
                }
                self.audit("-", "sign-in.failed", target, Some(format!("{why} (from {from})")))
            }
            throttle::Counted::Throttled(n) => {
                let detail = format!("{n} failed sign-ins from {from} within a minute; further attempts wait");
                self.audit("-", "sign-in.throttled", target, Some(detail))
            }
            throttle::Counted::Again => Ok(()),
        }
    }

    /// Tells whoever watches runs (the console's live grid) that one changed.
    pub(crate) fn run_changed(&self) {
        self.runs_changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Permits for the console's live streams.
    pub fn live_streams(&self) -> Arc<tokio::sync::Semaphore> {
        self.live_streams.clone()
    }

    /// One of `user`'s live views, held while it is open; none when they
    /// have `[console] streams_per_user` open already.
    pub fn live_slot(&self, user: &str) -> Option<LiveSlot> {
        let mut open = lock(&self.live_per_user);
        let n = open.entry(user.to_string()).or_insert(0);
        if *n >= self.config.console.streams_per_user {
            return None;
        }
        *n += 1;
        Some(LiveSlot { user: user.to_string(), open: self.live_per_user.clone() })
    }

    /// A receiver that wakes when runs change.
    pub fn watch_runs(&self) -> tokio::sync::watch::Receiver<u64> {
        self.runs_changed.subscribe()
    }

    /// The token `/metrics` asks for: `[metrics] token_file`'s first line
    /// (read each time, so a new token takes effect without a restart),
    /// else `[api] metrics_token`; none when neither is set or the file
    /// cannot be read.
    pub fn metrics_token(&self) -> Option<String> {
        if let Some(file) = &self.config.metrics.token_file {
            let file = match self.data_dir() {
                Some(data) if file.is_relative() => data.join(file),
                _ => file.clone(),
            };
            return match std::fs::read_to_string(&file) {
                Ok(text) => text.lines().next().map(str::trim).filter(|t| !t.is_empty()).map(str::to_string),
                Err(e) => {
                    tracing::warn!(file = %file.display(), "Cannot read [metrics] token_file: {e}");
                    None
                }
            };
        }
        self.config.api.metrics_token.clone()
    }

    /// The key the console's anti-forgery tokens are MACed under, apart
    /// from the approval codes' own by derivation.
    pub fn console_key(&self) -> [u8; 32] {
        crate::secrets::mac(&self.approval_key, b"schoolbell console csrf")
    }

    /// Appends to the audit log.
    pub(crate) fn audit(
        &self,
        user: &str,
        action: &str,
        target: &str,
        detail: Option<String>,
    ) -> Result<(), store::Error> {
        // What a caller supplied (a user name at sign-in, a plugin's
        // name) reaches the log bounded and without control characters.
        let entry = crate::audit::AuditEntry {
            at: self.now(),
            user: crate::audit::plain(user, crate::users::MAX_NAME),
            action: action.into(),
            target: crate::audit::plain(target, crate::users::MAX_NAME),
            detail: detail.map(|d| crate::audit::plain(&d, crate::audit::MAX_DETAIL)),
        };
        self.store.append_audit(&entry)?;
        Ok(())
    }

    /// The user the CLI acts as (`--as`).
    pub fn user(&self, name: &str) -> Result<User> {
        crate::users::get(&*self.store, name).map_err(|e| Error::NotFound(e.to_string()))
    }

    /// Reads the rules folder and the configuration file again (on
    /// `SIGHUP`). The rules take effect at once, all or none: a folder with
    /// a broken rule keeps the rules as they were and says which. Keys that
    /// only a restart applies are named, not applied.
    pub fn reload(&self) -> Result<Reload, OpenError> {
        let config = match &self.config_path {
            Some(path) => Config::load_file(path)?,
            None => self.config.clone(),
        };
        let loaded = self.host.rules();
        let rules = if self.store.shared() {
            // The folder may hold new rules for the database; the database
            // holds the rules.
            let folder = loaded
                .read_dir_again()
                .map_err(|errors| OpenError::Rules(errors.iter().map(|e| e.to_string()).collect()))?;
            let seen = workbench::share(&*self.store, &folder, loaded, self.now())?;
            self.rules_seen.store(seen, std::sync::atomic::Ordering::Release);
            loaded.names().len()
        } else {
            loaded.reload().map_err(|errors| OpenError::Rules(errors.iter().map(|e| e.to_string()).collect()))?
        };
        let restart = self.config.changed_keys(&config).into_iter().filter(|k| !k.starts_with("log.")).collect();
        Ok(Reload { rules, log: config.log, restart })
    }

    /// Writes everything to disk.
    pub fn flush(&self) -> Result<()> {
        Ok(self.store.flush()?)
    }

    fn access(&self) -> &imports::Access {
        &self.access
    }
}

/// What a reload did.
#[derive(Debug)]
pub struct Reload {
    /// The rules loaded now.
    pub rules: usize,
    /// The `[log]` section as the file says now (the binary applies it).
    pub log: crate::config::LogConfig,
    /// Keys that changed but take effect only at the next start.
    pub restart: Vec<String>,
}

/// The variable that stops the clock at a given instant (RFC 3339), for
/// tests and demonstrations of date-dependent behaviour.
pub const NOW_VARIABLE: &str = "SCHOOLBELL_NOW";

/// The system clock, or a stopped one when `SCHOOLBELL_NOW` says so.
fn clock_from_env() -> Result<Arc<dyn Clock>, OpenError> {
    match std::env::var(NOW_VARIABLE) {
        Ok(text) => {
            let at = DateTime::parse_from_rfc3339(text.trim()).map_err(|e| {
                OpenError::Clock(format!("{NOW_VARIABLE}=`{text}`: {e}; write it like 2028-02-29T12:00:00Z"))
            })?;
            Ok(Arc::new(ManualClock::new(at.with_timezone(&Utc))))
        }
        Err(_) => Ok(Arc::new(SystemClock)),
    }
}

/// Refused unless `user` is the account owner.
fn owner_only(user: &User, what: &str) -> Result<()> {
    if user.role == Role::Owner { Ok(()) } else { Err(Error::Forbidden(format!("only the account owner may {what}"))) }
}

/// A store held by a running server gets an error that says where the
/// server is and how to reach it instead.
fn in_use(data: &Path, e: store::Error) -> OpenError {
    // Only the embedded store is held by one process.
    if let store::Error::Open { .. } = e
        && let Ok(text) = std::fs::read_to_string(data.join("serve.json"))
        && let Ok(info) = serde_json::from_str::<serde_json::Value>(&text)
    {
        return OpenError::InUse {
            data: data.to_path_buf(),
            pid: info["pid"].as_u64().unwrap_or(0),
            listen: info["listen"].as_str().unwrap_or("?").to_string(),
        };
    }
    e.into()
}

/// A user's open live view (see [`App::live_slot`]); dropping it closes it.
pub struct LiveSlot {
    user: String,
    open: Arc<Mutex<HashMap<String, usize>>>,
}

impl Drop for LiveSlot {
    fn drop(&mut self) {
        let mut open = lock(&self.open);
        if let Some(n) = open.get_mut(&self.user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.user);
            }
        }
    }
}
