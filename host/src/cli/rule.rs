//! `schoolbell rule`: check and test a rule file (no data directory
//! needed), save a rule, list the rules.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Subcommand;
use schoolbell::app::App;
use schoolbell::config::Config;
use schoolbell::records::{Record, Value};
use schoolbell::rules::RuleSet;
use schoolbell::users::User;

use super::say;

#[derive(Subcommand)]
pub(super) enum RuleCmd {
    /// Compile a rule file and report errors with line and column.
    Check {
        /// The `.rhai` file.
        #[arg(value_parser = super::path_arg)]
        file: PathBuf,
    },
    /// Run a rule over sample rows and show which match and the values that decided.
    Test {
        /// The `.rhai` file.
        #[arg(value_parser = super::path_arg)]
        file: PathBuf,
        /// A JSON array of objects, one per row.
        #[arg(value_parser = super::path_arg, long)]
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
        #[arg(value_parser = super::path_arg)]
        file: PathBuf,
    },
    /// List the loaded rules.
    List,
    /// A rule's saved versions, oldest first: number, when, who, hash.
    History {
        /// The rule's name.
        name: String,
        /// Print the versions (with their sources) as JSON.
        #[arg(long)]
        json: bool,
    },
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

/// Whether the command works on a file alone, without the data directory.
pub(super) fn offline(cmd: &RuleCmd) -> bool {
    matches!(cmd, RuleCmd::Check { .. } | RuleCmd::Test { .. })
}

/// `rule check` and `rule test`: a rule file, compiled with the data
/// directory's limits when it has a config.
pub(super) fn run_offline(data: &Path, cmd: &RuleCmd) -> Result<()> {
    let limits = Config::load(data).map(|c| c.rules).unwrap_or_default();
    let set = RuleSet::new(Path::new("."), limits);
    match cmd {
        RuleCmd::Check { file } => {
            set.compile_file(file)?;
            say!("{}: ok", file.display());
        }
        RuleCmd::Test { file, sample, params } => {
            let rule = std::sync::Arc::new(set.compile_file(file)?);
            let rows = schoolbell::records::read_json_file(sample)?;
            let params: Record = params.iter().cloned().collect();
            let tested = schoolbell::app::test_rule(&set, &rule, &rows, &params)?;
            for line in &tested.printed.lines {
                say!("print: {line}");
            }
            for v in &tested.rows {
                match (&v.matched, &v.reason, &v.error) {
                    (Some(true), Some(reason), _) => say!("row {}: matches, because {reason}", v.row),
                    (Some(false), Some(reason), _) => say!("row {}: does not match, because {reason}", v.row),
                    (_, _, error) => say!("row {}: error: {}", v.row, error.as_deref().unwrap_or("")),
                }
            }
            say!("{} of {} rows match", tested.matched, rows.len());
            if let Some(stopped) = &tested.stopped {
                say!("{stopped}");
            }
        }
        _ => unreachable!("only check and test work offline"),
    }
    Ok(())
}

pub(super) fn run(app: &App, user: &User, cmd: RuleCmd) -> Result<()> {
    match cmd {
        RuleCmd::Save { name, file } => {
            let source = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let rule = app.rules().save(user, &name, &file.display().to_string(), &source)?;
            say!("rule {name} saved as {}", rule.file);
        }
        RuleCmd::List => {
            for rule in app.rules().list(user) {
                say!("{}", rule.name);
            }
        }
        RuleCmd::History { name, json } => {
            let versions = app.rules().history(user, &name)?;
            if json {
                say!("{}", serde_json::to_string_pretty(&versions)?);
            } else if versions.is_empty() {
                say!("rule {name} was never saved through schoolbell: the rules folder holds it");
            }
            for v in versions.iter().filter(|_| !json) {
                say!("version {}  {}  by {}  sha256 {}", v.version, v.saved_at.to_rfc3339(), v.saved_by, &v.hash[..12]);
            }
        }
        RuleCmd::Check { .. } | RuleCmd::Test { .. } => unreachable!("answered before the store is opened"),
    }
    Ok(())
}
