//! Tasks (timed tasks): what to run, when, as whom, and what to do when
//! fires are missed or overlap.

use std::collections::BTreeMap;

use chrono::{DateTime, SubsecRound, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::imports::ImportTarget;
use crate::notify::NotifySettings;
use crate::plugins::{self, PluginHost, PluginKind};
use crate::records::{Record, Value};
use crate::rules::RuleSet;
use crate::schedule::{self, Pause, Schedule, Timing};

/// What a task does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TaskKind {
    /// Maps a file into records (an import-mapping plugin).
    Import,
    /// Notifies people (a notifier plugin).
    Notifier,
    /// Writes a file (a notifier plugin, such as the name CSV export).
    Export,
    /// Cleans up (a notifier plugin, such as the batch folder cleanup).
    Cleanup,
}

impl TaskKind {
    /// The kind as the config and the API write it.
    pub fn name(self) -> &'static str {
        match self {
            TaskKind::Import => "import",
            TaskKind::Notifier => "notifier",
            TaskKind::Export => "export",
            TaskKind::Cleanup => "cleanup",
        }
    }

    /// The plugin world this kind runs.
    pub fn plugin_kind(self) -> PluginKind {
        match self {
            TaskKind::Import => PluginKind::ImportMapping,
            _ => PluginKind::Notifier,
        }
    }
}

/// What to do about fires missed while the host was down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Misfire {
    /// Run once now for all the missed fires, then keep the schedule.
    #[default]
    RunOnce,
    /// Skip the missed fires; wait for the next one.
    Skip,
}

/// What to do when a fire comes while the task's last run is still going.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Overlap {
    /// Do not start another.
    #[default]
    Skip,
    /// Queue one more, at most.
    QueueOne,
    /// Cancel the running one and start anew.
    CancelRunning,
}

/// A task definition as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    /// Unique name.
    pub name: String,
    /// What it does.
    pub kind: TaskKind,
    /// The plugin it runs.
    pub plugin: String,
    /// Plugin parameters, checked against the plugin's declared types.
    pub params: Record,
    /// Admin rules it uses (by name).
    pub rules: Vec<String>,
    /// Who owns it (and its scheduled runs).
    pub owner: String,
    /// When it fires.
    pub schedule: Schedule,
    /// Its IANA time zone.
    pub zone: String,
    /// No fire before this.
    pub start: DateTime<Utc>,
    /// No fire after this.
    pub end: Option<DateTime<Utc>>,
    /// Local date ranges with no fires.
    pub pauses: Vec<Pause>,
    /// Whether it fires at all.
    pub enabled: bool,
    /// Served before normal-priority runs in the queue.
    pub high_priority: bool,
    /// Its runs are kept until deleted (no retention).
    pub keep: bool,
    /// Missed-fire policy.
    pub misfire: Misfire,
    /// Overlap policy.
    pub overlap: Overlap,
    /// For imports: the file and where its rows go.
    pub import: Option<ImportTarget>,
    /// For notifiers: the notification group and the dedupe policy.
    #[serde(default)]
    pub notify: NotifySettings,
    /// The next fire time, persisted.
    pub next_fire: Option<DateTime<Utc>>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

impl Task {
    /// The task's zone.
    pub fn tz(&self) -> Tz {
        self.zone.parse().unwrap_or(Tz::UTC)
    }

    /// Everything that decides its fire times.
    pub fn timing(&self) -> Timing<'_> {
        Timing { schedule: &self.schedule, tz: self.tz(), start: self.start, end: self.end, pauses: &self.pauses }
    }

    /// A task that exists only for one run started by hand (`import file`,
    /// `notify run`): never stored, never scheduled.
    pub fn by_hand(
        name: String,
        kind: TaskKind,
        plugin: &str,
        params: Record,
        owner: &str,
        now: DateTime<Utc>,
    ) -> Task {
        Task {
            name,
            kind,
            plugin: plugin.into(),
            params,
            rules: Vec::new(),
            owner: owner.into(),
            schedule: Schedule::Once(now.naive_utc()),
            zone: "UTC".into(),
            start: now,
            end: None,
            pauses: Vec::new(),
            enabled: false,
            high_priority: false,
            keep: false,
            misfire: Misfire::default(),
            overlap: Overlap::default(),
            import: None,
            notify: NotifySettings::default(),
            next_fire: None,
            created_at: now,
        }
    }

    /// The same task, importing into `target`.
    pub fn with_import(mut self, target: ImportTarget) -> Task {
        self.import = Some(target);
        self
    }

    /// The next `count` fire times, the first being the one the engine
    /// will fire next (past, when it is overdue). Every face asks this, so
    /// a list and a detail view never disagree. A disabled task has none.
    pub fn upcoming(&self, count: usize) -> Vec<DateTime<Utc>> {
        let Some(first) = self.next_fire.filter(|_| self.enabled && count > 0) else { return Vec::new() };
        let mut fires = vec![first];
        fires.extend(self.timing().upcoming(first, count - 1));
        fires
    }

    /// An instant in the task's zone, as people read it:
    /// `2026-12-01 07:00 CST (-06:00)`.
    pub fn local_time(&self, t: DateTime<Utc>) -> String {
        t.with_timezone(&self.tz()).format("%Y-%m-%d %H:%M %Z (%:z)").to_string()
    }

    /// The queue priority: 0 is served first.
    pub fn priority(&self) -> u8 {
        if self.high_priority { 0 } else { 1 }
    }
}

/// A task as people write it (CLI flags, API JSON).
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    /// Unique name: letters, digits, dashes, underscores.
    pub name: String,
    /// import, notifier, export or cleanup.
    pub kind: Option<TaskKind>,
    /// The plugin.
    pub plugin: String,
    /// Plugin parameters (text is converted to the declared type).
    #[serde(default)]
    pub params: BTreeMap<String, serde_json::Value>,
    /// Rules it uses.
    #[serde(default)]
    pub rules: Vec<String>,
    /// A schedule phrase, such as `daily at 07:00`.
    pub schedule: String,
    /// IANA zone; default the district's.
    pub zone: Option<String>,
    /// Start, `YYYY-MM-DD HH:MM` in the zone or RFC 3339; default now.
    pub start: Option<String>,
    /// Optional end, same forms.
    pub end: Option<String>,
    /// Pause windows.
    #[serde(default)]
    pub pauses: Vec<Pause>,
    /// Default true.
    pub enabled: Option<bool>,
    /// Default false.
    #[serde(default)]
    pub high_priority: bool,
    /// Default false.
    #[serde(default)]
    pub keep: bool,
    /// Default run-once.
    #[serde(default)]
    pub misfire: Misfire,
    /// Default skip.
    #[serde(default)]
    pub overlap: Overlap,
    /// Required for imports.
    pub import: Option<ImportTarget>,
    /// For notifiers: the notification group and the dedupe policy.
    #[serde(default)]
    pub notify: NotifySettings,
    /// Who owns it; default whoever adds it. Only the account owner may
    /// add a task for someone else (such as an import for a staff user to
    /// run and test).
    #[serde(default)]
    pub owner: Option<String>,
}

/// A task that cannot be saved, and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("task `{task}`, {field}: {message}")]
pub struct Invalid {
    /// The task.
    pub task: String,
    /// The field at fault.
    pub field: &'static str,
    /// What is wrong and what to write.
    pub message: String,
}

impl TaskSpec {
    /// Checks everything and builds the task for `owner`.
    pub fn build(
        self,
        owner: &str,
        default_zone: &str,
        host: &PluginHost,
        rules: &RuleSet,
        now: DateTime<Utc>,
    ) -> Result<Task, Invalid> {
        let name = self.name.clone();
        let bad = |field: &'static str, message: String| Invalid { task: name.clone(), field, message };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(bad("name", "use letters, digits, dashes and underscores".into()));
        }
        let entry = host.entry(&self.plugin).map_err(|e| bad("plugin", e.to_string()))?;
        let kind = self.kind.unwrap_or(match entry.kind {
            PluginKind::ImportMapping => TaskKind::Import,
            PluginKind::Notifier => TaskKind::Notifier,
        });
        if kind.plugin_kind() != entry.kind {
            return Err(bad(
                "plugin",
                format!(
                    "{} is a {} plugin; a {kind:?} task needs a {} plugin",
                    entry.name,
                    entry.kind,
                    kind.plugin_kind()
                ),
            ));
        }
        let mut given = Record::new();
        for (k, v) in &self.params {
            let value = match v {
                serde_json::Value::String(s) => Value::Text(s.clone()),
                other => {
                    Value::from_json(other).ok_or_else(|| bad("params", format!("`{k}` must be a plain value")))?
                }
            };
            given.insert(k.clone(), value);
        }
        let params = plugins::check_params(&entry, &given).map_err(|e| bad("params", e.to_string()))?;
        for rule in &self.rules {
            rules.get(rule).map_err(|e| bad("rules", e.to_string()))?;
        }
        let schedule: Schedule =
            self.schedule.parse().map_err(|e: schedule::ParseError| bad("schedule", e.to_string()))?;
        let zone = self.zone.clone().unwrap_or_else(|| default_zone.to_string());
        let tz = schedule::parse_zone(&zone).map_err(|m| bad("zone", m))?;
        // Whole seconds: fire times derive from the start, and nobody
        // schedules to the nanosecond.
        let start = match &self.start {
            Some(s) => schedule::parse_local(s, tz).map_err(|m| bad("start", m))?,
            None => now,
        }
        .trunc_subsecs(0);
        let end = self.end.as_deref().map(|s| schedule::parse_local(s, tz)).transpose().map_err(|m| bad("end", m))?;
        if end.is_some_and(|e| e <= start) {
            return Err(bad("end", "the end must come after the start".into()));
        }
        for p in &self.pauses {
            if p.to < p.from {
                return Err(bad("pauses", format!("pause {} to {} ends before it starts", p.from, p.to)));
            }
        }
        if kind == TaskKind::Import && self.import.is_none() {
            return Err(bad("import", "an import task needs a source file and a collection".into()));
        }
        let mut task = Task {
            name: self.name,
            kind,
            plugin: self.plugin,
            params,
            rules: self.rules,
            owner: owner.into(),
            schedule,
            zone,
            start,
            end,
            pauses: self.pauses,
            enabled: self.enabled.unwrap_or(true),
            high_priority: self.high_priority,
            keep: self.keep,
            misfire: self.misfire,
            overlap: self.overlap,
            import: self.import,
            notify: self.notify,
            next_fire: None,
            created_at: now,
        };
        // A `once` in the past is still due (its misfire policy decides);
        // every other schedule starts from now or its start, whichever is later.
        task.next_fire = match &task.schedule {
            Schedule::Once(at) => {
                let t = schedule::resolve(tz, *at);
                task.start = task.start.min(t);
                Some(t)
            }
            _ => task.timing().next_after(now.max(task.start - chrono::Duration::seconds(1))),
        };
        if task.next_fire.is_none() {
            return Err(bad(
                "schedule",
                format!(
                    "`{}` never fires between the start and the end, outside the pauses; check the dates",
                    task.schedule
                ),
            ));
        }
        Ok(task)
    }
}

/// A task with its next fire times (the engine's own, from
/// [`Task::upcoming`]), as `task show --json` prints it.
pub fn task_view(task: &Task, count: usize) -> serde_json::Value {
    let fires: Vec<serde_json::Value> = task
        .upcoming(count)
        .iter()
        .map(|t| serde_json::json!({ "local": task.local_time(*t), "utc": t.to_rfc3339() }))
        .collect();
    serde_json::json!({ "task": task, "next": fires })
}
