//! Configuration: one TOML file, `schoolbell.toml` in the data directory.
//! Every field has a default, and an unknown key is an error that names it.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::app::SchedulerConfig;
use crate::plugins::SandboxConfig;
use crate::rules::RuleLimits;

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The folder of admin rules (`*.rhai`). Relative paths are taken from
    /// the data directory. Default: the `rules` folder beside the data
    /// directory's `schoolbell.toml`, else `./rules`.
    pub rules_dir: Option<PathBuf>,
    /// Limits for plugins.
    pub sandbox: SandboxConfig,
    /// Limits for rules.
    pub rules: RuleLimits,
    /// The scheduler: workers, zone, misfire grace, retention.
    pub scheduler: SchedulerConfig,
    /// The HTTP API.
    pub api: ApiConfig,
    /// The SMTP server the outbox is sent through.
    pub email: crate::notify::smtp::EmailConfig,
}

/// The `[api]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// The address `schoolbell serve` listens on.
    pub listen: String,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig { listen: "127.0.0.1:8080".into() }
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
        let path = data_dir.join("schoolbell.toml");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(source) => return Err(Error::Io { path, source }),
        };
        toml::from_str(&text).map_err(|e| Error::Invalid { path, message: e.to_string().trim().to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
