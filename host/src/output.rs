//! What the command line prints, for the CLI and the demo: lines that
//! end quietly at a closed pipe, tables, an import's report, a notifier's
//! notifications. A command forwarded to a running server prints to its
//! caller (`local`).

use anyhow::{Result, bail};
use schoolbell::app::JobReport;
use schoolbell::imports::ImportPlan;
use schoolbell::runs::RunStatus;

/// `println!` for everything the CLI prints. A reader that stops reading
/// (`schoolbell task list | head -1`) ends the command quietly, as `ls`
/// does, instead of a panic with a backtrace.
macro_rules! say {
    () => { $crate::output::write_out(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::output::write_out(format_args!("{}\n", format_args!($($arg)*))) };
}
pub(crate) use say;

/// Writes to standard output; a closed pipe exits at once, successfully.
/// A command forwarded to the server writes to its caller instead.
pub(crate) fn write_out(text: std::fmt::Arguments<'_>) {
    use std::io::Write;
    if crate::local::capture(&text) {
        return;
    }
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(text) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write to standard output: {e}");
        std::process::exit(1);
    }
}

pub(crate) fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        say!("{}", out.trim_end());
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// Which rows to list.
pub(crate) enum Rows {
    /// Every row.
    All,
    /// The rows with these outcomes (none: no rows, only the counts).
    Only(Vec<String>),
}

impl Rows {
    fn shows(&self, status: &str) -> bool {
        match self {
            Rows::All => true,
            Rows::Only(types) => types.iter().any(|t| t == status),
        }
    }
}

/// The counts by outcome, what was written, and the rows asked for.
pub(crate) fn print_import(plan: &ImportPlan, written: Option<u64>, rows: &Rows) {
    match written {
        Some(n) => say!("{} ({n} records written to `{}`)", plan.summary(), plan.collection),
        None => say!("{} (nothing written)", plan.summary()),
    }
    print_rows(plan, rows, usize::MAX);
}

pub(crate) fn print_rows(plan: &ImportPlan, rows: &Rows, limit: usize) {
    let shown = plan.rows.iter().filter(|r| rows.shows(r.status())).take(limit);
    for row in shown {
        for (field, message) in row.messages() {
            let field = field.map(|f| format!(", field `{f}`")).unwrap_or_default();
            say!("  line {} {}{field}: {message}", row.line, row.status());
        }
    }
}

/// What `import file` prints, and its exit status: a failed or held run
/// is an error that says what to do.
pub(crate) fn print_file_import(report: JobReport, json: bool, rows: Rows) -> Result<()> {
    let JobReport { run, plan, .. } = report;
    let Some(plan) =
        plan.filter(|_| !matches!(run.status, RunStatus::Failed | RunStatus::Cancelled | RunStatus::Interrupted))
    else {
        bail!("{}", run.error.as_deref().unwrap_or("the import did not finish"));
    };
    let written = run.summary.get("written").copied();
    if json {
        say!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "run": run.id, "status": run.status, "plan": plan, "written": written })
            )?
        );
    } else {
        print_import(&plan, written, &rows);
        if matches!(rows, Rows::Only(ref t) if t.is_empty()) && !plan.rows.is_empty() {
            say!("run {}: list the rows with --rows, or only some with --status error", run.id);
        }
    }
    match run.status {
        RunStatus::AwaitingConfirmation => bail!(
            "{}. Nothing was written: look the changes over (`schoolbell import preview {}`), then `schoolbell import confirm {}`, or run again with --confirm",
            plan.summary(),
            run.id,
            run.id
        ),
        RunStatus::AwaitingAuthorization => bail!(
            "{}. Nothing was written: file a request with `schoolbell import request {} --comment WHY` for someone with the authorize permission",
            plan.summary(),
            run.id
        ),
        _ => Ok(()),
    }
}

/// A notifier's notifications and log.
pub(crate) fn print_notifications(plugin: &str, outcome: &schoolbell::plugins::NotifierOutcome) {
    say!("{plugin}: {} notifications", outcome.notifications.len());
    for n in &outcome.notifications {
        say!("  [{}] {}", n.dedupe_key, n.subject);
        say!("      {}", n.body);
    }
    for line in &outcome.log {
        say!("  log {:?}: {}", line.level, line.message);
    }
}
