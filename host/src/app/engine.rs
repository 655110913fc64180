//! The engine: fires due tasks into the durable batch queue, runs queued
//! runs on a bounded worker pool (each through the one job path in
//! `jobs`), and sweeps old runs away.
//!
//! Exactly once: a fire advances the task's next fire time and queues its
//! run in one transaction; a worker takes a queue entry and marks the run
//! started in another. A crash between the two leaves the run queued (it
//! runs after the restart); a crash during a run leaves it running, and the
//! restart marks it interrupted. No fire time ever gives two runs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::{App, Result, lock};
use crate::plugins::RunControl;
use crate::runs::{Run, RunStatus, Trigger};
use crate::store::prelude::*;
use crate::store::{Firing, QueueKey, RunId};
use crate::tasks::{Misfire, Overlap};

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

/// For tests of readiness: while the file this names exists, the scheduler
/// loop stands still, as a loop stuck in a bug would.
pub const STALL_VARIABLE: &str = "SCHOOLBELL_FAULT_STALL_SCHEDULER";

/// The `[scheduler]` section of the config.
#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
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

/// The most ended runs one flush of the committer reports (a bound on
/// the outcomes it holds at once).
const COMMIT_MAX: usize = 1024;

/// How long the committer waits for more runs to end, while runs are
/// running, before it flushes the ones it has: each flush is a log write
/// and a wake of sled's writer thread, and waiting took the batch queue's
/// CPU per run from about 190 µs to about 165 µs (2026-12-03). No run
/// waits for it: only the report that a run finished does.
const COMMIT_LINGER: Duration = Duration::from_millis(1);

/// A run executing now.
pub(super) struct Live {
    pub(super) task: String,
    pub(super) control: RunControl,
}

/// The queue entries one claim is taking: let go when it ends, however it
/// ends.
struct Taking<'a> {
    set: &'a Mutex<std::collections::BTreeSet<QueueKey>>,
    keys: Vec<QueueKey>,
}

impl Taking<'_> {
    /// Takes `key`, unless another claim here has it.
    fn take(&mut self, key: &QueueKey) -> bool {
        let taken = lock(self.set).insert(key.clone());
        if taken {
            self.keys.push(key.clone());
        }
        taken
    }
}

impl Drop for Taking<'_> {
    fn drop(&mut self) {
        let mut set = lock(self.set);
        for key in &self.keys {
            set.remove(key);
        }
    }
}

/// What the engine keeps in memory beside the store.
#[derive(Default)]
pub(super) struct State {
    pub(super) wake: tokio::sync::Notify,
    pub(super) live: Mutex<HashMap<RunId, Live>>,
    /// Held while the committer writes ended runs, and while a cancel
    /// re-reads a running run and writes it back: neither overwrites the
    /// other. Not the live lock, which every claim and every run's end
    /// takes: held over a batch's writes, it stalled the workers.
    pub(super) recording: Mutex<()>,
    /// The queue entries this host's claims are taking now. A worker that
    /// finishes and the loop claim beside each other: each starts reading
    /// past the entries the other took, rather than both reading the same
    /// first entry and one losing its start to the other (on PostgreSQL,
    /// two wasted round trips a run). One claim at a time would waste
    /// none, but held each host to one claim's round trips at a time.
    claiming: Mutex<std::collections::BTreeSet<QueueKey>>,
    /// The loop runs in this process ([`Engine::serve`]): it dispatches,
    /// and its runtime outlives every run it launches.
    serving: AtomicBool,
    shutting_down: AtomicBool,
    /// Fires and task edits one at a time, so a fire never races an edit.
    pub(super) fire_lock: Mutex<()>,
    /// Queued runs per task, for the overlap policy without scanning the
    /// queue at every fire. Built from the durable queue on first use.
    queued_per_task: Mutex<Option<HashMap<String, usize>>>,
    /// The earliest start of a run submitted for later: the loop wakes
    /// for it. Noted at submission, worked out again at every dispatch.
    next_start: Mutex<Option<DateTime<Utc>>>,
    /// When the loop last ticked: readiness fails when it is too long ago.
    pub(super) last_tick: Mutex<Option<std::time::Instant>>,
    /// A task was added or edited here since the loop last looked for due
    /// tasks: it looks again at once, not at the next fire it knew of.
    schedule_changed: AtomicBool,
    /// The last SMTP readiness check, reused for a few seconds.
    pub(super) smtp_check: Mutex<Option<(std::time::Instant, super::Part)>>,
    /// Where workers hand ended runs for the flush that makes them durable
    /// (see [`Engine::work`]), and how many are still waiting for it.
    committer: std::sync::OnceLock<std::sync::mpsc::Sender<super::jobs::Ended>>,
    unsettled: std::sync::atomic::AtomicUsize,
    /// Workers launched and not yet ended (see [`Engine::launch`]). While
    /// there are as many as the config allows, the loop leaves claiming to
    /// them: each claims its own next run as one ends, and the loop's claim
    /// beside theirs only took a worker's next run from it, ending that
    /// worker and launching another (with a flush) in its place.
    workers: std::sync::atomic::AtomicUsize,
    /// A claim may have passed over a scheduled run because its task was
    /// running: the committer wakes the loop once it has settled runs, to
    /// claim it. Otherwise it leaves the loop asleep (a wake a flush cost
    /// the batch queue a tenth of its time).
    held_back: AtomicBool,
}

impl State {
    /// Notes a run submitted to start at `at`, and wakes the loop to plan for it.
    pub(super) fn note_start(&self, at: DateTime<Utc>) {
        let mut next = lock(&self.next_start);
        *next = Some(next.map_or(at, |n| n.min(at)));
        self.wake.notify_one();
    }

    /// Notes that a task's schedule changed, and wakes the loop to look.
    pub(super) fn schedule_changed(&self) {
        self.schedule_changed.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    pub(super) fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Runs queued per task, counted from the durable queue once.
    fn queued_counts(&self, store: &dyn Backend) -> Result<std::sync::MutexGuard<'_, Option<HashMap<String, usize>>>> {
        let mut counts = lock(&self.queued_per_task);
        if counts.is_none() {
            let mut map = HashMap::new();
            for (_, id) in store.queued()? {
                if let Some(r) = store.run(id)? {
                    *map.entry(r.task).or_insert(0) += 1;
                }
            }
            *counts = Some(map);
        }
        Ok(counts)
    }

    pub(super) fn count_queued(&self, store: &dyn Backend, task: &str, delta: isize) -> Result<()> {
        // Where hosts share the store, the others queue and start runs too:
        // a count here would be wrong, and the store answers instead (see
        // `tasks_busy`). Counting first would also read every queued run
        // once, a round trip each, while the runs just claimed wait.
        if store.shared() {
            return Ok(());
        }
        let mut counts = self.queued_counts(store)?;
        if let Some(map) = counts.as_mut() {
            let n = map.entry(task.to_string()).or_insert(0);
            *n = n.saturating_add_signed(delta);
        }
        Ok(())
    }

    /// For each task, whether a run of it is running, and whether one is
    /// queued: on any host, where hosts share the store.
    fn tasks_busy(&self, store: &dyn Backend, tasks: &[&str]) -> Result<Vec<(bool, bool)>> {
        let running: Vec<bool> = {
            let live = lock(&self.live);
            tasks.iter().map(|task| live.values().any(|l| l.task == *task)).collect()
        };
        if let Some(activity) = store.task_activities(tasks)? {
            return Ok(running
                .iter()
                .zip(activity)
                .map(|(here, (elsewhere, queued))| (here | elsewhere, queued))
                .collect());
        }
        let counts = self.queued_counts(store)?;
        let queued = |task: &str| counts.as_ref().and_then(|m| m.get(task)).copied().unwrap_or(0) > 0;
        Ok(running.into_iter().zip(tasks).map(|(here, task)| (here, queued(task))).collect())
    }
}

/// A due entry that fires: its task with the next fire worked out, whether
/// a run of it runs now, and whether the fire queues a run (if not, it is
/// skipped, and only the task moves on).
struct Fire {
    due_at: DateTime<Utc>,
    task: crate::tasks::Task,
    running: bool,
    queues: bool,
}

/// The engine service.
pub struct Engine<'a> {
    pub(super) app: &'a Arc<App>,
}

impl Engine<'_> {
    /// After a restart: runs left running are marked interrupted. Queued
    /// runs stay queued and run. On a store of this host's own, a run
    /// queued in its record but gone from the queue was starting when the
    /// host stopped (the store takes the entry before it saves the start):
    /// it is marked interrupted too.
    pub fn recover(&self) -> Result<usize> {
        let app = self.app;
        let now = app.now();
        let mut n = 0;
        let queued: Option<std::collections::HashSet<RunId>> =
            if app.store.shared() { None } else { Some(app.store.queued()?.into_iter().map(|(_, id)| id).collect()) };
        let starting =
            |run: &Run| run.status == RunStatus::Queued && queued.as_ref().is_some_and(|q| !q.contains(&run.id));
        for mut run in app.store.all_runs()? {
            if run.status == RunStatus::Running || starting(&run) {
                run.status = RunStatus::Interrupted;
                run.finished_at = Some(now);
                run.error = Some("the host stopped while this run was running; run the task again to redo it".into());
                app.store.put_run(&run, Some(now))?;
                app.run_changed();
                n += 1;
            }
        }
        app.store.flush()?;
        Ok(n)
    }

    /// Runs queued or running now.
    pub fn pending(&self) -> usize {
        self.app.store.queue_len() + self.running()
    }

    /// Whether nothing is queued or running: [`Engine::pending`] is zero,
    /// found without counting the queue (which walks it).
    pub fn is_idle(&self) -> Result<bool> {
        Ok(self.running() == 0 && self.app.store.queued_after(None)?.is_none())
    }

    /// Fires every task due by now into the queue. Returns how many fired.
    pub fn tick(&self) -> Result<usize> {
        let app = self.app;
        let store = &*app.store;
        let _guard = lock(&app.engine.fire_lock);
        let now = app.now();
        let mut fired = 0;
        // Each round moves every due entry it reads past `now` or out of
        // the index; the bound only guards against a bug turning into a spin.
        for _round in 0..100_000 {
            let due = store.due_tasks(now, 1000)?;
            if due.is_empty() {
                break;
            }
            let fires = self.plan_fires(due, now)?;
            fired += self.fire_all(fires, now)?;
        }
        // No flush here: a fire and its queue entry land together or not
        // at all, and a fire lost to a crash fires again after the restart.
        // `dispatch` flushes before any run starts, so nothing runs whose
        // fire could still be undone.
        Ok(fired)
    }

    /// Works out what each due entry does: its task read, and whether it
    /// queues a run, with the reads for all of them made together.
    fn plan_fires(&self, due: Vec<(DateTime<Utc>, String)>, now: DateTime<Utc>) -> Result<Vec<Fire>> {
        let app = self.app;
        let (store, state) = (&*app.store, &app.engine);
        let grace = chrono::Duration::seconds(app.config.scheduler.misfire_grace_secs as i64);
        let names: Vec<&str> = due.iter().map(|(_, name)| name.as_str()).collect();
        let tasks = store.tasks_named(&names)?;
        let busy = state.tasks_busy(store, &names)?;
        let mut fires = Vec::with_capacity(due.len());
        for (((due_at, name), task), (running, queued)) in due.iter().zip(tasks).zip(busy) {
            let Some(mut task) = task else {
                store.remove_task(name, Some(*due_at))?;
                continue;
            };
            // The index keeps milliseconds; compare at that precision.
            let indexed = task.next_fire.map(|t| t.timestamp_millis());
            if !task.enabled || indexed != Some(due_at.timestamp_millis()) {
                // A stale index entry: put the task back where it belongs.
                let due = if task.enabled { task.next_fire } else { None };
                store.put_task(&task, Some(*due_at), due.filter(|d| d != due_at))?;
                continue;
            }
            let missed = now - *due_at > grace;
            task.next_fire = task.timing().next_after(if missed { now } else { *due_at });
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
            fires.push(Fire { due_at: *due_at, task, running, queues: enqueue });
        }
        Ok(fires)
    }

    /// Fires the due entries planned, their run ids taken together and
    /// the fires made in one step where the store can; how many queued a run.
    fn fire_all(&self, fires: Vec<Fire>, now: DateTime<Utc>) -> Result<usize> {
        let app = self.app;
        let (store, state) = (&*app.store, &app.engine);
        let mut ids = store.new_run_ids(fires.iter().filter(|f| f.queues).count())?.into_iter();
        let runs: Vec<Option<Run>> = fires
            .iter()
            .map(|f| {
                let id = if f.queues { ids.next() } else { None };
                id.map(|id| app.run_of(id, &f.task, &f.task.owner, Trigger::Schedule, Some(f.due_at)))
            })
            .collect();
        let firings: Vec<Firing<'_>> = fires
            .iter()
            .zip(&runs)
            .map(|(f, run)| Firing {
                task: &f.task,
                due: f.due_at,
                next: f.task.next_fire,
                queued: run.as_ref().map(|r| (f.task.priority(), r)),
            })
            .collect();
        // The store fires a due time once, whoever else ticks.
        let fired = store.fire_all(&firings)?;
        let mut queued = 0;
        for ((fire, run), fired) in fires.iter().zip(&runs).zip(fired) {
            if !fired {
                continue;
            }
            if run.is_some() && fire.task.overlap == Overlap::CancelRunning && fire.running {
                for l in lock(&state.live).values().filter(|l| l.task == fire.task.name) {
                    l.control.cancel(Duration::from_secs(app.host.config().cancel_grace_secs));
                }
            }
            crate::metrics::fired((now - fire.due_at).to_std().unwrap_or_default());
            if run.is_some() {
                state.count_queued(store, &fire.task.name, 1)?;
                queued += 1;
            }
        }
        Ok(queued)
    }

    /// Starts queued runs while workers are free. Needs a tokio runtime.
    pub fn dispatch(&self) -> Result<usize> {
        // A worker that finds nothing more to claim ends, and wakes the
        // loop as it goes (see [`Engine::launch`]).
        if self.app.engine.workers.load(Ordering::SeqCst) >= self.app.config.scheduler.workers.max(1) {
            return Ok(0);
        }
        let starting = self.claim()?;
        if starting.is_empty() {
            return Ok(0);
        }
        // Durable before any side effect: a run that starts is recorded as
        // started, so a crash cannot make it run twice.
        if let Err(e) = self.app.store.flush() {
            self.unclaim(&starting);
            return Err(e.into());
        }
        Ok(self.launch(starting))
    }

    /// Marks queued runs started while workers are free, without a flush:
    /// none may run before one (see [`Engine::launch`]).
    fn claim(&self) -> Result<Vec<(Run, RunControl)>> {
        let mut starting = Vec::new();
        match self.claim_into(&mut starting) {
            Ok(()) => Ok(starting),
            Err(e) if starting.is_empty() => Err(e),
            // The runs already started are this host's (their queue entries
            // are gone and they hold its lease): dropping them would leave
            // them running for ever. They run; the error waits for the next
            // claim.
            Err(e) => {
                tracing::warn!("Claiming more queued runs failed after {} started: {e}", starting.len());
                Ok(starting)
            }
        }
    }

    fn claim_into(&self, starting: &mut Vec<(Run, RunControl)>) -> Result<()> {
        let app = self.app;
        let (store, state) = (&*app.store, &app.engine);
        let workers = app.config.scheduler.workers.max(1);
        let mut taking = Taking { set: &state.claiming, keys: Vec::new() };
        // Past what the host's other claims are taking now: they start or
        // skip those entries themselves.
        let mut after = lock(&state.claiming).last().cloned();
        let now = app.now();
        let mut next_start: Option<DateTime<Utc>> = None;
        let mut read_all = false;
        let from_start = after.is_none();
        while lock(&state.live).len() < workers && !state.is_shutting_down() {
            let Some((key, id, run)) = store.queued_run_after(after.as_ref())? else {
                read_all = from_start;
                break;
            };
            if !taking.take(&key) {
                // Another claim here read it first.
                after = Some(key);
                continue;
            }
            let Some(mut run) = run else {
                store.dequeue(&key)?;
                continue;
            };
            // Submitted for later: it waits in the queue until its time.
            if let Some(at) = run.waits_until(now) {
                next_start = Some(next_start.map_or(at, |n| n.min(at)));
                after = Some(key);
                continue;
            }
            // A scheduled run waits while its task still runs (queue-one,
            // and cancel-running while the cancelled run stops): runs of
            // a task never overlap by schedule. Runs people start go at once.
            if run.trigger == Trigger::Schedule {
                // Noted before looking: the committer that settles the
                // task's running run looks at it after.
                state.held_back.store(true, Ordering::SeqCst);
                if lock(&state.live).values().any(|l| l.task == run.task)
                    || store.task_activity(&run.task)?.is_some_and(|(running, _)| running)
                {
                    after = Some(key);
                    continue;
                }
            }
            run.status = RunStatus::Running;
            run.started_at = Some(app.now());
            let control = RunControl::new();
            {
                // Workers claim beside the loop: the count is checked again
                // where the run joins the live ones.
                let mut live = lock(&state.live);
                if live.len() >= workers {
                    break;
                }
                if !store.start_run(&key, &run)? {
                    continue;
                }
                live.insert(id, Live { task: run.task.clone(), control: control.clone() });
            }
            let task = run.task.clone();
            starting.push((run, control));
            app.run_changed();
            state.count_queued(store, &task, -1)?;
        }
        {
            // Having read the whole queue, the earliest start seen is the
            // next one; otherwise it may still be further on.
            let mut noted = lock(&state.next_start);
            *noted = match (read_all, *noted, next_start) {
                (true, _, seen) => seen,
                (false, Some(n), Some(seen)) => Some(n.min(seen)),
                (false, n, seen) => n.or(seen),
            };
        }
        Ok(())
    }

    /// Claimed runs whose starts could not be made durable: they leave the
    /// workers, and the next start marks them interrupted.
    fn unclaim(&self, claimed: &[(Run, RunControl)]) {
        let mut live = lock(&self.app.engine.live);
        for (run, _) in claimed {
            live.remove(&run.id);
        }
    }

    /// Runs claimed runs whose starts are on disk, each on a worker of its
    /// own (a blocking thread) that goes on with the next runs it claims.
    /// Needs a tokio runtime.
    fn launch(&self, starting: Vec<(Run, RunControl)>) -> usize {
        let started = starting.len();
        for first in starting {
            let app = self.app.clone();
            app.engine.workers.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                // The run this worker runs now, whose progress is saved
                // every second.
                let current: Arc<Mutex<Option<(RunId, RunControl)>>> = Arc::default();
                let progress = {
                    let app = app.clone();
                    let current = current.clone();
                    tokio::spawn(async move {
                        loop {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            let now = lock(&current).clone();
                            if let Some((id, control)) = now {
                                app.save_progress(id, &control);
                            }
                        }
                    })
                };
                let worker = app.clone();
                let outcome = tokio::task::spawn_blocking(move || worker.engine().work(first, &current)).await;
                progress.abort();
                if let Err(e) = outcome {
                    tracing::error!("Run worker panicked: {e}");
                }
                app.engine.workers.fetch_sub(1, Ordering::SeqCst);
                app.engine.wake.notify_one();
            });
        }
        started
    }

    /// One worker: runs `first`, then, as each run ends, the next it claims
    /// itself, so no run waits for the scheduler loop to come round.
    ///
    /// Group commit: an ended run goes to the committer, which flushes the
    /// runs ended since its last flush together and only then reports them
    /// finished; the worker goes on meanwhile. A run whose start must be on
    /// disk before it runs (see [`crate::plugins::PluginHost::reaches_outside`])
    /// waits for a flush first. Any other run needs none: every write it
    /// makes follows its start in the store's log, and a crash that loses
    /// the start loses them too, leaving it queued to run again.
    fn work(&self, first: (Run, RunControl), current: &Mutex<Option<(RunId, RunControl)>>) {
        let app = self.app;
        let mut next = Some(first);
        while let Some((run, control)) = next.take() {
            *lock(current) = Some((run.id, control.clone()));
            let task = app.tasks().get(&run.task);
            // On a store of its own, a run that leaves nothing behind is
            // written by the committer, with the others of its flush in one
            // step. Where hosts share the store, its lease goes with it.
            let ended = app.execute(task, run, control, !app.store.shared());
            *lock(current) = None;
            let mut claimed = self.claim().unwrap_or_else(|e| {
                tracing::error!("Dispatch failed: {e}");
                Vec::new()
            });
            self.commit(ended);
            if claimed.iter().any(|(run, _)| app.host.reaches_outside(&run.plugin))
                && let Err(e) = app.store.flush()
            {
                tracing::error!("Cannot record the claimed runs as started: {e}");
                self.unclaim(&claimed);
                break;
            }
            if !claimed.is_empty() {
                next = Some(claimed.remove(0));
                self.launch(claimed);
            }
        }
    }

    /// Hands an ended run to the committer (see [`Engine::work`]), started
    /// on first use; it holds the app only while it flushes, so it ends
    /// with the app.
    fn commit(&self, ended: super::jobs::Ended) {
        let state = &self.app.engine;
        state.unsettled.fetch_add(1, Ordering::SeqCst);
        let committer = state.committer.get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel();
            let app = Arc::downgrade(self.app);
            let spawned = std::thread::Builder::new().name("schoolbell-commit".into()).spawn(move || commit(&app, &rx));
            if let Err(e) = spawned {
                tracing::error!("Cannot start the committer thread ({e}); each run flushes on its own.");
            }
            tx
        });
        // Only a committer that never started is gone while the app lives.
        if let Err(std::sync::mpsc::SendError(ended)) = committer.send(ended) {
            let flushed = self.app.store.flush();
            self.app.settle(ended, flushed.as_ref().map(drop));
            state.unsettled.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Where hosts share the store: says this host is alive, renews the
    /// leases of the runs it runs (stopping any another host took over),
    /// and settles the runs whose hosts stopped answering. Returns how many
    /// it settled.
    pub fn keep_leases(&self) -> Result<usize> {
        let app = self.app;
        let store = &*app.store;
        if !store.shared() {
            return Ok(0);
        }
        store.beat()?;
        let mine: Vec<RunId> = lock(&app.engine.live).keys().copied().collect();
        for lost in store.renew_leases(&mine)? {
            // A run that ended since `mine` was read let its lease go with
            // its outcome (written under the same lock): not lost.
            if let Some(l) = lock(&app.engine.live).get(&lost) {
                tracing::warn!(
                    run = lost,
                    "This host lost its lease on a run (it stopped answering for too long); stopping it."
                );
                l.control.cancel(Duration::ZERO);
            }
        }
        let mut settled = 0;
        let now = app.now();
        for id in store.take_lapsed_leases()? {
            let Some(mut run) = store.run(id)? else { continue };
            if run.status != RunStatus::Running {
                // Ended already: only the lease is left to let go.
                store.settle_lapsed(&run, None)?;
                continue;
            }
            run.status = RunStatus::Interrupted;
            run.finished_at = Some(now);
            run.error = Some(
                "the host running it stopped answering and its lease lapsed; run the task again to redo it".into(),
            );
            // Settled and queued again in one step, so a host dying midway
            // leaves the lease to lapse again rather than a run stuck running.
            let again = app.again(&run)?;
            let queued = again.as_ref().map(|(task, next)| (task.priority(), next.queued_at, next));
            if !store.settle_lapsed(&run, queued)? {
                continue;
            }
            app.run_changed();
            tracing::warn!(run = id, task = %run.task, "A run's host stopped answering; the run was marked interrupted.");
            settled += 1;
            if let Some((task, next)) = again {
                app.engine.count_queued(store, &task.name, 1)?;
                app.engine.wake.notify_one();
                app.queued_again(&task, &next);
            }
        }
        Ok(settled)
    }

    /// Removes runs past retention. Returns how many. Where hosts share
    /// the store, only the host leading the chore does.
    pub fn sweep(&self) -> Result<usize> {
        let app = self.app;
        if !app.store.lead("retention")? {
            return Ok(0);
        }
        let now = app.now();
        let config = &app.config.scheduler;
        let finished_cutoff = now - chrono::Duration::days(config.retention_days as i64);
        let cancelled_cutoff = now - chrono::Duration::minutes(config.cancelled_retention_minutes as i64);
        let mut removed = 0;
        for id in app.store.finished_before(cancelled_cutoff)? {
            let Some(run) = app.store.run(id)? else { continue };
            let finished = run.finished_at.unwrap_or(now);
            let expired = match run.status {
                RunStatus::Cancelled => finished <= cancelled_cutoff,
                _ => finished <= finished_cutoff,
            };
            if expired && !run.keep {
                app.store.delete_run(id, run.finished_at)?;
                app.run_changed();
                removed += 1;
            }
        }
        if removed > 0 {
            app.store.flush()?;
            tracing::info!(removed, "Retention removed old runs.");
        }
        app.outbox().purge(now)?;
        if app.store.shared() {
            app.health().count_outbox()?;
        }
        app.audit_log().prune()?;
        Ok(removed)
    }

    /// Fires, dispatches and sweeps until `shutdown` turns true; sleeps
    /// until the next fire in between (no busy polling).
    pub fn serve(
        &self,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.app.engine.serving.store(true, Ordering::SeqCst);
        let app = self.app.clone();
        async move {
            let engine = app.engine();
            let mut last_sweep = None;
            // The next fire known, and when the tasks were last looked at.
            let mut next_due: Option<DateTime<Utc>> = None;
            let mut last_look = None;
            // Work another host queues wakes this one at once.
            let weak = Arc::downgrade(&app);
            app.store.on_new_work(Box::new(move || {
                if let Some(app) = weak.upgrade() {
                    app.engine.wake.notify_one();
                }
            }));
            // Leases are kept apart from the loop, three times a lease, so a
            // long tick never lets this host's leases lapse.
            // Rules another host saved are taken up within a second.
            let chores = if app.store.shared() {
                let lease = Duration::from_millis((app.config.store.lease_secs.max(1) * 1000 / 3).max(100));
                vec![
                    every(&app, lease, "Keeping the run leases", |app| app.engine().keep_leases().map(drop)),
                    every(&app, Duration::from_secs(1), "Taking up saved rules", |app| app.rules().follow().map(drop)),
                ]
            } else {
                Vec::new()
            };
            let stall = std::env::var_os(STALL_VARIABLE).map(std::path::PathBuf::from);
            loop {
                if *shutdown.borrow() {
                    break;
                }
                if stall.as_ref().is_some_and(|f| f.exists()) {
                    // An injected fault: the loop is stuck for as long as the file is there.
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                        _ = shutdown.changed() => continue,
                    }
                }
                *lock(&app.engine.last_tick) = Some(std::time::Instant::now());
                let now = app.now();
                // Most wakes are runs ending. The tasks are looked at when
                // the next fire known is due, a task changed here, or a
                // heartbeat has passed (a task added by another process):
                // on a database server, a look is two round trips.
                let look = app.engine.schedule_changed.swap(false, Ordering::SeqCst)
                    || last_look.is_none_or(|t: std::time::Instant| t.elapsed() >= super::health::HEARTBEAT)
                    || next_due.is_some_and(|d| d <= now);
                if look {
                    // Store work blocks; keep it off the threads that serve the API.
                    if let Err(e) = tokio::task::block_in_place(|| engine.tick()) {
                        tracing::error!("Scheduler tick failed: {e}");
                    }
                }
                if let Err(e) = engine.dispatch() {
                    tracing::error!("Dispatch failed: {e}");
                }
                if last_sweep.is_none_or(|t: DateTime<Utc>| now - t >= chrono::Duration::minutes(1)) {
                    if let Err(e) = tokio::task::block_in_place(|| engine.sweep()) {
                        tracing::error!("Retention sweep failed: {e}");
                    }
                    last_sweep = Some(now);
                }
                if look {
                    next_due = tokio::task::block_in_place(|| app.store.next_due()).ok().flatten();
                    last_look = Some(std::time::Instant::now());
                }
                let next = match (next_due, *lock(&app.engine.next_start)) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                let sleep = next
                    .map(|t| (t - app.now()).to_std().unwrap_or(Duration::ZERO))
                    .unwrap_or(super::health::HEARTBEAT)
                    .min(super::health::HEARTBEAT);
                tokio::select! {
                    _ = tokio::time::sleep(sleep) => {}
                    _ = app.engine.wake.notified() => {}
                    _ = shutdown.changed() => {}
                }
            }
            engine.stop().await;
            for chore in chores {
                chore.abort();
            }
        }
    }

    /// Stops taking runs, asks the running ones to stop, and waits for them
    /// (up to the cancel grace period plus a little). Runs that do not stop
    /// stay recorded as running and are marked interrupted at the next start.
    pub async fn stop(&self) {
        let state = &self.app.engine;
        state.shutting_down.store(true, Ordering::SeqCst);
        let grace = Duration::from_secs(self.app.host.config().cancel_grace_secs);
        for l in lock(&state.live).values() {
            l.control.cancel(grace);
        }
        let deadline = tokio::time::Instant::now() + grace + Duration::from_secs(2);
        while self.running() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.app.store.flush();
    }

    /// Wakes the loop (after an outside change), to look for due tasks too.
    pub fn wake(&self) {
        self.app.engine.schedule_changed();
    }

    /// How many runs are executing now, or ended without their outcome on
    /// disk yet.
    pub fn running(&self) -> usize {
        lock(&self.app.engine.live).len() + self.app.engine.unsettled.load(Ordering::SeqCst)
    }

    /// Waits until run `id` leaves the queue and ends or is held for a
    /// person, calling `progress` with it on the way.
    ///
    /// A process that runs jobs itself (the CLI without `serve`) dispatches
    /// meanwhile, and returns only once every run it launched has ended: a
    /// run a finishing worker claimed (an import's follow-up for the next
    /// file) runs on the caller's runtime, and would be left running, never
    /// to end, if that runtime went away under it. Inside `serve` (a
    /// forwarded command) it only waits: the loop dispatches, on a runtime
    /// that outlives its runs.
    pub async fn finish(&self, id: RunId, mut progress: impl FnMut(&Run)) -> Result<Run> {
        let serving = self.app.engine.serving.load(Ordering::SeqCst);
        let mut ended = None;
        loop {
            if ended.is_none() {
                if !serving {
                    self.dispatch()?;
                }
                let run = self.app.runs().get(id)?;
                progress(&run);
                if run.status != RunStatus::Queued && run.status != RunStatus::Running {
                    ended = Some(run);
                }
            }
            if let Some(run) = &ended
                && (serving || self.running() == 0)
            {
                return Ok(run.clone());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl App {
    /// After a run was interrupted by a host or store that failed under it:
    /// as for a missed fire, the task's misfire policy says whether the
    /// scheduled work runs again now.
    pub(super) fn redo(&self, run: &Run) -> Result<()> {
        if let Some((task, again)) = self.again(run)? {
            self.enqueue(&task, &again, task.priority(), None)?;
            self.queued_again(&task, &again);
        }
        Ok(())
    }

    /// The run that does an interrupted run's work again, when its task's
    /// misfire policy says to (not yet queued).
    fn again(&self, run: &Run) -> Result<Option<(crate::tasks::Task, Run)>> {
        if run.trigger == Trigger::Schedule
            && let Some(task) = self.store.task(&run.task)?
            && task.enabled
            && task.misfire == Misfire::RunOnce
        {
            let again = self.new_run(&task, &task.owner, Trigger::Schedule, run.fire_time)?;
            return Ok(Some((task, again)));
        }
        Ok(None)
    }

    /// Says a run was queued again (see [`App::again`]).
    fn queued_again(&self, task: &crate::tasks::Task, again: &Run) {
        tracing::info!(run = again.id, task = %task.name, "The interrupted run's work runs again (misfire: run once).");
    }

    fn save_progress(&self, id: RunId, control: &RunControl) {
        let live = lock(&self.engine.live);
        if !live.contains_key(&id) {
            return;
        }
        if let Ok(Some(mut run)) = self.store.run(id) {
            // A cancel made on another host reaches this one through the record.
            if run.cancel_requested_by.is_some() && !control.is_cancelled() {
                control.cancel(Duration::from_secs(self.host.config().cancel_grace_secs));
            }
            let (done, total) = control.progress();
            if (run.progress_done, run.progress_total) != (done, total) {
                run.progress_done = done;
                run.progress_total = total;
                let _ = self.store.put_run(&run, None);
                self.run_changed();
            }
        }
    }
}

/// The committer: writes the runs ended since its last flush that were
/// left to it, flushes, and reports them all finished only once that
/// holds. Runs that end during a flush, or within [`COMMIT_LINGER`] of the
/// first of a batch, share one flush, so the busier the workers, the more
/// runs a flush covers.
fn commit(app: &std::sync::Weak<App>, ended: &std::sync::mpsc::Receiver<super::jobs::Ended>) {
    while let Ok(first) = ended.recv() {
        let mut batch = vec![first];
        let Some(app) = app.upgrade() else { return };
        let until = std::time::Instant::now() + COMMIT_LINGER;
        while batch.len() < COMMIT_MAX {
            if let Ok(next) = ended.try_recv() {
                batch.push(next);
                continue;
            }
            // With nothing else running, nothing more is coming.
            if lock(&app.engine.live).is_empty() {
                break;
            }
            match ended.recv_timeout(until.saturating_duration_since(std::time::Instant::now())) {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let finishing: Vec<(&Run, &super::jobs::Deferred)> =
            batch.iter().filter_map(|e| e.deferred.as_ref().map(|d| (&e.run, d))).collect();
        // Each run's messages, then the runs: a crash between leaves a run
        // still running in its record, which the next start marks
        // interrupted.
        let written = finishing.iter().try_for_each(|(run, d)| app.store.add_messages(run.id, 0, &d.messages()));
        let written = written.and_then(|()| {
            if finishing.is_empty() {
                return Ok(());
            }
            // A cancel re-reads the run under this lock, and never writes
            // it back running.
            let _recording = lock(&app.engine.recording);
            let runs: Vec<(&Run, DateTime<Utc>)> = finishing.iter().map(|(run, d)| (*run, d.at)).collect();
            app.store.finish_runs(&runs)
        });
        let flushed = app.store.flush();
        let n = batch.len();
        for run in batch {
            let durable =
                if run.deferred.is_some() { written.as_ref().and(flushed.as_ref()) } else { flushed.as_ref() };
            app.settle(run, durable.map(drop));
        }
        app.engine.unsettled.fetch_sub(n, Ordering::SeqCst);
        if app.engine.held_back.swap(false, Ordering::SeqCst) {
            app.engine.wake.notify_one();
        }
    }
}

/// Runs `chore` off the async threads every `period`, until aborted; a
/// failure is logged as `what` failed, and the next round tries again.
fn every(
    app: &Arc<App>,
    period: Duration,
    what: &'static str,
    chore: fn(&Arc<App>) -> Result<()>,
) -> tokio::task::JoinHandle<()> {
    let app = app.clone();
    tokio::spawn(async move {
        loop {
            let on = app.clone();
            match tokio::task::spawn_blocking(move || chore(&on)).await {
                Ok(Err(e)) => tracing::error!("{what} failed: {e}"),
                Err(e) => tracing::error!("{what} panicked: {e}"),
                Ok(Ok(())) => {}
            }
            tokio::time::sleep(period).await;
        }
    })
}
