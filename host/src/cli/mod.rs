//! The command line: parsing, and the output people read (tables) or
//! scripts read (`--json`). One module per command group; each translates
//! its arguments into a call on the application core and prints the
//! answer, and nothing else: the core checks what the `--as` user may do.

mod import;
mod notify;
mod plugin;
mod records;
mod rule;
mod runs;
mod schedule;
mod source;
mod store;
mod task;
mod user;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};
use schoolbell::app::{App, OpenError};
use schoolbell::records::Value;

pub(crate) use crate::output::{print_table, say};

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
    /// The configuration file. Default: `schoolbell.toml` in the data directory.
    #[arg(long, global = true, env = "SCHOOLBELL_CONFIG")]
    config: Option<PathBuf>,
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
    Plugin(plugin::PluginCmd),
    /// Load and read records.
    #[command(subcommand)]
    Records(records::RecordsCmd),
    /// Run an import mapping over a file.
    #[command(subcommand)]
    Import(import::ImportCmd),
    /// Run a notifier.
    #[command(subcommand)]
    Notify(notify::NotifyCmd),
    /// Check rules.
    #[command(subcommand)]
    Rule(rule::RuleCmd),
    /// Timed tasks: add, list, show, enable, disable, run-now, remove.
    #[command(subcommand)]
    Task(task::TaskCmd),
    /// Runs (background tasks): list, show, cancel, delete, messages.
    #[command(subcommand)]
    Runs(runs::RunsCmd),
    /// The audit log (account owner): who changed, issued, revoked, failed to sign in, or read what.
    Audit {
        /// Entries after this number.
        #[arg(long)]
        after: Option<u64>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check a schedule before saving it.
    #[command(subcommand)]
    Schedule(schedule::ScheduleCmd),
    /// Users, roles and API tokens.
    #[command(subcommand)]
    User(user::UserCmd),
    /// Import sources (account owner): folders and SFTP servers that tasks pick files up from.
    #[command(subcommand)]
    Source(source::SourceCmd),
    /// Credentials (SFTP keys), stored encrypted and never printed.
    #[command(subcommand)]
    Secret(user::SecretCmd),
    /// Run the scheduler, the workers and the HTTP API until SIGTERM.
    Serve {
        /// Listen address (overrides `[api] listen`); port 0 picks a free port.
        #[arg(long)]
        listen: Option<String>,
        /// Serve plain HTTP on an address that is not loopback (without
        /// [api] tls_cert): only where the network is protected otherwise.
        #[arg(long)]
        insecure_listen: bool,
    },
    /// Compile the config, every rule and every installed plugin; list every problem.
    Check,
    /// The store: migrate, check, backup, restore.
    #[command(subcommand)]
    Store(store::StoreCmd),
    /// The configuration: `config reference` prints every key of `schoolbell.toml`.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Install the shipped plugins, import the demo roster, run the demo notifier, schedule demo tasks.
    Demo {
        /// Where the built plugins are.
        #[arg(long, default_value = "target/plugins")]
        plugins: PathBuf,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Print the reference of `schoolbell.toml` (Markdown), generated from the code.
    Reference,
}

impl Args {
    /// The `[log]` section, read before anything else so the log is set up
    /// first; a config that does not load is reported when the data
    /// directory opens, so here it only means the defaults.
    pub(crate) fn log_config(&self) -> schoolbell::config::LogConfig {
        let path = self.config.clone().unwrap_or_else(|| self.data.join(schoolbell::config::FILE_NAME));
        schoolbell::config::Config::load_file(&path).map(|c| c.log).unwrap_or_default()
    }

    /// Whether this command runs the service.
    pub(crate) fn serving(&self) -> bool {
        matches!(self.command, Command::Serve { .. })
    }
}

/// `name=value`, the value kept as text (the plugin checks its type).
fn parse_param(s: &str) -> Result<(String, Value), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("`{s}` is not `name=value`"))?;
    Ok((k.trim().to_string(), Value::Text(v.to_string())))
}

/// A path argument (files to read): relative to the caller's directory,
/// also when the command is forwarded to the server.
fn path_arg(arg: &str) -> Result<PathBuf, String> {
    Ok(crate::local::path(arg))
}

/// Runs the commands that need no data directory; none for the rest.
fn offline(args: &Args) -> Option<Result<()>> {
    Some(match &args.command {
        Command::Rule(cmd) if rule::offline(cmd) => rule::run_offline(&args.data, cmd),
        Command::Plugin(plugin::PluginCmd::New { kind, name, dir, sdk }) => plugin::new(*kind, name, dir, sdk),
        Command::Schedule(cmd) => schedule::run(cmd),
        // Both read or replace the whole store, which a running server holds.
        Command::Store(store::StoreCmd::Restore { .. } | store::StoreCmd::Copy { .. })
            if crate::local::serving(&args.data) =>
        {
            Err(anyhow::anyhow!(
                "`schoolbell serve` is running on {}: stop the service first, then run this again",
                args.data.display()
            ))
        }
        Command::Store(store::StoreCmd::Restore { dir }) => store::restore(&args.data, dir),
        Command::Store(store::StoreCmd::Copy { to, schema, password_file }) => {
            store::copy(&args.data, args.config.as_deref(), to, schema.as_deref(), password_file.as_deref())
        }
        Command::Store(store::StoreCmd::Migrate) => return store::migrate_database(&args.data, args.config.as_deref()),
        Command::Config(ConfigCmd::Reference) => {
            say!("{}", schoolbell::config::reference().trim_end());
            Ok(())
        }
        _ => return None,
    })
}

/// Before a command runs jobs in this process: holding the store alone,
/// runs left running belong to a process that died, and are marked
/// interrupted. Inside `serve` (a forwarded command) they are the server's
/// own, running now, and are left be.
fn recover_if_alone(app: &Arc<App>) -> Result<()> {
    // A shared database has other hosts' runs in it, running now.
    if !crate::local::forwarded() && !app.storage().shared() {
        app.engine().recover()?;
    }
    Ok(())
}

/// Runs one command; returns the exit status.
pub(crate) fn run(args: Args, logging: crate::logging::Logging) -> Result<i32> {
    if let Some(done) = offline(&args) {
        return done.map(|()| 0);
    }
    if let Command::User(cmd) = &args.command {
        user::read_password(cmd)?;
    }
    let serving = matches!(args.command, Command::Serve { .. } | Command::Demo { .. });
    // A server that holds the store answers on its socket: ask it first
    // rather than wait for the store's lock.
    if !serving && let Some(answer) = crate::local::send(&args.data) {
        return answer;
    }
    let app = match App::open_with(&args.data, args.rules.as_deref(), args.config.as_deref()) {
        Ok(app) => app,
        Err(e @ OpenError::InUse { .. }) => {
            // The server holds the store: it runs the command instead.
            if serving {
                return Err(e.into());
            }
            return crate::local::send(&args.data).unwrap_or(Err(e.into()));
        }
        Err(e) => return Err(e.into()),
    };
    if let Command::Serve { listen, insecure_listen } = args.command {
        return crate::serve::run(app, listen, insecure_listen, logging).map(|()| 0);
    }
    run_on(&app, args).map(|()| 0)
}

/// Runs a command against an open core, as the `--as` user.
pub(crate) fn run_on(app: &Arc<App>, args: Args) -> Result<()> {
    // A forwarded command line may be one of these too.
    if let Some(done) = offline(&args) {
        return done;
    }
    let app = app.clone();
    let user = app.user(&args.as_user)?;
    match args.command {
        Command::Schedule(_) | Command::Config(_) => unreachable!("answered by `offline`"),
        Command::Serve { .. } | Command::Demo { .. } if crate::local::forwarded() => {
            bail!("`schoolbell serve` is running on this data directory; stop it before running this command")
        }
        Command::Plugin(cmd) => plugin::run(&app, &user, cmd),
        Command::Records(cmd) => records::run(&app, &user, cmd),
        Command::Import(cmd) => import::run(&app, &user, cmd),
        Command::Notify(cmd) => notify::run(&app, &user, cmd),
        Command::Task(cmd) => task::run(&app, &user, cmd),
        Command::Runs(cmd) => runs::run(&app, &user, cmd),
        Command::User(cmd) => user::run(&app, &user, cmd),
        Command::Secret(cmd) => user::secret(&app, &user, cmd),
        Command::Source(cmd) => source::run(&app, &user, cmd),
        Command::Rule(cmd) => rule::run(&app, &user, cmd),
        Command::Check => check(&app, &user),
        Command::Audit { after, limit, json } => audit(&app, &user, after, limit, json),
        Command::Store(cmd) => store::run(&app, &user, cmd),
        Command::Demo { plugins } => crate::demo::run(&app, &user, &plugins),
        Command::Serve { .. } => unreachable!("`run` serves, and a forwarded `serve` is refused above"),
    }
}

fn audit(app: &Arc<App>, user: &schoolbell::users::User, after: Option<u64>, limit: usize, json: bool) -> Result<()> {
    let entries = app.audit_log().list(user, after, limit)?;
    if json {
        let list: Vec<serde_json::Value> =
            entries.iter().map(|(n, e)| serde_json::json!({ "seq": n, "entry": e })).collect();
        say!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|(n, e)| {
            vec![
                n.to_string(),
                e.at.format("%Y-%m-%d %H:%M:%S").to_string(),
                e.user.clone(),
                e.action.clone(),
                e.target.clone(),
                e.detail.clone().unwrap_or_default(),
            ]
        })
        .collect();
    print_table(&["#", "AT (UTC)", "USER", "ACTION", "TARGET", "DETAIL"], &rows);
    Ok(())
}

fn check(app: &Arc<App>, user: &schoolbell::users::User) -> Result<()> {
    let (count, problems) = app.plugins().verify_all(user)?;
    if !problems.is_empty() {
        bail!("{}", problems.join("\n"));
    }
    let data = app.data_dir().map(|d| d.display().to_string()).unwrap_or_default();
    say!("ok: config, rules and {count} plugins in {data}");
    Ok(())
}
