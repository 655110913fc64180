//! The process's log: human text or one JSON object per line, on stderr
//! (where systemd's journal and container runtimes collect it), filtered
//! as `RUST_LOG` says, else as `[log] filter` says; `SIGHUP` applies a new
//! filter without a restart.

use std::io::IsTerminal;

use schoolbell::config::{LogConfig, LogFormat};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

/// Overrides `[log] format`: `text` or `json`.
const FORMAT_VARIABLE: &str = "SCHOOLBELL_LOG_FORMAT";

/// The installed log, whose filter can change.
pub(crate) struct Logging {
    filter: reload::Handle<EnvFilter, Registry>,
    default: &'static str,
}

/// Installs the log for this process; `serving` sets the default filter
/// (`info` for the service, `warn` for one-off commands).
pub(crate) fn init(config: &LogConfig, serving: bool) -> Logging {
    let default = if serving { "schoolbell=info" } else { "schoolbell=warn" };
    let format = match std::env::var(FORMAT_VARIABLE).as_deref() {
        Ok("json") => LogFormat::Json,
        Ok("text") => LogFormat::Text,
        _ => config.format,
    };
    let (filter, handle) = reload::Layer::new(filter(config, default));
    let registry = tracing_subscriber::registry().with(filter);
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    match format {
        LogFormat::Json => {
            registry.with(layer.json().flatten_event(true).with_current_span(true).with_span_list(false)).init()
        }
        LogFormat::Text => registry.with(layer.with_ansi(std::io::stderr().is_terminal())).init(),
    }
    Logging { filter: handle, default }
}

impl Logging {
    /// Applies `[log] filter` as the file says now (`RUST_LOG`, when set, still wins).
    pub(crate) fn reload(&self, config: &LogConfig) {
        if let Err(e) = self.filter.reload(filter(config, self.default)) {
            tracing::warn!("The log filter could not be changed: {e}");
        }
    }
}

/// `RUST_LOG`, else `[log] filter`, else the default; a filter that does
/// not parse is reported and the default used.
fn filter(config: &LogConfig, default: &str) -> EnvFilter {
    if let Ok(filter) = EnvFilter::try_from_default_env() {
        return filter;
    }
    let text = config.filter.as_deref().unwrap_or(default);
    EnvFilter::try_new(text).unwrap_or_else(|e| {
        eprintln!("warning: [log] filter `{text}` is not a filter ({e}); logging with `{default}`");
        EnvFilter::new(default)
    })
}
