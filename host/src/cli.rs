//! Command-line parsing and the output people read (tables) or scripts
//! read (`--json`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use schoolbell::config::Config;
use schoolbell::imports::{ImportPlan, ImportTarget};
use schoolbell::notify::Delivery;
use schoolbell::plugins::{Capability, InstallStatus, PluginEntry, PluginHost, RunRequest};
use schoolbell::records::{Record, Value, record_to_json};
use schoolbell::rules::RuleSet;
use schoolbell::runs::{Run, RunStatus};
use schoolbell::schedule::Pause;
use schoolbell::scheduler::{Scheduler, SystemClock};
use schoolbell::store::Store;
use schoolbell::tasks::{Misfire, Overlap, Task, TaskKind, TaskSpec};
use schoolbell::users::{self, JobEmail, Permission, Role, User};

/// Schoolbell: scheduled imports and notifiers for schools, with sandboxed
/// WebAssembly plugins.
#[derive(Parser)]
#[command(version, about)]
pub(crate) struct Args {
    /// The data directory: the store, the compile cache, `schoolbell.toml`.
    #[arg(long, global = true, env = "SCHOOLBELL_DATA", default_value = "schoolbell-data")]
    data: PathBuf,
    /// The folder of admin rules (overrides `rules_dir` in the config).
    #[arg(long, global = true, env = "SCHOOLBELL_RULES")]
    rules: Option<PathBuf>,
    /// Act as this user (the CLI's permission checks are the API's).
    #[arg(long = "as", global = true, env = "SCHOOLBELL_USER", default_value = "admin")]
    as_user: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install, inspect and grant plugins.
    #[command(subcommand)]
    Plugin(PluginCmd),
    /// Load and read records.
    #[command(subcommand)]
    Records(RecordsCmd),
    /// Run an import mapping over a file.
    #[command(subcommand)]
    Import(ImportCmd),
    /// Run a notifier.
    #[command(subcommand)]
    Notify(NotifyCmd),
    /// Check rules.
    #[command(subcommand)]
    Rule(RuleCmd),
    /// Timed tasks: add, list, show, enable, disable, run-now, remove.
    #[command(subcommand)]
    Task(TaskCmd),
    /// Runs (background tasks): list, show, cancel, delete, messages.
    #[command(subcommand)]
    Runs(RunsCmd),
    /// Check a schedule before saving it.
    #[command(subcommand)]
    Schedule(ScheduleCmd),
    /// Users, roles and API tokens.
    #[command(subcommand)]
    User(UserCmd),
    /// Credentials (SFTP keys), stored encrypted and never printed.
    #[command(subcommand)]
    Secret(SecretCmd),
    /// Run the scheduler, the workers and the HTTP API until SIGTERM.
    Serve {
        /// Listen address (overrides `[api] listen`); port 0 picks a free port.
        #[arg(long)]
        listen: Option<String>,
    },
    /// Compile the config, every rule and every installed plugin; list every problem.
    Check,
    /// Install the shipped plugins, import the demo roster, run the demo notifier, schedule demo tasks.
    Demo {
        /// Where the built plugins are.
        #[arg(long, default_value = "target/plugins")]
        plugins: PathBuf,
    },
}

#[derive(Subcommand)]
enum PluginCmd {
    /// Scaffold a plugin crate: `plugin new notifier NAME`.
    New {
        /// The kind of plugin (notifier).
        kind: NewKind,
        /// The plugin's name: lowercase letters, digits, dashes.
        name: String,
        /// The folder to create it in.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// The plugin SDK (`plugins/sdk` in the Schoolbell checkout).
        #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../plugins/sdk"))]
        sdk: PathBuf,
    },
    /// Install component files (the same bytes twice is a no-op).
    Install {
        /// `.wasm` component files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Also grant every capability the plugin asks for.
        #[arg(long)]
        grant_all: bool,
    },
    /// List installed plugins.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one plugin: parameters, capabilities, grants.
    Inspect {
        /// The plugin's name.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Grant a capability the plugin asks for (`read:COLLECTION`, `write:COLLECTION`).
    Grant {
        /// The plugin's name.
        name: String,
        /// The capability.
        capability: Capability,
    },
    /// Take back a grant.
    Revoke {
        /// The plugin's name.
        name: String,
        /// The capability.
        capability: Capability,
    },
    /// Remove a plugin.
    Remove {
        /// The plugin's name.
        name: String,
    },
}

#[derive(Subcommand)]
enum RecordsCmd {
    /// Load records from a JSON array of objects (all or nothing).
    Load {
        /// The collection.
        collection: String,
        /// The JSON file.
        file: PathBuf,
        /// The key field (needed when the collection is new).
        #[arg(long)]
        key: Option<String>,
        /// A secondary index: fields joined by `+` (repeatable).
        #[arg(long = "index")]
        indexes: Vec<String>,
    },
    /// Print records.
    List {
        /// The collection.
        collection: String,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ImportCmd {
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
    /// Map a file through an import mapping and store the rows (all or nothing).
    File {
        /// The mapping plugin.
        plugin: String,
        /// The input file.
        file: PathBuf,
        /// The collection to store the rows in.
        #[arg(long)]
        into: String,
        /// The key field (needed when the collection is new).
        #[arg(long)]
        key: Option<String>,
        /// A secondary index: fields joined by `+` (repeatable).
        #[arg(long = "index")]
        indexes: Vec<String>,
        /// The match rule (such as `match_student`); default: the key field alone.
        #[arg(long)]
        match_rule: Option<String>,
        /// The file is the full roster: inactivate records it lacks.
        #[arg(long)]
        full_roster: bool,
        /// With --full-roster: delete the records the file lacks instead.
        #[arg(long, requires = "full_roster")]
        remove_missing: bool,
        /// The field holding a record's end date; rows that set it are reported as ended.
        #[arg(long)]
        end_field: Option<String>,
        /// Confirm a mass change (>= 10%) up front.
        #[arg(long)]
        confirm: bool,
        /// A plugin parameter, `name=value` (repeatable).
        #[arg(long = "param", value_parser = parse_param)]
        params: Vec<(String, Value)>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum NotifyCmd {
    /// Run a notifier once and print its notifications.
    Run {
        /// The notifier plugin.
        plugin: String,
        /// The task name its state is kept under.
        #[arg(long, default_value = "manual")]
        task: String,
        /// A plugin parameter, `name=value` (repeatable).
        #[arg(long = "param", value_parser = parse_param)]
        params: Vec<(String, Value)>,
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

#[derive(Subcommand)]
enum TaskCmd {
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
    /// Queue a run now (`--wait` runs it here and waits for it).
    RunNow {
        /// The task.
        name: String,
        /// Run it in this process and wait for the outcome.
        #[arg(long)]
        wait: bool,
    },
    /// Remove a task (its runs stay).
    Remove {
        /// The task.
        name: String,
    },
}

#[derive(clap::Args)]
struct TaskArgs {
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
    /// Import tasks: the file to import.
    #[arg(long)]
    source: Option<String>,
    /// Import tasks: the collection the rows go into.
    #[arg(long)]
    collection: Option<String>,
    /// Import tasks: the collection's key field.
    #[arg(long)]
    key: Option<String>,
    /// Import tasks: a secondary index, fields joined by `+` (repeatable).
    #[arg(long = "index")]
    indexes: Vec<String>,
    /// Import tasks: the match rule (such as `match_student`).
    #[arg(long)]
    match_rule: Option<String>,
    /// Import tasks with an `sftp://user@host:port/folder` source: the stored secret with the private key.
    #[arg(long)]
    credential: Option<String>,
    /// Import tasks with a folder source: pick up files whose names start with this.
    #[arg(long)]
    prefix: Option<String>,
    /// Import tasks: the file is the full roster (records it lacks are inactivated).
    #[arg(long)]
    full_roster: bool,
    /// Import tasks with --full-roster: delete the records the file lacks instead of inactivating them.
    #[arg(long, requires = "full_roster")]
    remove_missing: bool,
    /// Import tasks: the field holding a record's end date; rows that set it are reported as ended.
    #[arg(long)]
    end_field: Option<String>,
    /// Import tasks: hold for confirmation at this % of records changed, added or inactivated.
    #[arg(long, default_value_t = 10.0)]
    confirm_percent: f64,
    /// Import tasks: hold for authorization at this % of records added.
    #[arg(long, default_value_t = 20.0)]
    authorize_percent: f64,
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

#[derive(Subcommand)]
enum RunsCmd {
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

#[derive(Subcommand)]
enum ScheduleCmd {
    /// Print a schedule's next fire times in its zone and in UTC, without creating a task.
    Next {
        /// The schedule phrase.
        schedule: String,
        /// IANA time zone.
        #[arg(long, default_value = "UTC")]
        tz: String,
        /// Start from this local time (`YYYY-MM-DD HH:MM`) instead of now.
        #[arg(long)]
        from: Option<String>,
        /// How many.
        #[arg(long, default_value_t = 5)]
        count: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum SecretCmd {
    /// Store (or replace) a secret from a file, such as a private key.
    Set {
        /// Its name, used by tasks (`--credential NAME`).
        name: String,
        /// The file holding it.
        #[arg(long)]
        file: PathBuf,
    },
    /// List the secrets' names (never their values).
    List,
}

#[derive(Subcommand)]
enum UserCmd {
    /// Add or replace a user.
    Add {
        /// Login name.
        name: String,
        /// owner or staff.
        #[arg(long, default_value = "staff")]
        role: Role,
        /// Email address.
        #[arg(long, default_value = "")]
        email: String,
        /// autopilot or authorize (repeatable).
        #[arg(long = "permission")]
        permissions: Vec<Permission>,
        /// Job-completion emails: always, on-failure or never.
        #[arg(long, default_value = "on-failure")]
        job_email: JobEmail,
    },
    /// List users.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Issue an API token (printed once; only its hash is stored).
    Token {
        /// The user.
        name: String,
    },
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

#[derive(Subcommand)]
enum RuleCmd {
    /// Compile a rule file and report errors with line and column.
    Check {
        /// The `.rhai` file.
        file: PathBuf,
    },
    /// Run a rule over sample rows and show which match and the values that decided.
    Test {
        /// The `.rhai` file.
        file: PathBuf,
        /// A JSON array of objects, one per row.
        #[arg(long)]
        sample: PathBuf,
        /// A task parameter the rule reads as `params.NAME`, `name=value` (repeatable; numbers are numbers).
        #[arg(long = "param", value_parser = parse_json_param)]
        params: Vec<(String, Value)>,
    },
    /// Save a rule into the rules folder, only if it compiles.
    Save {
        /// The rule's name (the file becomes NAME.rhai).
        name: String,
        /// The `.rhai` file to save.
        file: PathBuf,
    },
    /// List the loaded rules.
    List,
}

/// `name=value`, the value read as JSON when it is a number or boolean.
fn parse_json_param(s: &str) -> Result<(String, Value), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("`{s}` is not `name=value`"))?;
    let value = match serde_json::from_str::<serde_json::Value>(v) {
        Ok(j @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => Value::from_json(&j),
        _ => None,
    };
    Ok((k.trim().to_string(), value.unwrap_or_else(|| Value::Text(v.to_string()))))
}

/// What `plugin new` scaffolds.
#[derive(Clone, Copy, clap::ValueEnum)]
enum NewKind {
    /// A notifier: reads records, returns notifications.
    Notifier,
}

fn parse_param(s: &str) -> Result<(String, Value), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("`{s}` is not `name=value`"))?;
    Ok((k.trim().to_string(), Value::Text(v.to_string())))
}

/// What every command needs, opened once.
pub(crate) struct Ctx {
    pub(crate) data: PathBuf,
    pub(crate) host: Arc<PluginHost>,
    pub(crate) scheduler: Arc<Scheduler>,
    pub(crate) config: Config,
}

fn rules_dir(args_rules: Option<&Path>, config: &Config, data: &Path) -> PathBuf {
    match (args_rules, &config.rules_dir) {
        (Some(dir), _) => dir.to_path_buf(),
        (None, Some(dir)) if dir.is_relative() => data.join(dir),
        (None, Some(dir)) => dir.clone(),
        (None, None) => PathBuf::from("rules"),
    }
}

pub(crate) fn open(data: &Path, rules: Option<&Path>) -> Result<Ctx> {
    std::fs::create_dir_all(data).with_context(|| format!("cannot create the data directory {}", data.display()))?;
    let config = Config::load(data)?;
    let rules_dir = rules_dir(rules, &config, data);
    let rules = RuleSet::load_dir(&rules_dir, config.rules.clone())
        .map_err(|errors| anyhow::anyhow!(errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n")))?;
    let store = Arc::new(Store::open(&data.join("store")).map_err(|e| in_use(data, e))?);
    let host = Arc::new(PluginHost::new(store, Arc::new(rules), &data.join("cache"), config.sandbox.clone())?);
    let scheduler = Scheduler::new(host.clone(), Arc::new(SystemClock), config.scheduler.clone());
    scheduler.set_sources(schoolbell::imports::Sources {
        secrets: Some(schoolbell::secrets::Secrets::open(data)?),
        staging: data.join("staging"),
    });
    Ok(Ctx { data: data.to_path_buf(), host, scheduler, config })
}

/// A store held by a running server gets an error that says where the
/// server is and how to reach it instead.
fn in_use(data: &Path, e: schoolbell::store::Error) -> anyhow::Error {
    if let Ok(text) = std::fs::read_to_string(data.join("serve.json"))
        && let Ok(info) = serde_json::from_str::<serde_json::Value>(&text)
    {
        return anyhow::anyhow!(
            "the store in {} is in use by `schoolbell serve` (pid {}); while it runs, use its HTTP API at http://{}/api/v1 (token: `Authorization: Bearer ...`), or stop it first",
            data.display(),
            info["pid"],
            info["listen"].as_str().unwrap_or("?")
        );
    }
    e.into()
}

/// The mailer for the `[email]` settings, with the SMTP password from the
/// stored secrets.
pub(crate) fn mailer(cx: &Ctx) -> Result<Option<schoolbell::notify::smtp::Mailer>> {
    let email = &cx.config.email;
    let password = match &email.password_secret {
        Some(name) => {
            let secret = schoolbell::secrets::Secrets::open(&cx.data)?.get(cx.host.store(), name)?;
            Some(String::from_utf8(secret).context("the SMTP password secret is not UTF-8 text")?.trim().to_string())
        }
        None => None,
    };
    Ok(schoolbell::notify::smtp::Mailer::new(email, password)?)
}

fn missing_records(remove: bool) -> schoolbell::imports::Missing {
    if remove { schoolbell::imports::Missing::Remove } else { schoolbell::imports::Missing::Inactivate }
}

pub(crate) fn run(args: Args) -> Result<()> {
    if let Command::Rule(RuleCmd::Check { file }) = &args.command {
        RuleSet::new(Path::new("."), Default::default()).compile_file(file)?;
        println!("{}: ok", file.display());
        return Ok(());
    }
    if let Command::Plugin(PluginCmd::New { kind: NewKind::Notifier, name, dir, sdk }) = &args.command {
        let made = schoolbell::plugins::scaffold::new_notifier(name, dir, sdk)?;
        println!("created {}: src/lib.rs is the whole plugin", made.display());
        println!("build:   xtask/build-plugins {}   (in the Schoolbell checkout)", made.display());
        println!("install: schoolbell plugin install target/plugins/{name}.wasm");
        return Ok(());
    }
    if let Command::Rule(RuleCmd::Test { file, sample, params }) = &args.command {
        return rule_test(&args.data, file, sample, params);
    }
    if let Command::Schedule(ScheduleCmd::Next { schedule, tz, from, count, json }) = &args.command {
        let preview = schoolbell::api::preview(schedule, tz, from.as_deref(), *count, chrono::Utc::now())
            .map_err(anyhow::Error::msg)?;
        if *json {
            println!("{}", serde_json::to_string_pretty(&preview)?);
        } else {
            println!("{} ({tz})", preview["schedule"].as_str().unwrap_or(""));
            for f in preview["fires"].as_array().into_iter().flatten() {
                println!("  {}   {}", f["local"].as_str().unwrap_or(""), f["utc"].as_str().unwrap_or(""));
            }
        }
        return Ok(());
    }
    let cx = open(&args.data, args.rules.as_deref())?;
    match args.command {
        Command::Plugin(cmd) => plugin(&cx, cmd),
        Command::Records(cmd) => records(&cx, cmd),
        Command::Import(ImportCmd::File {
            plugin,
            file,
            into,
            key,
            indexes,
            match_rule,
            full_roster,
            remove_missing,
            end_field,
            confirm,
            params,
            json,
        }) => {
            let request = RunRequest { params: params.into_iter().collect(), ..Default::default() };
            let target = ImportTarget {
                source: file.display().to_string(),
                full_roster,
                missing: missing_records(remove_missing),
                end_field,
                collection: into,
                key_field: key,
                indexes,
                match_rule,
                ..Default::default()
            };
            let (plan, written) = schoolbell::imports::import_file(&cx.host, &plugin, &target, &request, confirm)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "plan": plan, "written": written }))?);
            } else {
                print_import(&plan, written);
            }
            if written.is_none() && plan.already_imported.is_none() {
                bail!(
                    "{}. Nothing was written: {}",
                    plan.summary(),
                    if plan.hold == schoolbell::imports::Hold::Confirm {
                        "look the changes over, then run again with --confirm"
                    } else {
                        "run it as an import task and have it approved (`import request`, `import approve`)"
                    }
                );
            }
            Ok(())
        }
        Command::Import(cmd) => import(&cx, &users::get(cx.host.store(), &args.as_user)?, cmd),
        Command::Notify(NotifyCmd::Run { plugin, task, params, json }) => {
            let request = RunRequest { task, params: params.into_iter().collect(), ..Default::default() };
            let outcome = cx.host.run_notifier(&plugin, &request)?;
            cx.host.store().apply_task_state(&request.task, &outcome.state_writes)?;
            cx.host.store().flush()?;
            if json {
                println!("{}", serde_json::json!({ "notifications": outcome.notifications, "log": outcome.log }));
            } else {
                print_notifications(&plugin, &outcome);
            }
            Ok(())
        }
        Command::Notify(NotifyCmd::Outbox { status, limit, json }) => {
            let status: Option<Delivery> = status.as_deref().map(str::parse).transpose().map_err(anyhow::Error::msg)?;
            let entries =
                schoolbell::notify::outbox_newest(cx.host.store(), limit, |e| status.is_none_or(|s| e.status == s))?;
            if json {
                let list: Vec<_> = entries.iter().map(|(id, e)| serde_json::json!({ "id": id, "entry": e })).collect();
                println!("{}", serde_json::to_string_pretty(&list)?);
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
            Ok(())
        }
        Command::Notify(NotifyCmd::Send) => {
            let Some(mailer) = mailer(&cx)? else {
                bail!(
                    "no SMTP server is set: add smtp_host (and from, tls) under [email] in {}",
                    cx.data.join("schoolbell.toml").display()
                );
            };
            let d = mailer.deliver_due(cx.host.store(), chrono::Utc::now())?;
            println!("{} sent, {} to retry, {} failed", d.sent, d.retrying, d.failed);
            if d.unreachable {
                println!("the SMTP server could not be reached; the rest wait for the next attempt");
            }
            Ok(())
        }
        Command::Check => check(&cx),
        Command::Demo { plugins } => crate::demo::run(&cx, &plugins),
        Command::Task(cmd) => task(&cx, &users::get(cx.host.store(), &args.as_user)?, cmd),
        Command::Runs(cmd) => runs(&cx, &users::get(cx.host.store(), &args.as_user)?, cmd),
        Command::User(cmd) => user(&cx, cmd),
        Command::Secret(SecretCmd::Set { name, file }) => {
            let value = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            schoolbell::secrets::Secrets::open(&cx.data)?.set(cx.host.store(), &name, &value)?;
            println!("secret {name} stored (encrypted)");
            Ok(())
        }
        Command::Secret(SecretCmd::List) => {
            for name in cx.host.store().secret_names()? {
                println!("{name}");
            }
            Ok(())
        }
        Command::Serve { listen } => crate::serve::run(cx, listen),
        Command::Rule(RuleCmd::Save { name, file }) => {
            let source = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let rule = cx.host.rules().save(&name, &file.display().to_string(), &source)?;
            println!("rule {name} saved to {}", rule.file);
            Ok(())
        }
        Command::Rule(RuleCmd::List) => {
            for name in cx.host.rules().names() {
                println!("{name}");
            }
            Ok(())
        }
        Command::Rule(_) | Command::Schedule(_) => unreachable!("handled above"),
    }
}

fn plugin(cx: &Ctx, cmd: PluginCmd) -> Result<()> {
    let host = &cx.host;
    match cmd {
        PluginCmd::New { .. } => unreachable!("handled before the store is opened"),
        PluginCmd::Install { files, grant_all } => {
            for file in files {
                let (mut entry, status) = host.install(&file)?;
                if grant_all {
                    entry = host.grant_all(&entry.name)?;
                }
                let what = match status {
                    InstallStatus::Installed => "installed".to_string(),
                    InstallStatus::Unchanged => "already installed (same bytes); nothing changed".to_string(),
                    InstallStatus::Replaced { previous } => {
                        format!("installed, replacing {previous}")
                    }
                };
                println!("{} {} ({}, WIT {}): {what}", entry.name, entry.version, entry.kind, entry.wit_version);
            }
        }
        PluginCmd::List { json } => {
            let list = host.list()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else if list.is_empty() {
                println!("No plugins installed. Install one with `schoolbell plugin install FILE.wasm`.");
            } else {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|e| {
                        vec![
                            e.name.clone(),
                            e.version.clone(),
                            e.kind.to_string(),
                            e.wit_version.clone(),
                            caps(&e.capabilities),
                            caps(&e.granted),
                        ]
                    })
                    .collect();
                print_table(&["NAME", "VERSION", "KIND", "WIT", "ASKS FOR", "GRANTED"], &rows);
            }
        }
        PluginCmd::Inspect { name, json } => {
            let e = host.entry(&name)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&e)?);
            } else {
                print_entry(&e);
            }
        }
        PluginCmd::Grant { name, capability } => {
            let e = host.grant(&name, capability.clone())?;
            println!("{}: granted {capability}; now granted: {}", e.name, caps(&e.granted));
        }
        PluginCmd::Revoke { name, capability } => {
            let e = host.revoke(&name, &capability)?;
            println!("{}: revoked {capability}; now granted: {}", e.name, caps(&e.granted));
        }
        PluginCmd::Remove { name } => {
            let e = host.remove(&name)?;
            println!("{} {} removed", e.name, e.version);
        }
    }
    Ok(())
}

fn caps(c: &[Capability]) -> String {
    if c.is_empty() { "-".into() } else { c.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(", ") }
}

fn print_entry(e: &PluginEntry) {
    println!("{} {}  ({})", e.name, e.version, e.kind);
    println!("  {}", e.description);
    println!("  WIT:        schoolbell:plugin@{}", e.wit_version);
    println!("  component:  sha256 {} ({} bytes)", e.hash, e.size);
    println!("  asks for:   {}", caps(&e.capabilities));
    println!("  granted:    {}", caps(&e.granted));
    println!("  parameters:");
    for p in &e.params {
        let default = p.default.as_ref().map(|d| format!("default {d}")).unwrap_or_else(|| "required".into());
        println!("    {} ({}, {default}): {}", p.name, p.value_type, p.description);
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
        println!("{}", out.trim_end());
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

fn records(cx: &Ctx, cmd: RecordsCmd) -> Result<()> {
    let store = cx.host.store();
    match cmd {
        RecordsCmd::Load { collection, file, key, indexes } => {
            let n = load_json(cx, &collection, &file, key.as_deref(), &indexes)?;
            println!("{n} records loaded into `{collection}` from {}", file.display());
        }
        RecordsCmd::List { collection, limit, json } => {
            if store.collection(&collection)?.is_none() {
                bail!(
                    "collection `{collection}` does not exist; collections: {}",
                    store.collection_names()?.join(", ")
                );
            }
            let (page, _) = store.scan_records(&collection, None, limit)?;
            if json {
                let list: Vec<_> = page.iter().map(record_to_json).collect();
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                let mut headers: Vec<String> = Vec::new();
                for r in &page {
                    for k in r.keys() {
                        if !headers.contains(k) {
                            headers.push(k.clone());
                        }
                    }
                }
                let rows: Vec<Vec<String>> = page
                    .iter()
                    .map(|r| headers.iter().map(|h| r.get(h).map(Value::to_key_text).unwrap_or_default()).collect())
                    .collect();
                let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
                print_table(&headers, &rows);
                println!("({} of {} records)", page.len(), store.count_records(&collection)?);
            }
        }
    }
    Ok(())
}

/// Loads a JSON array of objects into a collection, all or nothing.
pub(crate) fn load_json(
    cx: &Ctx,
    collection: &str,
    file: &Path,
    key: Option<&str>,
    indexes: &[String],
) -> Result<usize> {
    let records = read_json_records(file)?;
    schoolbell::imports::define_collection(cx.host.store(), collection, key, indexes)?;
    let n = cx.host.store().put_records(collection, &records).with_context(|| format!("{}", file.display()))?;
    cx.host.store().flush()?;
    Ok(n)
}

/// Reads a JSON array of objects as records; an error names the item and field.
fn read_json_records(file: &Path) -> Result<Vec<Record>> {
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", file.display()))?;
    schoolbell::records::records_from_json(&json).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))
}

pub(crate) fn print_import(plan: &ImportPlan, written: Option<u64>) {
    match written {
        Some(n) => println!("{} ({n} records written to `{}`)", plan.summary(), plan.collection),
        None => println!("{} (nothing written)", plan.summary()),
    }
    print_rows(plan, &[], usize::MAX);
}

fn print_rows(plan: &ImportPlan, types: &[String], limit: usize) {
    let rows = plan.rows.iter().filter(|r| types.is_empty() || types.iter().any(|t| t == r.status())).take(limit);
    for row in rows {
        for (field, message) in row.messages() {
            let field = field.map(|f| format!(", field `{f}`")).unwrap_or_default();
            println!("  line {} {}{field}: {message}", row.line, row.status());
        }
    }
}

fn wait_with_progress(cx: &Ctx, user: &User, id: u64) -> Result<Run> {
    use std::io::Write;
    let sched = &cx.scheduler;
    // This process holds the store: runs left running belong to one that died.
    sched.recover()?;
    let runtime = tokio::runtime::Runtime::new()?;
    let shown = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let run = runtime.block_on(async {
        loop {
            sched.dispatch()?;
            let r: Run = sched.run(user, id)?;
            if shown && let Some(total) = r.progress_total.filter(|t| *t > 0) {
                let pct = (r.progress_done.min(total) * 100 / total) as usize;
                let bar = format!("{}{}", "#".repeat(pct / 4), " ".repeat(25 - pct / 4));
                eprint!("\r[{bar}] {pct:3}%");
                let _ = std::io::stderr().flush();
            }
            if r.status != RunStatus::Queued && r.status != RunStatus::Running {
                return Ok::<Run, schoolbell::scheduler::Error>(r);
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })?;
    if shown {
        eprintln!("\r[{}] 100%", "#".repeat(25));
    }
    Ok(run)
}

fn import(cx: &Ctx, user: &User, cmd: ImportCmd) -> Result<()> {
    let sched = &cx.scheduler;
    let show = |run: &Run| -> Result<()> {
        print_run(run);
        if let Ok(plan) = sched.import_plan(user, run.id) {
            println!("  plan: {}", plan.summary());
        }
        Ok(())
    };
    match cmd {
        ImportCmd::File { .. } => unreachable!("handled in run"),
        ImportCmd::TestConnection { task } => println!("{}", sched.test_connection(user, &task)?),
        ImportCmd::Run { task, dry_run } => {
            let queued = if dry_run { sched.test_import(user, &task)? } else { sched.run_now(user, &task)? };
            let run = wait_with_progress(cx, user, queued.id)?;
            show(&run)?;
            match run.status {
                RunStatus::Succeeded if run.dry_run => {
                    println!(
                        "test import: nothing was written. Look it over with `schoolbell import preview {}`, then `schoolbell import commit {}`",
                        run.id, run.id
                    )
                }
                RunStatus::Succeeded => {}
                RunStatus::AwaitingConfirmation => {
                    println!("held: `schoolbell import preview {0}`, then `schoolbell import confirm {0}`", run.id)
                }
                RunStatus::AwaitingAuthorization => println!(
                    "held: file a request with `schoolbell import request {0} --comment WHY`; someone with the authorize permission approves it (`schoolbell import approve {0}`) or issues a code (`schoolbell import code {0}`)",
                    run.id
                ),
                s => bail!("run {} {s}", run.id),
            }
        }
        ImportCmd::Preview { run, types, limit, json } => {
            let plan = sched.import_plan(user, run)?;
            if json {
                let rows: Vec<_> = plan
                    .rows
                    .iter()
                    .filter(|r| types.is_empty() || types.iter().any(|t| t == r.status()))
                    .take(limit)
                    .collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({ "summary": plan.summary(), "counts": plan.counts, "hold": plan.hold, "rows": rows })
                    )?
                );
            } else {
                println!("{}", plan.summary());
                print_rows(&plan, &types, limit);
                if plan.rows.len() > limit {
                    println!("(first {limit} of {} rows)", plan.rows.len());
                }
            }
        }
        ImportCmd::Commit { run } => show(&sched.import_commit(user, run)?)?,
        ImportCmd::Confirm { run, comment } => show(&sched.import_confirm(user, run, comment)?)?,
        ImportCmd::Request { run, comment } => {
            sched.import_request(user, run, &comment)?;
            println!("run {run}: authorization requested");
        }
        ImportCmd::Code { run } => println!("{}", sched.import_code(user, run)?),
        ImportCmd::Approve { run, code } => show(&sched.import_approve(user, run, code.as_deref())?)?,
    }
    Ok(())
}

pub(crate) fn print_notifications(plugin: &str, outcome: &schoolbell::plugins::NotifierOutcome) {
    println!("{plugin}: {} notifications", outcome.notifications.len());
    for n in &outcome.notifications {
        println!("  [{}] {}", n.dedupe_key, n.subject);
        println!("      {}", n.body);
    }
    for line in &outcome.log {
        println!("  log {:?}: {}", line.level, line.message);
    }
}

fn check(cx: &Ctx) -> Result<()> {
    let mut problems = Vec::new();
    let list = cx.host.list()?;
    for e in &list {
        if let Err(err) = cx.host.verify(&e.name) {
            problems.push(err.to_string());
        }
    }
    if problems.is_empty() {
        println!("ok: config, rules and {} plugins in {}", list.len(), cx.data.display());
        Ok(())
    } else {
        bail!("{}", problems.join("\n"))
    }
}

fn print_task(view: &serde_json::Value) {
    let t = &view["task"];
    let s = |v: &serde_json::Value| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
    println!("{} ({}, plugin {}, owner {})", s(&t["name"]), s(&t["kind"]), s(&t["plugin"]), s(&t["owner"]));
    println!("  schedule:  {} in {}", s(&t["schedule"]), s(&t["zone"]));
    println!(
        "  window:    from {}{}",
        s(&t["start"]),
        t["end"].as_str().map(|e| format!(" to {e}")).unwrap_or_default()
    );
    println!(
        "  flags:     {}{}{}; misfire {}, overlap {}",
        if t["enabled"] == true { "enabled" } else { "disabled" },
        if t["high_priority"] == true { ", high priority" } else { "" },
        if t["keep"] == true { ", keep runs" } else { "" },
        s(&t["misfire"]),
        s(&t["overlap"])
    );
    if let Some(p) = t["pauses"].as_array().filter(|p| !p.is_empty()) {
        let list: Vec<String> = p.iter().map(|p| format!("{}..{}", s(&p["from"]), s(&p["to"]))).collect();
        println!("  paused:    {}", list.join(", "));
    }
    if let Some(params) = t["params"].as_object() {
        let list: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("  params:    {}", list.join(", "));
    }
    println!("  next fires:");
    let fires = view["next"].as_array().cloned().unwrap_or_default();
    if fires.is_empty() {
        println!("    none");
    }
    for f in fires {
        println!("    {}   {}", s(&f["local"]), s(&f["utc"]));
    }
}

fn task(cx: &Ctx, user: &User, cmd: TaskCmd) -> Result<()> {
    let sched = &cx.scheduler;
    match cmd {
        TaskCmd::Add(a) => {
            let a = *a;
            let import = match (a.source, a.collection) {
                (Some(source), Some(collection)) => Some(ImportTarget {
                    source,
                    prefix: a.prefix,
                    full_roster: a.full_roster,
                    missing: missing_records(a.remove_missing),
                    end_field: a.end_field,
                    guard: schoolbell::imports::Guard {
                        confirm_percent: a.confirm_percent,
                        authorize_percent: a.authorize_percent,
                    },
                    collection,
                    key_field: a.key,
                    indexes: a.indexes,
                    match_rule: a.match_rule,
                    credential: a.credential,
                }),
                (None, None) => None,
                _ => bail!("an import task needs both --source FILE-OR-FOLDER and --collection NAME"),
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
            };
            let task = sched.add_task(user, spec)?;
            print_task(&schoolbell::api::task_view(&task, 5, sched.now()));
        }
        TaskCmd::List { json } => {
            let tasks = sched.tasks(user)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&tasks)?);
            } else if tasks.is_empty() {
                println!("No tasks. Add one with `schoolbell task add NAME --plugin P --schedule \"daily at 07:00\"`.");
            } else {
                let rows: Vec<Vec<String>> = tasks.iter().map(task_row).collect();
                print_table(
                    &["NAME", "KIND", "PLUGIN", "SCHEDULE", "ZONE", "ENABLED", "NEXT FIRE (UTC)", "OWNER"],
                    &rows,
                );
            }
        }
        TaskCmd::Show { name, json } => {
            let view = schoolbell::api::task_view(&sched.task(user, &name)?, 5, sched.now());
            if json {
                println!("{}", serde_json::to_string_pretty(&view)?);
            } else {
                print_task(&view);
            }
        }
        TaskCmd::Enable { name } => {
            let t = sched.set_enabled(user, &name, true)?;
            println!(
                "{name}: enabled; next fire {}",
                t.next_fire.map(|t| t.to_rfc3339()).unwrap_or_else(|| "none".into())
            );
        }
        TaskCmd::Disable { name } => {
            sched.set_enabled(user, &name, false)?;
            println!("{name}: disabled");
        }
        TaskCmd::RunNow { name, wait } => {
            let run = sched.run_now(user, &name)?;
            if !wait {
                println!("run {} queued for task {name}; `schoolbell serve` runs it, or use --wait", run.id);
                return Ok(());
            }
            sched.recover()?;
            let runtime = tokio::runtime::Runtime::new()?;
            let finished = runtime.block_on(async {
                loop {
                    sched.dispatch()?;
                    let r: Run = sched.run(user, run.id)?;
                    if r.status.is_finished() {
                        return Ok::<Run, schoolbell::scheduler::Error>(r);
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            })?;
            print_run(&finished);
            if finished.status != RunStatus::Succeeded {
                bail!("run {} {}", finished.id, finished.status);
            }
        }
        TaskCmd::Remove { name } => {
            sched.remove_task(user, &name)?;
            println!("{name}: removed (its runs stay until deleted or expired)");
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
        t.next_fire.filter(|_| t.enabled).map(|t| t.format("%Y-%m-%d %H:%M").to_string()).unwrap_or_else(|| "-".into()),
        t.owner.clone(),
    ]
}

fn progress(r: &Run) -> String {
    match r.progress_total {
        Some(total) if total > 0 => format!("{}/{} ({}%)", r.progress_done, total, r.progress_done * 100 / total),
        _ if r.progress_done > 0 => r.progress_done.to_string(),
        _ => "-".into(),
    }
}

fn print_run(r: &Run) {
    let t = |t: Option<chrono::DateTime<chrono::Utc>>| t.map(|t| t.to_rfc3339()).unwrap_or_else(|| "-".into());
    println!(
        "run {}: {} ({} run of task {}, plugin {}, owner {})",
        r.id, r.status, r.trigger, r.task, r.plugin, r.owner
    );
    println!("  queued {}, started {}, finished {}", r.queued_at.to_rfc3339(), t(r.started_at), t(r.finished_at));
    if let Some(f) = r.fire_time {
        println!("  fire time {}", f.to_rfc3339());
    }
    println!("  progress {}", progress(r));
    if !r.summary.is_empty() {
        let list: Vec<String> = r.summary.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!("  summary: {}", list.join(", "));
    }
    println!("  messages: {}", r.message_count);
    if let Some(e) = &r.error {
        println!("  error: {e}");
    }
    if let Some(by) = &r.cancel_requested_by {
        println!("  cancel requested by {by}");
    }
}

fn runs(cx: &Ctx, user: &User, cmd: RunsCmd) -> Result<()> {
    let sched = &cx.scheduler;
    match cmd {
        RunsCmd::List { status, task, limit, json } => {
            let status =
                status.as_deref().map(schoolbell::api::parse_status).transpose().map_err(anyhow::Error::msg)?;
            let list = sched.runs(user, status, task.as_deref(), limit)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else if list.is_empty() {
                println!("No runs.");
            } else {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|r| {
                        vec![
                            r.id.to_string(),
                            r.task.clone(),
                            r.status.to_string(),
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
            let r = sched.run(user, id)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print_run(&r);
            }
        }
        RunsCmd::Cancel { id } => {
            let r = sched.cancel(user, id)?;
            println!("run {id}: {}", if r.status == RunStatus::Cancelled { "cancelled" } else { "cancel requested" });
        }
        RunsCmd::Delete { id } => {
            sched.delete(user, id)?;
            println!("run {id}: deleted");
        }
        RunsCmd::Messages { id, status, csv, json, limit } => {
            let limit = if csv { usize::MAX } else { limit };
            let (messages, next) = sched.messages(user, id, status.as_deref(), None, limit)?;
            if csv {
                print!("{}", schoolbell::api::messages_csv(&messages));
            } else if json {
                println!("{}", serde_json::json!({ "messages": messages, "next": next }));
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
                    println!("(more: raise --limit, or export all with --csv)");
                }
            }
        }
    }
    Ok(())
}

fn user(cx: &Ctx, cmd: UserCmd) -> Result<()> {
    let store = cx.host.store();
    match cmd {
        UserCmd::Add { name, role, email, permissions, job_email } => {
            let u = User { name: name.clone(), email, role, permissions, job_email };
            users::put(store, &u)?;
            println!("user {name} ({role}) saved");
        }
        UserCmd::List { json } => {
            let list = users::list(store)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|u| {
                        let perms: Vec<String> =
                            u.permissions.iter().map(|p| format!("{p:?}").to_lowercase()).collect();
                        vec![u.name.clone(), u.role.to_string(), u.email.clone(), perms.join(", ")]
                    })
                    .collect();
                print_table(&["NAME", "ROLE", "EMAIL", "PERMISSIONS"], &rows);
            }
        }
        UserCmd::Token { name } => {
            if name == "admin" && store.users::<User>().get(b"admin")?.is_none() {
                users::put(store, &User::local_owner())?;
            }
            println!("{}", users::issue_token(store, &name)?);
        }
    }
    Ok(())
}

/// `rule test`: the rule over each sample row, with the values that decided.
fn rule_test(data: &Path, file: &Path, sample: &Path, params: &[(String, Value)]) -> Result<()> {
    let limits = Config::load(data).map(|c| c.rules).unwrap_or_default();
    let set = RuleSet::new(Path::new("."), limits);
    let rule = set.compile_file(file)?;
    let rows = read_json_records(sample)?;
    let params: Record = params.iter().cloned().collect();
    let mut matched = 0;
    for (i, row) in rows.iter().enumerate() {
        match set.eval(&rule, row, &params) {
            Ok(d) if d.matched => {
                matched += 1;
                println!("row {}: matches, because {}", i + 1, d.reason);
            }
            Ok(d) => println!("row {}: does not match, because {}", i + 1, d.reason),
            Err(e) => println!("row {}: error: {e}", i + 1),
        }
    }
    println!("{matched} of {} rows match", rows.len());
    Ok(())
}
