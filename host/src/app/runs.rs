//! Background runs: query, cancel, delete and read messages. The owner sees
//! every run, staff their own, the autopilot permission scheduled runs; a
//! run you may not see does not exist for you.

use std::time::Duration;

use super::{App, Error, Result, lock};
use crate::runs::{self, Run, RunQuery, RunStatus, TaskMessage, TimeColumn};
use crate::store::RunId;
use crate::users::User;

/// How many runs a grid's count reads before it says "at least" instead:
/// a count over a long history must not hold the page up.
const COUNT_LIMIT: usize = 10_000;
/// The most runs one page of the grid reads, newest first: a filter that
/// matches few of a long history looks through this many and offers to go
/// on from there, so no request reads the whole history.
const SCAN_LIMIT: usize = 20_000;
/// The most matching runs a page sorted by another column orders: the
/// newest this many, so no request holds the whole history in memory.
const SORT_LIMIT: usize = 10_000;

/// A grid's count of matching runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    /// Exactly this many.
    Exact(usize),
    /// At least this many; there may be more.
    AtLeast(usize),
}

/// How a grid is sorted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sort {
    /// By which time.
    pub column: TimeColumn,
    /// Oldest first instead of newest first.
    pub ascending: bool,
}

/// Where a grid's page starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageAt {
    /// The first page.
    Start,
    /// After this run, in the default order (newest queued first): a
    /// cursor, as cheap deep into the history as at its top.
    Before(RunId),
    /// This many matches in, for the other orders.
    Offset(usize),
}

/// One page of the runs grid.
#[derive(Debug, Clone)]
pub struct RunPage {
    /// The runs with their plugin's kind.
    pub runs: Vec<(Run, String)>,
    /// Where the next page starts, if there is one.
    pub next: Option<PageAt>,
    /// How many runs match in all.
    pub count: Count,
}

/// The runs service.
pub struct Runs<'a> {
    pub(super) app: &'a App,
}

impl Runs<'_> {
    pub(super) fn get(&self, id: RunId) -> Result<Run> {
        self.app.store.run(id)?.ok_or_else(|| Error::NotFound(format!("no run {id}")))
    }

    /// The runs `user` may see, newest first.
    pub fn list(&self, user: &User, status: Option<RunStatus>, task: Option<&str>, limit: usize) -> Result<Vec<Run>> {
        let mut out = Vec::new();
        let mut before = None;
        loop {
            let page: Vec<Run> = self.app.store.runs(before, 500)?;
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

    /// What each run is: its task's kind (import, notifier, export,
    /// cleanup), or for a task gone or a file given by hand, its plugin's.
    pub fn kinds(&self) -> Result<Kinds> {
        let store = &self.app.store;
        Ok(Kinds {
            tasks: store.all_tasks()?.into_iter().map(|t| (t.name, t.kind.name())).collect(),
            plugins: store.all_plugins()?.into_iter().map(|p| (p.name, kind_name(p.kind))).collect(),
        })
    }

    /// Visits the runs `user` may see that match `query`, newest first,
    /// starting before `before`, until `visit` says stop.
    ///
    /// Reads at most `budget` runs; when that ran out first, returns the
    /// id of the last run read, for the next page to go on from.
    fn scan(
        &self,
        user: &User,
        query: &RunQuery,
        before: Option<RunId>,
        kinds: &Kinds,
        budget: usize,
        mut visit: impl FnMut(Run, &str) -> bool,
    ) -> Result<Option<RunId>> {
        let mut before = before;
        let mut read = 0;
        loop {
            let page: Vec<Run> = self.app.store.runs(before, 500)?;
            let Some(last) = page.last() else { return Ok(None) };
            before = Some(last.id);
            for r in page {
                if read == budget {
                    return Ok(Some(r.id + 1));
                }
                read += 1;
                let kind = kinds.of(&r);
                if runs::can_view(user, &r) && query.matches(&r, kind) && !visit(r, kind) {
                    return Ok(None);
                }
            }
        }
    }

    /// A page of the runs grid: the runs `user` may see that match
    /// `query`, in `sort` order. The default order pages by cursor; the
    /// others sort the newest [`SORT_LIMIT`] matches. Either reads at most
    /// [`SCAN_LIMIT`] runs.
    pub fn page(&self, user: &User, query: &RunQuery, sort: Sort, at: PageAt, limit: usize) -> Result<RunPage> {
        let kinds = self.kinds()?;
        let limit = limit.clamp(1, 500);
        let count = self.count(user, query, &kinds)?;
        if sort == Sort::default() && !matches!(at, PageAt::Offset(_)) {
            let before = match at {
                PageAt::Before(id) => Some(id),
                _ => None,
            };
            let mut runs = Vec::new();
            let mut more = false;
            let cut = self.scan(user, query, before, &kinds, SCAN_LIMIT, |r, kind| {
                if runs.len() == limit {
                    more = true;
                    return false;
                }
                runs.push((r, kind.to_string()));
                true
            })?;
            let next = if more { runs.last().map(|(r, _)| PageAt::Before(r.id)) } else { cut.map(PageAt::Before) };
            return Ok(RunPage { runs, next, count });
        }
        let offset = match at {
            PageAt::Offset(n) => n,
            _ => 0,
        };
        let mut all = Vec::new();
        self.scan(user, query, None, &kinds, SCAN_LIMIT, |r, kind| {
            all.push((r, kind.to_string()));
            all.len() < SORT_LIMIT
        })?;
        // Runs without the time (not started, not finished) go last either way.
        all.sort_by(|(a, _), (b, _)| {
            let (ta, tb) = (sort.column.of(a), sort.column.of(b));
            match (ta, tb) {
                (Some(x), Some(y)) if sort.ascending => x.cmp(&y).then(a.id.cmp(&b.id)),
                (Some(x), Some(y)) => y.cmp(&x).then(b.id.cmp(&a.id)),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => b.id.cmp(&a.id),
            }
        });
        let total = all.len();
        let runs: Vec<_> = all.into_iter().skip(offset).take(limit).collect();
        let next = (offset + runs.len() < total).then_some(PageAt::Offset(offset + runs.len()));
        Ok(RunPage { runs, next, count: Count::Exact(total) })
    }

    /// How many runs match among the newest `COUNT_LIMIT` read: exact
    /// when that was all of them, else "at least", so a rare filter over
    /// a long history costs no more than a common one.
    fn count(&self, user: &User, query: &RunQuery, kinds: &Kinds) -> Result<Count> {
        let (mut read, mut counted, mut before) = (0, 0, None);
        loop {
            let page: Vec<Run> = self.app.store.runs(before, 500)?;
            let Some(last) = page.last() else { return Ok(Count::Exact(counted)) };
            before = Some(last.id);
            for r in page {
                read += 1;
                if read > COUNT_LIMIT {
                    return Ok(Count::AtLeast(counted));
                }
                let kind = kinds.of(&r);
                if runs::can_view(user, &r) && query.matches(&r, kind) {
                    counted += 1;
                }
            }
        }
    }

    /// The runs matching `query` that `user` may cancel and that have not
    /// finished, among the newest [`SCAN_LIMIT`]: what a bulk cancel acts
    /// on (the grid counts them at every view, so the read is bounded like
    /// a page's; an older unfinished run is cancelled on its own).
    pub fn cancelable(&self, user: &User, query: &RunQuery) -> Result<Vec<RunId>> {
        // A filter on finished statuses only matches nothing to cancel: no read.
        if !query.statuses.is_empty() && query.statuses.iter().all(|s| s.is_finished()) {
            return Ok(Vec::new());
        }
        let kinds = self.kinds()?;
        let mut ids = Vec::new();
        self.scan(user, query, None, &kinds, SCAN_LIMIT, |r, _| {
            if !r.status.is_finished() && runs::can_control(user, &r) {
                ids.push(r.id);
            }
            true
        })?;
        Ok(ids)
    }

    /// Cancels every run `query` matches that `user` may cancel, when the
    /// filter names something and the caller saw exactly `expected` of
    /// them: a filter lost on the way, or runs that changed since the
    /// dialog, must not widen the action.
    pub fn cancel_matching(&self, user: &User, query: &RunQuery, expected: usize) -> Result<usize> {
        if query.is_empty() {
            return Err(Error::Invalid(
                "a bulk cancel needs at least one filter; cancelling every run is not offered".into(),
            ));
        }
        let ids = self.cancelable(user, query)?;
        if ids.len() != expected {
            return Err(Error::Conflict(format!(
                "{} runs match now, not the {expected} you were shown; look at the list again and retry",
                ids.len()
            )));
        }
        let mut cancelled = 0;
        for id in ids {
            match self.cancel(user, id) {
                Ok(_) => cancelled += 1,
                // Finished meanwhile: nothing left to cancel.
                Err(Error::Conflict(_)) => {}
                Err(e) => return Err(e),
            }
        }
        self.app.audit(&user.name, "runs.cancel-matching", "runs", Some(format!("{cancelled} runs")))?;
        Ok(cancelled)
    }

    /// One run, if `user` may see it.
    pub fn show(&self, user: &User, id: RunId) -> Result<Run> {
        let run = self.get(id)?;
        if !runs::can_view(user, &run) {
            // Said as "not found": a run you may not see does not exist for you.
            return Err(Error::NotFound(format!("no run {id}")));
        }
        Ok(run)
    }

    pub(super) fn check_control(user: &User, run: &Run, what: &str) -> Result<()> {
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
        let app = self.app;
        let mut run = self.get(id)?;
        Self::check_control(user, &run, "cancel")?;
        let now = app.now();
        let finished = |status: RunStatus| {
            Error::Conflict(format!("run {id} has already finished ({status}); there is nothing to cancel"))
        };
        match run.status {
            s if s.is_finished() => return Err(finished(s)),
            RunStatus::Running => {
                // Under these locks neither the worker nor the committer can
                // record its outcome meanwhile; re-read so a run that just
                // finished is not overwritten with its running state.
                let live = lock(&app.engine.live);
                let _recording = lock(&app.engine.recording);
                let mut current = self.get(id)?;
                if current.status.is_finished() {
                    return Err(finished(current.status));
                }
                if let Some(l) = live.get(&id) {
                    l.control.cancel(Duration::from_secs(app.host.config().cancel_grace_secs));
                }
                current.cancel_requested_by = Some(user.name.clone());
                app.store.put_run(&current, None)?;
                app.run_changed();
                run = current;
            }
            status => {
                if status == RunStatus::Queued
                    && let Some((key, _)) = app.store.queued()?.into_iter().find(|(_, q)| *q == id)
                    && app.store.dequeue(&key)?
                {
                    app.engine.count_queued(&*app.store, &run.task, -1)?;
                }
                run.status = RunStatus::Cancelled;
                run.cancel_requested_by = Some(user.name.clone());
                run.finished_at = Some(now);
                app.store.put_run(&run, Some(now))?;
                app.run_changed();
            }
        }
        app.store.flush()?;
        tracing::info!(run = id, by = %user.name, "Run cancel requested.");
        Ok(run)
    }

    /// Deletes a finished or cancelled run and its messages.
    pub fn delete(&self, user: &User, id: RunId) -> Result<()> {
        let run = self.get(id)?;
        Self::check_control(user, &run, "delete")?;
        if !run.status.is_finished() {
            return Err(Error::Conflict(format!(
                "run {id} is {}; only finished or cancelled runs can be deleted. Cancel it first",
                run.status
            )));
        }
        self.app.store.delete_run(id, run.finished_at)?;
        self.app.run_changed();
        self.app.store.flush()?;
        Ok(())
    }

    /// The statuses a run's messages have: what its filter offers.
    pub fn message_statuses(&self, user: &User, id: RunId) -> Result<Vec<String>> {
        self.show(user, id)?;
        Ok(self.app.store.message_statuses(id)?)
    }

    /// The fields of the rows some messages are about, as the file gave
    /// them (masked when they were kept), by line.
    pub fn message_rows(
        &self,
        user: &User,
        id: RunId,
        lines: &[u64],
    ) -> Result<std::collections::BTreeMap<u64, crate::records::Record>> {
        self.show(user, id)?;
        let rows = self.app.store.message_rows(id, lines)?;
        Ok(lines.iter().zip(rows).filter_map(|(line, row)| row.map(|r| (*line, r))).collect())
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
        self.show(user, id)?;
        self.app.audit(&user.name, "run.messages.read", &id.to_string(), None)?;
        Ok(self.app.store.messages(id, status, after, limit)?)
    }
}

/// The kinds of runs, for the grid's column and filter.
#[derive(Debug, Clone, Default)]
pub struct Kinds {
    tasks: std::collections::HashMap<String, &'static str>,
    plugins: std::collections::HashMap<String, &'static str>,
}

impl Kinds {
    /// Every kind a run can have.
    pub const ALL: [&'static str; 4] = ["import", "notifier", "export", "cleanup"];

    /// A run's kind.
    pub fn of(&self, run: &Run) -> &'static str {
        self.tasks.get(&run.task).or_else(|| self.plugins.get(&run.plugin)).copied().unwrap_or("")
    }
}

/// A plugin kind as the grid names it.
pub fn kind_name(kind: crate::plugins::PluginKind) -> &'static str {
    match kind {
        crate::plugins::PluginKind::ImportMapping => "import",
        crate::plugins::PluginKind::Notifier => "notifier",
    }
}
