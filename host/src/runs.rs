//! Runs (background tasks): one durable record per execution of a task,
//! with status, progress, summary counts and per-row messages, and who may
//! see, cancel and delete it.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::store::RunId;
use crate::users::{Permission, Role, User};

/// Where a run is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RunStatus {
    /// Waiting in the batch queue.
    Queued,
    /// A worker is running it.
    Running,
    /// Finished without error.
    Succeeded,
    /// Finished with an error.
    Failed,
    /// Stopped by a person.
    Cancelled,
    /// The host stopped while it ran; run the task again to redo it.
    Interrupted,
    /// Held until a person confirms it (mass-change guard).
    AwaitingConfirmation,
    /// Held until a person with the authorize permission approves it.
    AwaitingAuthorization,
}

impl RunStatus {
    /// Every status, in the order filters list them.
    pub const ALL: [RunStatus; 8] = [
        RunStatus::Queued,
        RunStatus::Running,
        RunStatus::AwaitingConfirmation,
        RunStatus::AwaitingAuthorization,
        RunStatus::Succeeded,
        RunStatus::Failed,
        RunStatus::Cancelled,
        RunStatus::Interrupted,
    ];

    /// Whether the run is over (it may be deleted).
    pub fn is_finished(self) -> bool {
        matches!(self, RunStatus::Succeeded | RunStatus::Failed | RunStatus::Cancelled | RunStatus::Interrupted)
    }

    /// The status as written in tables and filters.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
            RunStatus::Interrupted => "interrupted",
            RunStatus::AwaitingConfirmation => "awaiting-confirmation",
            RunStatus::AwaitingAuthorization => "awaiting-authorization",
        }
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What started a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    /// A person (run-now).
    User,
    /// The task's schedule.
    Schedule,
    /// A workflow.
    Workflow,
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Trigger::User => "user",
            Trigger::Schedule => "schedule",
            Trigger::Workflow => "workflow",
        })
    }
}

/// A run's durable record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Run {
    /// Unique, increasing.
    pub id: RunId,
    /// The task's name.
    pub task: String,
    /// The plugin it ran.
    pub plugin: String,
    /// Who owns it: the task's owner for scheduled runs, the person for run-now.
    pub owner: String,
    /// What started it.
    pub trigger: Trigger,
    /// Where it is.
    pub status: RunStatus,
    /// The scheduled fire time it executes, if scheduled; for a run a
    /// person submitted for later, when it is to start.
    pub fire_time: Option<DateTime<Utc>>,
    /// When it was queued.
    pub queued_at: DateTime<Utc>,
    /// When a worker started it.
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// Units done.
    pub progress_done: u64,
    /// Units in all, when known.
    pub progress_total: Option<u64>,
    /// Summary counts, such as `new`, `updated`, `errors`, `notifications`.
    pub summary: BTreeMap<String, u64>,
    /// Why it failed.
    pub error: Option<String>,
    /// Kept until deleted by a person (no retention).
    pub keep: bool,
    /// How many messages it has.
    pub message_count: u64,
    /// Who asked to cancel it, when someone did.
    pub cancel_requested_by: Option<String>,
    /// A test import: it plans and reports, and commits only when asked.
    pub dry_run: bool,
    /// Who did what to the run, when, and why (confirmations, requests,
    /// approvals, commits).
    pub audit: Vec<Audit>,
}

/// A held run's outstanding one-time approval code, kept apart from the
/// run (which its viewers read): only its MAC under the server's key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Approval {
    /// HMAC-SHA-256 of the run and the code, hex.
    pub mac: String,
    /// Who issued it.
    pub issued_by: String,
    /// When it stops working.
    pub expires_at: DateTime<Utc>,
    /// Wrong codes tried so far; at the limit the code is void.
    pub failed_attempts: u32,
}

/// One entry of a run's audit trail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Audit {
    /// Who.
    pub user: String,
    /// When.
    pub at: DateTime<Utc>,
    /// What: confirmed, requested-authorization, approved, committed, ...
    pub action: String,
    /// Their comment, if any.
    pub comment: Option<String>,
}

impl Run {
    /// A run just queued: no progress, no outcome yet.
    #[allow(clippy::too_many_arguments)]
    pub fn queued(
        id: RunId,
        task: &str,
        plugin: &str,
        owner: &str,
        trigger: Trigger,
        fire_time: Option<DateTime<Utc>>,
        queued_at: DateTime<Utc>,
        keep: bool,
    ) -> Run {
        Run {
            id,
            task: task.into(),
            plugin: plugin.into(),
            owner: owner.into(),
            trigger,
            status: RunStatus::Queued,
            fire_time,
            queued_at,
            started_at: None,
            finished_at: None,
            progress_done: 0,
            progress_total: None,
            summary: BTreeMap::new(),
            error: None,
            keep,
            message_count: 0,
            cancel_requested_by: None,
            dry_run: false,
            audit: Vec::new(),
        }
    }
}

/// One message of a run (the Task Messages tab): a row, its status, and
/// what happened to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TaskMessage {
    /// The message's number within the run.
    pub seq: u64,
    /// The input row (line) it is about, if any.
    pub row: Option<u64>,
    /// The status: error, new, updated, notification, ...
    pub status: String,
    /// The field it is about, if any.
    pub field: Option<String>,
    /// What happened.
    pub message: String,
}

impl std::str::FromStr for RunStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        serde_json::from_value(serde_json::json!(s)).map_err(|_| {
            format!("`{s}` is not a run status; use queued, running, succeeded, failed, cancelled, interrupted, awaiting-confirmation or awaiting-authorization")
        })
    }
}

/// Messages as CSV: row, status, field, message.
pub fn messages_csv(messages: &[TaskMessage]) -> String {
    let mut out = String::from("row,status,field,message\n");
    let quote = |s: &str| {
        // A cell a spreadsheet would run as a formula is made text first
        // (OWASP's CSV injection advice): a file's content must not become
        // a command on the admin's desktop.
        let s = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) { format!("'{s}") } else { s.to_string() };
        if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s }
    };
    for m in messages {
        out.push_str(&format!(
            "{},{},{},{}\n",
            m.row.map(|r| r.to_string()).unwrap_or_default(),
            quote(&m.status),
            quote(m.field.as_deref().unwrap_or("")),
            quote(&m.message)
        ));
    }
    out
}

/// Whether `user` may see `run`. Besides the rules above, a user with the
/// authorize permission sees the runs that wait for an authorization.
pub fn can_view(user: &User, run: &Run) -> bool {
    user.role == Role::Owner
        || run.owner == user.name
        || (user.has(Permission::Autopilot) && matches!(run.trigger, Trigger::Schedule | Trigger::Workflow))
        || (user.has(Permission::Authorize)
            && matches!(run.status, RunStatus::AwaitingAuthorization | RunStatus::AwaitingConfirmation))
}

impl Run {
    /// When a run a person submitted for later is to start, while that is
    /// still ahead of `now`.
    pub fn waits_until(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match (self.trigger, self.status, self.fire_time) {
            (Trigger::User, RunStatus::Queued, Some(at)) if at > now => Some(at),
            _ => None,
        }
    }
}

/// A time column the runs grid sorts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimeColumn {
    /// When it was queued (the run's id order: the cheap one).
    #[default]
    Queued,
    /// When a worker started it.
    Started,
    /// When it ended.
    Finished,
}

impl TimeColumn {
    /// The column's name in addresses.
    pub fn as_str(self) -> &'static str {
        match self {
            TimeColumn::Queued => "queued",
            TimeColumn::Started => "started",
            TimeColumn::Finished => "finished",
        }
    }

    /// The column's time in a run.
    pub fn of(self, run: &Run) -> Option<DateTime<Utc>> {
        match self {
            TimeColumn::Queued => Some(run.queued_at),
            TimeColumn::Started => run.started_at,
            TimeColumn::Finished => run.finished_at,
        }
    }
}

impl std::str::FromStr for TimeColumn {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "queued" => Ok(TimeColumn::Queued),
            "started" => Ok(TimeColumn::Started),
            "finished" => Ok(TimeColumn::Finished),
            _ => Err(format!("`{s}` is not a time column; sort by queued, started or finished")),
        }
    }
}

impl std::str::FromStr for Trigger {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "user" => Ok(Trigger::User),
            "schedule" => Ok(Trigger::Schedule),
            "workflow" => Ok(Trigger::Workflow),
            _ => Err(format!("`{s}` is not a trigger; use user, schedule or workflow")),
        }
    }
}

/// Which runs a grid shows: every filter set must hold. `kind` is the
/// plugin's kind (`import`, `notifier`), looked up by the caller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunQuery {
    /// Any of these statuses (none: any).
    pub statuses: Vec<RunStatus>,
    /// The plugin's kind.
    pub kind: Option<String>,
    /// Whose run.
    pub owner: Option<String>,
    /// What started it.
    pub trigger: Option<Trigger>,
    /// Which task.
    pub task: Option<String>,
    /// Queued at or after.
    pub from: Option<DateTime<Utc>>,
    /// Queued before.
    pub to: Option<DateTime<Utc>>,
}

impl RunQuery {
    /// Whether no filter is set: the query matches every run.
    pub fn is_empty(&self) -> bool {
        *self == RunQuery::default()
    }

    /// Whether `run` (of a plugin of `kind`) matches.
    pub fn matches(&self, run: &Run, kind: &str) -> bool {
        (self.statuses.is_empty() || self.statuses.contains(&run.status))
            && self.kind.as_deref().is_none_or(|k| k == kind)
            && self.owner.as_deref().is_none_or(|o| o == run.owner)
            && self.trigger.is_none_or(|t| t == run.trigger)
            && self.task.as_deref().is_none_or(|t| t == run.task)
            && self.from.is_none_or(|f| run.queued_at >= f)
            && self.to.is_none_or(|t| run.queued_at < t)
    }
}

/// Whether `user` may cancel or delete `run`.
pub fn can_control(user: &User, run: &Run) -> bool {
    user.role == Role::Owner || run.owner == user.name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_cells_a_spreadsheet_would_run_are_made_text() {
        let m = |message: &str| TaskMessage {
            seq: 1,
            row: Some(2),
            status: "error".into(),
            field: Some("=cmd".into()),
            message: message.into(),
        };
        let csv = messages_csv(&[m("=HYPERLINK(\"http://x\")"), m("+1"), m("-2"), m("@SUM(A1)"), m("fine")]);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines[1], "2,error,'=cmd,\"'=HYPERLINK(\"\"http://x\"\")\"");
        assert_eq!(lines[2], "2,error,'=cmd,'+1");
        assert_eq!(lines[3], "2,error,'=cmd,'-2");
        assert_eq!(lines[4], "2,error,'=cmd,'@SUM(A1)");
        assert_eq!(lines[5], "2,error,'=cmd,fine");
    }
    use crate::users::JobEmail;

    fn user(name: &str, role: Role, permissions: Vec<Permission>) -> User {
        User { name: name.into(), email: String::new(), role, permissions, job_email: JobEmail::Never }
    }

    fn run(owner: &str, trigger: Trigger) -> Run {
        Run::queued(1, "t", "p", owner, trigger, None, Utc::now(), false)
    }

    /// Every role against every kind of run: (view, cancel/delete).
    #[test]
    fn the_permission_matrix_holds() {
        let owner = user("olga", Role::Owner, vec![]);
        let staff = user("sam", Role::Staff, vec![]);
        let pilot = user("pat", Role::Staff, vec![Permission::Autopilot]);
        let authorizer = user("ana", Role::Staff, vec![Permission::Authorize]);
        let held = || {
            let mut r = run("sam", Trigger::User);
            r.status = RunStatus::AwaitingAuthorization;
            r
        };
        let cases = [
            (&owner, run("sam", Trigger::User), true, true),
            (&owner, run("pat", Trigger::Schedule), true, true),
            (&staff, run("sam", Trigger::User), true, true),
            (&staff, run("sam", Trigger::Schedule), true, true),
            (&staff, run("pat", Trigger::User), false, false),
            (&staff, run("pat", Trigger::Schedule), false, false),
            (&staff, run("pat", Trigger::Workflow), false, false),
            (&pilot, run("sam", Trigger::Schedule), true, false),
            (&pilot, run("sam", Trigger::Workflow), true, false),
            (&pilot, run("sam", Trigger::User), false, false),
            (&pilot, run("pat", Trigger::User), true, true),
            (&authorizer, held(), true, false),
            (&authorizer, run("sam", Trigger::User), false, false),
            (&staff, held(), true, true),
            (&pilot, held(), false, false),
        ];
        for (who, r, view, control) in cases {
            assert_eq!(can_view(who, &r), view, "{} viewing {}'s {} run", who.name, r.owner, r.trigger);
            assert_eq!(can_control(who, &r), control, "{} controlling {}'s {} run", who.name, r.owner, r.trigger);
        }
    }
}
