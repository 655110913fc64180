//! The host side of a run: the store data every guest call sees, and the
//! host functions the WIT imports (`log`, `host`), each checking the
//! plugin's capabilities.

use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::records::Record;
use crate::rules::{RuleSet, Selector};
use crate::store::Backend;

use super::bindings::{self, files_api, host_api, log_api, wit};
use super::output::CappedOutput;
use super::sandbox::{Interrupt, Limiter, RunControl};
use super::{Capability, LogLevel, LogLine, PluginId};

/// Largest page a guest may ask `read-records` for.
const MAX_PAGE: u32 = 1_000;

/// Most records one `select-records` call goes through: what the host holds
/// for one page, large enough to keep every core busy deciding it.
const MAX_SELECT: u32 = 10_000;

/// Everything one run's guest calls can reach.
pub(crate) struct RunState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limiter: Limiter,
    pub(crate) stdout: CappedOutput,
    pub(crate) stderr: CappedOutput,
    /// The plugin, its capabilities, the task and what it was given.
    pub(crate) setup: RunSetup,
    /// Each rule this run used, bound to its parameters, in the version it
    /// first used: a rule saved while the run goes on does not change its
    /// decisions half-way.
    rules_bound: std::collections::HashMap<String, Arc<Selector>>,
    /// The folders `files` may reach, by name, from the sandbox config.
    folders: std::collections::BTreeMap<String, std::path::PathBuf>,
    pub(crate) started: Instant,
    /// How long it may take: the run's limit, or `describe`'s shorter one.
    pub(crate) timeout: std::time::Duration,
    /// The most data one call may hand the host.
    pub(crate) hostcall_limit: usize,
    pub(crate) interrupted: Option<Interrupt>,
    pub(crate) log: Vec<LogLine>,
    log_bytes: usize,
    log_dropped: u64,
    log_limit: usize,
    /// State writes, each key once (the last write wins), within the
    /// task's state limit.
    state_writes: std::collections::BTreeMap<String, Option<String>>,
    /// For each key the run wrote: its stored size and its size now.
    state_sizes: std::collections::HashMap<String, (usize, usize)>,
    /// Bytes the task's state holds with this run's writes (read from the
    /// store at the first write).
    state_total: Option<usize>,
    state_limit: usize,
    /// Files this run wrote, and their bytes, against `[sandbox]
    /// max_files` and `max_file_bytes`.
    files_written: usize,
    file_bytes_written: u64,
    max_files: usize,
    max_file_bytes: u64,
    /// Whether a write was already refused: the run fails anyway, so later
    /// writes are only counted.
    state_refused: bool,
    /// Capability denials and host failures, which fail the run even if the
    /// guest swallows the error it was given: the first few in full, the
    /// rest counted.
    pub(crate) violations: Vec<String>,
    violations_more: u64,
    /// The store failed under a host call: the run failed for the host's
    /// reason, not the plugin's (a database away for a moment).
    pub(crate) store_failed: Option<String>,
    /// The last capability refused, and what the plugin was told.
    last_denied: Option<(Capability, String)>,
    /// Keeps the epoch ticking while this store lives.
    pub(crate) ticker: Option<super::sandbox::TickerGuard>,
}

/// What a run is given.
pub(crate) struct RunSetup {
    pub(crate) plugin: PluginId,
    /// What the plugin declared in `describe`.
    pub(crate) declared: Vec<Capability>,
    /// What the admin granted.
    pub(crate) granted: Vec<Capability>,
    pub(crate) store: Arc<dyn Backend>,
    pub(crate) rules: Arc<RuleSet>,
    pub(crate) task: String,
    pub(crate) params: Record,
    pub(crate) control: RunControl,
    pub(crate) today: crate::records::Date,
    /// The rules the task names (its rules and its parameters): the only
    /// ones the plugin may evaluate.
    pub(crate) rules_named: Vec<String>,
}

/// Violations kept in full; the rest are counted.
const VIOLATIONS_KEPT: usize = 10;

impl RunState {
    pub(crate) fn new(setup: RunSetup, sandbox: &super::sandbox::Sandbox) -> RunState {
        let (wasi, stdout, stderr) = sandbox.wasi();
        RunState {
            wasi,
            table: super::sandbox::Sandbox::table(),
            limiter: Limiter { limit: sandbox.config.memory_limit(), refused: None, used: 0 },
            stdout,
            stderr,
            setup,
            rules_bound: Default::default(),
            folders: sandbox.config.folders.clone(),
            started: Instant::now(),
            timeout: std::time::Duration::from_secs(sandbox.config.timeout_secs),
            hostcall_limit: sandbox.config.hostcall_limit(),
            interrupted: None,
            log: Vec::new(),
            log_bytes: 0,
            log_dropped: 0,
            log_limit: sandbox.config.log_limit_bytes,
            state_writes: Default::default(),
            state_sizes: Default::default(),
            state_total: None,
            state_refused: false,
            state_limit: sandbox.config.state_limit_bytes,
            files_written: 0,
            file_bytes_written: 0,
            max_files: sandbox.config.max_files,
            max_file_bytes: sandbox.config.max_file_bytes,
            violations: Vec::new(),
            violations_more: 0,
            store_failed: None,
            last_denied: None,
            ticker: None,
        }
    }

    /// Appends to the run's log, within its cap.
    pub(crate) fn push_log(&mut self, level: LogLevel, message: String) {
        if self.log_bytes + message.len() > self.log_limit {
            self.log_dropped += 1;
            return;
        }
        // A vendor's log line may quote what it read: SSN-shaped text is
        // masked before anyone (the server's log included) sees it.
        let message = crate::privacy::mask_ssns(&message);
        // The line itself stays with the run, where its readers are
        // checked; the server's log only counts it.
        tracing::debug!(plugin = %self.setup.plugin, ?level, bytes = message.len(), "The plugin logged a line.");
        self.log_bytes += message.len();
        self.log.push(LogLine { level, message });
    }

    /// Moves captured stdout/stderr into the log and notes dropped lines.
    pub(crate) fn finish_log(&mut self) -> Vec<LogLine> {
        for (stream, out) in [("stdout", self.stdout.clone()), ("stderr", self.stderr.clone())] {
            let (text, dropped) = out.take();
            if !text.is_empty() {
                self.log.push(LogLine { level: LogLevel::Info, message: format!("{stream}: {}", text.trim_end()) });
            }
            if dropped > 0 {
                self.log.push(LogLine {
                    level: LogLevel::Warn,
                    message: format!("{stream}: {dropped} more bytes dropped"),
                });
            }
        }
        if self.log_dropped > 0 {
            let n = std::mem::take(&mut self.log_dropped);
            self.log.push(LogLine {
                level: LogLevel::Warn,
                message: format!("{n} log messages dropped: the run's log is capped at {} bytes", self.log_limit),
            });
        }
        std::mem::take(&mut self.log)
    }

    /// Records a violation: kept in full for the first few, counted after.
    pub(crate) fn violate(&mut self, message: String) {
        if self.violations.len() < VIOLATIONS_KEPT {
            self.violations.push(message);
        } else {
            self.violations_more += 1;
        }
    }

    /// The first violation, with how many more there were.
    pub(crate) fn first_violation(&self) -> Option<String> {
        let first = self.violations.first()?;
        let more = self.violations.len() as u64 - 1 + self.violations_more;
        Some(if more == 0 { first.clone() } else { format!("{first} (and {more} more refusals)") })
    }

    /// The state writes to apply, each key once.
    pub(crate) fn take_state_writes(&mut self) -> Vec<(String, Option<String>)> {
        std::mem::take(&mut self.state_writes).into_iter().collect()
    }

    /// Checks that the plugin both declared and was granted `cap`. A
    /// plugin that keeps asking for the same refused thing gets the same
    /// answer, counted, without the host doing the work again.
    fn check(&mut self, cap: Capability) -> Result<(), wit::PluginError> {
        if let Some((last, message)) = &self.last_denied
            && *last == cap
        {
            self.violations_more += 1;
            return Err(wit::PluginError::Denied(message.clone()));
        }
        if self.setup.declared.contains(&cap) && self.setup.granted.contains(&cap) {
            return Ok(());
        }
        let message = if !self.setup.declared.contains(&cap) {
            format!("it tried to {cap:#}, which it did not declare in `describe`")
        } else {
            format!(
                "it may {cap:#} only once an admin grants it: `schoolbell plugin grant {} {cap}`",
                self.setup.plugin.name
            )
        };
        self.violate(message.clone());
        self.last_denied = Some((cap, message.clone()));
        Err(wit::PluginError::Denied(message))
    }

    /// The rule `name` bound to this run's parameters, the version the run
    /// first used. Denied unless the task names the rule.
    fn bind_rule(&mut self, name: &str) -> Result<Arc<Selector>, wit::PluginError> {
        if let Some(selector) = self.rules_bound.get(name) {
            return Ok(selector.clone());
        }
        if !self.setup.rules_named.iter().any(|r| r == name) {
            let message = format!(
                "it asked for rule `{name}`, which its task does not name; add it to the task's rules (--rule {name})"
            );
            self.violate(message.clone());
            return Err(wit::PluginError::Denied(message));
        }
        let rule = self.setup.rules.get(name).map_err(|e| self.rule_failed(e))?;
        let selector = Arc::new(self.setup.rules.selector(rule, &self.setup.params));
        self.rules_bound.insert(name.to_string(), selector.clone());
        Ok(selector)
    }

    /// A rule that failed fails the run, whatever the guest does with the error.
    fn rule_failed(&mut self, e: crate::rules::Error) -> wit::PluginError {
        let message = e.to_string();
        self.violate(message.clone());
        wit::PluginError::Permanent(message)
    }

    /// What the store read, or `None` with the failure noted: the run
    /// ends interrupted.
    fn stored<T>(&mut self, read: crate::store::Result<T>) -> Option<T> {
        read.map_err(|e| self.store_error(e)).ok()
    }

    fn store_error(&mut self, e: crate::store::Error) -> wit::PluginError {
        let message = e.to_string();
        self.violate(format!("the host failed to read the store: {message}"));
        self.store_failed.get_or_insert_with(|| message.clone());
        wit::PluginError::Transient(message)
    }
}

impl RunState {
    /// This run's WASI waits, bounded by its deadline and cancel.
    pub(crate) fn waits(&mut self) -> super::sandbox::Waits<'_> {
        super::sandbox::Waits {
            table: &mut self.table,
            control: &self.setup.control,
            until: self.started + self.timeout,
            timeout: self.timeout,
            interrupted: &mut self.interrupted,
        }
    }
}

impl WasiView for RunState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl wit::Host for RunState {}

impl log_api::Host for RunState {
    fn write(&mut self, level: log_api::Level, message: String) {
        let level = match level {
            log_api::Level::Debug => LogLevel::Debug,
            log_api::Level::Info => LogLevel::Info,
            log_api::Level::Warn => LogLevel::Warn,
            log_api::Level::Error => LogLevel::Error,
        };
        self.push_log(level, message);
    }
}

impl host_api::Host for RunState {
    fn read_records(
        &mut self,
        collection: String,
        after: Option<String>,
        limit: u32,
    ) -> Result<host_api::RecordPage, wit::PluginError> {
        self.check(Capability::ReadCollection(collection.clone()))?;
        let limit = limit.clamp(1, MAX_PAGE) as usize;
        match self.setup.store.scan_records(&collection, after.as_deref(), limit) {
            Ok((records, next)) => {
                Ok(host_api::RecordPage { records: records.iter().map(bindings::record_to_wit).collect(), next })
            }
            Err(e) => Err(self.store_error(e)),
        }
    }

    fn count_records(&mut self, collection: String) -> Result<u64, wit::PluginError> {
        self.check(Capability::ReadCollection(collection.clone()))?;
        self.setup.store.count_records(&collection).map_err(|e| self.store_error(e))
    }

    fn eval_rule(&mut self, rule: String, record: Vec<wit::Field>) -> Result<host_api::RuleDecision, wit::PluginError> {
        let selector = self.bind_rule(&rule)?;
        let record = bindings::record_from_wit(record);
        // The selector's idle pass, reused call after call.
        match selector.decide(&mut selector.lend(), &crate::records::fields(&record), true) {
            Ok(d) => Ok(host_api::RuleDecision { matched: d.matched, reason: d.reason }),
            Err(e) => Err(self.rule_failed(e)),
        }
    }

    fn select_records(
        &mut self,
        collection: String,
        rule: String,
        after: Option<String>,
        limit: u32,
    ) -> Result<host_api::SelectionPage, wit::PluginError> {
        self.check(Capability::ReadCollection(collection.clone()))?;
        let selector = self.bind_rule(&rule)?;
        let limit = limit.clamp(1, MAX_SELECT) as usize;
        let store = self.setup.store.clone();
        // When the rule's first condition is an equality on an indexed
        // field, only the records the index names can qualify.
        let index = narrowing(&*store, &collection, &selector).map_err(|e| self.store_error(e))?;
        let read = move |after: Option<&str>, limit: usize| match &index {
            Some((fields, probe)) => store.scan_index(&collection, fields, probe, after, limit),
            None => store.scan_stored(&collection, after, limit),
        };
        match select_page(read, &selector, after, limit) {
            Ok(page) => Ok(page),
            Err(Failure::Store(e)) => Err(self.store_error(e)),
            Err(Failure::Rule(e)) => Err(self.rule_failed(e)),
        }
    }

    fn state_get(&mut self, key: String) -> Option<String> {
        // A write earlier in this run wins over the stored value.
        if let Some(v) = self.state_writes.get(&key) {
            return v.clone();
        }
        // A store that fails is not "no value": the run ends interrupted.
        let read = self.setup.store.task_state(&self.setup.task, &key);
        self.stored(read).flatten()
    }

    fn state_set(&mut self, key: String, value: Option<String>) {
        // Each key is held once, its last value replacing the one before,
        // and the whole state a task keeps is capped.
        if self.state_refused {
            self.violations_more += 1;
            return;
        }
        // A store that fails cannot size the state: the write is dropped,
        // and the run ends interrupted, to be done again.
        let total = match self.state_total {
            Some(total) => total,
            None => {
                let read = self.setup.store.task_state_bytes(&self.setup.task);
                let Some(bytes) = self.stored(read) else { return };
                bytes as usize
            }
        };
        let (stored, now) = match self.state_sizes.get(&key) {
            Some(sizes) => *sizes,
            None => {
                let read = self.setup.store.task_state(&self.setup.task, &key);
                let Some(value) = self.stored(read) else { return };
                let stored = value.map_or(0, |v| key.len() + v.len());
                (stored, stored)
            }
        };
        let after = value.as_ref().map_or(0, |v| key.len() + v.len());
        let new_total = (total + after).saturating_sub(now);
        if new_total > self.state_limit {
            // Refused: the run fails, and nothing of this write is kept.
            self.state_refused = true;
            self.violate(format!(
                "its state would hold {new_total} bytes, over the {} a task may keep ([sandbox] state_limit_bytes)",
                self.state_limit
            ));
            return;
        }
        self.state_total = Some(new_total);
        self.state_sizes.insert(key.clone(), (stored, after));
        self.state_writes.insert(key, value);
    }

    fn progress(&mut self, done: u64, total: Option<u64>) {
        self.setup.control.set_progress(done, total);
    }

    fn cancelled(&mut self) -> bool {
        self.setup.control.is_cancelled()
    }

    fn today(&mut self) -> wit::Date {
        wit::Date { year: self.setup.today.year, month: self.setup.today.month, day: self.setup.today.day }
    }
}

impl RunState {
    /// The folder `folder` resolves to, once the capability checks pass.
    fn folder(&mut self, folder: &str, write: bool) -> Result<std::path::PathBuf, wit::PluginError> {
        let name = format!("folder:{folder}");
        self.check(if write { Capability::WriteCollection(name) } else { Capability::ReadCollection(name) })?;
        match self.folders.get(folder) {
            Some(path) => Ok(path.clone()),
            None => {
                let message =
                    format!("the district has no folder `{folder}`: set it under [sandbox.folders] in schoolbell.toml");
                self.violate(message.clone());
                Err(wit::PluginError::Permanent(message))
            }
        }
    }

    /// A file name inside a folder: never a path, so nothing outside is reachable.
    fn file_in(&mut self, dir: &std::path::Path, name: &str) -> Result<std::path::PathBuf, wit::PluginError> {
        if !crate::imports::is_plain_file_name(name) {
            let message = format!("`{name}` is not a plain file name");
            self.violate(message.clone());
            return Err(wit::PluginError::Denied(message));
        }
        Ok(dir.join(name))
    }
}

fn io_failure(what: &str, path: &std::path::Path, e: std::io::Error) -> wit::PluginError {
    wit::PluginError::Transient(format!("cannot {what} {}: {e}", path.display()))
}

impl files_api::Host for RunState {
    fn list_files(&mut self, folder: String) -> Result<Vec<files_api::FileInfo>, wit::PluginError> {
        let dir = self.folder(&folder, false)?;
        let entries = std::fs::read_dir(&dir).map_err(|e| io_failure("list", &dir, e))?;
        // Ages count whole days up to the run's own "today", as every other
        // date a plugin sees does (a scheduled run sees its fire's date).
        let t = &self.setup.today;
        let today = chrono::NaiveDate::from_ymd_opt(t.year, t.month.into(), t.day.into())
            .unwrap_or_else(|| chrono::Utc::now().date_naive());
        let mut files = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| io_failure("list", &dir, e))?;
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            let written = meta.modified().ok().map(|m| chrono::DateTime::<chrono::Utc>::from(m).date_naive());
            let age = written.map(|w| (today - w).num_days().max(0)).unwrap_or(0);
            files.push(files_api::FileInfo {
                name: entry.file_name().to_string_lossy().into_owned(),
                size: meta.len(),
                age_days: u32::try_from(age).unwrap_or(u32::MAX),
            });
        }
        files.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(files)
    }

    fn write_file(&mut self, folder: String, name: String, contents: Vec<u8>) -> Result<(), wit::PluginError> {
        let dir = self.folder(&folder, true)?;
        let path = self.file_in(&dir, &name)?;
        // What a run can make the host write is bounded, like all it holds.
        let bytes = self.file_bytes_written.saturating_add(contents.len() as u64);
        if self.files_written >= self.max_files || bytes > self.max_file_bytes {
            let message = format!(
                "writing {name} would pass what one run may write: {} files ([sandbox] max_files) and {} bytes ([sandbox] max_file_bytes)",
                self.max_files, self.max_file_bytes
            );
            self.violate(message.clone());
            return Err(wit::PluginError::Denied(message));
        }
        self.files_written += 1;
        self.file_bytes_written = bytes;
        // Written beside, then renamed: a reader never sees half a file.
        let staged = dir.join(format!(".{name}.writing"));
        // A leftover (or a link planted at the staged name) is removed, not
        // followed; the staged file is made new, so no link is written through.
        let _ = std::fs::remove_file(&staged);
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut file = crate::secrets::private_file(&staged)?;
            file.write_all(&contents)?;
            file.sync_all()
        };
        write().map_err(|e| io_failure("write", &staged, e))?;
        std::fs::rename(&staged, &path).map_err(|e| io_failure("write", &path, e))?;
        self.push_log(LogLevel::Info, format!("wrote {} ({} bytes)", path.display(), contents.len()));
        Ok(())
    }

    fn delete_file(&mut self, folder: String, name: String) -> Result<(), wit::PluginError> {
        let dir = self.folder(&folder, true)?;
        let path = self.file_in(&dir, &name)?;
        std::fs::remove_file(&path).map_err(|e| io_failure("delete", &path, e))?;
        self.push_log(LogLevel::Info, format!("deleted {}", path.display()));
        Ok(())
    }
}

/// The index that narrows a selection, and the record to probe it with:
/// a single-field index on the field the rule's first condition requires
/// equal to a text. The index ignores case and surrounding spaces, so it
/// names every record that can qualify (and some that cannot, which the
/// rule then refuses).
fn narrowing(
    store: &dyn crate::store::Backend,
    collection: &str,
    selector: &Selector,
) -> crate::store::Result<Option<(Vec<String>, Record)>> {
    let Some((variable, text)) = selector.required_equal() else {
        return Ok(None);
    };
    let Some(spec) = store.collection(collection)? else {
        return Ok(None);
    };
    let index = spec.indexes.into_iter().find(|fields| match fields.as_slice() {
        [field] => crate::records::key_field(field).0.replace('-', "_") == variable,
        _ => false,
    });
    Ok(index.map(|index| {
        let field = crate::records::key_field(&index[0]).0.to_string();
        (index, Record::from([(field, crate::records::Value::Text(text))]))
    }))
}

/// Why a selection failed.
enum Failure {
    Store(crate::store::Error),
    Rule(crate::rules::Error),
}

/// Records read by one thread while the rule decides the chunk before
/// across the others.
const CHUNK: usize = 1_000;

type Read = crate::store::Result<(Vec<crate::store::StoredRecord>, Option<String>)>;

/// One page of `select-records`: up to `limit` records after `after`,
/// walked by `read` in chunks on one thread while the rule decides the
/// chunk before on every core. Each record is decoded in place for the
/// rule, and in full only when it qualifies.
fn select_page(
    read: impl Fn(Option<&str>, usize) -> Read + Send,
    selector: &Selector,
    after: Option<String>,
    limit: usize,
) -> Result<host_api::SelectionPage, Failure> {
    use rayon::prelude::*;
    let (chunks, decide) = std::sync::mpsc::sync_channel(2);
    std::thread::scope(|scope| {
        let reader = scope.spawn(move || {
            let (mut cursor, mut left) = (after, limit);
            while left > 0 {
                let (records, next) = read(cursor.as_deref(), left.min(CHUNK))?;
                left -= records.len();
                let end = next.is_none();
                cursor = next;
                // The decider stopped (a rule failed): nothing more to read.
                if chunks.send(records).is_err() || end {
                    break;
                }
            }
            Ok::<_, crate::store::Error>(cursor)
        });
        let mut selected = Vec::new();
        let mut scanned = 0;
        for records in decide {
            scanned += records.len() as u32;
            let chosen: Vec<host_api::Selected> = records
                .par_iter()
                .with_min_len(128)
                .map_init(
                    || selector.lend(),
                    |pass, stored| {
                        let fields = stored.fields().map_err(Failure::Store)?;
                        let decision = selector.decide(pass, &fields, false).map_err(Failure::Rule)?;
                        if !decision.matched {
                            return Ok(None);
                        }
                        let record = stored.record().map_err(Failure::Store)?;
                        Ok(Some(host_api::Selected {
                            record: bindings::record_to_wit(&record),
                            reason: decision.reason,
                        }))
                    },
                )
                .filter_map(Result::transpose)
                .collect::<Result<_, Failure>>()?;
            selected.extend(chosen);
        }
        let next = reader.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)).map_err(Failure::Store)?;
        Ok(host_api::SelectionPage { selected, scanned, next })
    })
}
