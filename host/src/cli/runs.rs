//! `schoolbell runs`: list, show, cancel, delete, and read a run's messages.

use anyhow::Result;
use clap::Subcommand;
use schoolbell::app::App;
use schoolbell::runs::{Run, RunStatus};
use schoolbell::users::User;

use super::{print_table, say};

#[derive(Subcommand)]
pub(super) enum RunsCmd {
    /// List runs you may see, newest first.
    List {
        /// Only runs with this status.
        #[arg(long)]
        status: Option<String>,
        /// Only runs of this task.
        #[arg(long)]
        task: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one run.
    Show {
        /// The run's id.
        id: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a run.
    Cancel {
        /// The run's id.
        id: u64,
    },
    /// Delete a finished or cancelled run.
    Delete {
        /// The run's id.
        id: u64,
    },
    /// A run's messages (the Task Messages tab).
    Messages {
        /// The run's id.
        id: u64,
        /// Only messages with this status (error, new, notification, ...).
        #[arg(long)]
        status: Option<String>,
        /// Print CSV (all messages, for export).
        #[arg(long)]
        csv: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// At most this many (table and JSON).
        #[arg(long, default_value_t = 200)]
        limit: usize,
    },
}

fn progress(r: &Run) -> String {
    match r.progress_total {
        Some(total) if total > 0 => format!("{}/{} ({}%)", r.progress_done, total, r.progress_done * 100 / total),
        _ if r.progress_done > 0 => r.progress_done.to_string(),
        _ => "-".into(),
    }
}

pub(super) fn print_run(r: &Run) {
    let t = |t: Option<chrono::DateTime<chrono::Utc>>| t.map(|t| t.to_rfc3339()).unwrap_or_else(|| "-".into());
    say!("run {}: {} ({} run of task {}, plugin {}, owner {})", r.id, r.status, r.trigger, r.task, r.plugin, r.owner);
    say!("  queued {}, started {}, finished {}", r.queued_at.to_rfc3339(), t(r.started_at), t(r.finished_at));
    if let Some(f) = r.fire_time {
        say!("  fire time {}", f.to_rfc3339());
    }
    say!("  progress {}", progress(r));
    if !r.summary.is_empty() {
        let list: Vec<String> = r.summary.iter().map(|(k, v)| format!("{k} {v}")).collect();
        say!("  summary: {}", list.join(", "));
    }
    say!("  messages: {}", r.message_count);
    if let Some(e) = &r.error {
        say!("  error: {e}");
    }
    if let Some(by) = &r.cancel_requested_by {
        say!("  cancel requested by {by}");
    }
}

pub(super) fn run(app: &App, user: &User, cmd: RunsCmd) -> Result<()> {
    let runs = app.runs();
    match cmd {
        RunsCmd::List { status, task, limit, json } => {
            let status = status.as_deref().map(str::parse::<RunStatus>).transpose().map_err(anyhow::Error::msg)?;
            let list = runs.list(user, status, task.as_deref(), limit)?;
            if json {
                say!("{}", serde_json::to_string_pretty(&list)?);
            } else if list.is_empty() {
                say!("No runs.");
            } else {
                let now = app.now();
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|r| {
                        let status = match r.waits_until(now) {
                            Some(at) => format!("{} (starts {} UTC)", r.status, at.format("%Y-%m-%d %H:%M")),
                            None => r.status.to_string(),
                        };
                        vec![
                            r.id.to_string(),
                            r.task.clone(),
                            status,
                            r.trigger.to_string(),
                            r.owner.clone(),
                            r.queued_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                            progress(r),
                            r.error.clone().unwrap_or_default(),
                        ]
                    })
                    .collect();
                print_table(&["ID", "TASK", "STATUS", "TRIGGER", "OWNER", "QUEUED (UTC)", "PROGRESS", "ERROR"], &rows);
            }
        }
        RunsCmd::Show { id, json } => {
            let r = runs.show(user, id)?;
            if json {
                say!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print_run(&r);
            }
        }
        RunsCmd::Cancel { id } => {
            let r = runs.cancel(user, id)?;
            say!("run {id}: {}", if r.status == RunStatus::Cancelled { "cancelled" } else { "cancel requested" });
        }
        RunsCmd::Delete { id } => {
            runs.delete(user, id)?;
            say!("run {id}: deleted");
        }
        RunsCmd::Messages { id, status, csv, json, limit } => {
            let limit = if csv { usize::MAX } else { limit };
            let (messages, next) = runs.messages(user, id, status.as_deref(), None, limit)?;
            if csv {
                crate::output::write_out(format_args!("{}", schoolbell::runs::messages_csv(&messages)));
            } else if json {
                say!("{}", serde_json::json!({ "messages": messages, "next": next }));
            } else {
                let rows: Vec<Vec<String>> = messages
                    .iter()
                    .map(|m| {
                        vec![
                            m.row.map(|r| r.to_string()).unwrap_or_default(),
                            m.status.clone(),
                            m.field.clone().unwrap_or_default(),
                            m.message.clone(),
                        ]
                    })
                    .collect();
                print_table(&["ROW", "STATUS", "FIELD", "MESSAGE"], &rows);
                if next.is_some() {
                    say!("(more: raise --limit, or export all with --csv)");
                }
            }
        }
    }
    Ok(())
}
