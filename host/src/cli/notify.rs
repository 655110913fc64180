//! `schoolbell notify`: run a notifier once, read the outbox, send it.

use anyhow::{Result, bail};
use clap::Subcommand;
use schoolbell::app::{App, JobReport, NotifyOnce};
use schoolbell::notify::Delivery;
use schoolbell::records::Value;
use schoolbell::runs::RunStatus;
use schoolbell::users::User;

use super::{parse_param, print_table, say};
use crate::output::print_notifications;

#[derive(Subcommand)]
pub(super) enum NotifyCmd {
    /// Run a notifier once, as a run: its emails go to the outbox, its dedupe ledger and state are kept under --task.
    Run {
        /// The notifier plugin.
        plugin: String,
        /// The task name its state is kept under.
        #[arg(long, default_value = "manual")]
        task: String,
        /// A plugin parameter, `name=value` (repeatable).
        #[arg(long = "param", value_parser = parse_param)]
        params: Vec<(String, Value)>,
        /// Show the notifications only: send nothing, ledger nothing, keep no state.
        #[arg(long)]
        dry_run: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The outbox: emails waiting, sent and failed, newest last.
    Outbox {
        /// Only entries with this status: pending, sent or failed.
        #[arg(long)]
        status: Option<String>,
        /// At most this many (the newest).
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Send the emails that are due now through the `[email]` SMTP server.
    Send,
}

pub(super) fn run(app: &App, user: &User, cmd: NotifyCmd) -> Result<()> {
    match cmd {
        NotifyCmd::Run { plugin, task, params, dry_run, json } => {
            let job = NotifyOnce { plugin: plugin.clone(), task, params: params.into_iter().collect(), dry_run };
            let JobReport { run, notifications, .. } = app.jobs().notify_once(user, job)?;
            let Some(outcome) = notifications.filter(|_| run.status == RunStatus::Succeeded) else {
                bail!("{}", run.error.clone().unwrap_or_else(|| format!("run {} {}", run.id, run.status)));
            };
            if json {
                say!(
                    "{}",
                    serde_json::json!({ "run": run.id, "notifications": outcome.notifications, "log": outcome.log, "emails": run.summary.get("emails") })
                );
            } else {
                print_notifications(&plugin, &outcome);
                let emails = run.summary.get("emails").copied().unwrap_or(0);
                if dry_run {
                    say!("run {}: a dry run; nothing was sent or remembered", run.id);
                } else {
                    say!("run {}: {emails} emails to the outbox (`schoolbell notify outbox`)", run.id);
                }
            }
        }
        NotifyCmd::Outbox { status, limit, json } => {
            let status: Option<Delivery> = status.as_deref().map(str::parse).transpose().map_err(anyhow::Error::msg)?;
            let entries = app.outbox().list(user, status, limit)?;
            if json {
                let list: Vec<_> = entries.iter().map(|(id, e)| serde_json::json!({ "id": id, "entry": e })).collect();
                say!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                let rows: Vec<Vec<String>> = entries
                    .iter()
                    .map(|(id, e)| {
                        vec![
                            id.to_string(),
                            e.status.to_string(),
                            e.attempts.to_string(),
                            e.to.clone(),
                            e.subject.clone(),
                            e.last_error.clone().unwrap_or_default(),
                        ]
                    })
                    .collect();
                print_table(&["ID", "STATUS", "ATTEMPTS", "TO", "SUBJECT", "LAST ERROR"], &rows);
            }
        }
        NotifyCmd::Send => {
            let d = app.outbox().send_due(user)?;
            say!("{} sent, {} to retry, {} failed", d.sent, d.retrying, d.failed);
            if d.unreachable {
                say!("the SMTP server could not be reached; the rest wait for the next attempt");
            }
        }
    }
    Ok(())
}
