//! The scheduler: fires due tasks into the durable batch queue, runs
//! queued runs on a bounded worker pool, sweeps old runs away, and owns
//! every operation on tasks and runs, with its permission check, for the
//! CLI and the HTTP API alike.
//!
//! Exactly once: a fire advances the task's next fire time and queues its
//! run in one transaction; a worker takes a queue entry and marks the run
//! started in another. A crash between the two leaves the run queued (it
//! runs after the restart); a crash during a run leaves it running, and the
//! restart marks it interrupted. No fire time ever gives two runs.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::imports;
use crate::notify;
use crate::plugins::{PluginHost, RunControl, RunRequest};
use crate::runs::{self, Run, RunStatus, TaskMessage, Trigger};
use crate::store::{self, Finish, RunId, Store};
use crate::tasks::{Misfire, Overlap, Task, TaskKind, TaskSpec};
use crate::users::{Role, User};

/// Where "now" comes from: the system clock, or a test's hand.
pub trait Clock: Send + Sync {
    /// The current instant.
    fn now(&self) -> DateTime<Utc>;
}

/// The system clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that moves only when told (tests, the benchmark).
pub struct ManualClock(Mutex<DateTime<Utc>>);

impl ManualClock {
    /// A clock stopped at `t`.
    pub fn new(t: DateTime<Utc>) -> Self {
        ManualClock(Mutex::new(t))
    }

    /// Moves the clock to `t`.
    pub fn set(&self, t: DateTime<Utc>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = t;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The `[scheduler]` section of the config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerConfig {
    /// Runs that execute at once.
    pub workers: usize,
    /// The district's IANA time zone, for tasks that name none.
    pub zone: String,
    /// A fire later than this many seconds counts as missed (misfire policy).
    pub misfire_grace_secs: u64,
    /// Finished runs are removed after this many days, unless kept.
    pub retention_days: u64,
    /// Cancelled runs are removed after this many minutes, unless kept.
    pub cancelled_retention_minutes: u64,
    /// An import picks a file up only once its size has held still this long.
    pub pickup_settle_ms: u64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            workers: 2,
            zone: "UTC".into(),
            misfire_grace_secs: 60,
            retention_days: 60,
            cancelled_retention_minutes: 10,
            pickup_settle_ms: 1000,
        }
    }
}

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
}

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

struct Live {
    task: String,
    control: RunControl,
}

/// The scheduler and the operations on tasks and runs.
pub struct Scheduler {
    store: Arc<Store>,
    host: Arc<PluginHost>,
    clock: Arc<dyn Clock>,
    config: SchedulerConfig,
    wake: tokio::sync::Notify,
    live: Mutex<HashMap<RunId, Live>>,
    shutting_down: AtomicBool,
    /// Fires and task edits one at a time, so a fire never races an edit.
    fire_lock: Mutex<()>,
    /// Queued runs per task, for the overlap policy without scanning the
    /// queue at every fire. Built from the durable queue on first use.
    queued_per_task: Mutex<Option<HashMap<String, usize>>>,
    /// Decisions on held imports one at a time, so two confirmations of
    /// the same run cannot both commit it.
    import_lock: Mutex<()>,
    /// Credentials and staging for import sources.
    sources: std::sync::RwLock<imports::Sources>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Scheduler {
    /// A scheduler over `host`'s store.
    pub fn new(host: Arc<PluginHost>, clock: Arc<dyn Clock>, config: SchedulerConfig) -> Arc<Scheduler> {
        Arc::new(Scheduler {
            store: host.store().clone(),
            host,
            clock,
            config,
            wake: tokio::sync::Notify::new(),
            live: Mutex::new(HashMap::new()),
            shutting_down: AtomicBool::new(false),
            fire_lock: Mutex::new(()),
            queued_per_task: Mutex::new(None),
            import_lock: Mutex::new(()),
            sources: std::sync::RwLock::new(imports::Sources::default()),
        })
    }

    /// Sets where import sources find their credentials and stage files.
    pub fn set_sources(&self, sources: imports::Sources) {
        *self.sources.write().unwrap_or_else(|e| e.into_inner()) = sources;
    }

    /// "Test connection" for an import task's source.
    pub fn test_connection(&self, user: &User, name: &str) -> Result<String> {
        let task = self.task(user, name)?;
        let target = task.import.ok_or_else(|| Error::Invalid(format!("task `{name}` is not an import")))?;
        let sources = self.sources.read().unwrap_or_else(|e| e.into_inner());
        imports::test_connection(&self.store, &target, &sources).map_err(|e| Error::Invalid(e.to_string()))
    }

    /// The plugin host runs use.
    pub fn host(&self) -> &Arc<PluginHost> {
        &self.host
    }

    /// The clock.
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// The district's default zone.
    pub fn zone(&self) -> &str {
        &self.config.zone
    }

    // ----- tasks -----

    fn get_task(&self, name: &str) -> Result<Task> {
        self.store
            .tasks::<Task>()
            .get(name.as_bytes())?
            .ok_or_else(|| Error::NotFound(format!("no task named `{name}`; `schoolbell task list` shows the tasks")))
    }

    fn check_task(user: &User, task: &Task) -> Result<()> {
        if user.role == Role::Owner || task.owner == user.name {
            Ok(())
        } else {
            Err(Error::Forbidden(format!(
                "task `{}` belongs to {}; staff may manage only their own tasks",
                task.name, task.owner
            )))
        }
    }

    /// Saves a new task owned by `user`.
    pub fn add_task(&self, user: &User, spec: TaskSpec) -> Result<Task> {
        let _guard = lock(&self.fire_lock);
        if self.store.tasks::<Task>().get(spec.name.as_bytes())?.is_some() {
            return Err(Error::Conflict(format!(
                "a task named `{}` exists; remove it first or pick another name",
                spec.name
            )));
        }
        let task = spec
            .build(&user.name, &self.config.zone, &self.host, self.host.rules(), self.now())
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let due = if task.enabled { task.next_fire } else { None };
        self.store.put_task(&task.name, &task, None, due)?;
        self.store.flush()?;
        self.wake.notify_one();
        tracing::info!(task = %task.name, next = ?task.next_fire, "Task added.");
        Ok(task)
    }

    /// The tasks `user` may see, by name.
    pub fn tasks(&self, user: &User) -> Result<Vec<Task>> {
        let all = self.store.tasks::<Task>().all()?;
        Ok(all.into_iter().filter(|t| user.role == Role::Owner || t.owner == user.name).collect())
    }

    /// One task.
    pub fn task(&self, user: &User, name: &str) -> Result<Task> {
        let task = self.get_task(name)?;
        Self::check_task(user, &task)?;
        Ok(task)
    }

    /// Enables or disables a task. Enabling computes the next fire from now.
    pub fn set_enabled(&self, user: &User, name: &str, enabled: bool) -> Result<Task> {
        let _guard = lock(&self.fire_lock);
        let mut task = self.get_task(name)?;
        Self::check_task(user, &task)?;
        let old_due = if task.enabled { task.next_fire } else { None };
        task.enabled = enabled;
        if enabled {
            task.next_fire = match task.schedule {
                crate::schedule::Schedule::Once(_) => task.next_fire,
                _ => task.timing().next_after(self.now().max(task.start - chrono::Duration::seconds(1))),
            };
        }
        let new_due = if enabled { task.next_fire } else { None };
        self.store.put_task(name, &task, old_due, new_due)?;
        self.store.flush()?;
        self.wake.notify_one();
        Ok(task)
    }

    /// Removes a task. Its runs stay (they are history).
    pub fn remove_task(&self, user: &User, name: &str) -> Result<Task> {
        let _guard = lock(&self.fire_lock);
        let task = self.get_task(name)?;
        Self::check_task(user, &task)?;
        self.store.remove_task(name, if task.enabled { task.next_fire } else { None })?;
        self.store.flush()?;
        Ok(task)
    }

    fn new_run(&self, task: &Task, owner: &str, trigger: Trigger, fire_time: Option<DateTime<Utc>>) -> Result<Run> {
        let id = self.store.new_run_id()?;
        Ok(Run::queued(id, &task.name, &task.plugin, owner, trigger, fire_time, self.now(), task.keep))
    }

    /// Queues a run of the task now, owned by `user`.
    pub fn run_now(&self, user: &User, name: &str) -> Result<Run> {
        self.queue_now(user, name, false)
    }

    /// Queues a test import ("dry run") of an import task: it plans and
    /// reports, and changes nothing until `import_commit`.
    pub fn test_import(&self, user: &User, name: &str) -> Result<Run> {
        self.queue_now(user, name, true)
    }

    fn queue_now(&self, user: &User, name: &str, dry_run: bool) -> Result<Run> {
        let task = self.get_task(name)?;
        Self::check_task(user, &task)?;
        if dry_run && task.kind != TaskKind::Import {
            return Err(Error::Invalid(format!("task `{name}` is not an import; only imports have a test run")));
        }
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(Error::Conflict("the host is shutting down; try again once it is back".into()));
        }
        let mut run = self.new_run(&task, &user.name, Trigger::User, None)?;
        run.dry_run = dry_run;
        self.store.enqueue(task.priority(), run.queued_at, run.id, &run)?;
        self.count_queued(&task.name, 1)?;
        self.store.flush()?;
        self.wake.notify_one();
        Ok(run)
    }

    // ----- runs -----

    fn get_run(&self, id: RunId) -> Result<Run> {
        self.store.run::<Run>(id)?.ok_or_else(|| Error::NotFound(format!("no run {id}")))
    }

    /// The runs `user` may see, newest first.
    pub fn runs(&self, user: &User, status: Option<RunStatus>, task: Option<&str>, limit: usize) -> Result<Vec<Run>> {
        let mut out = Vec::new();
        let mut before = None;
        loop {
            let page: Vec<Run> = self.store.runs(before, 500)?;
            let Some(last) = page.last() else { break };
            before = Some(last.id);
            for r in page {
                if runs::can_view(user, &r) && status.is_none_or(|s| r.status == s) && task.is_none_or(|t| r.task == t)
                {
                    out.push(r);
                    if out.len() == limit {
                        return Ok(out);
                    }
                }
            }
        }
        Ok(out)
    }

    /// One run, if `user` may see it.
    pub fn run(&self, user: &User, id: RunId) -> Result<Run> {
        let run = self.get_run(id)?;
        if !runs::can_view(user, &run) {
            // Said as "not found": a run you may not see does not exist for you.
            return Err(Error::NotFound(format!("no run {id}")));
        }
        Ok(run)
    }

    fn check_control(user: &User, run: &Run, what: &str) -> Result<()> {
        if !runs::can_control(user, run) {
            if runs::can_view(user, run) {
                return Err(Error::Forbidden(format!(
                    "run {} belongs to {}; only its owner or the account owner may {what} it",
                    run.id, run.owner
                )));
            }
            return Err(Error::NotFound(format!("no run {}", run.id)));
        }
        Ok(())
    }

    /// Cancels a run: a queued or held one at once; a running one
    /// cooperatively, then by force after the grace period.
    pub fn cancel(&self, user: &User, id: RunId) -> Result<Run> {
        let mut run = self.get_run(id)?;
        Self::check_control(user, &run, "cancel")?;
        let now = self.now();
        match run.status {
            s if s.is_finished() => {
                return Err(Error::Conflict(format!(
                    "run {id} has already finished ({s}); there is nothing to cancel"
                )));
            }
            RunStatus::Running => {
                // Under the live lock the worker cannot record its outcome
                // meanwhile; re-read so a run that just finished is not
                // overwritten with its running state.
                let live = lock(&self.live);
                let mut current = self.get_run(id)?;
                if current.status.is_finished() {
                    return Err(Error::Conflict(format!(
                        "run {id} has already finished ({}); there is nothing to cancel",
                        current.status
                    )));
                }
                if let Some(l) = live.get(&id) {
                    l.control.cancel(Duration::from_secs(self.host.config().cancel_grace_secs));
                }
                current.cancel_requested_by = Some(user.name.clone());
                self.store.put_run(id, &current, None)?;
                run = current;
            }
            RunStatus::Queued => {
                if let Some((key, _)) = self.store.queued()?.into_iter().find(|(_, q)| *q == id)
                    && self.store.dequeue(&key)?
                {
                    self.count_queued(&run.task, -1)?;
                }
                run.status = RunStatus::Cancelled;
                run.cancel_requested_by = Some(user.name.clone());
                run.finished_at = Some(now);
                self.store.put_run(id, &run, Some(now))?;
            }
            _ => {
                run.status = RunStatus::Cancelled;
                run.cancel_requested_by = Some(user.name.clone());
                run.finished_at = Some(now);
                self.store.put_run(id, &run, Some(now))?;
            }
        }
        self.store.flush()?;
        tracing::info!(run = id, by = %user.name, "Run cancel requested.");
        Ok(run)
    }

    /// Deletes a finished or cancelled run and its messages.
    pub fn delete(&self, user: &User, id: RunId) -> Result<()> {
        let run = self.get_run(id)?;
        Self::check_control(user, &run, "delete")?;
        if !run.status.is_finished() {
            return Err(Error::Conflict(format!(
                "run {id} is {}; only finished or cancelled runs can be deleted. Cancel it first",
                run.status
            )));
        }
        self.store.delete_run(id, run.finished_at)?;
        self.store.flush()?;
        Ok(())
    }

    /// A page of a run's messages.
    pub fn messages(
        &self,
        user: &User,
        id: RunId,
        status: Option<&str>,
        after: Option<u64>,
        limit: usize,
    ) -> Result<(Vec<TaskMessage>, Option<u64>)> {
        self.run(user, id)?;
        Ok(self.store.messages(id, status, after, limit)?)
    }

    // ----- imports held or planned -----

    fn held_plan(&self, user: &User, id: RunId) -> Result<(Run, imports::ImportPlan)> {
        let run = self.run(user, id)?;
        let plan = self.store.plan::<imports::ImportPlan>(id)?.ok_or_else(|| {
            Error::Conflict(format!(
                "run {id} has no import plan to act on (it is {}, and not a test import)",
                run.status
            ))
        })?;
        Ok((run, plan))
    }

    /// A run's import plan: what each row does (the preview).
    pub fn import_plan(&self, user: &User, id: RunId) -> Result<imports::ImportPlan> {
        Ok(self.held_plan(user, id)?.1)
    }

    fn audit(&self, run: &mut Run, user: &User, action: &str, comment: Option<String>) {
        run.audit.push(runs::Audit { user: user.name.clone(), at: self.now(), action: action.into(), comment });
    }

    /// Applies a plan and finishes its run.
    fn apply_plan(&self, mut run: Run, plan: &imports::ImportPlan, user: &User) -> Result<Run> {
        let target = self
            .get_task(&run.task)?
            .import
            .ok_or_else(|| Error::Conflict(format!("task `{}` is no longer an import", run.task)))?;
        let sources = self.sources.read().unwrap_or_else(|e| e.into_inner());
        let written =
            imports::commit(&self.host, plan, &format!("run {}", run.id), &target, &sources).map_err(|e| match e {
                imports::Error::Changed(_) => Error::Conflict(e.to_string()),
                other => Error::Invalid(other.to_string()),
            })?;
        let now = self.now();
        run.summary.insert("written".into(), written);
        run.status = RunStatus::Succeeded;
        run.finished_at = Some(now);
        run.approval_code_hash = None;
        self.audit(&mut run, user, "committed", None);
        self.store.remove_plan(run.id)?;
        self.store.put_run(run.id, &run, Some(now))?;
        self.store.flush()?;
        tracing::info!(run = run.id, by = %user.name, written, "Import committed.");
        Ok(run)
    }

    /// Commits a test import's plan exactly as planned; refused if the file,
    /// the rule or the plugin changed since. A plan the guard would hold is
    /// held now instead, for confirmation or authorization.
    pub fn import_commit(&self, user: &User, id: RunId) -> Result<Run> {
        let _decide = lock(&self.import_lock);
        let (mut run, plan) = self.held_plan(user, id)?;
        Self::check_control(user, &run, "commit")?;
        if !run.dry_run || run.status != RunStatus::Succeeded {
            return Err(Error::Conflict(format!(
                "run {id} is {}; `import confirm` or `import approve` act on held imports",
                run.status
            )));
        }
        run.dry_run = false;
        match plan.hold {
            imports::Hold::None => self.apply_plan(run, &plan, user),
            hold => {
                run.status = if hold == imports::Hold::Confirm {
                    RunStatus::AwaitingConfirmation
                } else {
                    RunStatus::AwaitingAuthorization
                };
                run.finished_at = None;
                self.audit(&mut run, user, "commit-requested", None);
                self.store.put_run(id, &run, None)?;
                self.store.flush()?;
                Err(Error::Conflict(format!("{}; run {id} now waits for that", plan.summary())))
            }
        }
    }

    /// Confirms an import held for confirmation, and commits it.
    pub fn import_confirm(&self, user: &User, id: RunId, comment: Option<String>) -> Result<Run> {
        let _decide = lock(&self.import_lock);
        let (mut run, plan) = self.held_plan(user, id)?;
        Self::check_control(user, &run, "confirm")?;
        if run.status != RunStatus::AwaitingConfirmation {
            return Err(Error::Conflict(format!("run {id} is {}, not awaiting confirmation", run.status)));
        }
        self.audit(&mut run, user, "confirmed", comment);
        self.apply_plan(run, &plan, user)
    }

    /// Files an authorization request, with a comment saying why.
    pub fn import_request(&self, user: &User, id: RunId, comment: &str) -> Result<Run> {
        let _decide = lock(&self.import_lock);
        let (mut run, _) = self.held_plan(user, id)?;
        Self::check_control(user, &run, "request authorization for")?;
        if run.status != RunStatus::AwaitingAuthorization {
            return Err(Error::Conflict(format!("run {id} is {}, not awaiting authorization", run.status)));
        }
        if comment.trim().is_empty() {
            return Err(Error::Invalid(
                "an authorization request needs a comment saying why these changes are wanted".into(),
            ));
        }
        self.audit(&mut run, user, "requested-authorization", Some(comment.trim().into()));
        self.store.put_run(id, &run, None)?;
        self.store.flush()?;
        Ok(run)
    }

    /// Issues a one-time approval code for a held import (authorize
    /// permission only). Only its hash is kept; a new code replaces the old.
    pub fn import_code(&self, user: &User, id: RunId) -> Result<String> {
        let _decide = lock(&self.import_lock);
        if !user.has(crate::users::Permission::Authorize) {
            return Err(Error::Forbidden("issuing approval codes needs the authorize permission".into()));
        }
        let (mut run, _) = self.held_plan(user, id)?;
        if run.status != RunStatus::AwaitingAuthorization {
            return Err(Error::Conflict(format!("run {id} is {}, not awaiting authorization", run.status)));
        }
        let mut bytes = [0u8; 5];
        getrandom::fill(&mut bytes).map_err(|e| Error::Invalid(format!("no randomness for a code: {e}")))?;
        let code = hex::encode(bytes).to_uppercase();
        run.approval_code_hash = Some(crate::users::token_hash(&code));
        self.audit(&mut run, user, "issued-approval-code", None);
        self.store.put_run(id, &run, None)?;
        self.store.flush()?;
        Ok(code)
    }

    /// Approves a held import, after its authorization request: by a user
    /// with the authorize permission, or by anyone with the one-time code.
    pub fn import_approve(&self, user: &User, id: RunId, code: Option<&str>) -> Result<Run> {
        let _decide = lock(&self.import_lock);
        let (mut run, plan) = self.held_plan(user, id)?;
        if run.status != RunStatus::AwaitingAuthorization {
            return Err(Error::Conflict(format!("run {id} is {}, not awaiting authorization", run.status)));
        }
        if !run.audit.iter().any(|a| a.action == "requested-authorization") {
            return Err(Error::Conflict(format!(
                "run {id} has no authorization request yet; file one with a comment first (`schoolbell import request {id} --comment ...`)"
            )));
        }
        let by_code = match code {
            Some(c) => {
                if run.approval_code_hash.as_deref() != Some(crate::users::token_hash(c.trim()).as_str()) {
                    return Err(Error::Forbidden(
                        "that approval code is not valid for this run (codes work once)".into(),
                    ));
                }
                true
            }
            None if user.has(crate::users::Permission::Authorize) => false,
            None => {
                return Err(Error::Forbidden(
                    "approving needs the authorize permission, or a one-time approval code from someone who has it"
                        .into(),
                ));
            }
        };
        self.audit(&mut run, user, if by_code { "approved-with-code" } else { "approved" }, None);
        self.apply_plan(run, &plan, user)
    }

    // ----- the engine -----

    /// After a restart: runs left running are marked interrupted. Queued
    /// runs stay queued and run.
    pub fn recover(&self) -> Result<usize> {
        let now = self.now();
        let mut n = 0;
        for mut run in self.store.all_runs::<Run>()? {
            if run.status == RunStatus::Running {
                run.status = RunStatus::Interrupted;
                run.finished_at = Some(now);
                run.error = Some("the host stopped while this run was running; run the task again to redo it".into());
                self.store.put_run(run.id, &run, Some(now))?;
                n += 1;
            }
        }
        self.store.flush()?;
        Ok(n)
    }

    /// Runs queued per task, counted from the durable queue once.
    fn queued_counts(&self) -> Result<std::sync::MutexGuard<'_, Option<HashMap<String, usize>>>> {
        let mut counts = lock(&self.queued_per_task);
        if counts.is_none() {
            let mut map = HashMap::new();
            for (_, id) in self.store.queued()? {
                if let Some(r) = self.store.run::<Run>(id)? {
                    *map.entry(r.task).or_insert(0) += 1;
                }
            }
            *counts = Some(map);
        }
        Ok(counts)
    }

    fn count_queued(&self, task: &str, delta: isize) -> Result<()> {
        let mut counts = self.queued_counts()?;
        if let Some(map) = counts.as_mut() {
            let n = map.entry(task.to_string()).or_insert(0);
            *n = n.saturating_add_signed(delta);
        }
        Ok(())
    }

    fn task_is_busy(&self, task: &str) -> Result<(bool, bool)> {
        let running = lock(&self.live).values().any(|l| l.task == task);
        let queued = self.queued_counts()?.as_ref().and_then(|m| m.get(task)).copied().unwrap_or(0) > 0;
        Ok((running, queued))
    }

    /// Runs queued or running now.
    pub fn pending(&self) -> usize {
        self.store.queue_len() + self.running()
    }

    /// Fires every task due by now into the queue. Returns how many fired.
    pub fn tick(&self) -> Result<usize> {
        let _guard = lock(&self.fire_lock);
        let now = self.now();
        let grace = chrono::Duration::seconds(self.config.misfire_grace_secs as i64);
        let mut fired = 0;
        // Each round moves every due entry it reads past `now` or out of
        // the index; the bound only guards against a bug turning into a spin.
        for _round in 0..100_000 {
            let due = self.store.due_tasks(now, 1000)?;
            if due.is_empty() {
                break;
            }
            for (due_at, name) in due {
                let Some(mut task) = self.store.tasks::<Task>().get(name.as_bytes())? else {
                    self.store.remove_task(&name, Some(due_at))?;
                    continue;
                };
                // The index keeps milliseconds; compare at that precision.
                let indexed = task.next_fire.map(|t| t.timestamp_millis());
                if !task.enabled || indexed != Some(due_at.timestamp_millis()) {
                    // A stale index entry: put the task back where it belongs.
                    let due = if task.enabled { task.next_fire } else { None };
                    self.store.put_task(&name, &task, Some(due_at), due.filter(|d| *d != due_at))?;
                    continue;
                }
                let missed = now - due_at > grace;
                task.next_fire = task.timing().next_after(if missed { now } else { due_at });
                let (running, queued) = self.task_is_busy(&name)?;
                let mut enqueue = !(missed && task.misfire == Misfire::Skip);
                if enqueue {
                    enqueue = match task.overlap {
                        Overlap::Skip => !running && !queued,
                        Overlap::QueueOne => !queued,
                        Overlap::CancelRunning => !queued,
                    };
                    if !enqueue {
                        tracing::info!(task = %name, fire = %due_at, "Fire skipped: the previous run is still going.");
                    }
                }
                if enqueue && task.overlap == Overlap::CancelRunning && running {
                    for l in lock(&self.live).values().filter(|l| l.task == name) {
                        l.control.cancel(Duration::from_secs(self.host.config().cancel_grace_secs));
                    }
                }
                let run = if enqueue {
                    Some(self.new_run(&task, &task.owner.clone(), Trigger::Schedule, Some(due_at))?)
                } else {
                    None
                };
                self.store.fire(
                    &name,
                    &task,
                    Some(due_at),
                    task.next_fire,
                    run.as_ref().map(|r| (task.priority(), due_at, r.id, r)),
                )?;
                if enqueue {
                    self.count_queued(&name, 1)?;
                    fired += 1;
                }
            }
        }
        // No flush here: a fire and its queue entry land together or not
        // at all, and a fire lost to a crash fires again after the restart.
        // `dispatch` flushes before any run starts, so nothing runs whose
        // fire could still be undone.
        Ok(fired)
    }

    /// Starts queued runs while workers are free. Needs a tokio runtime.
    pub fn dispatch(self: &Arc<Self>) -> Result<usize> {
        let mut starting = Vec::new();
        while lock(&self.live).len() < self.config.workers.max(1) && !self.shutting_down.load(Ordering::SeqCst) {
            let Some((key, id)) = self.store.first_queued()? else { break };
            let Some(mut run) = self.store.run::<Run>(id)? else {
                self.store.dequeue(&key)?;
                continue;
            };
            run.status = RunStatus::Running;
            run.started_at = Some(self.now());
            let control = RunControl::new();
            {
                let mut live = lock(&self.live);
                if !self.store.start_run(&key, id, &run)? {
                    continue;
                }
                live.insert(id, Live { task: run.task.clone(), control: control.clone() });
            }
            self.count_queued(&run.task, -1)?;
            starting.push((run, control));
        }
        if starting.is_empty() {
            return Ok(0);
        }
        // Durable before any side effect: a run that starts is recorded as
        // started, so a crash cannot make it run twice.
        self.store.flush()?;
        let started = starting.len();
        for (run, control) in starting {
            let id = run.id;
            let this = self.clone();
            tokio::spawn(async move {
                let progress = {
                    let this = this.clone();
                    let control = control.clone();
                    tokio::spawn(async move {
                        loop {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            this.save_progress(id, &control);
                        }
                    })
                };
                let worker = this.clone();
                let outcome = tokio::task::spawn_blocking(move || worker.execute(run, control)).await;
                progress.abort();
                if let Err(e) = outcome {
                    tracing::error!(run = id, "Run worker panicked: {e}");
                }
                this.wake.notify_one();
            });
        }
        Ok(started)
    }

    fn save_progress(&self, id: RunId, control: &RunControl) {
        let live = lock(&self.live);
        if !live.contains_key(&id) {
            return;
        }
        if let Ok(Some(mut run)) = self.store.run::<Run>(id) {
            let (done, total) = control.progress();
            if (run.progress_done, run.progress_total) != (done, total) {
                run.progress_done = done;
                run.progress_total = total;
                let _ = self.store.put_run(id, &run, None);
            }
        }
    }

    /// Executes one run to its end and records the outcome.
    fn execute(&self, mut run: Run, control: RunControl) {
        let id = run.id;
        tracing::info!(run = id, task = %run.task, "Run started.");
        let mut messages: Vec<TaskMessage> = Vec::new();
        let mut state_writes = Vec::new();
        let mut mail = notify::Planned::default();
        let result: Result<(BTreeMap<String, u64>, RunStatus), String> = (|| {
            let task =
                self.get_task(&run.task).map_err(|e| format!("{e} (it was removed after this run was queued)"))?;
            // A scheduled run's "today" is its fire's date in the task's zone,
            // so a run that starts late still sees the day it was for.
            let today = run.fire_time.unwrap_or_else(|| self.now()).with_timezone(&task.tz()).date_naive();
            let request = RunRequest {
                task: task.name.clone(),
                params: task.params.clone(),
                control: control.clone(),
                today: Some(crate::records::Date::from_chrono(today)),
            };
            match task.kind {
                TaskKind::Import => {
                    let target = task.import.as_ref().ok_or("the task has no import source")?;
                    let settle = Duration::from_millis(self.config.pickup_settle_ms);
                    let sources = self.sources.read().unwrap_or_else(|e| e.into_inner());
                    let (files, notes) =
                        imports::pickup(&self.store, target, settle, &sources).map_err(|e| e.to_string())?;
                    for note in notes {
                        messages.push(TaskMessage {
                            seq: 0,
                            row: None,
                            status: "waiting".into(),
                            field: None,
                            message: note,
                        });
                    }
                    let Some(file) = files.first() else {
                        return Ok((BTreeMap::from([("files".into(), 0)]), RunStatus::Succeeded));
                    };
                    if files.len() > 1 {
                        messages.push(TaskMessage {
                            seq: 0,
                            row: None,
                            status: "waiting".into(),
                            field: None,
                            message: format!("{} more files wait for the next run", files.len() - 1),
                        });
                    }
                    let plan = imports::prepare(&self.host, &task.plugin, target, file, &request)
                        .map_err(|e| e.to_string())?;
                    if plan.already_imported.is_some() {
                        messages.push(TaskMessage {
                            seq: 0,
                            row: None,
                            status: "already-imported".into(),
                            field: None,
                            message: plan.summary(),
                        });
                    }
                    for row in &plan.rows {
                        for (field, message) in row.messages() {
                            messages.push(TaskMessage {
                                seq: 0,
                                row: Some(row.line),
                                status: row.status().into(),
                                field,
                                message,
                            });
                        }
                    }
                    let mut summary = plan.counts.clone();
                    summary.insert("existing-before".into(), plan.existing);
                    let status = if run.dry_run {
                        self.store.put_plan(id, &plan).map_err(|e| e.to_string())?;
                        RunStatus::Succeeded
                    } else {
                        match plan.hold {
                            imports::Hold::None => {
                                let written =
                                    imports::commit(&self.host, &plan, &format!("run {id}"), target, &sources)
                                        .map_err(|e| e.to_string())?;
                                summary.insert("written".into(), written);
                                RunStatus::Succeeded
                            }
                            hold => {
                                self.store.put_plan(id, &plan).map_err(|e| e.to_string())?;
                                messages.push(TaskMessage {
                                    seq: 0,
                                    row: None,
                                    status: "held".into(),
                                    field: None,
                                    message: plan.summary(),
                                });
                                if hold == imports::Hold::Confirm {
                                    RunStatus::AwaitingConfirmation
                                } else {
                                    RunStatus::AwaitingAuthorization
                                }
                            }
                        }
                    };
                    Ok((summary, status))
                }
                TaskKind::Notifier | TaskKind::Export | TaskKind::Cleanup => {
                    let outcome = self.host.run_notifier(&task.plugin, &request).map_err(|e| e.to_string())?;
                    mail = notify::plan(&self.store, &task.notify, &run, &outcome.notifications, self.now())
                        .map_err(|e| e.to_string())?;
                    for (status, message) in &mail.messages {
                        messages.push(TaskMessage {
                            seq: 0,
                            row: None,
                            status: (*status).into(),
                            field: None,
                            message: message.clone(),
                        });
                    }
                    state_writes = outcome.state_writes;
                    let mut summary = BTreeMap::from([("notifications".into(), outcome.notifications.len() as u64)]);
                    for (status, _) in &mail.messages {
                        *summary.entry((*status).to_string()).or_insert(0) += 1;
                    }
                    summary.insert("emails".into(), mail.outbox.len() as u64);
                    Ok((summary, RunStatus::Succeeded))
                }
            }
        })();
        let now = self.now();
        let (done, total) = control.progress();
        run.progress_done = done;
        run.progress_total = total;
        run.finished_at = Some(now);
        match result {
            Ok((summary, status)) => {
                run.status = status;
                run.summary = summary;
                if !status.is_finished() {
                    run.finished_at = None;
                }
            }
            Err(e) => {
                run.status = if self.shutting_down.load(Ordering::SeqCst) {
                    RunStatus::Interrupted
                } else if control.is_cancelled() {
                    RunStatus::Cancelled
                } else {
                    RunStatus::Failed
                };
                if run.status == RunStatus::Failed {
                    state_writes.clear();
                }
                run.error = Some(e);
            }
        }
        if let Ok(Some(stored)) = self.store.run::<Run>(id) {
            run.cancel_requested_by = stored.cancel_requested_by;
        }
        for (i, m) in messages.iter_mut().enumerate() {
            m.seq = i as u64;
        }
        run.message_count = messages.len() as u64;
        let mut live = lock(&self.live);
        let saved = (|| -> Result<()> {
            let with_status: Vec<(&str, &TaskMessage)> = messages.iter().map(|m| (m.status.as_str(), m)).collect();
            self.store.add_messages(id, 0, &with_status)?;
            // A run that did not succeed leaves no watermark, no ledger
            // change and no notification: the next run starts from the same place.
            let succeeded = run.status == RunStatus::Succeeded;
            let (state, ledger, mut outbox) = if succeeded {
                (&state_writes[..], std::mem::take(&mut mail.ledger), std::mem::take(&mut mail.outbox))
            } else {
                (&[][..], Vec::new(), Vec::new())
            };
            if run.status.is_finished() {
                outbox.extend(notify::job_completion(&self.store, &run, now)?);
                let outbox = outbox
                    .into_iter()
                    .map(|e| Ok((self.store.next_sequence("outbox")?, e.next_attempt, e)))
                    .collect::<Result<Vec<_>>>()?;
                self.store.finish_run(id, &run, now, &run.task, &Finish { state, ledger: &ledger, outbox: &outbox })?;
            } else {
                // Held for a person: not finished, so not in retention yet.
                self.store.put_run(id, &run, None)?;
            }
            self.store.flush()?;
            Ok(())
        })();
        live.remove(&id);
        match saved {
            Ok(()) => tracing::info!(run = id, status = %run.status, "Run finished."),
            Err(e) => tracing::error!(run = id, "Cannot record the run's outcome: {e}"),
        }
    }

    /// Removes runs past retention. Returns how many.
    pub fn sweep(&self) -> Result<usize> {
        let now = self.now();
        let finished_cutoff = now - chrono::Duration::days(self.config.retention_days as i64);
        let cancelled_cutoff = now - chrono::Duration::minutes(self.config.cancelled_retention_minutes as i64);
        let mut removed = 0;
        for id in self.store.finished_before(cancelled_cutoff)? {
            let Some(run) = self.store.run::<Run>(id)? else { continue };
            let finished = run.finished_at.unwrap_or(now);
            let expired = match run.status {
                RunStatus::Cancelled => finished <= cancelled_cutoff,
                _ => finished <= finished_cutoff,
            };
            if expired && !run.keep {
                self.store.delete_run(id, run.finished_at)?;
                removed += 1;
            }
        }
        if removed > 0 {
            self.store.flush()?;
            tracing::info!(removed, "Retention removed old runs.");
        }
        Ok(removed)
    }

    /// Fires, dispatches and sweeps until `shutdown` turns true; sleeps
    /// until the next fire in between (no busy polling).
    pub async fn serve(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut last_sweep = None;
        loop {
            if *shutdown.borrow() {
                break;
            }
            let now = self.now();
            // Store work blocks; keep it off the threads that serve the API.
            if let Err(e) = tokio::task::block_in_place(|| self.tick()) {
                tracing::error!("Scheduler tick failed: {e}");
            }
            if let Err(e) = self.dispatch() {
                tracing::error!("Dispatch failed: {e}");
            }
            if last_sweep.is_none_or(|t: DateTime<Utc>| now - t >= chrono::Duration::minutes(1)) {
                if let Err(e) = tokio::task::block_in_place(|| self.sweep()) {
                    tracing::error!("Retention sweep failed: {e}");
                }
                last_sweep = Some(now);
            }
            let next = self.store.next_due().ok().flatten();
            let sleep = next
                .map(|t| (t - self.now()).to_std().unwrap_or(Duration::ZERO))
                .unwrap_or(Duration::from_secs(60))
                .min(Duration::from_secs(60));
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                _ = self.wake.notified() => {}
                _ = shutdown.changed() => {}
            }
        }
        self.stop().await;
    }

    /// Stops taking runs, asks the running ones to stop, and waits for them
    /// (up to the cancel grace period plus a little). Runs that do not stop
    /// stay recorded as running and are marked interrupted at the next start.
    pub async fn stop(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        let grace = Duration::from_secs(self.host.config().cancel_grace_secs);
        for l in lock(&self.live).values() {
            l.control.cancel(grace);
        }
        let deadline = tokio::time::Instant::now() + grace + Duration::from_secs(2);
        while !lock(&self.live).is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.store.flush();
    }

    /// Wakes the loop (after an outside change).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// How many runs are executing now.
    pub fn running(&self) -> usize {
        lock(&self.live).len()
    }
}

/// Admin rules and the outbox, with the same permission checks as the rest.
impl Scheduler {
    /// The loaded rules.
    pub fn rules(&self) -> Vec<crate::rules::RuleInfo> {
        self.host.rules().list()
    }

    /// A rule and its source.
    pub fn rule(&self, name: &str) -> Result<(crate::rules::RuleInfo, String)> {
        self.host.rules().source(name).map_err(|e| match e {
            crate::rules::Error::Unknown { .. } => Error::NotFound(e.to_string()),
            other => Error::Invalid(other.to_string()),
        })
    }

    /// Saves a rule (the account owner only). Runs started from now on use
    /// it; a broken rule is refused with its line and nothing is written.
    pub fn save_rule(&self, user: &User, name: &str, source: &str) -> Result<crate::rules::RuleInfo> {
        if user.role != Role::Owner {
            return Err(Error::Forbidden("only the account owner may save rules".into()));
        }
        let rule = self.host.rules().save(name, &format!("{name}.rhai"), source).map_err(|e| match e {
            crate::rules::Error::Save { .. } => Error::Failed(e.to_string()),
            other => Error::Invalid(other.to_string()),
        })?;
        tracing::info!(rule = %rule.name, by = %user.name, hash = %rule.hash, "Rule saved.");
        Ok(rule.info())
    }

    /// The newest `limit` outbox entries `user` may see (the owner: all;
    /// staff: those of their own tasks), with `status` when given.
    pub fn outbox(
        &self,
        user: &User,
        status: Option<notify::Delivery>,
        limit: usize,
    ) -> Result<Vec<(u64, notify::OutboxEntry)>> {
        let own: Option<std::collections::HashSet<String>> = match user.role {
            Role::Owner => None,
            Role::Staff => Some(self.tasks(user)?.into_iter().map(|t| t.name).collect()),
        };
        Ok(notify::outbox_newest(&self.store, limit, |e| {
            status.is_none_or(|s| e.status == s) && own.as_ref().is_none_or(|o| o.contains(&e.task))
        })?)
    }
}
