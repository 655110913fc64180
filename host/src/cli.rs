//! Command-line parsing and the output people read (tables) or scripts
//! read (`--json`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use schoolbell::config::Config;
use schoolbell::plugins::{Capability, InstallStatus, PluginEntry, PluginHost, RunRequest};
use schoolbell::records::{Record, Value, record_to_json};
use schoolbell::rules::RuleSet;
use schoolbell::store::{CollectionSpec, Store};

/// Schoolbell: scheduled imports and notifiers for schools, with sandboxed
/// WebAssembly plugins.
#[derive(Parser)]
#[command(version, about)]
pub(crate) struct Args {
    /// The data directory: the store, the compile cache, `schoolbell.toml`.
    #[arg(
        long,
        global = true,
        env = "SCHOOLBELL_DATA",
        default_value = "schoolbell-data"
    )]
    data: PathBuf,
    /// The folder of admin rules (overrides `rules_dir` in the config).
    #[arg(long, global = true, env = "SCHOOLBELL_RULES")]
    rules: Option<PathBuf>,
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
    /// Compile the config, every rule and every installed plugin; list every problem.
    Check,
    /// Install the shipped plugins, import the demo roster, run the demo notifier.
    Demo {
        /// Where the built plugins are.
        #[arg(long, default_value = "target/plugins")]
        plugins: PathBuf,
    },
}

#[derive(Subcommand)]
enum PluginCmd {
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
}

#[derive(Subcommand)]
enum RuleCmd {
    /// Compile a rule file and report errors with line and column.
    Check {
        /// The `.rhai` file.
        file: PathBuf,
    },
}

fn parse_param(s: &str) -> Result<(String, Value), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not `name=value`"))?;
    Ok((k.trim().to_string(), Value::Text(v.to_string())))
}

/// What every command needs, opened once.
pub(crate) struct Ctx {
    pub(crate) data: PathBuf,
    pub(crate) host: PluginHost,
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
    std::fs::create_dir_all(data)
        .with_context(|| format!("cannot create the data directory {}", data.display()))?;
    let config = Config::load(data)?;
    let rules_dir = rules_dir(rules, &config, data);
    let rules = RuleSet::load_dir(&rules_dir, config.rules.clone()).map_err(|errors| {
        anyhow::anyhow!(
            errors
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        )
    })?;
    let store = Arc::new(Store::open(&data.join("store"))?);
    let host = PluginHost::new(store, Arc::new(rules), &data.join("cache"), config.sandbox)?;
    Ok(Ctx {
        data: data.to_path_buf(),
        host,
    })
}

pub(crate) fn run(args: Args) -> Result<()> {
    if let Command::Rule(RuleCmd::Check { file }) = &args.command {
        RuleSet::new(Path::new("."), Default::default()).compile_file(file)?;
        println!("{}: ok", file.display());
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
            params,
            json,
        }) => {
            let request = RunRequest {
                params: params.into_iter().collect(),
                ..Default::default()
            };
            let report = import_file(
                &cx,
                &plugin,
                &file,
                &into,
                key.as_deref(),
                &indexes,
                &request,
            )?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_import(&report);
            }
            Ok(())
        }
        Command::Notify(NotifyCmd::Run {
            plugin,
            task,
            params,
            json,
        }) => {
            let request = RunRequest {
                task,
                params: params.into_iter().collect(),
                ..Default::default()
            };
            let outcome = cx.host.run_notifier(&plugin, &request)?;
            cx.host
                .store()
                .apply_task_state(&request.task, &outcome.state_writes)?;
            cx.host.store().flush()?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "notifications": outcome.notifications, "log": outcome.log })
                );
            } else {
                print_notifications(&plugin, &outcome);
            }
            Ok(())
        }
        Command::Check => check(&cx),
        Command::Demo { plugins } => crate::demo::run(&cx, &plugins),
        Command::Rule(_) => unreachable!("handled above"),
    }
}

fn plugin(cx: &Ctx, cmd: PluginCmd) -> Result<()> {
    let host = &cx.host;
    match cmd {
        PluginCmd::Install { files, grant_all } => {
            for file in files {
                let (mut entry, status) = host.install(&file)?;
                if grant_all {
                    entry = host.grant_all(&entry.name)?;
                }
                let what = match status {
                    InstallStatus::Installed => "installed".to_string(),
                    InstallStatus::Unchanged => {
                        "already installed (same bytes); nothing changed".to_string()
                    }
                    InstallStatus::Replaced { previous } => {
                        format!("installed, replacing {previous}")
                    }
                };
                println!(
                    "{} {} ({}, WIT {}): {what}",
                    entry.name, entry.version, entry.kind, entry.wit_version
                );
            }
        }
        PluginCmd::List { json } => {
            let list = host.list()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else if list.is_empty() {
                println!(
                    "No plugins installed. Install one with `schoolbell plugin install FILE.wasm`."
                );
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
                print_table(
                    &["NAME", "VERSION", "KIND", "WIT", "ASKS FOR", "GRANTED"],
                    &rows,
                );
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
            println!(
                "{}: granted {capability}; now granted: {}",
                e.name,
                caps(&e.granted)
            );
        }
        PluginCmd::Revoke { name, capability } => {
            let e = host.revoke(&name, &capability)?;
            println!(
                "{}: revoked {capability}; now granted: {}",
                e.name,
                caps(&e.granted)
            );
        }
        PluginCmd::Remove { name } => {
            let e = host.remove(&name)?;
            println!("{} {} removed", e.name, e.version);
        }
    }
    Ok(())
}

fn caps(c: &[Capability]) -> String {
    if c.is_empty() {
        "-".into()
    } else {
        c.iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
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
        let default = p
            .default
            .as_ref()
            .map(|d| format!("default {d}"))
            .unwrap_or_else(|| "required".into());
        println!(
            "    {} ({}, {default}): {}",
            p.name, p.value_type, p.description
        );
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

fn spec_for(cx: &Ctx, collection: &str, key: Option<&str>, indexes: &[String]) -> Result<()> {
    let store = cx.host.store();
    let existing = store.collection(collection)?;
    let key_field = match (key, &existing) {
        (Some(k), _) => k.to_string(),
        (None, Some(spec)) => spec.key_field.clone(),
        (None, None) => {
            bail!("collection `{collection}` is new: say which field is its key with --key FIELD")
        }
    };
    let mut spec = existing.unwrap_or(CollectionSpec {
        key_field: key_field.clone(),
        indexes: vec![],
    });
    spec.key_field = key_field;
    for index in indexes {
        let fields: Vec<String> = index.split('+').map(|f| f.trim().to_string()).collect();
        if !spec.indexes.contains(&fields) {
            spec.indexes.push(fields);
        }
    }
    store.define_collection(collection, &spec)?;
    Ok(())
}

fn records(cx: &Ctx, cmd: RecordsCmd) -> Result<()> {
    let store = cx.host.store();
    match cmd {
        RecordsCmd::Load {
            collection,
            file,
            key,
            indexes,
        } => {
            let n = load_json(cx, &collection, &file, key.as_deref(), &indexes)?;
            println!(
                "{n} records loaded into `{collection}` from {}",
                file.display()
            );
        }
        RecordsCmd::List {
            collection,
            limit,
            json,
        } => {
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
                    .map(|r| {
                        headers
                            .iter()
                            .map(|h| r.get(h).map(Value::to_key_text).unwrap_or_default())
                            .collect()
                    })
                    .collect();
                let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
                print_table(&headers, &rows);
                println!(
                    "({} of {} records)",
                    page.len(),
                    store.count_records(&collection)?
                );
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
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not valid JSON", file.display()))?;
    let Some(items) = json.as_array() else {
        bail!("{}: expected a JSON array of objects", file.display())
    };
    let mut records = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let Some(obj) = item.as_object() else {
            bail!("{}: item {} is not an object", file.display(), i + 1)
        };
        let mut record = Record::new();
        for (k, v) in obj {
            let value = Value::from_json(v).with_context(|| {
                format!(
                    "{}: item {}, field `{k}`: arrays and objects are not record values",
                    file.display(),
                    i + 1
                )
            })?;
            record.insert(k.clone(), value);
        }
        records.push(record);
    }
    spec_for(cx, collection, key, indexes)?;
    let n = cx
        .host
        .store()
        .put_records(collection, &records)
        .with_context(|| format!("{}", file.display()))?;
    cx.host.store().flush()?;
    Ok(n)
}

/// What an import of one file did.
#[derive(serde::Serialize)]
pub(crate) struct ImportReport {
    pub(crate) file: String,
    pub(crate) collection: String,
    pub(crate) stored: u64,
    pub(crate) errors: Vec<schoolbell::plugins::RowError>,
    pub(crate) log: Vec<schoolbell::plugins::LogLine>,
}

/// Maps a file and stores its rows, all or nothing. The full import
/// pipeline (matching, diff, guard) builds on this.
pub(crate) fn import_file(
    cx: &Ctx,
    plugin: &str,
    file: &Path,
    into: &str,
    key: Option<&str>,
    indexes: &[String],
    request: &RunRequest,
) -> Result<ImportReport> {
    let entry = cx.host.entry(plugin)?;
    let cap = Capability::WriteCollection(into.into());
    if !entry.capabilities.contains(&cap) {
        bail!(
            "plugin {plugin} does not produce `{into}` records (it asks for: {})",
            caps(&entry.capabilities)
        );
    }
    if !entry.granted.contains(&cap) {
        bail!(
            "plugin {plugin} may write `{into}` only once an admin grants it: `schoolbell plugin grant {plugin} {cap}`"
        );
    }
    let input =
        std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    let shown = file.display().to_string();
    let mut rows = Vec::new();
    let outcome = cx.host.run_mapping(
        plugin,
        &shown,
        std::io::BufReader::new(input),
        request,
        |batch| {
            rows.extend(batch.into_iter().map(|r| r.record));
            Ok(())
        },
    )?;
    spec_for(cx, into, key, indexes)?;
    let stored = cx
        .host
        .store()
        .put_records(into, &rows)
        .with_context(|| shown.clone())? as u64;
    cx.host.store().flush()?;
    Ok(ImportReport {
        file: shown,
        collection: into.into(),
        stored,
        errors: outcome.errors,
        log: outcome.log,
    })
}

pub(crate) fn print_import(report: &ImportReport) {
    println!(
        "{}: {} rows stored in `{}`, {} rows refused",
        report.file,
        report.stored,
        report.collection,
        report.errors.len()
    );
    for e in &report.errors {
        let field = e
            .field
            .as_deref()
            .map(|f| format!(", field `{f}`"))
            .unwrap_or_default();
        println!("  line {}{field}: {}", e.line, e.message);
    }
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
        println!(
            "ok: config, rules and {} plugins in {}",
            list.len(),
            cx.data.display()
        );
        Ok(())
    } else {
        bail!("{}", problems.join("\n"))
    }
}
