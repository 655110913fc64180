//! Timed tasks: add, list, show, enable and disable, remove, run now, test
//! import and test connection. Staff manage their own tasks; the account
//! owner manages every task.

use super::{App, Error, Result, lock, owner_only};
use crate::imports;
use crate::runs::{Run, Trigger};
use crate::schedule::Schedule;
use crate::tasks::{Task, TaskKind, TaskSpec};
use crate::users::{Permission, Role, User};

/// How a run is submitted to the batch queue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Submit {
    /// When it is to start; none (or a time past): at once.
    pub at: Option<chrono::DateTime<chrono::Utc>>,
    /// Ahead of normal-priority runs (needs the set-priority permission).
    pub high_priority: bool,
    /// Kept until deleted by hand, whatever the retention.
    pub keep: bool,
}

/// The tasks service.
pub struct Tasks<'a> {
    pub(super) app: &'a App,
}

/// What happens to a removed task's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum History {
    /// Its watermarks and dedupe ledger go with it, so a new task of the
    /// same name starts afresh.
    #[default]
    Forget,
    /// They stay, for a task of the same name to carry on from.
    Keep,
}

impl Tasks<'_> {
    pub(super) fn get(&self, name: &str) -> Result<Task> {
        self.app
            .store
            .task(name)?
            .ok_or_else(|| Error::NotFound(format!("no task named `{name}`; `schoolbell task list` shows the tasks")))
    }

    fn check(user: &User, task: &Task) -> Result<()> {
        if user.role == Role::Owner || task.owner == user.name {
            Ok(())
        } else {
            Err(Error::Forbidden(format!(
                "task `{}` belongs to {}; staff may manage only their own tasks",
                task.name, task.owner
            )))
        }
    }

    /// Saves a new task owned by `user`. An import task's collection and
    /// indexes are defined now, so its runs (test imports included) only
    /// read them.
    pub fn add(&self, user: &User, spec: TaskSpec) -> Result<Task> {
        let app = self.app;
        let _guard = lock(&app.engine.fire_lock);
        if app.store.task(&spec.name)?.is_some() {
            return Err(Error::Conflict(format!(
                "a task named `{}` exists; remove it first or pick another name",
                spec.name
            )));
        }
        let task = self.build(user, spec)?;
        // Staff are bounded; the account owner sets up the district's many.
        let max = app.config.tasks.max_per_user;
        let bounded = user.role != Role::Owner;
        if bounded && app.store.all_tasks()?.iter().filter(|t| t.owner == task.owner).count() >= max {
            return Err(Error::Invalid(format!(
                "{} has {max} tasks, the most one user may have ([tasks] max_per_user); remove one first",
                task.owner
            )));
        }
        let due = if task.enabled { task.next_fire } else { None };
        app.store.put_task(&task, None, due)?;
        app.store.flush()?;
        app.engine.schedule_changed();
        app.audit(&user.name, "task.add", &task.name, Some(format!("owner {}", task.owner)))?;
        tracing::info!(task = %task.name, owner = %task.owner, next = ?task.next_fire, by = %user.name, "Task added.");
        Ok(task)
    }

    /// Replaces a task with a new version of itself (same name): its runs,
    /// state and dedupe ledger stay, its next fire is worked out anew.
    pub fn replace(&self, user: &User, mut spec: TaskSpec) -> Result<Task> {
        let app = self.app;
        let _guard = lock(&app.engine.fire_lock);
        let old = self.get(&spec.name)?;
        Self::check(user, &old)?;
        spec.owner.get_or_insert_with(|| old.owner.clone());
        let task = self.build(user, spec)?;
        let old_due = if old.enabled { old.next_fire } else { None };
        let due = if task.enabled { task.next_fire } else { None };
        app.store.put_task(&task, old_due, due)?;
        app.store.flush()?;
        app.engine.schedule_changed();
        app.audit(&user.name, "task.replace", &task.name, Some(format!("owner {}", task.owner)))?;
        tracing::info!(task = %task.name, next = ?task.next_fire, by = %user.name, "Task replaced.");
        Ok(task)
    }

    /// A task from its spec, checked: who may own it, who may set up an
    /// import, where its mail may go, and that its source exists.
    fn build(&self, user: &User, mut spec: TaskSpec) -> Result<Task> {
        let app = self.app;
        if spec.high_priority && !user.has(Permission::SetPriority) {
            return Err(Error::Forbidden(format!(
                "task `{}`: {} may not make a high-priority task: that needs the set-priority permission",
                spec.name, user.name
            )));
        }

        let owner = match spec.owner.as_deref() {
            None => user.name.clone(),
            Some(other) if other == user.name => other.to_string(),
            Some(other) => {
                owner_only(user, "add a task for someone else")?;
                if app.store.user(other)?.is_none() && other != "admin" {
                    return Err(Error::Invalid(format!(
                        "task `{}`: no user named `{other}` to own it; `schoolbell user list` shows them",
                        spec.name
                    )));
                }
                other.to_string()
            }
        };
        if spec.import.is_some() {
            // Where the rows go, how they match and when a mass change is
            // held decide what happens to every student's record: the
            // account owner sets them, staff run and test what was set up.
            owner_only(
                user,
                "set up an import (its source, collection, key, missing-record policy and guard); staff run and test the imports the owner set up for them with --owner",
            )?;
        }
        if user.role != Role::Owner {
            self.staff_params(&mut spec)?;
        }
        let domains = &app.config.email.allowed_domains;
        if let Some(raw) =
            spec.notify.group.iter().find(|m| m.contains('@') && !crate::notify::address_allowed(domains, m))
        {
            return Err(Error::Invalid(format!("task `{}`, notify: {}", spec.name, crate::notify::not_allowed(raw))));
        }
        let task = spec
            .build(&owner, app.zone(), &app.host, app.host.rules(), app.now())
            .map_err(|e| Error::Invalid(e.to_string()))?;
        if let Some(target) = &task.import {
            if app.store.source(&target.source)?.is_none() {
                return Err(Error::Invalid(format!(
                    "task `{}`: no source named `{}`; define it with `schoolbell source add` (`schoolbell source list` shows them)",
                    task.name, target.source
                )));
            }
            imports::prepare_collection(&app.host, target)
                .map_err(|e| Error::Invalid(format!("task `{}`: {e}", task.name)))?;
        }
        self.check_interval(&task)?;
        Ok(task)
    }

    /// A plugin's grants serve the tasks the account owner sets up; staff
    /// may use only a plugin the owner offered them (`plugin grant NAME
    /// staff:...`), with only the parameter values the owner allowed.
    fn staff_params(&self, spec: &mut TaskSpec) -> Result<()> {
        let entry = self.app.host.entry(&spec.plugin).map_err(|e| Error::Invalid(e.to_string()))?;
        let Some(allowed) = crate::plugins::staff_use(&entry.granted) else {
            return Err(Error::Forbidden(format!(
                "task `{}`: plugin {} is not offered to staff; the account owner offers it with `schoolbell plugin grant {} staff` (naming the parameter values staff may use)",
                spec.name, spec.plugin, spec.plugin
            )));
        };
        let given = spec.params.iter().map(|(k, v)| {
            let text = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (k.as_str(), text)
        });
        let fixed = crate::plugins::staff_params(&spec.plugin, allowed, given)
            .map_err(|e| Error::Forbidden(format!("task `{}`: {e}", spec.name)))?;
        for (k, v) in fixed {
            spec.params.entry(k.clone()).or_insert_with(|| serde_json::Value::String(v.clone()));
        }
        Ok(())
    }

    /// Refuses a schedule that fires more often than `[tasks]
    /// min_interval_minutes`, judged by its next few fires.
    fn check_interval(&self, task: &Task) -> Result<()> {
        let least = chrono::Duration::minutes(self.app.config.tasks.min_interval_minutes as i64);
        let timing = task.timing();
        let mut at = self.app.now().max(task.start);
        let mut previous: Option<chrono::DateTime<chrono::Utc>> = None;
        for _ in 0..5 {
            let Some(next) = timing.next_after(at) else { break };
            if let Some(previous) = previous
                && next - previous < least
            {
                return Err(Error::Invalid(format!(
                    "task `{}`: it would fire every {} s, more often than [tasks] min_interval_minutes ({}) allows",
                    task.name,
                    (next - previous).num_seconds(),
                    self.app.config.tasks.min_interval_minutes
                )));
            }
            previous = Some(next);
            at = next;
        }
        Ok(())
    }

    /// The tasks `user` may see, by name.
    pub fn list(&self, user: &User) -> Result<Vec<Task>> {
        let all = self.app.store.all_tasks()?;
        Ok(all.into_iter().filter(|t| user.role == Role::Owner || t.owner == user.name).collect())
    }

    /// One task.
    pub fn show(&self, user: &User, name: &str) -> Result<Task> {
        let task = self.get(name)?;
        Self::check(user, &task)?;
        Ok(task)
    }

    /// Enables or disables a task. Enabling computes the next fire from now.
    pub fn set_enabled(&self, user: &User, name: &str, enabled: bool) -> Result<Task> {
        let app = self.app;
        let _guard = lock(&app.engine.fire_lock);
        let mut task = self.get(name)?;
        Self::check(user, &task)?;
        let old_due = if task.enabled { task.next_fire } else { None };
        task.enabled = enabled;
        if enabled {
            task.next_fire = match task.schedule {
                Schedule::Once(_) => task.next_fire,
                _ => task.timing().next_after(app.now().max(task.start - chrono::Duration::seconds(1))),
            };
        }
        let new_due = if enabled { task.next_fire } else { None };
        app.store.put_task(&task, old_due, new_due)?;
        app.store.flush()?;
        app.engine.schedule_changed();
        app.audit(&user.name, if enabled { "task.enable" } else { "task.disable" }, name, None)?;
        Ok(task)
    }

    /// Removes a task. Its runs stay (they are history); its state and
    /// dedupe ledger go unless `history` keeps them.
    pub fn remove(&self, user: &User, name: &str, history: History) -> Result<Task> {
        let app = self.app;
        let _guard = lock(&app.engine.fire_lock);
        let task = self.get(name)?;
        Self::check(user, &task)?;
        app.store.remove_task(name, if task.enabled { task.next_fire } else { None })?;
        if history == History::Forget {
            app.store.forget_task(name)?;
        }
        app.store.flush()?;
        app.audit(&user.name, "task.remove", name, None)?;
        tracing::info!(task = %name, by = %user.name, "Task removed.");
        Ok(task)
    }

    /// Queues a run of the task now, owned by `user`.
    pub fn run_now(&self, user: &User, name: &str) -> Result<Run> {
        self.queue_now(user, name, false, &Submit::default())
    }

    /// Submits a run to the batch queue: now or at a time, at high priority
    /// (with the set-priority permission), kept until deleted by hand.
    pub fn submit(&self, user: &User, name: &str, submit: &Submit) -> Result<Run> {
        self.queue_now(user, name, false, submit)
    }

    /// Queues a test import ("dry run") of an import task: it plans and
    /// reports, and changes nothing until it is committed.
    pub fn test_import(&self, user: &User, name: &str) -> Result<Run> {
        self.queue_now(user, name, true, &Submit::default())
    }

    fn queue_now(&self, user: &User, name: &str, dry_run: bool, submit: &Submit) -> Result<Run> {
        let app = self.app;
        let task = self.get(name)?;
        Self::check(user, &task)?;
        if dry_run && task.kind != TaskKind::Import {
            return Err(Error::Invalid(format!("task `{name}` is not an import; only imports have a test run")));
        }
        if app.engine.is_shutting_down() {
            return Err(Error::Conflict("the host is shutting down; try again once it is back".into()));
        }
        if submit.high_priority && !user.has(Permission::SetPriority) {
            return Err(Error::Forbidden(format!(
                "{} may not submit at high priority: that needs the set-priority permission",
                user.name
            )));
        }
        let now = app.now();
        let start = submit.at.filter(|at| *at > now);
        if start.is_some_and(|at| at - now > chrono::Duration::days(366)) {
            return Err(Error::Invalid("a run can be submitted at most a year ahead".into()));
        }
        let mut run = app.new_run(&task, &user.name, Trigger::User, start)?;
        run.dry_run = dry_run;
        run.keep |= submit.keep;
        let priority = if submit.high_priority { 0 } else { task.priority() };
        app.enqueue(&task, &run, priority, start)?;
        Ok(run)
    }

    /// "Test connection" for an import task's source.
    pub fn test_connection(&self, user: &User, name: &str) -> Result<String> {
        let task = self.show(user, name)?;
        let target = task.import.ok_or_else(|| Error::Invalid(format!("task `{name}` is not an import")))?;
        imports::test_connection(&*self.app.store, &target, self.app.access())
            .map_err(|e| Error::Invalid(e.to_string()))
    }
}

impl App {
    /// A queued run of `task` with a fresh id.
    pub(super) fn new_run(
        &self,
        task: &Task,
        owner: &str,
        trigger: Trigger,
        fire_time: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<Run> {
        Ok(self.run_of(self.store.new_run_id()?, task, owner, trigger, fire_time))
    }

    /// A queued run of `task` with the id `id`, taken from the store.
    pub(super) fn run_of(
        &self,
        id: crate::store::RunId,
        task: &Task,
        owner: &str,
        trigger: Trigger,
        fire_time: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Run {
        Run::queued(id, &task.name, &task.plugin, owner, trigger, fire_time, self.now(), task.keep)
    }

    /// Puts a new run of `task` on the batch queue, to start at `start` (or
    /// now), durably, and wakes the dispatcher.
    pub(super) fn enqueue(
        &self,
        task: &Task,
        run: &Run,
        priority: u8,
        start: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<()> {
        self.store.enqueue(priority, start.unwrap_or(run.queued_at), run)?;
        if let Some(at) = start {
            self.engine.note_start(at);
        }
        self.run_changed();
        self.engine.count_queued(&*self.store, &task.name, 1)?;
        self.store.flush()?;
        self.engine.wake.notify_one();
        Ok(())
    }
}
