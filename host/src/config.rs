//! Configuration: one TOML file, `schoolbell.toml` in the data directory.
//! Every field has a default, and an unknown key is an error that names it.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::app::SchedulerConfig;
use crate::plugins::SandboxConfig;
use crate::rules::RuleLimits;

/// The configuration's file name in the data directory.
pub const FILE_NAME: &str = "schoolbell.toml";

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The folder of admin rules (`*.rhai`). Relative paths are taken from
    /// the data directory. Default: the `rules` folder beside the data
    /// directory's `schoolbell.toml`, else `./rules`.
    pub rules_dir: Option<PathBuf>,
    /// The key that seals the stored secrets and approval codes. Default:
    /// `secret.key` in the data directory. Keep it elsewhere (another disk,
    /// a mounted secret) so that a copy of the data directory alone
    /// reveals no secret. Relative paths are taken from the data directory.
    pub secret_key: Option<PathBuf>,
    /// Limits for plugins.
    pub sandbox: SandboxConfig,
    /// Limits for rules.
    pub rules: RuleLimits,
    /// The scheduler: workers, zone, misfire grace, retention.
    pub scheduler: SchedulerConfig,
    /// The HTTP API.
    pub api: ApiConfig,
    /// Imports: how large a file may be.
    pub imports: crate::imports::ImportsConfig,
    /// Which fields are masked where people read about records.
    pub privacy: crate::privacy::Privacy,
    /// The SMTP server the outbox is sent through.
    pub email: crate::notify::smtp::EmailConfig,
    /// What the service logs, and how.
    pub log: LogConfig,
    /// Where everything is stored: the embedded store in the data
    /// directory, or a PostgreSQL database.
    pub store: crate::store::StoreConfig,
    /// The audit log.
    pub audit: AuditConfig,
    /// Limits on users' tasks.
    pub tasks: TasksConfig,
    /// Who may read `/metrics`.
    pub metrics: MetricsConfig,
    /// The web console's sessions.
    pub console: ConsoleConfig,
}

/// The `[console]` section.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    /// Minutes a console session may go unused before it ends.
    pub idle_minutes: u64,
    /// Hours a console session lasts at most, however busy.
    pub max_hours: u64,
    /// Live views (the grid's stream) one user may have open at once.
    pub streams_per_user: usize,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig { idle_minutes: 60, max_hours: 12, streams_per_user: 4 }
    }
}

/// The `[metrics]` section.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// A file holding the bearer token `GET /metrics` asks for (read at
    /// start; relative paths are taken from the data directory). Without
    /// it (or `[api] metrics_token`), `/metrics` answers nobody.
    pub token_file: Option<PathBuf>,
}

/// The `[tasks]` section.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TasksConfig {
    /// The most tasks a staff user may own (the account owner sets up as
    /// many as the district needs).
    pub max_per_user: usize,
    /// The shortest time between two fires of one task, in minutes: a
    /// schedule that fires more often is refused.
    pub min_interval_minutes: u64,
}

impl Default for TasksConfig {
    fn default() -> Self {
        TasksConfig { max_per_user: 100, min_interval_minutes: 1 }
    }
}

/// The `[audit]` section.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Days an audit entry is kept. Only the audit log is pruned by it,
    /// and each pruning is itself an entry.
    pub retention_days: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig { retention_days: 400 }
    }
}

/// The `[log]` section.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` (for people; no colours unless stderr is a terminal) or
    /// `json` (one object per line, for a log collector).
    /// `SCHOOLBELL_LOG_FORMAT` overrides it.
    pub format: LogFormat,
    /// Which lines, as `RUST_LOG` writes it (`schoolbell=debug,warn`, say).
    /// `RUST_LOG` overrides it. Default: `schoolbell=info` for `serve`,
    /// `schoolbell=warn` for the other commands. `SIGHUP` applies a change.
    pub filter: Option<String>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human text.
    #[default]
    Text,
    /// One JSON object per line: timestamp, level, target, message, the span fields.
    Json,
}

/// The `[api]` section.
#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// The address `schoolbell serve` listens on.
    pub listen: String,
    /// Days an API token works after it is issued.
    pub token_days: u32,
    /// The PEM certificate (chain) the API serves HTTPS with. Tokens and
    /// student records cross the network only inside TLS: a listen address
    /// that is not loopback needs it (or `serve --insecure-listen`).
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Seconds a request may take before it is answered 408.
    pub request_timeout_secs: u64,
    /// Requests served at once; more wait their turn. The console's live
    /// updates are streams apart from these, up to the same number.
    pub max_concurrent_requests: usize,
    /// The path the console and the API are served under, behind a reverse
    /// proxy that forwards it unchanged: `/schoolbell`, say. Empty: the root.
    pub base_path: String,
    /// Marks the console's session cookie `Secure` although this server
    /// speaks plain HTTP: set it when a TLS proxy stands in front. With
    /// `tls_cert` set the cookie is always `Secure`.
    pub secure_cookies: bool,
    /// Seconds a client has to send a request's headers; a connection
    /// that has not sent them by then is closed.
    pub header_read_timeout_secs: u64,
    /// A bearer token `GET /metrics` asks for, written in the file itself
    /// (`[metrics] token_file` keeps it out of the file). Without either,
    /// `/metrics` answers nobody.
    pub metrics_token: Option<String>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: "127.0.0.1:8080".into(),
            token_days: 90,
            tls_cert: None,
            tls_key: None,
            request_timeout_secs: 30,
            max_concurrent_requests: 64,
            base_path: String::new(),
            secure_cookies: false,
            header_read_timeout_secs: 10,
            metrics_token: None,
        }
    }
}

/// Errors reading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not valid.
    #[error("{}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What the TOML parser said, with line and column.
        message: String,
    },
}

impl Config {
    /// Reads `schoolbell.toml` from `data_dir`, or the defaults if it does
    /// not exist.
    pub fn load(data_dir: &Path) -> Result<Config, Error> {
        Config::load_file(&data_dir.join(FILE_NAME))
    }

    /// Reads the configuration from `path`, or the defaults if it does not
    /// exist.
    pub fn load_file(path: &Path) -> Result<Config, Error> {
        let path = path.to_path_buf();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut config = Config::default();
                config.store.apply_env().map_err(|message| Error::Invalid { path, message })?;
                return Ok(config);
            }
            Err(source) => return Err(Error::Io { path, source }),
        };
        let mut config: Config = toml::from_str(&text)
            .map_err(|e| Error::Invalid { path: path.clone(), message: e.to_string().trim().to_string() })?;
        config.store.apply_env().map_err(|message| Error::Invalid { path: path.clone(), message })?;
        let base = &config.api.base_path;
        if !base.is_empty()
            && (!base.starts_with('/') || base.ends_with('/') || base.contains("//") || base.contains(['?', '#', ' ']))
        {
            return Err(Error::Invalid {
                path,
                message: format!(
                    "[api] base_path `{base}` must start with `/` and not end with one, like `/schoolbell`; leave it empty to serve at the root"
                ),
            });
        }
        Ok(config)
    }
}

impl Config {
    /// The keys (`section.key`) whose values differ between `self` and `other`.
    pub fn changed_keys(&self, other: &Config) -> Vec<String> {
        fn walk(prefix: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
            match (a, b) {
                (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
                    for key in keys {
                        let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
                        let null = serde_json::Value::Null;
                        walk(&path, a.get(key).unwrap_or(&null), b.get(key).unwrap_or(&null), out);
                    }
                }
                (a, b) if a != b => out.push(prefix.to_string()),
                _ => {}
            }
        }
        let (a, b) = (serde_json::to_value(self).unwrap_or_default(), serde_json::to_value(other).unwrap_or_default());
        let mut out = Vec::new();
        walk("", &a, &b, &mut out);
        out
    }
}

/// The configuration reference, in Markdown, generated from the types
/// above (their doc comments, types and defaults), so it cannot drift from
/// what `Config::load` accepts. `schoolbell config reference` prints it;
/// the README's Configuration section is a copy, checked by a test.
pub fn reference() -> String {
    use std::fmt::Write;
    let schema = serde_json::to_value(schemars::schema_for!(Config)).unwrap_or_default();
    let defaults = serde_json::to_value(Config::default()).unwrap_or_default();
    let defs = &schema["$defs"];
    let mut out = String::new();
    let mut top = String::new();
    let mut sections = String::new();
    let header = "| key | type | default | what it is |\n|---|---|---|---|\n";
    for (key, prop) in schema["properties"].as_object().into_iter().flatten() {
        match reference_to(prop).and_then(|name| defs.get(name)).filter(|d| d["properties"].is_object()) {
            Some(def) => {
                let _ = write!(sections, "\n### `[{key}]`\n\n{}\n\n{header}", one_line(&prop["description"]));
                for (field, p) in def["properties"].as_object().into_iter().flatten() {
                    let _ = writeln!(
                        sections,
                        "| `{field}` | {} | {} | {} |",
                        type_name(p, defs),
                        default_text(&defaults[key][field]),
                        one_line(&p["description"]).replace('|', "\\|")
                    );
                }
            }
            None => {
                let _ = writeln!(
                    top,
                    "| `{key}` | {} | {} | {} |",
                    type_name(prop, defs),
                    default_text(&defaults[key]),
                    one_line(&prop["description"]).replace('|', "\\|")
                );
            }
        }
    }
    let _ = write!(out, "Every key is optional; an unknown key is an error that names it.\n\n{header}{top}{sections}");
    out
}

fn one_line(v: &serde_json::Value) -> String {
    v.as_str().unwrap_or("").split_whitespace().collect::<Vec<_>>().join(" ")
}

fn reference_to(prop: &serde_json::Value) -> Option<&str> {
    let r = prop["$ref"].as_str().or_else(|| prop["allOf"][0]["$ref"].as_str())?;
    r.strip_prefix("#/$defs/")
}

fn type_name(prop: &serde_json::Value, defs: &serde_json::Value) -> String {
    if let Some(def) = reference_to(prop).and_then(|n| defs.get(n)) {
        let values: Vec<String> = def["oneOf"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v["const"].as_str().or_else(|| v["enum"][0].as_str()).map(|c| format!("`{c}`")))
            .chain(def["enum"].as_array().into_iter().flatten().filter_map(|v| v.as_str().map(|c| format!("`{c}`"))))
            .collect();
        if !values.is_empty() {
            return values.join(", ");
        }
    }
    let types: Vec<&str> = match &prop["type"] {
        serde_json::Value::String(t) => vec![t.as_str()],
        serde_json::Value::Array(ts) => ts.iter().filter_map(|t| t.as_str()).collect(),
        _ => vec![],
    };
    let optional = types.contains(&"null");
    let name = match types.iter().find(|t| **t != "null").copied() {
        Some("integer") => "integer".to_string(),
        Some("number") => "number".to_string(),
        Some("boolean") => "boolean".to_string(),
        Some("object") => "table".to_string(),
        Some("array") => "list".to_string(),
        Some(other) => other.to_string(),
        None => "value".to_string(),
    };
    if optional { format!("{name} (optional)") } else { name }
}

fn default_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "none".into(),
        serde_json::Value::String(s) if s.is_empty() => "`\"\"`".into(),
        serde_json::Value::Object(m) if m.is_empty() => "none".into(),
        other => format!("`{other}`"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference is generated; the copy kept in the repository (and in
    /// the README) must be what the types say today.
    #[test]
    fn the_config_reference_matches_the_types() {
        let golden = include_str!("../../tests/golden/config-reference.md");
        let now = reference();
        assert!(
            golden == now,
            "the config reference changed: run `cargo run -p schoolbell -- config reference > tests/golden/config-reference.md` and copy it into the README's Configuration section\n{now}"
        );
        let readme = include_str!("../../README.md");
        assert!(
            readme.contains(golden),
            "the README's Configuration section must hold tests/golden/config-reference.md as it is"
        );
    }

    #[test]
    fn an_unknown_key_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("schoolbell.toml"), "[sandbox]\nmemory_limt_mib = 3\n").unwrap();
        let err = Config::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("memory_limt_mib"), "{err}");
    }

    #[test]
    fn limits_are_read_and_the_rest_defaults() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("schoolbell.toml"), "[sandbox]\nmemory_limit_mib = 32\n").unwrap();
        let config = Config::load(dir.path()).unwrap();
        assert_eq!(config.sandbox.memory_limit_mib, 32);
        assert_eq!(config.sandbox.timeout_secs, SandboxConfig::default().timeout_secs);
    }
}
