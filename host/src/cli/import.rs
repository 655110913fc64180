//! `schoolbell import`: run an import task here with a progress bar,
//! review what a run plans, commit, confirm, request, approve; and import
//! a file by hand.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Result, bail};
use clap::Subcommand;
use schoolbell::app::{App, FileImport, Proof};
use schoolbell::imports::ImportTarget;
use schoolbell::records::Value;
use schoolbell::runs::{Run, RunStatus};
use schoolbell::users::User;

use super::runs::print_run;
use super::{parse_param, say};
use crate::output::{Rows, print_file_import, print_rows};

#[derive(Subcommand)]
pub(super) enum ImportCmd {
    /// Test connection: reach an import task's source and say what it would pick up.
    TestConnection {
        /// The import task.
        task: String,
    },
    /// Run an import task now, here, with a progress bar (`--dry-run`: a test import that changes nothing).
    Run {
        /// The import task.
        task: String,
        /// Plan and report only; commit later with `import commit RUN`.
        #[arg(long)]
        dry_run: bool,
    },
    /// Show what an import run plans, by change type, record by record (first 10,000 rows).
    Preview {
        /// The run.
        run: u64,
        /// Only rows of these types (new, updated, existing, ended, removed, multiple, duplicate, inactivated, error).
        #[arg(long = "type")]
        types: Vec<String>,
        /// At most this many rows.
        #[arg(long, default_value_t = 10_000)]
        limit: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Commit a test import's plan exactly as planned.
    Commit {
        /// The run.
        run: u64,
    },
    /// Confirm an import held for confirmation (>= 10% changed), and commit it.
    Confirm {
        /// The run.
        run: u64,
        /// Why.
        #[arg(long)]
        comment: Option<String>,
    },
    /// File an authorization request for an import held for authorization (>= 20% added).
    Request {
        /// The run.
        run: u64,
        /// Why these changes are wanted (required).
        #[arg(long)]
        comment: String,
    },
    /// Issue a one-time approval code for a held import (authorize permission).
    Code {
        /// The run.
        run: u64,
    },
    /// Approve a held import: with the authorize permission, or with a one-time code.
    Approve {
        /// The run.
        run: u64,
        /// A one-time approval code.
        #[arg(long)]
        code: Option<String>,
    },
    /// Map a file through an import mapping and store the rows (all or nothing), as a run; the file stays as it is.
    File {
        /// The mapping plugin.
        plugin: String,
        /// The input file.
        #[arg(value_parser = super::path_arg)]
        file: PathBuf,
        /// The collection to store the rows in.
        #[arg(long)]
        into: String,
        #[command(flatten)]
        matching: Box<Matching>,
        /// List every row's outcome, not only the counts.
        #[arg(long)]
        rows: bool,
        /// List the rows with this outcome (new, updated, existing, error, ...; repeatable).
        #[arg(long = "status")]
        statuses: Vec<String>,
        /// A plugin parameter, `name=value` (repeatable).
        #[arg(long = "param", value_parser = parse_param)]
        params: Vec<(String, Value)>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// How an import keys, indexes and matches its rows, and what a full
/// roster does: the same options for `import file` and `task add`.
#[derive(clap::Args)]
pub(super) struct Matching {
    /// The collection's key field (needed when the collection is new).
    #[arg(long)]
    key: Option<String>,
    /// A secondary index: fields joined by `+` (repeatable).
    #[arg(long = "index")]
    indexes: Vec<String>,
    /// The match rule (such as `match_student`); default: the key field alone.
    #[arg(long)]
    match_rule: Option<String>,
    /// The file is the full roster: inactivate the records it lacks.
    #[arg(long)]
    full_roster: bool,
    /// With --full-roster: delete the records the file lacks instead.
    #[arg(long, requires = "full_roster")]
    remove_missing: bool,
    /// The field holding a record's end date; rows that set it are reported as ended.
    #[arg(long)]
    end_field: Option<String>,
    /// Hold for confirmation at this % of records changed, added or inactivated.
    #[arg(long, default_value_t = 10.0)]
    confirm_percent: f64,
    /// Hold for authorization at this % of records added, or updated, or removed.
    #[arg(long, default_value_t = 20.0)]
    authorize_percent: f64,
}

impl Matching {
    /// The target these options describe, importing into `collection`.
    pub(super) fn target(self, collection: String) -> ImportTarget {
        ImportTarget {
            full_roster: self.full_roster,
            missing: if self.remove_missing {
                schoolbell::imports::Missing::Remove
            } else {
                schoolbell::imports::Missing::Inactivate
            },
            end_field: self.end_field,
            collection,
            key_field: self.key,
            indexes: self.indexes,
            match_rule: self.match_rule,
            guard: schoolbell::imports::Guard {
                confirm_percent: self.confirm_percent,
                authorize_percent: self.authorize_percent,
            },
            ..Default::default()
        }
    }
}

fn wait_with_progress(app: &Arc<App>, id: u64) -> Result<Run> {
    use std::io::Write;
    let engine = app.engine();
    super::recover_if_alone(app)?;
    let shown = !crate::local::forwarded() && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let run = tokio::runtime::Runtime::new()?.block_on(engine.finish(id, |r| {
        if shown && let Some(total) = r.progress_total.filter(|t| *t > 0) {
            let pct = (r.progress_done.min(total) * 100 / total) as usize;
            let bar = format!("{}{}", "#".repeat(pct / 4), " ".repeat(25 - pct / 4));
            eprint!("\r[{bar}] {pct:3}%");
            let _ = std::io::stderr().flush();
        }
    }))?;
    if shown {
        eprintln!("\r[{}] 100%", "#".repeat(25));
    }
    Ok(run)
}

pub(super) fn run(app: &Arc<App>, user: &User, cmd: ImportCmd) -> Result<()> {
    let review = app.imports();
    let show = |run: &Run| -> Result<()> {
        print_run(run);
        if let Ok(plan) = review.plan(user, run.id) {
            say!("  plan: {}", plan.summary());
        }
        Ok(())
    };
    match cmd {
        ImportCmd::File { plugin, file, into, matching, params, json, rows, statuses } => {
            let target = (*matching).target(into);
            let job = FileImport { plugin, file, target, params: params.into_iter().collect() };
            let report = app.jobs().import_file(user, job)?;
            return print_file_import(report, json, if rows { Rows::All } else { Rows::Only(statuses) });
        }
        ImportCmd::TestConnection { task } => say!("{}", app.tasks().test_connection(user, &task)?),
        ImportCmd::Run { task, dry_run } => {
            let queued =
                if dry_run { app.tasks().test_import(user, &task)? } else { app.tasks().run_now(user, &task)? };
            let run = wait_with_progress(app, queued.id)?;
            show(&run)?;
            match run.status {
                RunStatus::Succeeded if run.dry_run => {
                    say!(
                        "test import: nothing was written. Look it over with `schoolbell import preview {}`, then `schoolbell import commit {}`",
                        run.id,
                        run.id
                    )
                }
                RunStatus::Succeeded => {}
                RunStatus::AwaitingConfirmation => {
                    say!("held: `schoolbell import preview {0}`, then `schoolbell import confirm {0}`", run.id)
                }
                RunStatus::AwaitingAuthorization => say!(
                    "held: file a request with `schoolbell import request {0} --comment WHY`; someone with the authorize permission approves it (`schoolbell import approve {0}`) or issues a code (`schoolbell import code {0}`)",
                    run.id
                ),
                s => bail!("run {} {s}", run.id),
            }
        }
        ImportCmd::Preview { run, types, limit, json } => {
            let plan = review.plan(user, run)?;
            if json {
                let rows: Vec<_> = plan
                    .rows
                    .iter()
                    .filter(|r| types.is_empty() || types.iter().any(|t| t == r.status()))
                    .take(limit)
                    .collect();
                say!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({ "summary": plan.summary(), "counts": plan.counts, "hold": plan.hold, "rows": rows })
                    )?
                );
            } else {
                say!("{}", plan.summary());
                print_rows(&plan, &Rows::Only(types), limit);
                if plan.rows.len() > limit {
                    say!("(first {limit} of {} rows)", plan.rows.len());
                }
            }
        }
        ImportCmd::Commit { run } => show(&review.commit(user, run)?)?,
        ImportCmd::Confirm { run, comment } => show(&review.confirm(user, run, comment, Proof::Local)?)?,
        ImportCmd::Request { run, comment } => {
            review.request(user, run, &comment)?;
            say!("run {run}: authorization requested");
        }
        ImportCmd::Code { run } => say!("{}", review.code(user, run)?),
        ImportCmd::Approve { run, code } => show(&review.approve(user, run, code.as_deref(), Proof::Local)?)?,
    }
    Ok(())
}
