//! The host side of a run: the store data every guest call sees, and the
//! host functions the WIT imports (`log`, `host`), each checking the
//! plugin's capabilities.

use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::records::Record;
use crate::rules::RuleSet;
use crate::store::Store;

use super::bindings::{self, host_api, log_api, wit};
use super::output::CappedOutput;
use super::sandbox::{Interrupt, Limiter, RunControl};
use super::{Capability, LogLevel, LogLine, PluginId};

/// Largest page a guest may ask `read-records` for.
const MAX_PAGE: u32 = 1_000;

/// Everything one run's guest calls can reach.
pub(crate) struct RunState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limiter: Limiter,
    pub(crate) stdout: CappedOutput,
    pub(crate) stderr: CappedOutput,
    pub(crate) plugin: PluginId,
    /// What the plugin declared in `describe`.
    pub(crate) declared: Vec<Capability>,
    /// What the admin granted.
    pub(crate) granted: Vec<Capability>,
    pub(crate) store: Arc<Store>,
    pub(crate) rules: Arc<RuleSet>,
    pub(crate) task: String,
    pub(crate) params: Record,
    pub(crate) control: RunControl,
    pub(crate) started: Instant,
    pub(crate) interrupted: Option<Interrupt>,
    pub(crate) log: Vec<LogLine>,
    log_bytes: usize,
    log_dropped: u64,
    log_limit: usize,
    pub(crate) state_writes: Vec<(String, Option<String>)>,
    /// Capability denials and host failures, which fail the run even if the
    /// guest swallows the error it was given.
    pub(crate) violations: Vec<String>,
    /// Keeps the epoch ticking while this store lives.
    pub(crate) ticker: Option<super::sandbox::TickerGuard>,
}

/// What a run is given.
pub(crate) struct RunSetup {
    pub(crate) plugin: PluginId,
    pub(crate) declared: Vec<Capability>,
    pub(crate) granted: Vec<Capability>,
    pub(crate) store: Arc<Store>,
    pub(crate) rules: Arc<RuleSet>,
    pub(crate) task: String,
    pub(crate) params: Record,
    pub(crate) control: RunControl,
}

impl RunState {
    pub(crate) fn new(setup: RunSetup, sandbox: &super::sandbox::Sandbox) -> RunState {
        let (wasi, stdout, stderr) = sandbox.wasi();
        RunState {
            wasi,
            table: super::sandbox::Sandbox::table(),
            limiter: Limiter { limit: sandbox.config.memory_limit(), refused: None },
            stdout,
            stderr,
            plugin: setup.plugin,
            declared: setup.declared,
            granted: setup.granted,
            store: setup.store,
            rules: setup.rules,
            task: setup.task,
            params: setup.params,
            control: setup.control,
            started: Instant::now(),
            interrupted: None,
            log: Vec::new(),
            log_bytes: 0,
            log_dropped: 0,
            log_limit: sandbox.config.log_limit_bytes,
            state_writes: Vec::new(),
            violations: Vec::new(),
            ticker: None,
        }
    }

    /// Appends to the run's log, within its cap.
    pub(crate) fn push_log(&mut self, level: LogLevel, message: String) {
        if self.log_bytes + message.len() > self.log_limit {
            self.log_dropped += 1;
            return;
        }
        tracing::debug!(plugin = %self.plugin, ?level, "{message}");
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

    /// Checks that the plugin both declared and was granted `cap`.
    fn check(&mut self, cap: Capability) -> Result<(), wit::PluginError> {
        let message = if !self.declared.contains(&cap) {
            format!("it tried to {cap:#}, which it did not declare in `describe`")
        } else if !self.granted.contains(&cap) {
            format!("it may {cap:#} only once an admin grants it: `schoolbell plugin grant {} {cap}`", self.plugin.name)
        } else {
            return Ok(());
        };
        self.violations.push(message.clone());
        Err(wit::PluginError::Denied(message))
    }

    fn store_error(&mut self, e: crate::store::Error) -> wit::PluginError {
        let message = e.to_string();
        self.violations.push(format!("the host failed to read the store: {message}"));
        wit::PluginError::Transient(message)
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
        match self.store.scan_records(&collection, after.as_deref(), limit) {
            Ok((records, next)) => {
                Ok(host_api::RecordPage { records: records.iter().map(bindings::record_to_wit).collect(), next })
            }
            Err(e) => Err(self.store_error(e)),
        }
    }

    fn count_records(&mut self, collection: String) -> Result<u64, wit::PluginError> {
        self.check(Capability::ReadCollection(collection.clone()))?;
        self.store.count_records(&collection).map_err(|e| self.store_error(e))
    }

    fn eval_rule(&mut self, rule: String, record: Vec<wit::Field>) -> Result<host_api::RuleDecision, wit::PluginError> {
        let outcome =
            self.rules.get(&rule).and_then(|r| self.rules.eval(&r, &bindings::record_from_wit(record), &self.params));
        match outcome {
            Ok(d) => Ok(host_api::RuleDecision { matched: d.matched, reason: d.reason }),
            Err(e) => {
                let message = e.to_string();
                self.violations.push(message.clone());
                Err(wit::PluginError::Permanent(message))
            }
        }
    }

    fn state_get(&mut self, key: String) -> Option<String> {
        // A write earlier in this run wins over the stored value.
        if let Some((_, v)) = self.state_writes.iter().rev().find(|(k, _)| *k == key) {
            return v.clone();
        }
        self.store.task_state(&self.task, &key).ok().flatten()
    }

    fn state_set(&mut self, key: String, value: Option<String>) {
        self.state_writes.push((key, value));
    }

    fn progress(&mut self, done: u64, total: Option<u64>) {
        self.control.set_progress(done, total);
    }

    fn cancelled(&mut self) -> bool {
        self.control.is_cancelled()
    }
}
