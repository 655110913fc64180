//! Plugins: installing vendor components, loading them into the sandbox,
//! and running them (import mappings and notifiers).
//!
//! A component is checked when it is installed (it is a component, it
//! exports a Schoolbell world at a supported WIT version, `describe`
//! works), stored by content hash, compiled once and cached on disk keyed
//! by that hash and the engine's configuration, and pre-instantiated once
//! per process. Each run then instantiates it in a fresh store.

mod bindings;
mod host;
mod output;
mod registry;
mod sandbox;
pub mod scaffold;

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use wasmtime::component::Component;

use crate::records::{Record, Value};
use crate::rules::RuleSet;
use crate::store::Backend;

use bindings::{ImportMappingPre, NotifierPre};
use host::{RunSetup, RunState};

pub use registry::{InstallStatus, PluginEntry};
pub use sandbox::{RunControl, SandboxConfig};

/// The WIT versions this host loads.
pub const SUPPORTED_WIT_VERSIONS: &[&str] = bindings::SUPPORTED_VERSIONS;

/// How many bytes of an input file go to a mapping per call.
const CHUNK_SIZE: usize = 64 * 1024;

/// A plugin's name and version, as every guest error names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginId {
    /// The plugin's name.
    pub name: String,
    /// The plugin's version.
    pub version: String,
}

impl fmt::Display for PluginId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.name, self.version)
    }
}

/// Which world a plugin exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PluginKind {
    /// World `import-mapping`.
    ImportMapping,
    /// World `notifier`.
    Notifier,
}

impl fmt::Display for PluginKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PluginKind::ImportMapping => "import-mapping",
            PluginKind::Notifier => "notifier",
        })
    }
}

/// The type of a parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ValueType {
    /// true or false.
    Boolean,
    /// A whole number.
    Integer,
    /// A number with a fraction.
    Float,
    /// Text.
    Text,
    /// A date, YYYY-MM-DD.
    Date,
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ValueType::Boolean => "boolean",
            ValueType::Integer => "integer",
            ValueType::Float => "float",
            ValueType::Text => "text",
            ValueType::Date => "date",
        })
    }
}

/// A parameter a plugin accepts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParamSpec {
    /// Its name.
    pub name: String,
    /// What it does.
    pub description: String,
    /// The type its value must have.
    pub value_type: ValueType,
    /// The value used when a task does not set it; none means required.
    pub default: Option<Value>,
}

/// A capability: declared by the plugin, granted by an admin.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Capability {
    /// Read the records of a collection.
    ReadCollection(String),
    /// Produce records for a collection.
    WriteCollection(String),
    /// Address email directly: `send:address` lets a notifier return a raw
    /// address (still only in `[email] allowed_domains`).
    Send(String),
    /// Staff may set up tasks with the plugin, with only these parameters,
    /// each to one of the values listed (one value: fixed, and set even
    /// when staff leave it out). Never declared by a plugin: the account
    /// owner gives it (`staff` or `staff:days=7|14;format=csv`), and
    /// without it a plugin's grants serve only tasks an owner set up.
    Staff(std::collections::BTreeMap<String, Vec<String>>),
}

impl Capability {
    /// Whether the account owner may grant it whatever the plugin declared.
    pub fn owners_own(&self) -> bool {
        matches!(self, Capability::Staff(_))
    }
}

/// What staff may run a plugin with, from its grants: `None` when the
/// owner did not offer it to staff.
pub fn staff_use(granted: &[Capability]) -> Option<&std::collections::BTreeMap<String, Vec<String>>> {
    granted.iter().find_map(|c| match c {
        Capability::Staff(allowed) => Some(allowed),
        _ => None,
    })
}

/// Checks a staff user's parameters (`given`, each as text) against what
/// the owner allowed, saying which one is not; returns the fixed ones
/// (allowed a single value), which are set whether given or not.
pub fn staff_params<'a, 'g>(
    plugin: &str,
    allowed: &'a std::collections::BTreeMap<String, Vec<String>>,
    given: impl IntoIterator<Item = (&'g str, String)>,
) -> Result<Vec<(&'a String, &'a String)>, String> {
    for (name, text) in given {
        let Some(values) = allowed.get(name) else {
            return Err(format!(
                "staff may not set parameter `{name}` of plugin {plugin}; the account owner allows: {}",
                if allowed.is_empty() {
                    "none".to_string()
                } else {
                    allowed.keys().cloned().collect::<Vec<_>>().join(", ")
                }
            ));
        };
        if !values.contains(&text) {
            return Err(format!(
                "staff may set parameter `{name}` of plugin {plugin} only to {}, not `{text}`",
                values.join(" or ")
            ));
        }
    }
    Ok(allowed
        .iter()
        .filter_map(|(name, values)| match values.as_slice() {
            [only] => Some((name, only)),
            _ => None,
        })
        .collect())
}

impl fmt::Display for Capability {
    /// `read:students` normally; `{:#}` gives the sentence form
    /// "read collection `students`".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self, f.alternate()) {
            (Capability::ReadCollection(c), false) => write!(f, "read:{c}"),
            (Capability::WriteCollection(c), false) => write!(f, "write:{c}"),
            (Capability::ReadCollection(c), true) => match c.strip_prefix("folder:") {
                Some(folder) => write!(f, "list and read folder `{folder}`"),
                None => write!(f, "read collection `{c}`"),
            },
            (Capability::WriteCollection(c), true) => match c.strip_prefix("folder:") {
                Some(folder) => write!(f, "write and delete in folder `{folder}`"),
                None => write!(f, "write collection `{c}`"),
            },
            (Capability::Send(what), false) => write!(f, "send:{what}"),
            (Capability::Send(_), true) => write!(f, "email addresses it chooses (within the allowed domains)"),
            (Capability::Staff(allowed), alternate) => {
                let list: Vec<String> = allowed.iter().map(|(k, v)| format!("{k}={}", v.join("|"))).collect();
                match (alternate, list.is_empty()) {
                    (false, true) => write!(f, "staff"),
                    (false, false) => write!(f, "staff:{}", list.join(";")),
                    (true, true) => write!(f, "staff may use it with its defaults"),
                    (true, false) => write!(f, "staff may use it with {}", list.join(", ")),
                }
            }
        }
    }
}

impl std::str::FromStr for Capability {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            Some(("read", c)) if !c.is_empty() => Ok(Capability::ReadCollection(c.into())),
            Some(("write", c)) if !c.is_empty() => Ok(Capability::WriteCollection(c.into())),
            Some(("send", "address")) => Ok(Capability::Send("address".into())),
            None if s == "staff" => Ok(Capability::Staff(Default::default())),
            Some(("staff", list)) => {
                let mut allowed = std::collections::BTreeMap::new();
                for pair in list.split(';').filter(|p| !p.trim().is_empty()) {
                    let (name, values) = pair
                        .split_once('=')
                        .ok_or_else(|| format!("`{pair}` in `{s}` is not `PARAM=VALUE` or `PARAM=V1|V2`"))?;
                    let values: Vec<String> = values.split('|').map(|v| v.trim().to_string()).collect();
                    allowed.insert(name.trim().to_string(), values);
                }
                Ok(Capability::Staff(allowed))
            }
            _ => Err(format!(
                "`{s}` is not a capability; write `read:COLLECTION`, `write:COLLECTION`, `send:address`, or `staff` (`staff:PARAM=V1|V2;...`)"
            )),
        }
    }
}

/// What a plugin says about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginInfo {
    /// Its unique name.
    pub name: String,
    /// Its own version.
    pub version: String,
    /// Its world.
    pub kind: PluginKind,
    /// One sentence for admins.
    pub description: String,
    /// The parameters it accepts.
    pub params: Vec<ParamSpec>,
    /// The capabilities it asks for.
    pub capabilities: Vec<Capability>,
}

/// Who receives a notification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Recipient {
    /// The task's notification group.
    NotificationGroup,
    /// The person a record is about, by key.
    Person(String),
    /// The lead faculty of a section, by key.
    LeadFaculty(String),
    /// An explicit address.
    Address(String),
}

/// A notification returned by a notifier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// Who receives it.
    pub recipient: Recipient,
    /// Subject line.
    pub subject: String,
    /// Plain-text body.
    pub body: String,
    /// The event's identity, for dedupe.
    pub dedupe_key: String,
}

/// A row a mapping produced.
#[derive(Debug, Clone, PartialEq)]
pub struct MappedRow {
    /// The line it starts on.
    pub line: u64,
    /// Its fields.
    pub record: Record,
}

/// A row a mapping could not map.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RowError {
    /// The line it starts on.
    pub line: u64,
    /// The field at fault.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

/// How important a log line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Detail.
    Debug,
    /// Progress.
    Info,
    /// Worth a look.
    Warn,
    /// A failure.
    Error,
}

/// One line of a run's log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    /// Its level.
    pub level: LogLevel,
    /// The message.
    pub message: String,
}

/// An error a guest returned (data, not a trap).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GuestError {
    /// The input is wrong.
    #[error("bad input: {0}")]
    BadInput(String),
    /// May succeed later.
    #[error("{0} (temporary; the run may be retried)")]
    Transient(String),
    /// Cannot succeed as configured.
    #[error("{0}")]
    Permanent(String),
    /// The host refused something.
    #[error("denied: {0}")]
    Denied(String),
}

/// Errors from installing, loading and running plugins.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file is not a usable component.
    #[error("{path}: {reason}")]
    BadFile {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The component exports no Schoolbell world.
    #[error(
        "{path}: not a Schoolbell plugin: it exports neither world `notifier` nor `import-mapping` of schoolbell:plugin (it exports: {exports}). Build it with schoolbell-plugin-sdk"
    )]
    WrongWorld {
        /// The file.
        path: String,
        /// What it does export.
        exports: String,
    },
    /// The component targets a WIT version this host does not load.
    #[error(
        "{path}: built for schoolbell:plugin@{found}, but this host loads schoolbell:plugin@{supported}; rebuild the plugin against a supported version"
    )]
    IncompatibleVersion {
        /// The file.
        path: String,
        /// The version it targets.
        found: String,
        /// The supported range.
        supported: String,
    },
    /// The plugin misdescribes itself.
    #[error("plugin {plugin}: {message}")]
    Invalid {
        /// The plugin.
        plugin: String,
        /// What is wrong.
        message: String,
    },
    /// No plugin by that name.
    #[error("no plugin named `{0}` is installed; `schoolbell plugin list` shows the installed ones")]
    NotInstalled(String),
    /// The plugin has the wrong kind for the job.
    #[error("plugin {plugin} is a {found} plugin, not a {expected} one")]
    WrongKind {
        /// The plugin.
        plugin: String,
        /// What it is.
        found: PluginKind,
        /// What the job needs.
        expected: PluginKind,
    },
    /// The guest trapped (a bug in the plugin, or a crash).
    #[error("plugin {plugin} crashed: {reason}")]
    Trap {
        /// The plugin.
        plugin: PluginId,
        /// The trap, and what the guest printed before it.
        reason: String,
    },
    /// The guest hit a sandbox limit.
    #[error("plugin {plugin} {limit}")]
    Limit {
        /// The plugin.
        plugin: PluginId,
        /// Which limit, as a sentence.
        limit: String,
    },
    /// The guest returned an error.
    #[error("plugin {plugin} failed: {error}")]
    Failed {
        /// The plugin.
        plugin: PluginId,
        /// Its error.
        error: GuestError,
    },
    /// The store failed under one of the plugin's host calls.
    #[error("plugin {plugin}: the host could not read the store: {message}")]
    StoreFailed {
        /// The plugin.
        plugin: PluginId,
        /// What the store said.
        message: String,
    },
    /// The host refused the guest something it asked for.
    #[error("plugin {plugin} was refused: {message}")]
    Denied {
        /// The plugin.
        plugin: PluginId,
        /// What it asked for and why it was refused.
        message: String,
    },
    /// The input file's header is wrong; the whole file fails.
    #[error("{file}: File import has failed: column `{column}`: {message}")]
    Header {
        /// The input file.
        file: String,
        /// The column at fault.
        column: String,
        /// What is wrong.
        message: String,
    },
    /// The guest returned more than a run may.
    #[error("plugin {plugin} returned {count} {what}; one call may return at most {limit}")]
    OutputTooLarge {
        /// The plugin.
        plugin: PluginId,
        /// How many.
        count: usize,
        /// Of what.
        what: &'static str,
        /// The limit.
        limit: usize,
    },
    /// A parameter is wrong.
    #[error("plugin {plugin}, parameter `{name}`: {message}")]
    Param {
        /// The plugin.
        plugin: String,
        /// The parameter.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// A capability cannot be granted or is missing.
    #[error("plugin {plugin}: {message}")]
    Capability {
        /// The plugin.
        plugin: String,
        /// What is wrong.
        message: String,
    },
    /// The run was cancelled.
    #[error("plugin {plugin} run was cancelled")]
    Cancelled {
        /// The plugin.
        plugin: PluginId,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The wasm engine failed to start (a configuration problem).
    #[error("the WebAssembly engine failed: {0}")]
    Engine(String),
}

/// A component compiled and pre-instantiated, ready for runs.
struct Loaded {
    entry: PluginEntry,
    pre: WorldPre,
}

enum WorldPre {
    Mapping(ImportMappingPre<RunState>),
    Notifier(NotifierPre<RunState>),
}

/// The store keeps, under this prefix and a cache file's name, the SHA-256
/// of the compiled code the host wrote to that file.
const COMPILED_DIGEST_PREFIX: &str = "compiled-sha256:";

/// SHA-256 of `bytes`, hex.
fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Whether `hash` is a SHA-256 as the registry writes it: 64 lowercase hex digits.
fn is_sha256_hex(hash: &str) -> bool {
    hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Where compiled components are cached, and how many were compiled or
/// loaded from the cache by this process (for tests and the benchmark).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    /// Components compiled by Cranelift.
    pub compiled: u64,
    /// Components loaded from the on-disk cache.
    pub cached: u64,
}

/// The plugin runtime: one engine, the registry, the compile cache.
pub struct PluginHost {
    sandbox: sandbox::Sandbox,
    store: Arc<dyn Backend>,
    rules: Arc<RuleSet>,
    cache_dir: PathBuf,
    loaded: Mutex<HashMap<String, Arc<Loaded>>>,
    stats: Mutex<CacheStats>,
}

/// What a notifier run produced.
#[derive(Debug)]
pub struct NotifierOutcome {
    /// The notifications, in the order returned.
    pub notifications: Vec<Notification>,
    /// The run's log: plugin messages, stdout, stderr.
    pub log: Vec<LogLine>,
    /// The state writes, applied by the caller with the run's result.
    pub state_writes: Vec<(String, Option<String>)>,
    /// The capabilities the plugin ran with.
    pub granted: Vec<Capability>,
}

/// What a mapping run produced, beyond the rows handed to the caller.
#[derive(Debug)]
pub struct MappingOutcome {
    /// Rows mapped.
    pub rows: u64,
    /// Rows refused, each with its line and field.
    pub errors: Vec<RowError>,
    /// The run's log.
    pub log: Vec<LogLine>,
}

/// How a run is set up by its caller.
#[derive(Debug, Clone, Default)]
pub struct RunRequest {
    /// The task the run belongs to (for state).
    pub task: String,
    /// Parameters given by the task, checked against the plugin's specs.
    pub params: Record,
    /// Cancellation and progress.
    pub control: RunControl,
    /// The date `host.today` answers, in the district's zone; none: today in UTC.
    pub today: Option<crate::records::Date>,
    /// The task's rules. With the parameters that name a rule, they are
    /// the only rules the plugin may evaluate.
    pub rules: Vec<String>,
}

impl PluginHost {
    /// Builds the runtime over `store`, caching compiled code in `cache_dir`.
    pub fn new(
        store: Arc<dyn Backend>,
        rules: Arc<RuleSet>,
        cache_dir: &Path,
        config: SandboxConfig,
    ) -> Result<Self, Error> {
        std::fs::create_dir_all(cache_dir).map_err(|source| Error::Io { path: cache_dir.into(), source })?;
        Ok(PluginHost {
            sandbox: sandbox::Sandbox::new(config)?,
            store,
            rules,
            cache_dir: cache_dir.to_path_buf(),
            loaded: Mutex::new(HashMap::new()),
            stats: Mutex::new(CacheStats::default()),
        })
    }

    /// The sandbox's configuration.
    pub fn config(&self) -> &SandboxConfig {
        &self.sandbox.config
    }

    /// How many components this process compiled or loaded from cache.
    pub fn cache_stats(&self) -> CacheStats {
        *self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The admin rules runs evaluate.
    pub fn rules(&self) -> &Arc<RuleSet> {
        &self.rules
    }

    /// The store the host reads from.
    pub fn store(&self) -> &Arc<dyn Backend> {
        &self.store
    }

    /// Compiles `bytes` or loads the compiled code from the cache.
    fn component(&self, path: &str, hash: &str, bytes: &[u8]) -> Result<Component, Error> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.sandbox.engine.precompile_compatibility_hash().hash(&mut h);
        let file = format!("{hash}-{:016x}.cwasm", h.finish());
        let cached = self.cache_dir.join(&file);
        // What the host recorded in the store when it wrote the file: a
        // cache file is native code, so one that is not byte for byte what
        // this host family wrote is never loaded.
        let record = format!("{COMPILED_DIGEST_PREFIX}{file}");
        let recorded = self.store.blob(&record).ok().flatten();
        if let (Some(recorded), Ok(code)) = (&recorded, std::fs::read(&cached)) {
            if sha256_hex(&code).as_bytes() != recorded.as_slice() {
                tracing::warn!(file = %cached.display(), "Ignoring a cached component that is not the one this host wrote; compiling again.");
            } else {
                // SAFETY: the bytes are those this host family wrote with
                // `Component::serialize` (their digest is the one recorded
                // in the store when they were written); deserialize still
                // checks that they match this engine's configuration.
                #[allow(unsafe_code)]
                match unsafe { Component::deserialize(&self.sandbox.engine, &code) } {
                    Ok(c) => {
                        self.stats.lock().unwrap_or_else(|e| e.into_inner()).cached += 1;
                        tracing::debug!(%hash, "Component loaded from cache.");
                        return Ok(c);
                    }
                    Err(e) => {
                        tracing::warn!(file = %cached.display(), "Ignoring unreadable cached component: {e:#}")
                    }
                }
            }
        }
        let component = Component::new(&self.sandbox.engine, bytes).map_err(|e| Error::BadFile {
            path: path.into(),
            reason: format!("not a valid WebAssembly component: {}", e.root_cause()),
        })?;
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).compiled += 1;
        tracing::debug!(%hash, "Component compiled.");
        match component.serialize() {
            Ok(code) => {
                // Write then rename, so a crash never leaves half a file.
                let tmp = cached.with_extension("tmp");
                let digest = sha256_hex(&code);
                let written = std::fs::write(&tmp, &code)
                    .and_then(|_| std::fs::rename(&tmp, &cached))
                    .map_err(|e| e.to_string())
                    .and_then(|()| {
                        if recorded.as_deref() == Some(digest.as_bytes()) {
                            return Ok(());
                        }
                        self.store
                            .remove_blob(&record)
                            .and_then(|()| self.store.put_blob(&record, digest.as_bytes()))
                            .map(drop)
                            .map_err(|e| e.to_string())
                    });
                if let Err(e) = written {
                    tracing::warn!(file = %cached.display(), "Cannot cache compiled component: {e}");
                }
            }
            Err(e) => tracing::warn!("Cannot serialize compiled component: {e:#}"),
        }
        Ok(component)
    }

    /// Checks and pre-instantiates a component: world, version, linking.
    fn prepare(&self, path: &str, hash: &str, bytes: &[u8]) -> Result<(bindings::Target, WorldPre), Error> {
        check_header(path, bytes)?;
        let component = self.component(path, hash, bytes)?;
        let ty = component.component_type();
        let engine = &self.sandbox.engine;
        let target =
            bindings::detect(ty.exports(engine).map(|(n, _)| n), ty.imports(engine).map(|(n, _)| n)).map_err(|m| {
                match m {
                    bindings::Mismatch::NoWorld(exports) => Error::WrongWorld {
                        path: path.into(),
                        exports: if exports.is_empty() { "nothing".into() } else { exports.join(", ") },
                    },
                    bindings::Mismatch::Version(found) => {
                        Error::IncompatibleVersion { path: path.into(), found, supported: supported_range() }
                    }
                }
            })?;
        let link_error = |e: wasmtime::Error| Error::BadFile {
            path: path.into(),
            reason: format!("cannot be linked: {e:#}. It may import something the Schoolbell sandbox does not provide"),
        };
        let pre = self.sandbox.linker.instantiate_pre(&component).map_err(link_error)?;
        let pre = match target.kind {
            PluginKind::ImportMapping => WorldPre::Mapping(ImportMappingPre::new(pre).map_err(link_error)?),
            PluginKind::Notifier => WorldPre::Notifier(NotifierPre::new(pre).map_err(link_error)?),
        };
        Ok((target, pre))
    }

    /// Loads an installed plugin (compiling or reading the cache once per
    /// process).
    fn load(&self, name: &str) -> Result<Arc<Loaded>, Error> {
        let entry = self.entry(name)?;
        if let Some(l) = self.loaded.lock().unwrap_or_else(|e| e.into_inner()).get(&entry.hash)
            && l.entry == entry
        {
            return Ok(l.clone());
        }
        let corrupt = |reason: String| crate::store::Error::Corrupt { tree: "blobs", key: entry.hash.clone(), reason };
        if !is_sha256_hex(&entry.hash) {
            return Err(corrupt(format!(
                "plugin {name}'s stored component hash is not 64 hex digits; install the plugin again"
            ))
            .into());
        }
        let bytes = self
            .store
            .blob(&entry.hash)?
            .ok_or_else(|| corrupt(format!("the component of plugin {name} is missing; install it again")))?;
        // The store may be on another machine: bytes that are not the ones
        // installed are refused, so a changed row cannot swap the code.
        if sha256_hex(&bytes) != entry.hash {
            return Err(corrupt(format!(
                "the stored component of plugin {name} does not match its hash (it was changed in the store); install the plugin again"
            ))
            .into());
        }
        let (_, pre) = self.prepare(name, &entry.hash, &bytes)?;
        let loaded = Arc::new(Loaded { entry, pre });
        self.loaded.lock().unwrap_or_else(|e| e.into_inner()).insert(loaded.entry.hash.clone(), loaded.clone());
        Ok(loaded)
    }

    /// Whether a run of plugin `name` may change anything outside the
    /// store: an import mapping's run picks up and renames files, and a
    /// plugin granted a folder writes and deletes in it. Such a run's start
    /// must be durable before it runs; another run's effects all land in
    /// the store, after its start. A plugin that cannot be read counts as
    /// reaching outside.
    pub fn reaches_outside(&self, name: &str) -> bool {
        self.entry(name).map_or(true, |entry| {
            entry.kind == PluginKind::ImportMapping
                || entry.granted.iter().any(|c| matches!(c, Capability::WriteCollection(c) if c.starts_with("folder:")))
        })
    }

    /// Loads an installed plugin as a run would (compile or cache, link),
    /// without running it: `schoolbell check` calls this for every plugin.
    pub fn verify(&self, name: &str) -> Result<(), Error> {
        self.load(name).map(|_| ())
    }

    /// Instantiates an installed plugin into a fresh store and drops it,
    /// without calling it: what every run pays before the plugin's code
    /// starts. The benchmark measures this.
    pub fn instantiate_only(&self, name: &str) -> Result<(), Error> {
        let loaded = self.load(name)?;
        let mut store = self.new_store(&loaded.entry, &RunRequest::default(), Record::new());
        let result = match &loaded.pre {
            WorldPre::Notifier(p) => p.instantiate(&mut store).map(drop),
            WorldPre::Mapping(p) => p.instantiate(&mut store).map(drop),
        };
        result.map_err(|trap| trap_error(&loaded.entry.id(), &mut store, trap))
    }

    fn new_store(&self, entry: &PluginEntry, request: &RunRequest, params: Record) -> wasmtime::Store<RunState> {
        crate::metrics::instantiated(&entry.name);
        let named = named_rules(&request.rules, &params, &self.rules);
        let setup = RunSetup {
            plugin: entry.id(),
            declared: entry.capabilities.clone(),
            granted: entry.granted.clone(),
            store: self.store.clone(),
            rules: self.rules.clone(),
            task: request.task.clone(),
            params,
            control: request.control.clone(),
            today: request.today.unwrap_or_else(|| crate::records::Date::from_chrono(chrono::Utc::now().date_naive())),
            rules_named: named,
        };
        self.sandbox.store(RunState::new(setup, &self.sandbox))
    }

    /// Runs a notifier once.
    pub fn run_notifier(&self, name: &str, request: &RunRequest) -> Result<NotifierOutcome, Error> {
        let loaded = self.load(name)?;
        let WorldPre::Notifier(pre) = &loaded.pre else {
            return Err(Error::WrongKind {
                plugin: name.into(),
                found: loaded.entry.kind,
                expected: PluginKind::Notifier,
            });
        };
        let params = check_params(&loaded.entry, &request.params)?;
        let mut store = self.new_store(&loaded.entry, request, params.clone());
        let id = loaded.entry.id();
        let result = pre
            .instantiate(&mut store)
            .and_then(|n| n.schoolbell_plugin_notify().call_run(&mut store, &bindings::params_to_wit(&params)));
        let notifications = match result {
            Err(trap) => return Err(trap_error(&id, &mut store, trap)),
            Ok(Err(e)) => return Err(guest_failure(&id, store.data(), e)),
            Ok(Ok(list)) => list,
        };
        if let Some(message) = store.data().store_failed.clone() {
            return Err(Error::StoreFailed { plugin: id, message });
        }
        if let Some(v) = store.data().first_violation() {
            return Err(Error::Denied { plugin: id, message: v });
        }
        if notifications.len() > self.sandbox.config.output_limit {
            return Err(Error::OutputTooLarge {
                plugin: id,
                count: notifications.len(),
                what: "notifications",
                limit: self.sandbox.config.output_limit,
            });
        }
        let config = &self.sandbox.config;
        for n in &notifications {
            let over = |what: &'static str, len: usize, limit: usize| Error::Limit {
                plugin: id.clone(),
                limit: format!(
                    "returned a notification whose {what} is {len} bytes, over the {limit} allowed ([sandbox] max_{what}_bytes)"
                ),
            };
            if n.subject.len() > config.max_subject_bytes {
                return Err(over("subject", n.subject.len(), config.max_subject_bytes));
            }
            if n.body.len() > config.max_body_bytes {
                return Err(over("body", n.body.len(), config.max_body_bytes));
            }
        }
        let state = store.data_mut();
        Ok(NotifierOutcome {
            notifications: notifications.into_iter().map(bindings::notification_from_wit).collect(),
            log: state.finish_log(),
            state_writes: state.take_state_writes(),
            granted: loaded.entry.granted.clone(),
        })
    }

    /// Runs an import mapping over `input`, a chunk at a time; `on_rows`
    /// receives each call's mapped rows (in file order) as they come, so
    /// the file is never held whole.
    pub fn run_mapping(
        &self,
        name: &str,
        file: &str,
        mut input: impl Read,
        request: &RunRequest,
        mut on_rows: impl FnMut(Vec<MappedRow>) -> Result<(), Error>,
    ) -> Result<MappingOutcome, Error> {
        let loaded = self.load(name)?;
        let WorldPre::Mapping(pre) = &loaded.pre else {
            return Err(Error::WrongKind {
                plugin: name.into(),
                found: loaded.entry.kind,
                expected: PluginKind::ImportMapping,
            });
        };
        let params = check_params(&loaded.entry, &request.params)?;
        let mut store = self.new_store(&loaded.entry, request, params.clone());
        let id = loaded.entry.id();
        let mapping = match pre.instantiate(&mut store) {
            Ok(m) => m,
            Err(trap) => return Err(trap_error(&id, &mut store, trap)),
        };
        let api = mapping.schoolbell_plugin_mapping().mapper();
        let mapper = match api.call_open(&mut store, &bindings::params_to_wit(&params)) {
            Err(trap) => return Err(trap_error(&id, &mut store, trap)),
            Ok(Err(e)) => return Err(guest_failure(&id, store.data(), e)),
            Ok(Ok(m)) => m,
        };
        let mut rows = 0u64;
        let mut errors = Vec::new();
        let mut buf = vec![0u8; CHUNK_SIZE];
        let mut done_bytes = 0u64;
        loop {
            if request.control.is_cancelled() {
                return Err(Error::Cancelled { plugin: id });
            }
            let n = read_full(&mut input, &mut buf).map_err(|source| Error::Io { path: file.into(), source })?;
            let result =
                if n == 0 { api.call_finish(&mut store, mapper) } else { api.call_feed(&mut store, mapper, &buf[..n]) };
            let batch = match result {
                Err(trap) => return Err(trap_error(&id, &mut store, trap)),
                Ok(Err(bindings::mapping_api::MappingError::Header(h))) => {
                    return Err(Error::Header { file: file.into(), column: h.column, message: h.message });
                }
                Ok(Err(bindings::mapping_api::MappingError::Plugin(e))) => {
                    return Err(guest_failure(&id, store.data(), e));
                }
                Ok(Ok(batch)) => batch,
            };
            if batch.rows.len() + batch.errors.len() > self.sandbox.config.output_limit {
                return Err(Error::OutputTooLarge {
                    plugin: id,
                    count: batch.rows.len() + batch.errors.len(),
                    what: "rows",
                    limit: self.sandbox.config.output_limit,
                });
            }
            let caps = bindings::RowCaps {
                fields: self.sandbox.config.max_fields,
                field_bytes: self.sandbox.config.max_field_bytes,
            };
            let (mapped, row_errors) = bindings::batch_from_wit(batch, caps);
            rows += mapped.len() as u64;
            errors.extend(row_errors);
            if errors.len() > self.sandbox.config.max_row_errors {
                return Err(Error::OutputTooLarge {
                    plugin: id,
                    count: errors.len(),
                    what: "row errors ([sandbox] max_row_errors)",
                    limit: self.sandbox.config.max_row_errors,
                });
            }
            on_rows(mapped)?;
            done_bytes += n as u64;
            // The caller may know the file's size; keep its total.
            request.control.set_progress(done_bytes, request.control.progress().1);
            if n == 0 {
                break;
            }
        }
        let _ = mapper.resource_drop(&mut store);
        Ok(MappingOutcome { rows, errors, log: store.data_mut().finish_log() })
    }
}

fn read_full(input: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// "0.1.0 to 0.1.1", for messages.
fn supported_range() -> String {
    match SUPPORTED_WIT_VERSIONS {
        [one] => one.to_string(),
        [first, .., last] => format!("{first} to {last}"),
        [] => "nothing".into(),
    }
}

/// Refuses non-wasm files and core modules with one line each, before the
/// engine sees them.
fn check_header(path: &str, bytes: &[u8]) -> Result<(), Error> {
    let bad = |reason: &str| Err(Error::BadFile { path: path.into(), reason: reason.into() });
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return if bytes.is_empty() {
            bad("the file is empty")
        } else {
            bad("not a WebAssembly file (no `\\0asm` header)")
        };
    }
    match &bytes[4..8] {
        [0x01, 0x00, 0x00, 0x00] => bad(
            "a core WebAssembly module, not a component; build with `--target wasm32-wasip2`, or turn it into a component with `cargo run -p xtask -- componentize`",
        ),
        [_, _, 0x01, 0x00] => Ok(()),
        _ => bad("an unknown WebAssembly binary version"),
    }
}

/// Turns a trap (or host interruption) into a run error naming the plugin.
fn trap_error(plugin: &PluginId, store: &mut wasmtime::Store<RunState>, e: wasmtime::Error) -> Error {
    let state = store.data_mut();
    if let Some(i) = state.interrupted {
        return sandbox::describe_interrupt(plugin, i);
    }
    if let Some(bytes) = state.limiter.refused {
        return Error::Limit {
            plugin: plugin.clone(),
            limit: format!(
                "tried to grow its memory to {} MiB; the limit is {} MiB",
                bytes >> 20,
                state.limiter.limit >> 20
            ),
        };
    }
    if format!("{e:#}").contains("fuel allocated for hostcalls has been exhausted") {
        return Error::Limit {
            plugin: plugin.clone(),
            limit: format!(
                "tried to hand the host more than {} MiB in one call ([sandbox] hostcall_limit_mib)",
                state.hostcall_limit >> 20
            ),
        };
    }
    let mut reason = match e.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::StackOverflow) => "its call stack overflowed (runaway recursion)".to_string(),
        Some(wasmtime::Trap::UnreachableCodeReached) => {
            "it reached `unreachable`, which is how a Rust plugin's panic ends".to_string()
        }
        Some(trap) => trap.to_string(),
        None => format!("{:#}", e),
    };
    let said = state.stderr.tail(600);
    if !said.is_empty() {
        reason.push_str(&format!("; it printed: {said}"));
    }
    Error::Trap { plugin: plugin.clone(), reason }
}

fn guest_failure(plugin: &PluginId, state: &RunState, e: bindings::wit::PluginError) -> Error {
    // A denial the host recorded is the truer story than whatever error
    // the guest turned it into.
    if let Some(message) = &state.store_failed {
        return Error::StoreFailed { plugin: plugin.clone(), message: message.clone() };
    }
    if let Some(v) = state.violations.first() {
        return Error::Denied { plugin: plugin.clone(), message: v.clone() };
    }
    if state.setup.control.is_cancelled() {
        return Error::Cancelled { plugin: plugin.clone() };
    }
    Error::Failed { plugin: plugin.clone(), error: bindings::guest_error(e) }
}

/// The rules a run names: the task's, and parameter values (defaults
/// filled in) that name a rule, such as a notifier's
/// `rule=attendance_threshold`. A plugin may evaluate only these.
fn named_rules(rules: &[String], params: &Record, all: &RuleSet) -> Vec<String> {
    let mut named = rules.to_vec();
    for value in params.values() {
        if let Value::Text(t) = value
            && all.get(t).is_ok()
            && !named.contains(t)
        {
            named.push(t.clone());
        }
    }
    named
}

/// Checks a task's parameters against the plugin's specs and fills in
/// defaults.
pub fn check_params(entry: &PluginEntry, given: &Record) -> Result<Record, Error> {
    let err = |name: &str, message: String| Error::Param { plugin: entry.name.clone(), name: name.into(), message };
    for name in given.keys() {
        if !entry.params.iter().any(|p| &p.name == name) {
            let known: Vec<&str> = entry.params.iter().map(|p| p.name.as_str()).collect();
            return Err(err(name, format!("unknown parameter; this plugin takes: {}", known.join(", "))));
        }
    }
    let mut out = Record::new();
    for spec in &entry.params {
        let value = match given.get(&spec.name) {
            Some(v) => coerce(v, spec.value_type).map_err(|m| err(&spec.name, m))?,
            None => match &spec.default {
                Some(d) => d.clone(),
                None => {
                    return Err(err(&spec.name, format!("required, of type {}", spec.value_type)));
                }
            },
        };
        out.insert(spec.name.clone(), value);
    }
    Ok(out)
}

/// Converts a given value (often text from the CLI) to the spec's type.
fn coerce(v: &Value, t: ValueType) -> Result<Value, String> {
    let wrong = || format!("expected {t}, got {} `{}`", v.type_name(), v.to_key_text());
    Ok(match (t, v) {
        (_, Value::Null) => Value::Null,
        (ValueType::Text, Value::Text(_))
        | (ValueType::Integer, Value::Int(_))
        | (ValueType::Float, Value::Float(_))
        | (ValueType::Boolean, Value::Bool(_))
        | (ValueType::Date, Value::Date(_)) => v.clone(),
        (ValueType::Float, Value::Int(n)) => Value::Float(*n as f64),
        (ValueType::Text, other) => Value::Text(other.to_key_text()),
        (ValueType::Integer, Value::Text(s)) => Value::Int(s.trim().parse().map_err(|_| wrong())?),
        (ValueType::Float, Value::Text(s)) => Value::Float(s.trim().parse().map_err(|_| wrong())?),
        (ValueType::Boolean, Value::Text(s)) => Value::Bool(s.trim().parse().map_err(|_| wrong())?),
        (ValueType::Date, Value::Text(s)) => Value::Date(crate::records::Date::parse(s.trim()).ok_or_else(wrong)?),
        _ => return Err(wrong()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_check_names_what_the_file_is() {
        let msg = |b: &[u8]| check_header("x.wasm", b).unwrap_err().to_string();
        assert_eq!(msg(b""), "x.wasm: the file is empty");
        assert_eq!(msg(b"hello world"), "x.wasm: not a WebAssembly file (no `\\0asm` header)");
        assert!(msg(b"\0asm\x01\0\0\0").contains("a core WebAssembly module, not a component"));
        assert!(check_header("x", b"\0asm\x0d\0\x01\0").is_ok());
    }

    #[test]
    fn capabilities_round_trip_through_text() {
        let c: Capability = "read:students".parse().unwrap();
        assert_eq!(c, Capability::ReadCollection("students".into()));
        assert_eq!(c.to_string(), "read:students");
        assert!("students".parse::<Capability>().is_err());
    }

    #[test]
    fn text_parameters_are_coerced_to_their_declared_type() {
        assert_eq!(coerce(&Value::Text("7".into()), ValueType::Integer), Ok(Value::Int(7)));
        assert!(coerce(&Value::Text("seven".into()), ValueType::Integer).unwrap_err().contains("expected integer"));
        assert_eq!(coerce(&Value::Text("2026-02-28".into()), ValueType::Date).unwrap().to_key_text(), "2026-02-28");
    }
}
