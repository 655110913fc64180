//! `schoolbell task`: add, list, show, enable, disable, run now, remove.

use std::sync::Arc;

use anyhow::{Result, bail};
use clap::Subcommand;
use schoolbell::app::{App, History};
use schoolbell::imports::ImportTarget;
use schoolbell::records::Value;
use schoolbell::runs::RunStatus;
use schoolbell::schedule::Pause;
use schoolbell::tasks::{Misfire, Overlap, Task, TaskKind, TaskSpec};
use schoolbell::users::User;

use super::runs::print_run;
use super::{parse_param, print_table, say};

#[derive(Subcommand)]
pub(super) enum TaskCmd {
    /// Add a task.
    Add(Box<TaskArgs>),
    /// List tasks.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a task and its next five fire times.
    Show {
        /// The task.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Enable a task.
    Enable {
        /// The task.
        name: String,
    },
    /// Disable a task.
    Disable {
        /// The task.
        name: String,
    },
    /// Queue a run now (`--wait` runs it here and waits for it), or submit
    /// it to the batch queue for later with `--at`.
    RunNow {
        /// The task.
        name: String,
        /// Run it in this process and wait for the outcome.
        #[arg(long, conflicts_with = "at")]
        wait: bool,
        /// Start it then: `YYYY-MM-DD HH:MM` in the task's zone, or RFC 3339.
        #[arg(long)]
        at: Option<String>,
        /// Ahead of normal-priority runs (needs the set-priority permission).
        #[arg(long)]
        high_priority: bool,
        /// Keep the run until it is deleted by hand.
        #[arg(long)]
        keep: bool,
    },
    /// Remove a task (its runs stay; its state and dedupe ledger go).
    Remove {
        /// The task.
        name: String,
        /// Keep its state and dedupe ledger for a new task of the same name.
        #[arg(long)]
        keep_history: bool,
    },
}

#[derive(clap::Args)]
pub(super) struct TaskArgs {
    /// Unique name.
    name: String,
    /// The plugin to run.
    #[arg(long)]
    plugin: String,
    /// When: `once 2026-12-01 08:00`, `every 15 minutes`, `hourly at :30`, `daily at 07:00`,
    /// `weekly on mon,wed,fri at 06:30`, `monthly on 15 at 22:00`, `monthly on last at 18:00`, `cron 0 7 * * Mon-Fri`.
    #[arg(long)]
    schedule: String,
    /// import, notifier, export or cleanup (default: from the plugin).
    #[arg(long, value_parser = parse_kind)]
    kind: Option<TaskKind>,
    /// IANA time zone (default: the district's, `[scheduler] zone`).
    #[arg(long)]
    zone: Option<String>,
    /// Start, `YYYY-MM-DD HH:MM` in the zone (default: now).
    #[arg(long)]
    start: Option<String>,
    /// End, `YYYY-MM-DD HH:MM` in the zone.
    #[arg(long)]
    end: Option<String>,
    /// A plugin parameter, `name=value` (repeatable).
    #[arg(long = "param", value_parser = parse_param)]
    params: Vec<(String, Value)>,
    /// A rule the task uses (repeatable).
    #[arg(long = "rule", id = "rule")]
    rule_names: Vec<String>,
    /// A pause window, `YYYY-MM-DD..YYYY-MM-DD` (repeatable).
    #[arg(long = "pause", value_parser = parse_pause)]
    pauses: Vec<Pause>,
    /// Save it disabled.
    #[arg(long)]
    disabled: bool,
    /// Serve its runs before normal ones.
    #[arg(long)]
    high_priority: bool,
    /// Keep its runs until deleted.
    #[arg(long)]
    keep: bool,
    /// After downtime: run-once or skip.
    #[arg(long, value_parser = parse_misfire, default_value = "run-once")]
    misfire: Misfire,
    /// When the last run is still going: skip, queue-one or cancel-running.
    #[arg(long, value_parser = parse_overlap, default_value = "skip")]
    overlap: Overlap,
    /// Import tasks: the source to pick files up from, by name (`schoolbell source list`).
    #[arg(long)]
    source: Option<String>,
    /// Import tasks: the collection the rows go into.
    #[arg(long)]
    collection: Option<String>,
    /// Import tasks: how rows are keyed and matched.
    #[command(flatten)]
    matching: super::import::Matching,
    /// Who owns the task (account owner only): the staff user who runs and tests it.
    #[arg(long)]
    owner: Option<String>,
    /// Import tasks: pick up files whose names start with this.
    #[arg(long)]
    prefix: Option<String>,
    /// Notifier tasks: the notification group, email addresses or user names separated by commas.
    #[arg(long = "notify", value_delimiter = ',')]
    notify_group: Vec<String>,
    /// Notifier tasks: once (never repeat a dedupe key), until-cleared (again once the condition cleared), every-run.
    #[arg(long, default_value = "until-cleared")]
    dedupe: schoolbell::notify::Dedupe,
    /// Notifier tasks with until-cleared: repeat after this many days while the condition holds.
    #[arg(long)]
    repeat_days: Option<u32>,
}

fn parse_kind(s: &str) -> Result<TaskKind, String> {
    serde_json::from_value(serde_json::json!(s))
        .map_err(|_| format!("`{s}` is not a task kind; use import, notifier, export or cleanup"))
}

fn parse_misfire(s: &str) -> Result<Misfire, String> {
    serde_json::from_value(serde_json::json!(s))
        .map_err(|_| format!("`{s}` is not a misfire policy; use run-once or skip"))
}

fn parse_overlap(s: &str) -> Result<Overlap, String> {
    serde_json::from_value(serde_json::json!(s))
        .map_err(|_| format!("`{s}` is not an overlap policy; use skip, queue-one or cancel-running"))
}

fn parse_pause(s: &str) -> Result<Pause, String> {
    let (from, to) = s.split_once("..").ok_or_else(|| format!("`{s}` is not `YYYY-MM-DD..YYYY-MM-DD`"))?;
    let date = |d: &str| d.trim().parse().map_err(|_| format!("`{d}` is not a date (YYYY-MM-DD)"));
    Ok(Pause { from: date(from)?, to: date(to)? })
}

/// A policy's name as people write it (`run-once`, `queue-one`).
fn name<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

fn print_task(t: &Task) {
    let time = |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
    say!("{} ({}, plugin {}, owner {})", t.name, name(&t.kind), t.plugin, t.owner);
    say!("  schedule:  {} in {}", t.schedule, t.zone);
    say!("  window:    from {}{}", time(t.start), t.end.map(|e| format!(" to {}", time(e))).unwrap_or_default());
    say!(
        "  flags:     {}{}{}; misfire {}, overlap {}",
        if t.enabled { "enabled" } else { "disabled" },
        if t.high_priority { ", high priority" } else { "" },
        if t.keep { ", keep runs" } else { "" },
        name(&t.misfire),
        name(&t.overlap)
    );
    if !t.pauses.is_empty() {
        let list: Vec<String> = t.pauses.iter().map(|p| format!("{}..{}", p.from, p.to)).collect();
        say!("  paused:    {}", list.join(", "));
    }
    if !t.params.is_empty() {
        let list: Vec<String> = t.params.iter().map(|(k, v)| format!("{k}={}", v.to_json())).collect();
        say!("  params:    {}", list.join(", "));
    }
    say!("  next fires:");
    let fires = t.upcoming(5);
    if fires.is_empty() {
        say!("    none");
    }
    for f in fires {
        say!("    {}   {}", t.local_time(f), f.to_rfc3339());
    }
}

pub(super) fn run(app: &Arc<App>, user: &User, cmd: TaskCmd) -> Result<()> {
    let tasks = app.tasks();
    match cmd {
        TaskCmd::Add(a) => {
            let a = *a;
            let import = match (a.source, a.collection) {
                (Some(source), Some(collection)) => {
                    Some(ImportTarget { source, prefix: a.prefix, ..a.matching.target(collection) })
                }
                (None, None) => None,
                _ => bail!("an import task needs both --source NAME and --collection NAME"),
            };
            let spec = TaskSpec {
                name: a.name,
                kind: a.kind,
                plugin: a.plugin,
                params: a.params.into_iter().map(|(k, v)| (k, v.to_json())).collect(),
                rules: a.rule_names,
                schedule: a.schedule,
                zone: a.zone,
                start: a.start,
                end: a.end,
                pauses: a.pauses,
                enabled: Some(!a.disabled),
                high_priority: a.high_priority,
                keep: a.keep,
                misfire: a.misfire,
                overlap: a.overlap,
                import,
                notify: schoolbell::notify::NotifySettings {
                    group: a.notify_group.into_iter().map(|g| g.trim().to_string()).filter(|g| !g.is_empty()).collect(),
                    dedupe: a.dedupe,
                    repeat_days: a.repeat_days,
                    ..Default::default()
                },
                owner: a.owner,
            };
            let task = tasks.add(user, spec)?;
            print_task(&task);
        }
        TaskCmd::List { json } => {
            let tasks = tasks.list(user)?;
            if json {
                say!("{}", serde_json::to_string_pretty(&tasks)?);
            } else if tasks.is_empty() {
                say!("No tasks. Add one with `schoolbell task add NAME --plugin P --schedule \"daily at 07:00\"`.");
            } else {
                let rows: Vec<Vec<String>> = tasks.iter().map(task_row).collect();
                print_table(
                    &["NAME", "KIND", "PLUGIN", "SCHEDULE", "ZONE", "ENABLED", "NEXT FIRE (UTC)", "OWNER"],
                    &rows,
                );
            }
        }
        TaskCmd::Show { name, json } => {
            let task = tasks.show(user, &name)?;
            if json {
                say!("{}", serde_json::to_string_pretty(&schoolbell::tasks::task_view(&task, 5))?);
            } else {
                print_task(&task);
            }
        }
        TaskCmd::Enable { name } => {
            let t = tasks.set_enabled(user, &name, true)?;
            say!("{name}: enabled; next fire {}", t.next_fire.map(|t| t.to_rfc3339()).unwrap_or_else(|| "none".into()));
        }
        TaskCmd::Disable { name } => {
            tasks.set_enabled(user, &name, false)?;
            say!("{name}: disabled");
        }
        TaskCmd::RunNow { name, wait, at, high_priority, keep } => {
            let at = match at {
                Some(text) => {
                    let zone = tasks.show(user, &name)?.tz();
                    Some(schoolbell::schedule::parse_local(&text, zone).map_err(|e| anyhow::anyhow!("--at: {e}"))?)
                }
                None => None,
            };
            let run = tasks.submit(user, &name, &schoolbell::app::Submit { at, high_priority, keep })?;
            if let Some(start) = run.fire_time.filter(|_| at.is_some()) {
                let zone = tasks.show(user, &name)?.tz();
                say!(
                    "run {} of task {name} waits in the batch queue to start at {} ({start}); `schoolbell runs cancel {}` takes it off",
                    run.id,
                    start.with_timezone(&zone).format("%Y-%m-%d %H:%M %Z"),
                    run.id
                );
                return Ok(());
            }
            if !wait {
                say!("run {} queued for task {name}; `schoolbell serve` runs it, or use --wait", run.id);
                return Ok(());
            }
            let engine = app.engine();
            super::recover_if_alone(app)?;
            let finished = tokio::runtime::Runtime::new()?.block_on(engine.finish(run.id, |_| {}))?;
            print_run(&finished);
            if finished.status != RunStatus::Succeeded {
                bail!("run {} {}", finished.id, finished.status);
            }
        }
        TaskCmd::Remove { name, keep_history } => {
            let history = if keep_history { History::Keep } else { History::Forget };
            tasks.remove(user, &name, history)?;
            let kept = if keep_history { "; its state and dedupe ledger are kept" } else { "" };
            say!("{name}: removed (its runs stay until deleted or expired{kept})");
        }
    }
    Ok(())
}

fn task_row(t: &Task) -> Vec<String> {
    vec![
        t.name.clone(),
        format!("{:?}", t.kind).to_lowercase(),
        t.plugin.clone(),
        t.schedule.to_string(),
        t.zone.clone(),
        if t.enabled { "yes".into() } else { "no".into() },
        t.upcoming(1).first().map(|t| t.format("%Y-%m-%d %H:%M").to_string()).unwrap_or_else(|| "-".into()),
        t.owner.clone(),
    ]
}
