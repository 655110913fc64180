//! The one path every job takes. An import or a notifier run, whether a
//! schedule, run-now, `import file`, `notify run` or the demo starts it,
//! executes here and records its run, its messages, its state, its ledger
//! and its outbox here, in one place.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::review::FILE_TASK_PREFIX;
use super::{App, Error, Result, engine::Live, lock, owner_only};
use crate::imports::{self, Hold, ImportPlan, ImportTarget};
use crate::notify;
use crate::plugins::{NotifierOutcome, RunControl, RunRequest};
use crate::records::Record;
use crate::runs::{Run, RunStatus, TaskMessage, Trigger};
use crate::store::Finish;
use crate::tasks::{Task, TaskKind};
use crate::users::User;

/// A file given by hand, mapped through an import mapping into a
/// collection (`schoolbell import file`).
#[derive(Debug, Clone)]
pub struct FileImport {
    /// The mapping plugin.
    pub plugin: String,
    /// The file; it stays where and as it is.
    pub file: PathBuf,
    /// Where its rows go (`source` is set from `file`).
    pub target: ImportTarget,
    /// The plugin's parameters.
    pub params: Record,
}

/// A notifier run once by hand (`schoolbell notify run`).
#[derive(Debug, Clone)]
pub struct NotifyOnce {
    /// The notifier plugin.
    pub plugin: String,
    /// The name its state and dedupe ledger are kept under.
    pub task: String,
    /// The plugin's parameters.
    pub params: Record,
    /// Show the notifications; send, ledger and remember nothing.
    pub dry_run: bool,
}

/// A finished job: its run, and what it made.
#[derive(Debug)]
pub struct JobReport {
    /// The run as recorded.
    pub run: Run,
    /// An import's plan.
    pub plan: Option<ImportPlan>,
    /// A notifier's notifications and log.
    pub notifications: Option<NotifierOutcome>,
}

/// Why a job failed: its run's error, said once, here.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The task is gone.
    #[error("{0} (it was removed after this run was queued)")]
    TaskRemoved(Error),
    /// An import task without its import settings.
    #[error("the task has no import source")]
    NoSource,
    /// A file given by hand is not there.
    #[error("no file to import at {0}")]
    NoFile(String),
    /// Picking up, mapping, matching or committing failed.
    #[error(transparent)]
    Import(#[from] imports::Error),
    /// The plugin failed or was refused.
    #[error(transparent)]
    Plugin(#[from] crate::plugins::Error),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::store::Error),
}

impl JobError {
    /// Whether the store failed under the job (a database server away for
    /// a moment), rather than the job itself.
    fn is_store(&self) -> bool {
        matches!(
            self,
            JobError::Store(_)
                | JobError::Import(imports::Error::Store(_))
                | JobError::Plugin(crate::plugins::Error::StoreFailed { .. })
        )
    }
}

/// What a job made, besides its run's counts.
#[derive(Default)]
pub(super) struct Made {
    pub(super) plan: Option<ImportPlan>,
    pub(super) notifications: Option<NotifierOutcome>,
}

fn note(status: &str, message: String) -> TaskMessage {
    TaskMessage { seq: 0, row: None, status: status.into(), field: None, message }
}

/// What a run writes when it ends, beside the run itself.
#[derive(Default)]
struct Effects {
    messages: Vec<TaskMessage>,
    state_writes: Vec<(String, Option<String>)>,
    mail: notify::Planned,
}

/// A run that ended, its outcome written but not yet flushed: nothing
/// reports it finished until [`App::settle`] is told its flush succeeded.
pub(super) struct Ended {
    pub(super) run: Run,
    made: Made,
    kind: &'static str,
    began: std::time::Instant,
    saved: Result<()>,
    /// What the committer writes for a run that leaves nothing else
    /// behind (see [`App::execute`]).
    pub(super) deferred: Option<Deferred>,
}

/// A run's outcome left to the committer: its messages, then the run
/// finished at `at`, with the other runs of its flush.
pub(super) struct Deferred {
    pub(super) at: chrono::DateTime<chrono::Utc>,
    messages: Vec<TaskMessage>,
}

impl Deferred {
    /// The messages, each with the status it is indexed by.
    pub(super) fn messages(&self) -> Vec<(&str, &TaskMessage)> {
        with_status(&self.messages)
    }
}

/// Messages, each with the status the store indexes it by.
fn with_status(messages: &[TaskMessage]) -> Vec<(&str, &TaskMessage)> {
    messages.iter().map(|m| (m.status.as_str(), m)).collect()
}

impl App {
    /// Executes one run of `task` to its end and records the outcome: the
    /// run, its messages, and (when it succeeded and is no dry run) its
    /// state writes, ledger changes and outbox entries, in one transaction;
    /// returns once that is on disk.
    pub(super) fn perform(&self, task: Result<Task>, run: Run, control: RunControl) -> (Run, Made) {
        let ended = self.execute(task, run, control, false);
        // The worker is free: the loop may start the next run while this
        // one's outcome reaches the disk.
        self.engine.wake.notify_one();
        let flushed = self.store.flush();
        self.settle(ended, flushed.as_ref().map(drop))
    }

    /// Executes one run to its end and writes its outcome, without a
    /// flush: the worker is free when this returns, and the run is not
    /// reported finished until [`App::settle`]. With `defer`, a finished
    /// run that leaves nothing behind but its messages is left for the
    /// caller to write ([`Ended::deferred`]), together with others.
    pub(super) fn execute(&self, task: Result<Task>, mut run: Run, control: RunControl, defer: bool) -> Ended {
        let id = run.id;
        // Every line this run logs, from here to its plugin, carries these.
        let _span =
            tracing::info_span!("run", run = id, task = %run.task, plugin = %run.plugin, user = %run.owner).entered();
        let kind = task.as_ref().map_or("removed", |t| t.kind.name());
        let began = std::time::Instant::now();
        tracing::info!("Run started.");
        let mut effects = Effects::default();
        let mut made = Made::default();
        let result = task
            .map_err(JobError::TaskRemoved)
            .and_then(|task| self.job(&task, &run, &control, &mut effects, &mut made));
        let now = self.now();
        let (done, total) = control.progress();
        run.progress_done = done;
        run.progress_total = total;
        run.finished_at = Some(now);
        match result {
            Ok((summary, status)) => {
                run.status = status;
                run.summary = summary;
                // A run that succeeded did all its work, whatever the plugin
                // last reported on the way.
                if status == RunStatus::Succeeded
                    && let Some(total) = run.progress_total
                {
                    run.progress_done = run.progress_done.max(total);
                }
                if !status.is_finished() {
                    run.finished_at = None;
                }
            }
            Err(e) => {
                if let JobError::Plugin(e) = &e {
                    crate::metrics::plugin_failed(e);
                }
                // A shared store that failed under the run interrupts it,
                // as a host that died would: its work is redone.
                run.status = if self.engine.is_shutting_down() || (e.is_store() && self.store.shared()) {
                    RunStatus::Interrupted
                } else if control.is_cancelled() {
                    RunStatus::Cancelled
                } else {
                    RunStatus::Failed
                };
                // What a plugin printed can hold anything it read.
                run.error = Some(self.config.privacy.text(&e.to_string()));
            }
        }
        // Who asked to cancel it is in the record. On a store of this
        // host's own, a cancel reaches a running run through its control
        // too (under the live lock, see `Runs::cancel`): one that was not
        // cancelled has nobody to read.
        if (control.is_cancelled() || self.store.shared())
            && let Ok(Some(stored)) = self.store.run(id)
        {
            run.cancel_requested_by = stored.cancel_requested_by;
        }
        for (i, m) in effects.messages.iter_mut().enumerate() {
            m.seq = i as u64;
        }
        run.message_count = effects.messages.len() as u64;
        let (saved, deferred) = {
            let mut live = lock(&self.engine.live);
            let saved = self.record(&run, &effects, now, defer);
            live.remove(&id);
            match saved {
                Ok(deferred) => (Ok(()), deferred.then_some(Deferred { at: now, messages: effects.messages })),
                Err(e) => (Err(e), None),
            }
        };
        Ended { run, made, kind, began, saved, deferred }
    }

    /// Reports a run [`App::execute`] ended, once the flush that makes its
    /// outcome durable has `flushed`; nothing says it finished before.
    pub(super) fn settle(&self, ended: Ended, flushed: std::result::Result<(), &crate::store::Error>) -> (Run, Made) {
        let Ended { run, made, kind, began, saved, .. } = ended;
        let _span = tracing::info_span!("run", run = run.id, task = %run.task, plugin = %run.plugin, user = %run.owner)
            .entered();
        self.run_changed();
        crate::metrics::run_ended(kind, run.status.as_str(), began.elapsed());
        match (saved, flushed) {
            (Ok(()), Ok(())) => tracing::info!(status = %run.status, "Run finished."),
            (Err(e), _) => tracing::error!("Cannot record the run's outcome: {e}"),
            (Ok(()), Err(e)) => tracing::error!("Cannot record the run's outcome: {e}"),
        }
        if run.status == RunStatus::Interrupted
            && self.store.shared()
            && !self.engine.is_shutting_down()
            && let Err(e) = crate::store::patiently(&*self.store, "the interrupted run's next run", || self.redo(&run))
        {
            tracing::error!("Cannot queue the interrupted run's work again: {e}");
        }
        (run, made)
    }

    /// Writes a run's outcome: its messages, and (finished) the run with
    /// what it leaves behind, in one step; again, patiently, while a
    /// database server is away for a moment. With `defer`, a finished run
    /// that leaves nothing else behind is not written, nor its messages:
    /// true says so, and the committer writes both.
    fn record(&self, run: &Run, effects: &Effects, now: chrono::DateTime<chrono::Utc>, defer: bool) -> Result<bool> {
        let Effects { messages, state_writes, mail } = effects;
        let with_status = with_status(messages);
        // A run that did not succeed, or a dry run, leaves no watermark, no
        // ledger change and no notification: the next run starts from the
        // same place.
        let lasting = run.status == RunStatus::Succeeded && !run.dry_run;
        crate::store::patiently(&*self.store, "a run's outcome", || -> Result<bool> {
            let (state, ledger, mut outbox) = if lasting {
                (&state_writes[..], mail.ledger.clone(), mail.outbox.clone())
            } else {
                (&[][..], Vec::new(), Vec::new())
            };
            if !run.status.is_finished() {
                // Held for a person: not finished, so not in retention yet.
                self.store.add_messages(run.id, 0, &with_status)?;
                self.store.put_run(run, None)?;
                return Ok(false);
            }
            outbox.extend(notify::job_completion(&*self.store, run, now)?);
            let outbox = outbox
                .into_iter()
                .map(|e| Ok((self.store.next_sequence("outbox")?, e.next_attempt, e)))
                .collect::<Result<Vec<_>>>()?;
            if defer && state.is_empty() && ledger.is_empty() && outbox.is_empty() {
                return Ok(true);
            }
            self.store.finish_run(
                run,
                now,
                &Finish { state, ledger: &ledger, outbox: &outbox, messages: &with_status },
            )?;
            notify::tally::queued(outbox.len());
            Ok(false)
        })
    }

    fn job(
        &self,
        task: &Task,
        run: &Run,
        control: &RunControl,
        effects: &mut Effects,
        made: &mut Made,
    ) -> Result<(BTreeMap<String, u64>, RunStatus), JobError> {
        // A scheduled run's "today" is its fire's date in the task's zone,
        // so a run that starts late still sees the day it was for.
        let today = run.fire_time.unwrap_or_else(|| self.now()).with_timezone(&task.tz()).date_naive();
        let request = RunRequest {
            task: task.name.clone(),
            params: task.params.clone(),
            control: control.clone(),
            today: Some(crate::records::Date::from_chrono(today)),
            rules: task.rules.clone(),
        };
        match task.kind {
            TaskKind::Import => self.import_job(task, run, &request, effects, made),
            TaskKind::Notifier | TaskKind::Export | TaskKind::Cleanup => {
                let outcome = self.host.run_notifier(&task.plugin, &request)?;
                // The grants the run had, not read again: a plugin
                // reinstalled meanwhile does not change what this run may do.
                let plugin_addresses = outcome.granted.contains(&crate::plugins::Capability::Send("address".into()));
                let allowed = notify::MailPolicy {
                    domains: &self.config.email.allowed_domains,
                    plugin_addresses,
                    privacy: &self.config.privacy,
                };
                effects.mail =
                    notify::plan(&*self.store, &task.notify, allowed, run, &outcome.notifications, self.now())?;
                for (status, message) in &effects.mail.messages {
                    effects.messages.push(note(status, message.clone()));
                }
                effects.state_writes = outcome.state_writes.clone();
                let mut summary = BTreeMap::from([("notifications".into(), outcome.notifications.len() as u64)]);
                for (status, _) in &effects.mail.messages {
                    *summary.entry((*status).to_string()).or_insert(0) += 1;
                }
                summary.insert("emails".into(), if run.dry_run { 0 } else { effects.mail.outbox.len() as u64 });
                made.notifications = Some(outcome);
                Ok((summary, RunStatus::Succeeded))
            }
        }
    }

    fn import_job(
        &self,
        task: &Task,
        run: &Run,
        request: &RunRequest,
        effects: &mut Effects,
        made: &mut Made,
    ) -> Result<(BTreeMap<String, u64>, RunStatus), JobError> {
        let target = task.import.as_ref().ok_or(JobError::NoSource)?;
        let by_hand = task.name.starts_with(FILE_TASK_PREFIX);
        let settle =
            if by_hand { Duration::ZERO } else { Duration::from_millis(self.config.scheduler.pickup_settle_ms) };
        let sources = self.access();
        // A file given by hand (owner only) is named by its path; a task's
        // files come from the source the owner defined.
        let picked = if by_hand {
            let file = imports::pick_file(std::path::Path::new(&target.source), sources)?;
            imports::Picked { file: Some(file), ..Default::default() }
        } else {
            imports::pickup(&*self.store, target, settle, sources, run.id)?
        };
        effects.messages.extend(picked.skipped.into_iter().map(|n| note("skipped", n)));
        effects.messages.extend(picked.notes.into_iter().map(|n| note("waiting", n)));
        let Some(file) = &picked.file else {
            if by_hand {
                return Err(JobError::NoFile(target.source.clone()));
            }
            return Ok((BTreeMap::from([("files".into(), 0)]), RunStatus::Succeeded));
        };
        let privacy = &self.config.privacy;
        let plan = imports::prepare(
            &self.host,
            &task.plugin,
            target,
            file,
            request,
            &sources.limits,
            Some((run.id, privacy)),
        )?;
        if plan.already_imported.is_some() {
            effects.messages.push(note("already-imported", plan.summary()));
        }
        for row in &plan.rows {
            for (field, message) in row.masked(privacy).messages() {
                effects.messages.push(TaskMessage {
                    seq: 0,
                    row: Some(row.line),
                    status: row.status().into(),
                    field,
                    message,
                });
            }
        }
        crate::metrics::import_rows(&plan.counts);
        let mut summary = plan.counts.clone();
        summary.insert("existing-before".into(), plan.existing);
        let status = if run.dry_run {
            self.store.put_plan(run.id, &plan)?;
            RunStatus::Succeeded
        } else {
            match plan.hold {
                Hold::None => {
                    let source = if by_hand { None } else { Some(target) };
                    let written = imports::commit(&self.host, &plan, &format!("run {}", run.id), source, sources)?;
                    summary.insert("written".into(), written);
                    if picked.more > 0 {
                        // Every ready file is imported now, as the schedule
                        // meant, each by a run of its own: a scheduled run
                        // waits for this one to end, so they go one after
                        // another. This file is committed whatever happens
                        // here: if no run can be queued, the rest wait for
                        // the next fire, and the message says so.
                        let queued = self.new_run(task, &task.owner, Trigger::Schedule, None).and_then(|next| {
                            self.enqueue(task, &next, task.priority(), None)?;
                            Ok(next.id)
                        });
                        let more = picked.more;
                        effects.messages.push(note(
                            "waiting",
                            match queued {
                                Ok(id) => format!("{more} more file(s) are ready; run {id} imports the next one once this run ends"),
                                Err(e) => {
                                    tracing::warn!(task = %task.name, error = %e, "The run for an import's next file could not be queued.");
                                    format!("{more} more file(s) are ready; they wait for the next run (queueing one now failed: {e})")
                                }
                            },
                        ));
                    }
                    RunStatus::Succeeded
                }
                hold => {
                    self.store.put_plan(run.id, &plan)?;
                    effects.messages.push(note("held", plan.summary()));
                    if hold == Hold::Confirm {
                        RunStatus::AwaitingConfirmation
                    } else {
                        RunStatus::AwaitingAuthorization
                    }
                }
            }
        };
        // What the caller prints: the rows masked, as every other reader sees them.
        let mut shown = plan;
        shown.rows = shown.rows.iter().map(|r| r.masked(privacy)).collect();
        made.plan = Some(shown);
        Ok((summary, status))
    }

    /// Runs a job for `user` here and now, outside the queue, through the
    /// same path as a queued run.
    fn run_here(&self, user: &User, task: &Task, dry_run: bool) -> Result<(Run, Made)> {
        if self.engine.is_shutting_down() {
            return Err(Error::Conflict("the host is shutting down; try again once it is back".into()));
        }
        let mut run = self.new_run(task, &user.name, Trigger::User, None)?;
        run.dry_run = dry_run;
        run.status = RunStatus::Running;
        run.started_at = Some(self.now());
        let control = RunControl::new();
        lock(&self.engine.live).insert(run.id, Live { task: run.task.clone(), control: control.clone() });
        self.store.put_run(&run, None)?;
        self.store.flush()?;
        self.run_changed();
        Ok(self.perform(Ok(task.clone()), run, control))
    }
}

/// One-off jobs: a file imported by hand, a notifier run once.
pub struct Jobs<'a> {
    pub(super) app: &'a App,
}

impl Jobs<'_> {
    /// Imports a file given by hand (the account owner only): a run like a
    /// scheduled import's, through the guard: a mass change waits for
    /// someone else to confirm or approve it, like any other.
    pub fn import_file(&self, user: &User, job: FileImport) -> Result<JobReport> {
        owner_only(user, "import a file by hand; staff run the import tasks the owner set up")?;
        let shown = job.file.display().to_string();
        if !job.file.is_file() {
            return Err(Error::Invalid(format!("no file to import at {shown}")));
        }
        let name = job.file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let task = Task::by_hand(
            format!("{FILE_TASK_PREFIX}{name}"),
            TaskKind::Import,
            &job.plugin,
            job.params,
            &user.name,
            self.app.now(),
        )
        .with_import(ImportTarget { source: shown, prefix: None, ..job.target });
        let (run, made) = self.app.run_here(user, &task, false)?;
        Ok(JobReport { run, plan: made.plan, notifications: None })
    }

    /// Runs a notifier once (the account owner only), keeping its state
    /// and ledger under `job.task`; its emails go to the outbox, unless a
    /// dry run, which only shows them.
    pub fn notify_once(&self, user: &User, job: NotifyOnce) -> Result<JobReport> {
        owner_only(user, "run a notifier by hand; staff run the tasks the owner set up")?;
        // The plugin checks the parameters itself: a bad one fails the run
        // with the parameter named, like a scheduled run's.
        let task = Task::by_hand(job.task, TaskKind::Notifier, &job.plugin, job.params, &user.name, self.app.now());
        let (run, made) = self.app.run_here(user, &task, job.dry_run)?;
        Ok(JobReport { run, plan: None, notifications: made.notifications })
    }
}
