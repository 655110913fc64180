//! Imports: run a vendor's mapping over a file and store the rows.
//!
//! An import maps the whole file through the vendor's component, matches
//! each row to the existing records by the admin's match rule (its keys in
//! priority order, each looked up through an index, so matching costs
//! O(rows)), works out what changes, and applies every change in one
//! atomic batch (all or nothing). Each row is reported: new, updated
//! (field by field, before and after), existing (unchanged), ended (given
//! the end date it lacked), removed (deleted at the row's request, or
//! missing from a full roster that removes), inactivated (missing from a
//! full roster), duplicate, several matches (one message per candidate; the
//! row is not applied), or error (with line and field).

mod ftps;
mod remote;
mod sftp;
mod smb;

pub use ftps::normalize_fingerprint;
pub(crate) use remote::is_plain_file_name;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::plugins::{self, Capability, LogLine, PluginHost, RowError, RunRequest};
use crate::records::{Record, Value};
use crate::rules;
use crate::sources::{Location, Source};
use crate::store::{self, Backend, CollectionSpec, RunId};

/// Where an import's rows go.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportTarget {
    /// The source files are picked up from, by name, as the account owner
    /// defined it (`schoolbell source add`).
    pub source: String,
    /// Import the files whose names start with this.
    #[serde(default)]
    pub prefix: Option<String>,
    /// The file is the full roster: records missing from it are inactivated
    /// (their `active` field set to false).
    #[serde(default)]
    pub full_roster: bool,
    /// With a full roster: whether the records it lacks are inactivated
    /// (kept, `active: false`) or removed (deleted).
    #[serde(default)]
    pub missing: Missing,
    /// The field holding a record's end date (such as `end-date`): a row
    /// that sets it on a record that had none ends that record, and the
    /// report says "ended" rather than "updated".
    #[serde(default)]
    pub end_field: Option<String>,
    /// The mass-change guard's thresholds.
    #[serde(default)]
    pub guard: Guard,
    /// The collection the rows go into.
    pub collection: String,
    /// The collection's key field (needed when the collection is new).
    pub key_field: Option<String>,
    /// Secondary indexes: fields joined by `+`.
    #[serde(default)]
    pub indexes: Vec<String>,
    /// The admin's match rule (by name, such as `match_student`); without
    /// one, rows match on the key field alone.
    #[serde(default)]
    pub match_rule: Option<String>,
}

/// The `[imports]` section.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ImportsConfig {
    /// The largest file an import reads or downloads, in bytes.
    pub max_file_bytes: u64,
    /// The most rows one file may have: what an import's plan holds.
    pub max_rows: u64,
}

impl Default for ImportsConfig {
    fn default() -> Self {
        ImportsConfig { max_file_bytes: 256 << 20, max_rows: 2_000_000 }
    }
}

/// What a full roster does with the records it lacks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Missing {
    /// Keep them, with `active` set to false.
    #[default]
    Inactivate,
    /// Delete them.
    Remove,
}

/// The mapped field through which a row asks for its record to be deleted:
/// `remove` (or `delete`). Vendors map an "action" column to it; it is never
/// stored.
pub const ACTION_FIELD: &str = "_action";

/// When set in the environment, a commit aborts the process right after
/// it is durable and before the file is renamed: the crash tests use it.
pub const CRASH_AFTER_COMMIT: &str = "SCHOOLBELL_CRASH_AFTER_COMMIT";

/// What pickup and commit need beyond the target: the owner's sources,
/// the district's folders, the stored credentials, where remote files are
/// staged, and how large a file may be.
pub struct Access {
    /// The data directory's secrets, when one is open.
    pub secrets: Option<crate::secrets::Secrets>,
    /// Where files from SFTP sources are downloaded to.
    pub staging: std::path::PathBuf,
    /// The district's folders (`[sandbox.folders]`).
    pub folders: BTreeMap<String, std::path::PathBuf>,
    /// How large a file and its plan may be.
    pub limits: ImportsConfig,
}

impl Default for Access {
    fn default() -> Self {
        Access {
            secrets: None,
            staging: std::env::temp_dir().join("schoolbell-staging"),
            folders: BTreeMap::new(),
            limits: ImportsConfig::default(),
        }
    }
}

impl Access {
    /// The task's source, as the owner defined it.
    fn source(&self, store: &dyn Backend, target: &ImportTarget) -> Result<Source, Error> {
        store.source(&target.source)?.ok_or_else(|| {
            Error::Target(format!(
                "no source named `{}`: the account owner defines it with `schoolbell source add`",
                target.source
            ))
        })
    }

    /// A stored credential, as text.
    fn credential(&self, store: &dyn Backend, name: &str) -> Result<String, Error> {
        let secrets =
            self.secrets.as_ref().ok_or_else(|| Error::Target("no secrets are open in this process".into()))?;
        Ok(String::from_utf8_lossy(&secrets.get(store, name)?).into_owned())
    }

    /// Opens the source's folder, wherever it is: logged in, its server
    /// verified, the folder found.
    fn open(&self, store: &dyn Backend, source: &Source) -> Result<Box<dyn remote::Remote>, Error> {
        if let Some(folder) = source.local_folder(&self.folders) {
            let path = folder.map_err(|e| Error::Target(e.to_string()))?;
            return Ok(Box::new(remote::Folder { path, shown: source.shown() }));
        }
        let name = source.name.clone();
        match &source.location {
            Location::Folder { .. } => Err(Error::Target(format!("source `{name}` has no location"))),
            Location::Sftp { host, port, user, path, credential, host_key } => {
                let remote = sftp::Remote {
                    user: user.clone(),
                    host: host.clone(),
                    port: *port,
                    folder: path.clone(),
                    host_key: host_key.clone(),
                    source: name,
                };
                Ok(Box::new(sftp::Conn::connect(&remote, &self.credential(store, credential)?)?))
            }
            Location::Ftps { host, port, tls, user, path, credential, certificate } => {
                let server = ftps::Server {
                    host: host.clone(),
                    port: port.unwrap_or(tls.default_port()),
                    implicit: *tls == crate::sources::FtpsTls::Implicit,
                    user: user.clone(),
                    folder: path.clone(),
                    pin: certificate.clone(),
                    source: name,
                };
                Ok(Box::new(ftps::Conn::connect(&server, &self.credential(store, credential)?)?))
            }
            Location::Smb { host, port, share, path, domain, user, credential } => {
                let share = smb::Share {
                    host: host.clone(),
                    port: *port,
                    share: share.clone(),
                    folder: path.clone(),
                    domain: domain.clone(),
                    user: user.clone(),
                    source: name,
                };
                Ok(Box::new(smb::Conn::connect(&share, &self.credential(store, credential)?)?))
            }
        }
    }
}

/// What `source test` found: whether the source answers, its server's host
/// key, and the files it would pick up.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Reached {
    /// What it says, for people.
    pub message: String,
    /// For an SFTP source: the server's host key fingerprint as it
    /// presents it now (`SHA256:` and base64).
    pub host_key: Option<String>,
    /// Whether that key is the accepted one.
    pub host_key_accepted: Option<bool>,
    /// The files it would pick up now, by name.
    #[serde(default)]
    pub files: Vec<String>,
}

/// "Test connection": reaches a source, logs in, lists the folder, checks
/// that files can be renamed there (as every import does once its commit is
/// durable), and says what it would pick up with `prefix`. An SFTP server
/// whose key was not accepted yet shows its fingerprint and goes no
/// further. Each failure is one line naming the step: DNS, TCP, the TLS
/// certificate (with its fingerprint), the host key, the login, the folder,
/// or the rename.
pub fn test_source(store: &dyn Backend, source: &Source, prefix: &str, access: &Access) -> Result<Reached, Error> {
    let mut host_key = None;
    if let Location::Sftp { host, port, user, path, host_key: accepted, .. } = &source.location {
        let remote = sftp::Remote {
            user: user.clone(),
            host: host.clone(),
            port: *port,
            folder: path.clone(),
            host_key: accepted.clone(),
            source: source.name.clone(),
        };
        let seen = sftp::host_key(&remote)?;
        if accepted.as_deref() != Some(seen.as_str()) {
            let message = match accepted {
                None => format!(
                    "{} presents host key {seen}; if that is the server's key, accept it with `schoolbell source accept {} {seen}`",
                    source.shown(),
                    source.name
                ),
                Some(accepted) => format!(
                    "{} presents host key {seen}, not the accepted {accepted}: the server was reinstalled or someone is in between; ask its administrator before accepting the new key",
                    source.shown()
                ),
            };
            return Ok(Reached { message, host_key: Some(seen), host_key_accepted: Some(false), files: Vec::new() });
        }
        host_key = Some(seen);
    }
    let mut conn = access.open(store, source)?;
    let (files, refused) = remote::plain_names(conn.list(prefix)?);
    let files: Vec<String> = files.into_iter().map(|(name, _)| name).collect();
    remote::probe_rename(&mut *conn)?;
    let shown: Vec<&str> = files.iter().take(5).map(String::as_str).collect();
    let more =
        if files.len() > shown.len() { format!(" and {} more", files.len() - shown.len()) } else { String::new() };
    let list = if files.is_empty() { String::new() } else { format!(": {}{more}", shown.join(", ")) };
    let refused = match refused.len() {
        0 => String::new(),
        n => format!(" ({n} listed name(s) that are not plain file names will be skipped)"),
    };
    let found = format!("{} file(s) named {prefix}*{list}{refused}; files can be renamed there", files.len());
    let message = if source.local_folder(&access.folders).is_some() {
        format!("{} is readable: {found}", source.shown())
    } else {
        format!("connected to {}: {found}", source.shown())
    };
    let accepted = host_key.as_ref().map(|_| true);
    Ok(Reached { message, host_key, host_key_accepted: accepted, files })
}

/// "Test connection" for a task: its source, with its prefix.
pub fn test_connection(store: &dyn Backend, target: &ImportTarget, access: &Access) -> Result<String, Error> {
    let source = access.source(store, target)?;
    let reached = test_source(store, &source, target.prefix.as_deref().unwrap_or(""), access)?;
    if reached.host_key_accepted == Some(false) {
        return Err(Error::Remote(reached.message));
    }
    Ok(reached.message)
}

/// The files in a folder whose names start with `prefix` (never `P_`
/// ones, which are done), by name. Symbolic links are not followed: a file
/// planted as a link to elsewhere on the server is not a file of the folder.
fn local_files(folder: &Path, prefix: &str) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(folder)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type()?.is_file() && name.starts_with(prefix) && !name.starts_with("P_") {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

/// The mass-change guard: a plan that changes, adds or inactivates at
/// least `confirm_percent` of the existing records waits for a person to
/// confirm it; one whose additions, updates or removals each reach
/// `authorize_percent` waits for an authorization. Whoever confirms or
/// approves must not be whoever asked for the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Guard {
    /// Changed + added + inactivated, as a percentage of existing records.
    pub confirm_percent: f64,
    /// Added, or updated, or removed and inactivated, as a percentage of
    /// existing records.
    pub authorize_percent: f64,
}

impl Default for Guard {
    fn default() -> Self {
        Guard { confirm_percent: 10.0, authorize_percent: 20.0 }
    }
}

/// Whether a plan may be committed at once, or must wait for a person.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Hold {
    /// Below both thresholds.
    None,
    /// At or above the confirm threshold: a person confirms.
    Confirm,
    /// At or above the authorize threshold: a request with a comment,
    /// approved by a user with the authorize permission or with a code.
    Authorize,
}

impl Guard {
    /// The hold a plan's counts call for, against `existing` records. With
    /// no existing records (a first import) nothing is held: there is
    /// nothing to protect yet.
    pub fn hold(&self, counts: &BTreeMap<String, u64>, existing: u64) -> (Hold, f64, f64) {
        if existing == 0 {
            return (Hold::None, 0.0, 0.0);
        }
        let n = |k: &str| counts.get(k).copied().unwrap_or(0) as f64;
        // Ending and removing a record change it as much as inactivating it.
        // A conflict is a change the import wanted to make to another person.
        let changed = (n("new") + n("updated") + n("ended") + n("inactivated") + n("removed") + n("conflict")) * 100.0
            / existing as f64;
        // Replacing many records' data or taking many records away harms a
        // district as much as adding many: each kind is weighed alone.
        let added = n("new").max(n("updated") + n("ended") + n("conflict")).max(n("removed") + n("inactivated"))
            * 100.0
            / existing as f64;
        let hold = if added >= self.authorize_percent {
            Hold::Authorize
        } else if changed >= self.confirm_percent {
            Hold::Confirm
        } else {
            Hold::None
        };
        (hold, changed, added)
    }
}

/// What happens to one row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RowOutcome {
    /// No record matched: a new one.
    New {
        /// The new record's key.
        key: String,
    },
    /// One record matched and the row changes it.
    Updated {
        /// The record's key.
        key: String,
        /// Which match key found it.
        matched_on: String,
        /// Field, before, after.
        changes: Vec<(String, Value, Value)>,
    },
    /// One record matched and the row gives it the end date it lacked.
    Ended {
        /// The record's key.
        key: String,
        /// Which match key found it.
        matched_on: String,
        /// Field, before, after (the end date among them).
        changes: Vec<(String, Value, Value)>,
    },
    /// The record is deleted: the row asks for it, or a full roster that
    /// removes what it lacks does not list it.
    Removed {
        /// The record's key.
        key: String,
    },
    /// One record matched and the row changes nothing.
    Existing {
        /// The record's key.
        key: String,
    },
    /// Several records matched: not applied.
    Multiple {
        /// The candidates' keys.
        candidates: Vec<String>,
        /// Which match key found them.
        matched_on: String,
    },
    /// An earlier row of the file already set this record: skipped.
    Duplicate {
        /// The record's key.
        key: String,
        /// The earlier row.
        first_line: u64,
    },
    /// A full roster does not list this record: it is inactivated.
    Inactivated {
        /// The record's key.
        key: String,
    },
    /// The row cannot be applied.
    Error {
        /// The field at fault.
        field: Option<String>,
        /// What is wrong.
        message: String,
    },
    /// A fallback key matched a record whose own ID (or SSN) differs from
    /// the row's: two people, perhaps. Not applied; counted as an error.
    Conflict {
        /// The record the fallback found.
        key: String,
        /// Which match key found it.
        matched_on: String,
        /// The field that disagrees.
        field: String,
        /// The row's value of it.
        file_value: String,
    },
    /// A new record shares a fallback key (name and birth date) with
    /// existing records: created, and flagged for a person to look at.
    PossibleDuplicate {
        /// The new record's key.
        key: String,
        /// The records it resembles.
        others: Vec<String>,
        /// The key they share.
        matched_on: String,
    },
}

/// One row's outcome, with its line (0 for records a full roster lacks).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RowReport {
    /// The line the row is on.
    pub line: u64,
    /// What happens to it.
    pub outcome: RowOutcome,
}

impl RowReport {
    /// The row as people may read it: sensitive fields' values masked in
    /// its changes, and SSN-shaped text masked in its errors.
    pub fn masked(&self, privacy: &crate::privacy::Privacy) -> RowReport {
        let changes = |c: &[(String, Value, Value)]| -> Vec<(String, Value, Value)> {
            c.iter().map(|(f, b, a)| (f.clone(), privacy.value(f, b), privacy.value(f, a))).collect()
        };
        let outcome = match &self.outcome {
            RowOutcome::Updated { key, matched_on, changes: c } => {
                RowOutcome::Updated { key: key.clone(), matched_on: matched_on.clone(), changes: changes(c) }
            }
            RowOutcome::Ended { key, matched_on, changes: c } => {
                RowOutcome::Ended { key: key.clone(), matched_on: matched_on.clone(), changes: changes(c) }
            }
            RowOutcome::Conflict { key, matched_on, field, file_value } => RowOutcome::Conflict {
                key: key.clone(),
                matched_on: matched_on.clone(),
                field: field.clone(),
                file_value: if privacy.is_sensitive(field) {
                    crate::privacy::mask(file_value)
                } else {
                    file_value.clone()
                },
            },
            RowOutcome::Error { field, message } => {
                RowOutcome::Error { field: field.clone(), message: privacy.text(message) }
            }
            other => other.clone(),
        };
        RowReport { line: self.line, outcome }
    }

    /// The status word of the row's messages.
    pub fn status(&self) -> &'static str {
        match self.outcome {
            RowOutcome::New { .. } => "new",
            RowOutcome::Updated { .. } => "updated",
            RowOutcome::Ended { .. } => "ended",
            RowOutcome::Removed { .. } => "removed",
            RowOutcome::Existing { .. } => "existing",
            RowOutcome::Multiple { .. } => "multiple",
            RowOutcome::Duplicate { .. } => "duplicate",
            RowOutcome::Inactivated { .. } => "inactivated",
            RowOutcome::Error { .. } => "error",
            RowOutcome::Conflict { .. } => "conflict",
            RowOutcome::PossibleDuplicate { .. } => "possible-duplicate",
        }
    }

    /// The row's messages for the Task Messages tab: one, or one per
    /// candidate when several records matched.
    pub fn messages(&self) -> Vec<(Option<String>, String)> {
        match &self.outcome {
            RowOutcome::New { key } => vec![(None, format!("new record {key}"))],
            RowOutcome::Existing { key } => vec![(None, format!("record {key} is unchanged; skipped"))],
            RowOutcome::Updated { key, matched_on, changes } | RowOutcome::Ended { key, matched_on, changes } => {
                let list: Vec<String> = changes.iter().map(|(f, b, a)| format!("{f}: {b} → {a}")).collect();
                let what = self.status();
                vec![(None, format!("record {key} (matched on {matched_on}) {what}: {}", list.join("; ")))]
            }
            RowOutcome::Removed { key } if self.line == 0 => {
                vec![(None, format!("record {key} is not in the full roster; removed"))]
            }
            RowOutcome::Removed { key } => vec![(None, format!("record {key} removed at the row's request"))],
            RowOutcome::Multiple { candidates, matched_on } => candidates
                .iter()
                .map(|c| {
                    (None, format!("multiple matching records on {matched_on}: candidate {c}; the row is not applied"))
                })
                .collect(),
            RowOutcome::Duplicate { key, first_line } => {
                vec![(None, format!("record {key} was already set by line {first_line}; skipped"))]
            }
            RowOutcome::Inactivated { key } => {
                vec![(None, format!("record {key} is not in the full roster; inactivated"))]
            }
            RowOutcome::Error { field, message } => vec![(field.clone(), message.clone())],
            RowOutcome::Conflict { key, matched_on, field, file_value } => vec![(
                Some(field.clone()),
                format!(
                    "matched {key} by {matched_on}, but the file's {field} is {file_value}; the row is not applied"
                ),
            )],
            RowOutcome::PossibleDuplicate { key, others, matched_on } => vec![(
                None,
                format!(
                    "new record {key} has the same {matched_on} as {}: look whether they are one person",
                    others.join(", ")
                ),
            )],
        }
    }
}

/// Errors of an import as a whole.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The plugin failed, or the file's header is wrong.
    #[error(transparent)]
    Plugin(#[from] plugins::Error),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// The input cannot be opened.
    #[error("cannot open {path}: {source}")]
    Open {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The target is not usable.
    #[error("{0}")]
    Target(String),
    /// The match rule is broken.
    #[error(transparent)]
    Rule(#[from] rules::Error),
    /// A stored plan no longer fits what it was made from.
    #[error("{0}; run the test import again")]
    Changed(String),
    /// The SFTP server failed or refused.
    #[error("{0}")]
    Remote(String),
    /// A file is larger than `[imports] max_file_bytes`.
    #[error(
        "{file} is {size} bytes, over the {limit} an import reads ([imports] max_file_bytes in schoolbell.toml); split it or raise the limit"
    )]
    TooLarge {
        /// The file.
        file: String,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The credential could not be read.
    #[error(transparent)]
    Secret(#[from] crate::secrets::Error),
    /// The file could not be renamed after the commit.
    #[error(
        "the import of {file} is committed, but the file could not be renamed: {source}; rename or remove it by hand (the ledger keeps it from being imported twice)"
    )]
    Rename {
        /// The file.
        file: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Defines (or extends) a collection: its key field and indexes.
pub fn define_collection(
    store: &dyn Backend,
    collection: &str,
    key: Option<&str>,
    indexes: &[String],
) -> Result<(), Error> {
    let existing = store.collection(collection)?;
    let key_field = match (key, &existing) {
        // A key decides which record every row is about: changing it under
        // stored records would merge or split people.
        (Some(k), Some(spec)) if k != spec.key_field => {
            return Err(Error::Target(format!(
                "collection `{collection}` is keyed by `{}`; an import cannot change its key to `{k}`",
                spec.key_field
            )));
        }
        (Some(k), _) => k.to_string(),
        (None, Some(spec)) => spec.key_field.clone(),
        (None, None) => {
            return Err(Error::Target(format!(
                "collection `{collection}` is new: say which field is its key (--key FIELD)"
            )));
        }
    };
    let mut spec = existing.unwrap_or(CollectionSpec { key_field: key_field.clone(), indexes: vec![] });
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

/// Sets up an import target's collection: its key field, its indexes, and
/// an index for every match key of its rule. Done when an import task is
/// added, so that its runs, test imports included, only read.
pub fn prepare_collection(host: &PluginHost, target: &ImportTarget) -> Result<(), Error> {
    let store = &**host.store();
    define_collection(store, &target.collection, target.key_field.as_deref(), &target.indexes)?;
    let Some(name) = &target.match_rule else { return Ok(()) };
    let rule = host.rules().get(name)?;
    let keys = host.rules().match_keys(&rule)?;
    let Some(spec) = store.collection(&target.collection)? else { return Ok(()) };
    let by_key = vec![spec.key_field.clone()];
    let missing: Vec<Vec<String>> = keys.into_iter().filter(|k| *k != by_key && !spec.indexes.contains(k)).collect();
    if !missing.is_empty() {
        let mut with = spec.clone();
        with.indexes.extend(missing);
        store.define_collection(&target.collection, &with)?;
    }
    Ok(())
}

/// Rows as a file gave them, for a run's Task Messages: sensitive fields
/// masked as they are written, the rest borrowed, so keeping every row of
/// a file copies nothing. Written as a list of `(line, Record)`.
pub struct ShownRows<'a> {
    rows: &'a [crate::plugins::MappedRow],
    privacy: &'a crate::privacy::Privacy,
}

impl<'a> ShownRows<'a> {
    /// The rows of one mapped batch.
    pub fn new(rows: &'a [crate::plugins::MappedRow], privacy: &'a crate::privacy::Privacy) -> Self {
        ShownRows { rows, privacy }
    }

    /// The line of the first row.
    pub fn first_line(&self) -> Option<u64> {
        self.rows.first().map(|r| r.line)
    }
}

impl Serialize for ShownRows<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        struct Shown<'a>(&'a Record, &'a crate::privacy::Privacy);
        impl Serialize for Shown<'_> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_map(self.0.iter().map(|(f, v)| {
                    let v = if self.1.is_sensitive(f) {
                        std::borrow::Cow::Owned(self.1.value(f, v))
                    } else {
                        std::borrow::Cow::Borrowed(v)
                    };
                    (f, v)
                }))
            }
        }
        serializer.collect_seq(self.rows.iter().map(|r| (r.line, Shown(&r.record, self.privacy))))
    }
}

/// A file picked up for import.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PickedFile {
    /// Its path.
    pub path: String,
    /// SHA-256 of its content.
    pub hash: String,
    /// Its size in bytes.
    pub size: u64,
    /// For an SFTP source: its name on the server (`path` is the staged copy).
    pub remote: Option<String>,
}

fn hash_file(path: &Path) -> std::io::Result<(String, u64)> {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    let mut file = std::fs::File::open(path)?;
    let size = std::io::copy(&mut file, &mut hasher)?;
    Ok((hex::encode(hasher.finalize()), size))
}

/// What a pickup found: the file to import now (one per run, so that each
/// file has its own plan, guard, report and rename), how many more are
/// ready, and a note for each file still being written.
#[derive(Debug, Default)]
pub struct Picked {
    /// The first ready file, by name.
    pub file: Option<PickedFile>,
    /// Ready files after it, left on the server for the runs that follow.
    pub more: usize,
    /// Files left because they are still being written.
    pub notes: Vec<String>,
    /// Names the server listed that are not plain file names, each left
    /// alone with a note.
    pub skipped: Vec<String>,
}

/// Picks up a task's next file from its source: the first, by name, of
/// the files named with its prefix whose size held still for `settle`. A
/// file larger than `[imports] max_file_bytes` is refused, not read.
///
/// The file is claimed for `run` before it is read: where hosts share the
/// store, a file another host's run is importing is passed over.
pub fn pickup(
    store: &dyn Backend,
    target: &ImportTarget,
    settle: std::time::Duration,
    access: &Access,
    run: crate::store::RunId,
) -> Result<Picked, Error> {
    let source = access.source(store, target)?;
    let mut conn = access.open(store, &source)?;
    let mut claim = |name: &str| store.claim_file(&format!("{}\u{1f}{name}", source.name), run).map_err(Error::from);
    remote::pickup(&mut *conn, target.prefix.as_deref().unwrap_or(""), settle, access, &mut claim)
}

/// A file the account owner gave by hand (`import file`).
pub fn pick_file(path: &Path, access: &Access) -> Result<PickedFile, Error> {
    let shown = path.display().to_string();
    let size = std::fs::metadata(path).map_err(|source| Error::Open { path: shown.clone(), source })?.len();
    access.check_size(&shown, size)?;
    let (hash, size) = hash_file(path).map_err(|source| Error::Open { path: shown.clone(), source })?;
    Ok(PickedFile { path: shown, hash, size, remote: None })
}

impl Access {
    fn check_size(&self, file: &str, size: u64) -> Result<(), Error> {
        if size > self.limits.max_file_bytes {
            return Err(Error::TooLarge { file: file.into(), size, limit: self.limits.max_file_bytes });
        }
        Ok(())
    }
}

/// A planned import: what each row does and the records to write, with the
/// hashes of what it was made from, so that committing it later applies
/// exactly this plan or nothing.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImportPlan {
    /// The file.
    pub file: PickedFile,
    /// The ledger key: the file's content, mapped by this plugin build with
    /// these parameters. The same bytes mapped differently (another
    /// encoding, say) are a different import.
    pub ledger_key: String,
    /// The mapping plugin and its component's hash.
    pub plugin: (String, String),
    /// The match rule and its source's hash.
    pub rule: Option<(String, String)>,
    /// The collection.
    pub collection: String,
    /// Every row's outcome, in file order, then the inactivated records.
    pub rows: Vec<RowReport>,
    /// Counts by outcome (a row with several errors counts once).
    pub counts: BTreeMap<String, u64>,
    /// Records to write: new, updated, ended, inactivated.
    pub writes: Vec<Record>,
    /// Keys of the records to delete.
    #[serde(default)]
    pub removes: Vec<String>,
    /// Records in the collection when the plan was made.
    pub existing: u64,
    /// What the guard says.
    pub hold: Hold,
    /// Changed + added + inactivated, percent of existing.
    pub changed_percent: f64,
    /// Added, percent of existing.
    pub added_percent: f64,
    /// When this content was already imported: by what.
    pub already_imported: Option<String>,
    /// The plugin's log.
    pub log: Vec<LogLine>,
}

impl ImportPlan {
    /// One line for people: the counts and what the guard says.
    pub fn summary(&self) -> String {
        if let Some(by) = &self.already_imported {
            return format!("{}: already imported ({by}); not imported again", self.file.path);
        }
        let counts: Vec<String> = self.counts.iter().map(|(k, v)| format!("{v} {k}")).collect();
        let counts = if counts.is_empty() { "no rows".to_string() } else { counts.join(", ") };
        let hold = match self.hold {
            Hold::None => String::new(),
            Hold::Confirm => format!(
                "; it changes {:.1}% of the {} existing records, so it waits for a person to confirm it",
                self.changed_percent, self.existing
            ),
            Hold::Authorize => format!(
                "; it adds, updates or removes {:.1}% of the {} existing records, so it needs an authorization",
                self.added_percent, self.existing
            ),
        };
        format!("{}: {counts}{hold}", self.file.path)
    }
}

fn check_capability(host: &PluginHost, plugin: &str, collection: &str) -> Result<plugins::PluginEntry, Error> {
    let entry = host.entry(plugin)?;
    let cap = Capability::WriteCollection(collection.to_string());
    let asks = || entry.capabilities.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(", ");
    if !entry.capabilities.contains(&cap) {
        return Err(Error::Target(format!(
            "plugin {plugin} does not produce `{collection}` records (it asks for: {})",
            asks()
        )));
    }
    if !entry.granted.contains(&cap) {
        return Err(Error::Target(format!(
            "plugin {plugin} may write `{collection}` only once an admin grants it: `schoolbell plugin grant {plugin} {cap}`"
        )));
    }
    Ok(entry)
}

/// Maps, matches and diffs one file without writing any record.
pub fn prepare(
    host: &PluginHost,
    plugin: &str,
    target: &ImportTarget,
    file: &PickedFile,
    request: &RunRequest,
    limits: &ImportsConfig,
    rows_of: Option<(RunId, &crate::privacy::Privacy)>,
) -> Result<ImportPlan, Error> {
    let entry = check_capability(host, plugin, &target.collection)?;
    let store = &**host.store();
    let rule = match &target.match_rule {
        Some(name) => Some(host.rules().get(name)?),
        None => None,
    };
    let ledger_key = {
        use sha2::Digest;
        let params = serde_json::to_string(&request.params).unwrap_or_default();
        hex::encode(sha2::Sha256::digest(format!("{}\n{}\n{params}", file.hash, entry.hash).as_bytes()))
    };
    let mut plan = ImportPlan {
        file: file.clone(),
        ledger_key: ledger_key.clone(),
        plugin: (entry.name.clone(), entry.hash.clone()),
        rule: rule.as_ref().map(|r| (r.name.clone(), r.hash.clone())),
        collection: target.collection.clone(),
        rows: Vec::new(),
        counts: BTreeMap::new(),
        writes: Vec::new(),
        removes: Vec::new(),
        existing: 0,
        hold: Hold::None,
        changed_percent: 0.0,
        added_percent: 0.0,
        already_imported: store.import_ledger(&ledger_key)?,
        log: Vec::new(),
    };
    if plan.already_imported.is_some() {
        return Ok(plan);
    }
    refuse_utf16(&file.path)?;
    let input = std::fs::File::open(&file.path).map_err(|source| Error::Open { path: file.path.clone(), source })?;
    request.control.set_progress(0, Some(file.size.max(1)));
    // Set up the collection and read the match keys: once rows arrive, or
    // at the end for a file with none. A file whose header fails creates
    // nothing.
    let setup = || -> Result<(Vec<Vec<String>>, u64), Error> {
        define_collection(store, &target.collection, target.key_field.as_deref(), &target.indexes)?;
        let keys = match &rule {
            Some(r) => host.rules().match_keys(r)?,
            None => Vec::new(),
        };
        Ok((keys, store.count_records(&target.collection)?))
    };
    let plan_from = |rows: &mut dyn Iterator<Item = Vec<(u64, Record)>>| -> Result<(Plan, u64), Error> {
        let (keys, existing) = setup()?;
        Ok((plan_rows(store, &target.collection, &keys, target.end_field.as_deref(), rows)?, existing))
    };
    // The component maps on this thread while another matches the rows
    // it has mapped so far: the two stages overlap instead of adding up.
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<(u64, Record)>>(16);
    let (mapped, planned) = std::thread::scope(|scope| {
        let planner = scope.spawn(move || -> Result<Option<(Plan, u64)>, Error> {
            let mut rows = rx.into_iter().peekable();
            if rows.peek().is_none() {
                return Ok(None);
            }
            plan_from(&mut rows).map(Some)
        });
        let mut rows_seen = 0u64;
        let mapped = host.run_mapping(plugin, &file.path, std::io::BufReader::new(input), request, |batch| {
            if batch.is_empty() {
                return Ok(());
            }
            rows_seen += batch.len() as u64;
            if rows_seen > limits.max_rows {
                return Err(plugins::Error::OutputTooLarge {
                    plugin: entry.id(),
                    count: rows_seen as usize,
                    what: "rows in one file ([imports] max_rows)",
                    limit: limits.max_rows as usize,
                });
            }
            // The rows as the file gave them, masked, for the run's Task
            // Messages: written as they stream, one value per batch, so
            // memory stays bounded and a million rows cost a thousand writes.
            if let Some((run, privacy)) = rows_of
                && let Err(e) = store.add_message_rows(run, &ShownRows::new(&batch, privacy))
            {
                tracing::warn!(run, error = %e, "The rows of an import could not be kept for its messages.");
            }
            tx.send(batch.into_iter().map(|r| (r.line, r.record)).collect())
                .map_err(|_| plugins::Error::Cancelled { plugin: entry.id() })
        });
        drop(tx);
        let planned = planner.join().unwrap_or_else(|_| Err(Error::Target("the row planner panicked".into())));
        (mapped, planned)
    });
    // The planner's own error says more than the stop it caused.
    let planned = planned?;
    let outcome = mapped?;
    let (mut planned, existing) = match planned {
        Some(p) => p,
        None => plan_from(&mut std::iter::empty())?,
    };
    plan.existing = existing;
    planned.rows = merge_errors(std::mem::take(&mut planned.rows), &outcome.errors);
    if target.full_roster {
        settle_missing(store, &target.collection, target.missing, &mut planned)?;
    }
    let Plan { rows, writes, removes, .. } = planned;
    // A row with several field errors counts once: they are adjacent.
    let mut previous = None;
    for r in &rows {
        let this = (r.status(), r.line);
        if r.line == 0 || previous != Some(this) {
            *plan.counts.entry(r.status().to_string()).or_insert(0) += 1;
        }
        previous = Some(this);
    }
    (plan.hold, plan.changed_percent, plan.added_percent) = target.guard.hold(&plan.counts, plan.existing);
    plan.rows = rows;
    plan.writes = writes;
    plan.removes = removes;
    plan.log = outcome.log;
    Ok(plan)
}

/// Refuses a UTF-16 file by name: read as UTF-8 it would only say that
/// its header lacks every column. Known by its byte-order mark, or by the
/// NUL byte beside every ASCII character.
fn refuse_utf16(path: &str) -> Result<(), Error> {
    use std::io::Read;
    let mut head = [0u8; 512];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .map_err(|source| Error::Open { path: path.into(), source })?;
    let head = &head[..n];
    let bom = head.starts_with(&[0xFF, 0xFE]) || head.starts_with(&[0xFE, 0xFF]);
    let nuls = head.iter().filter(|b| **b == 0).count();
    if bom || (n >= 8 && nuls * 3 >= n) {
        return Err(Error::Target(format!(
            "{path}: the file is UTF-16; save it as UTF-8 (in Excel: CSV UTF-8) and import it again"
        )));
    }
    Ok(())
}

/// Records of the collection the full roster does not list are set
/// inactive (`active: false`, unless they are already), or removed.
fn settle_missing(store: &dyn Backend, collection: &str, missing: Missing, plan: &mut Plan) -> Result<(), Error> {
    let spec = store
        .collection(collection)?
        .ok_or_else(|| Error::Target(format!("collection `{collection}` does not exist")))?;
    let mut after: Option<String> = None;
    loop {
        let (page, next) = store.scan_records(collection, after.as_deref(), 1000)?;
        for mut record in page {
            let key = record.get(&spec.key_field).map(Value::to_key_text).unwrap_or_default();
            if plan.seen.contains_key(&key) {
                continue;
            }
            let outcome = match missing {
                Missing::Remove => {
                    plan.removes.push(key.clone());
                    RowOutcome::Removed { key }
                }
                Missing::Inactivate if record.get("active") == Some(&Value::Bool(false)) => continue,
                Missing::Inactivate => {
                    record.insert("active".into(), Value::Bool(false));
                    plan.writes.push(record);
                    RowOutcome::Inactivated { key }
                }
            };
            plan.rows.push(RowReport { line: 0, outcome });
        }
        match next {
            Some(n) => after = Some(n),
            None => return Ok(()),
        }
    }
}

/// Commits a plan: checks that the file, the mapping plugin and the rule
/// are as they were, writes every record and the ledger entry in one atomic
/// batch, flushes, and only then renames the file `P_<name>_<UTC time>` in
/// its source, so it is never picked up again. A file given by hand (no
/// `source`) stays where and as it is: the content ledger already keeps it
/// from being imported twice. Returns the number of records written.
pub fn commit(
    host: &PluginHost,
    plan: &ImportPlan,
    run: &str,
    source: Option<&ImportTarget>,
    access: &Access,
) -> Result<u64, Error> {
    let store = &**host.store();
    let path = Path::new(&plan.file.path);
    let written = if plan.already_imported.is_some() {
        0
    } else {
        let (hash, _) = hash_file(path).map_err(|source| Error::Open { path: plan.file.path.clone(), source })?;
        if hash != plan.file.hash {
            return Err(Error::Changed(format!("{} changed since the plan was made", plan.file.path)));
        }
        if host.entry(&plan.plugin.0)?.hash != plan.plugin.1 {
            return Err(Error::Changed(format!("plugin {} was replaced since the plan was made", plan.plugin.0)));
        }
        if let Some((name, rule_hash)) = &plan.rule
            && host.rules().get(name)?.hash != *rule_hash
        {
            return Err(Error::Changed(format!("rule {name} changed since the plan was made")));
        }
        let entry = format!("{run}, file {}, committed {}", plan.file.path, chrono::Utc::now().to_rfc3339());
        let n = store.commit_import(&plan.collection, &plan.writes, &plan.removes, &plan.ledger_key, &entry)?;
        store.flush()?;
        // A fixed crash point for the exactly-once test: durable, not yet
        // renamed. Random kills reach this window only by luck.
        if std::env::var_os(CRASH_AFTER_COMMIT).is_some() {
            std::process::abort();
        }
        n as u64
    };
    let Some(target) = source else { return Ok(written) };
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    if let Some(remote) = &plan.file.remote {
        access.open(store, &access.source(store, target)?)?.rename(remote, &format!("P_{remote}_{stamp}"))?;
        let _ = std::fs::remove_file(path);
    } else if path.exists() {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let renamed = path.with_file_name(format!("P_{name}_{stamp}"));
        std::fs::rename(path, &renamed).map_err(|source| Error::Rename { file: plan.file.path.clone(), source })?;
    }
    Ok(written)
}

/// The changes of a file's rows: every row's outcome and the records to write.
struct Plan {
    rows: Vec<RowReport>,
    writes: Vec<Record>,
    removes: Vec<String>,
    /// Keys of the records the file's rows matched or created, with the line that first set each.
    seen: HashMap<String, u64>,
}

/// How a row matched.
enum Match {
    /// No record: a new one, with the records it resembles on a fallback
    /// key (and that key's name), if any.
    New(Option<(Vec<String>, String)>),
    /// A fallback key found a record whose own ID or SSN differs from the
    /// row's: record, match key, field, the row's value.
    Conflict(String, String, String, String),
    /// The record's key, the match key's name, and the record (read in
    /// the lookup, on the planner's worker threads).
    One(String, String, Record),
    Several(Vec<String>, String),
    /// The key field matched a record identical to the row.
    Same(String),
}

/// The fields whose value names one person: a fallback match that
/// disagrees on one of them is a conflict.
const IDENTIFYING: &str = "ssn";

/// Whether the row has a value for the field (of a match key) that is not
/// null or blank.
fn has_field(row: &Record, field: &str) -> bool {
    match row.get(crate::records::key_field(field).0) {
        None | Some(Value::Null) => false,
        Some(Value::Text(t)) => !t.trim().is_empty(),
        Some(_) => true,
    }
}

/// What a batch's lookups found for one row, read beforehand with the rest
/// of the batch: by its key field if it has one, and through the index of
/// each match key (by position) it may need.
struct Looked {
    by_key: Option<store::Lookup>,
    by_index: Vec<Option<Vec<String>>>,
}

/// Whether `key` is the key field alone, which the records' key answers
/// rather than an index.
fn is_key_field(spec: &CollectionSpec, key: &[String]) -> bool {
    key.len() == 1 && key[0] == spec.key_field
}

/// The match keys (by position) whose index [`find`] may read for a row:
/// from the deciding key on, or after it when the key field decides and
/// found no record.
fn index_asks(
    spec: &CollectionSpec,
    keys: &[(Vec<String>, String)],
    row: &Record,
    by_key: Option<&store::Lookup>,
) -> Vec<usize> {
    let row_has = |key: &[String]| key.iter().all(|f| has_field(row, f));
    let Some(decides) = keys.iter().position(|(key, _)| row_has(key)) else { return Vec::new() };
    let from = if is_key_field(spec, &keys[decides].0) {
        if !matches!(by_key, Some(store::Lookup::Missing)) {
            return Vec::new();
        }
        decides + 1
    } else {
        decides
    };
    (from..keys.len()).filter(|&i| row_has(&keys[i].0)).collect()
}

/// Finds a row's records by the match keys in priority order: the first
/// key whose fields the row has (not empty) decides, found or not; later
/// keys are for rows that lack it. A record a fallback key found whose ID
/// or SSN differs from the row's is a conflict, never a match.
///
/// `looked` is what the key field and the indexes found, read beforehand
/// with the rest of the batch; what it lacks is read here.
fn find(
    store: &dyn Backend,
    collection: &str,
    spec: &CollectionSpec,
    keys: &[(Vec<String>, String)],
    row: &Record,
    mut looked: Looked,
) -> Result<Match, Error> {
    let has = |f: &str| has_field(row, f);
    let row_has = |key: &[String]| key.iter().all(|f| has(f));
    let mut through_index = |i: usize| -> Result<Vec<String>, Error> {
        match looked.by_index.get_mut(i).and_then(Option::take) {
            Some(found) => Ok(found),
            None => Ok(store.find_by_index(collection, &keys[i].0, row)?),
        }
    };
    let Some(decides) = keys.iter().position(|(key, _)| row_has(key)) else { return Ok(Match::New(None)) };
    let (key, name) = &keys[decides];
    let found = if is_key_field(spec, key) {
        let k = row[&spec.key_field].to_key_text();
        let by_key = match looked.by_key.take() {
            Some(by_key) => by_key,
            None => store.lookup_records(collection, &[(k.clone(), row)])?.pop().unwrap_or(store::Lookup::Missing),
        };
        match by_key {
            store::Lookup::Same => return Ok(Match::Same(k)),
            store::Lookup::Differs(record) => return Ok(Match::One(k, name.clone(), record)),
            store::Lookup::Missing => Vec::new(),
        }
    } else {
        through_index(decides)?
    };
    match found.len() {
        0 => {
            // New: but say so when a fallback key finds someone alike.
            for (later, (key, later_name)) in keys.iter().enumerate().skip(decides + 1) {
                if row_has(key) {
                    let alike = through_index(later)?;
                    if !alike.is_empty() {
                        return Ok(Match::New(Some((alike, later_name.clone()))));
                    }
                }
            }
            Ok(Match::New(None))
        }
        1 => {
            let record_key = found.into_iter().next().unwrap_or_default();
            let record = store.get_record(collection, &record_key)?.unwrap_or_default();
            let norm = |v: &Value| v.to_key_text().trim().to_lowercase();
            for field in [spec.key_field.as_str(), IDENTIFYING] {
                if let (Some(mine), Some(theirs)) = (row.get(field), record.get(field))
                    && has(field)
                    && !norm(theirs).is_empty()
                    && norm(mine) != norm(theirs)
                {
                    return Ok(Match::Conflict(record_key, name.clone(), field.to_string(), mine.to_key_text()));
                }
            }
            Ok(Match::One(record_key, name.clone(), record))
        }
        _ => Ok(Match::Several(found, name.clone())),
    }
}

/// Works out what each row does, without writing anything.
fn plan_rows(
    store: &dyn Backend,
    collection: &str,
    keys: &[Vec<String>],
    end_field: Option<&str>,
    batches: &mut dyn Iterator<Item = Vec<(u64, Record)>>,
) -> Result<Plan, Error> {
    let spec = store
        .collection(collection)?
        .ok_or_else(|| Error::Target(format!("collection `{collection}` does not exist")))?;
    // The key field always matches first, whatever the rule says.
    let mut keys: Vec<Vec<String>> = keys.to_vec();
    let by_key = vec![spec.key_field.clone()];
    keys.retain(|k| *k != by_key);
    keys.insert(0, by_key);
    // Lookups go through indexes: every match key has one since the task
    // was added (`prepare_collection`), unless its rule changed since.
    let missing: Vec<Vec<String>> = keys.iter().skip(1).filter(|k| !spec.indexes.contains(k)).cloned().collect();
    if !missing.is_empty() {
        let mut with = spec.clone();
        with.indexes.extend(missing);
        store.define_collection(collection, &with)?;
    }
    let keys: Vec<(Vec<String>, String)> = keys
        .into_iter()
        .map(|k| {
            let name = k.join(" + ");
            (k, name)
        })
        .collect();
    let mut out = Vec::new();
    let mut writes = Vec::new();
    let mut removes = Vec::new();
    let mut seen: HashMap<String, u64> = HashMap::new();
    // Every field a key or an index is made of.
    let mut keyed: Vec<String> = keys.iter().flat_map(|(k, _)| k.iter().cloned()).collect();
    keyed.extend(spec.indexes.iter().flatten().cloned());
    for f in &mut keyed {
        *f = crate::records::key_field(f).0.to_string();
    }
    keyed.sort();
    keyed.dedup();
    for batch in batches {
        // The lookups (index reads, record decoding) are most of the work and
        // independent of each other: run them across cores, in row order.
        // The key field decides every row that has one (it is the first
        // match key): those are looked up together, one round trip for the
        // batch on a store across the network.
        let keyed_rows: Vec<bool> = batch.iter().map(|(_, row)| has_field(row, &spec.key_field)).collect();
        let by_key: Vec<(String, &Record)> = batch
            .iter()
            .zip(&keyed_rows)
            .filter(|(_, keyed)| **keyed)
            .map(|((_, row), _)| (row[&spec.key_field].to_key_text(), row))
            .collect();
        let mut looked = store.lookup_records(collection, &by_key)?.into_iter();
        let mut looked: Vec<Looked> = keyed_rows
            .iter()
            .map(|keyed| Looked { by_key: if *keyed { looked.next() } else { None }, by_index: vec![None; keys.len()] })
            .collect();
        // The fallback keys that rows without a record by key need, read
        // together too: on a store across the network a round trip for each
        // was most of a new row's time.
        let wanted: Vec<(usize, usize)> = batch
            .iter()
            .zip(&looked)
            .enumerate()
            .flat_map(|(r, ((_, row), l))| {
                index_asks(&spec, &keys, row, l.by_key.as_ref()).into_iter().map(move |k| (r, k))
            })
            .collect();
        if !wanted.is_empty() {
            let asks: Vec<(&[String], &Record)> =
                wanted.iter().map(|&(r, k)| (keys[k].0.as_slice(), &batch[r].1)).collect();
            for ((r, k), found) in wanted.iter().zip(store.find_by_indexes(collection, &asks)?) {
                looked[*r].by_index[*k] = Some(found);
            }
        }
        let found: Vec<Result<Match, Error>> = {
            use rayon::prelude::*;
            batch
                .par_iter()
                .zip(looked)
                .map(|((_, row), looked)| find(store, collection, &spec, &keys, row, looked))
                .collect()
        };
        for ((line, mut row), found) in batch.into_iter().zip(found) {
            // Keys and index entries cannot hold NUL: that row fails alone.
            if let Some(field) = keyed.iter().find(|f| row.get(*f).is_some_and(|v| v.to_key_text().contains('\0'))) {
                out.push(RowReport {
                    line,
                    outcome: RowOutcome::Error {
                        field: Some(field.clone()),
                        message: format!(
                            "`{field}` holds a NUL character (byte 0), which no key or index may; fix this line"
                        ),
                    },
                });
                continue;
            }
            let remove = match row.remove(ACTION_FIELD) {
                None | Some(Value::Null) => false,
                Some(Value::Text(t)) if t.trim().is_empty() => false,
                Some(Value::Text(t)) if ["remove", "delete"].iter().any(|a| t.trim().eq_ignore_ascii_case(a)) => true,
                Some(other) => {
                    // The record is in the file: a full roster must not inactivate it.
                    if let Some(key) = row.get(&spec.key_field).map(Value::to_key_text) {
                        seen.entry(key).or_insert(line);
                    }
                    let message = format!(
                        "action `{}` is not known; leave it empty, or write `remove` to delete",
                        other.to_key_text()
                    );
                    out.push(RowReport {
                        line,
                        outcome: RowOutcome::Error { field: Some(ACTION_FIELD.into()), message },
                    });
                    continue;
                }
            };
            let mut alike = None;
            let outcome = match found? {
                Match::Several(candidates, matched_on) => RowOutcome::Multiple { candidates, matched_on },
                Match::Conflict(key, matched_on, field, file_value) => {
                    // Not applied, and not inactivated by a full roster either:
                    // a person looks first.
                    seen.entry(key.clone()).or_insert(line);
                    RowOutcome::Conflict { key, matched_on, field, file_value }
                }
                Match::New(_) if remove => RowOutcome::Error {
                    field: Some(ACTION_FIELD.into()),
                    message: "the row asks to remove a record, but no record matches it".into(),
                },
                Match::New(similar) => {
                    match row.get(&spec.key_field).map(Value::to_key_text).filter(|k| !k.trim().is_empty()) {
                        None => RowOutcome::Error {
                            field: Some(spec.key_field.clone()),
                            message: format!(
                                "no record matches and the row has no `{}` to create one with",
                                spec.key_field
                            ),
                        },
                        Some(key) if seen.contains_key(&key) => RowOutcome::Duplicate { first_line: seen[&key], key },
                        Some(key) => {
                            seen.insert(key.clone(), line);
                            writes.push(row);
                            alike = similar.map(|(others, matched_on)| RowOutcome::PossibleDuplicate {
                                key: key.clone(),
                                others,
                                matched_on,
                            });
                            RowOutcome::New { key }
                        }
                    }
                }
                // A duplicate, or a removal: whatever the record holds.
                Match::Same(key) | Match::One(key, _, _) if remove || seen.contains_key(&key) => {
                    if let Some(first_line) = seen.get(&key) {
                        RowOutcome::Duplicate { key, first_line: *first_line }
                    } else {
                        seen.insert(key.clone(), line);
                        removes.push(key.clone());
                        RowOutcome::Removed { key }
                    }
                }
                Match::Same(key) => {
                    seen.insert(key.clone(), line);
                    // Most rows of a nightly roster: nothing to decode or copy.
                    RowOutcome::Existing { key }
                }
                Match::One(key, matched_on, existing) => {
                    seen.insert(key.clone(), line);
                    let mut changes = Vec::new();
                    for (field, after) in &row {
                        // The record keeps its key even when another key matched it.
                        if *field == spec.key_field {
                            continue;
                        }
                        let before = existing.get(field).unwrap_or(&Value::Null);
                        if before != after {
                            changes.push((field.clone(), before.clone(), after.clone()));
                        }
                    }
                    if changes.is_empty() {
                        // Most rows of a nightly roster: nothing to copy.
                        RowOutcome::Existing { key }
                    } else {
                        let mut merged = existing;
                        for (field, _, after) in &changes {
                            merged.insert(field.clone(), after.clone());
                        }
                        writes.push(merged);
                        let ends = end_field.is_some_and(|f| {
                            changes.iter().any(|(c, b, a)| c == f && *b == Value::Null && *a != Value::Null)
                        });
                        if ends {
                            RowOutcome::Ended { key, matched_on, changes }
                        } else {
                            RowOutcome::Updated { key, matched_on, changes }
                        }
                    }
                }
            };
            out.push(RowReport { line, outcome });
            if let Some(flag) = alike {
                out.push(RowReport { line, outcome: flag });
            }
        }
    }
    Ok(Plan { rows: out, writes, removes, seen })
}

/// Puts the mapping's row errors among the planned rows, in line order (an
/// error before the row of the same line, as the file reads).
fn merge_errors(rows: Vec<RowReport>, errors: &[RowError]) -> Vec<RowReport> {
    let report = |e: &RowError| RowReport {
        line: e.line,
        outcome: RowOutcome::Error { field: e.field.clone(), message: e.message.clone() },
    };
    let mut out = Vec::with_capacity(rows.len() + errors.len());
    let mut errors = errors.iter().peekable();
    for row in rows {
        while let Some(e) = errors.next_if(|e| e.line <= row.line) {
            out.push(report(e));
        }
        out.push(row);
    }
    out.extend(errors.map(report));
    out
}
