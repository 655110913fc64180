//! Background runs: query, cancel, delete and read messages. The owner sees
//! every run, staff their own, the autopilot permission scheduled runs; a
//! run you may not see does not exist for you.

use std::time::Duration;

use super::{App, Error, Result, lock};
use crate::runs::{self, Run, RunStatus, TaskMessage};
use crate::store::RunId;
use crate::users::User;

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
                // Under the live lock the worker cannot record its outcome
                // meanwhile; re-read so a run that just finished is not
                // overwritten with its running state.
                let live = lock(&app.engine.live);
                let mut current = self.get(id)?;
                if current.status.is_finished() {
                    return Err(finished(current.status));
                }
                if let Some(l) = live.get(&id) {
                    l.control.cancel(Duration::from_secs(app.host.config().cancel_grace_secs));
                }
                current.cancel_requested_by = Some(user.name.clone());
                app.store.put_run(&current, None)?;
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
        self.app.store.flush()?;
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
        self.show(user, id)?;
        self.app.audit(&user.name, "run.messages.read", &id.to_string(), None)?;
        Ok(self.app.store.messages(id, status, after, limit)?)
    }
}
