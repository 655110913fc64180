//! Storage: what the services need from a database, as a small set of
//! traits typed by domain values, and the backends that implement them.
//! `sled_store` is the embedded default (the demo runs on it); another
//! engine implements the same traits and passes the same contract tests
//! (`contract`). No sled type appears outside `store/sled*`.
//!
//! | trait | what it keeps |
//! |---|---|
//! | [`RecordStore`] | collections of records with secondary indexes, the import ledger |
//! | [`TaskStore`] | tasks with the due index, and the fire (a conditional step) |
//! | [`RunStore`] | sequences, the run queue, runs, their messages and import plans |
//! | [`LedgerStore`] | per-task state (watermarks) and the dedupe ledger |
//! | [`OutboxStore`] | the email outbox and its due index |
//! | [`AccountStore`] | users, token hashes, sealed secrets |
//! | [`PluginStore`] | the plugin registry and component blobs |
//! | [`Maintenance`] | flush, schema version, check, backup |

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::audit::AuditEntry;
use crate::imports::ImportPlan;
use crate::notify::{LedgerEntry, OutboxEntry};
use crate::plugins::PluginEntry;
use crate::records::{Record, Value};
use crate::rules::RuleVersion;
use crate::runs::{Approval, Run, TaskMessage};
use crate::sources::Source;
use crate::tasks::Task;
use crate::users::{Token, User};
use crate::views::SavedView;

#[cfg(test)]
mod contract;
mod postgres_store;
mod sled_store;

pub use postgres_store::PgStore;
pub(crate) use postgres_store::machine_name;
pub use sled_store::Store;

/// The `[store]` section of `schoolbell.toml`.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `sled`: the embedded store in the data directory's `store` folder,
    /// for one host (the default). `postgres`: a PostgreSQL database
    /// (`url`) that several hosts may share; run `schoolbell store migrate`
    /// once before the first start and after each upgrade.
    pub backend: BackendKind,
    /// The PostgreSQL connection, as a URL
    /// (`postgres://schoolbell@db.district.example/schoolbell`) or as
    /// `key=value` pairs (`host=/run/postgresql dbname=schoolbell`). Keep
    /// the password out of it: use `password_file`.
    pub url: String,
    /// A file holding the database password (a systemd credential, a
    /// mounted secret), read at start and never logged. Relative paths are
    /// taken from the data directory.
    pub password_file: Option<PathBuf>,
    /// The certificate authority (a PEM file) the database's TLS
    /// certificate is verified against, instead of the system's roots.
    /// Relative paths are taken from the data directory. Over TCP, TLS is
    /// verified with the host name checked unless the url's `sslmode`
    /// says `require` (encrypted, not verified) or `disable`.
    pub ca_file: Option<PathBuf>,
    /// Connections this host keeps open to the database.
    pub pool_size: u32,
    /// The schema the tables live in (lowercase letters, digits and `_`);
    /// `schoolbell store migrate` creates it.
    pub schema: String,
    /// Seconds a running run's lease lasts. Its host renews it every few
    /// seconds; when a host stops answering for this long, another host
    /// marks its runs interrupted.
    pub lease_secs: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            backend: BackendKind::Sled,
            url: String::new(),
            password_file: None,
            ca_file: None,
            pool_size: 16,
            schema: "schoolbell".into(),
            lease_secs: 30,
        }
    }
}

impl StoreConfig {
    /// `SCHOOLBELL_STORE_BACKEND`, `SCHOOLBELL_STORE_URL` and
    /// `SCHOOLBELL_STORE_SCHEMA` override the file, so one configuration
    /// can be pointed at another database (a test's, a staging copy).
    pub fn apply_env(&mut self) -> std::result::Result<(), String> {
        if let Ok(backend) = std::env::var("SCHOOLBELL_STORE_BACKEND") {
            self.backend = match backend.as_str() {
                "sled" => BackendKind::Sled,
                "postgres" => BackendKind::Postgres,
                other => return Err(format!("SCHOOLBELL_STORE_BACKEND is `{other}`; use `sled` or `postgres`")),
            };
        }
        if let Ok(url) = std::env::var("SCHOOLBELL_STORE_URL") {
            self.url = url;
        }
        if let Ok(schema) = std::env::var("SCHOOLBELL_STORE_SCHEMA") {
            self.schema = schema;
        }
        Ok(())
    }
}

/// Which database keeps the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// The embedded store in the data directory.
    Sled,
    /// A PostgreSQL database.
    Postgres,
}

/// Opens the store `config` names: the embedded one in `data` (migrated,
/// after a backup into `backups`, when an older build wrote it), or the
/// PostgreSQL database, which must be migrated already.
pub fn open(
    data: &Path,
    backups: &Path,
    config: &StoreConfig,
) -> Result<(std::sync::Arc<dyn Backend>, Option<Migrated>)> {
    match config.backend {
        BackendKind::Sled => {
            let (store, migrated) = Store::open_and_migrate(&data.join("store"), backups)?;
            Ok((std::sync::Arc::new(store), migrated))
        }
        BackendKind::Postgres => Ok((std::sync::Arc::new(PgStore::open(config, data)?), None)),
    }
}

/// The schema this build writes. Bump it when a key layout or a stored
/// type changes, and add the step from the version before to
/// `schema::MIGRATIONS`.
pub const SCHEMA_VERSION: u32 = 3;

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database could not be opened.
    #[error(
        "cannot open the store at {}: {source}. Check that the folder is writable and that no other schoolbell process is using it",
        path.display()
    )]
    Open {
        /// The store's folder.
        path: PathBuf,
        /// What the database said.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A read or write failed.
    #[error("store I/O failed in tree `{tree}`: {source}")]
    Io {
        /// The tree.
        tree: &'static str,
        /// What the database said.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Stored bytes do not decode.
    #[error("stored data is corrupt in tree `{tree}` at key `{key}`: {reason}")]
    Corrupt {
        /// The tree.
        tree: &'static str,
        /// The key, printably.
        key: String,
        /// The decoding error.
        reason: String,
    },
    /// The store was written by a newer build.
    #[error("the store has schema version {found}, but this build reads up to {SCHEMA_VERSION}; upgrade schoolbell")]
    Schema {
        /// The version found on disk.
        found: u32,
    },
    /// The store was written by an older build and needs migrating.
    #[error(
        "the store has schema version {found} and this build writes {SCHEMA_VERSION}: run `schoolbell store migrate` (it takes a backup first)"
    )]
    Outdated {
        /// The version found on disk.
        found: u32,
    },
    /// A backup could not be written.
    #[error("cannot write the backup to {}: {reason}", path.display())]
    Backup {
        /// Where it was going.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// A name or key holds a character the key layout cannot.
    #[error("{what} `{value}` holds a NUL character, which names and keys may not")]
    BadName {
        /// What the value is (collection, key, field).
        what: &'static str,
        /// The value, printably.
        value: String,
    },
    /// A record lacks its collection's key field.
    #[error("record {index} for collection `{collection}` has no value in its key field `{field}`")]
    MissingKey {
        /// The collection.
        collection: String,
        /// The key field.
        field: String,
        /// The record's position in the batch, from 1.
        index: usize,
    },
    /// The PostgreSQL database does not answer, or refuses the login.
    #[error(
        "cannot connect to the PostgreSQL database {target}: {source}. Check [store] url and password_file, and that the server is up and lets this user in"
    )]
    Connect {
        /// The database, without its password.
        target: String,
        /// What the driver said.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The PostgreSQL schema lacks this build's migrations.
    #[error(
        "the PostgreSQL schema `{schema}` is at migration {found} and this build needs {wanted}: run `schoolbell store migrate`"
    )]
    Unmigrated {
        /// The schema.
        schema: String,
        /// The last migration applied (0: none).
        found: i32,
        /// The last migration this build has.
        wanted: i32,
    },
    /// The PostgreSQL schema was migrated by a newer build.
    #[error(
        "the PostgreSQL schema `{schema}` is at migration {found}, newer than this build's {wanted}; upgrade schoolbell"
    )]
    NewerMigration {
        /// The schema.
        schema: String,
        /// The last migration applied.
        found: i32,
        /// The last migration this build has.
        wanted: i32,
    },
    /// The `[store]` section cannot be used.
    #[error("[store] {0}")]
    Config(String),
    /// The collection has not been defined.
    #[error("collection `{0}` does not exist; load records into it first")]
    UnknownCollection(String),
}

/// Result alias for the store.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How a collection is keyed and indexed.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct CollectionSpec {
    /// The field whose value is each record's key.
    pub key_field: String,
    /// Secondary indexes, each a list of fields matched together
    /// (for example last name + first name + birth date).
    pub indexes: Vec<Vec<String>>,
}

/// The text an index stores for a set of fields: trimmed, lowercased,
/// joined by a unit separator. None when any field is empty, so a record
/// with a missing birth date never matches on name + birth date.
pub fn index_text(record: &Record, fields: &[String]) -> Option<String> {
    let mut parts = Vec::with_capacity(fields.len());
    for f in fields {
        let (field, folded) = crate::records::key_field(f);
        let text = record.get(field).map(Value::to_key_text).unwrap_or_default();
        let text = if folded { crate::records::fold(&text) } else { text.trim().to_lowercase() };
        if text.is_empty() {
            return None;
        }
        parts.push(text);
    }
    Some(parts.join("\u{1f}"))
}

impl CollectionSpec {
    /// The key of `record`, the `index`-th (from 1) of a batch for
    /// `collection`: its key field's text, which every record must have.
    pub(crate) fn key_of(&self, collection: &str, record: &Record, index: usize) -> Result<String> {
        let key = match record.get(&self.key_field) {
            Some(v) if !matches!(v, Value::Null) => v.to_key_text(),
            _ => {
                return Err(Error::MissingKey { collection: collection.into(), field: self.key_field.clone(), index });
            }
        };
        check_name("key", &key)?;
        Ok(key)
    }
}

/// Refuses a name or key with a NUL, which neither backend's keys can hold.
pub(crate) fn check_name(what: &'static str, value: &str) -> Result<()> {
    if value.contains('\0') {
        return Err(Error::BadName { what, value: value.escape_debug().to_string() });
    }
    Ok(())
}

/// The drift between the index entries a collection's records call for
/// and those stored, and between its count and its records, one line each.
pub(crate) fn index_drift<T: Ord>(
    collection: &str,
    expected: &std::collections::BTreeSet<T>,
    found: &std::collections::BTreeSet<T>,
    shown: impl Fn(&T) -> String,
    counted: u64,
    records: u64,
) -> Vec<Drift> {
    let mut drift = Vec::new();
    for k in expected.difference(found) {
        drift.push(Drift(format!("collection `{collection}`: index entry missing: {}", shown(k))));
    }
    for k in found.difference(expected) {
        drift.push(Drift(format!("collection `{collection}`: index entry for no record: {}", shown(k))));
    }
    if counted != records {
        drift.push(Drift(format!(
            "collection `{collection}`: the count says {counted}, but {records} records are stored"
        )));
    }
    drift
}

/// One row of a table, as `schoolbell store copy` moves it between
/// backends: the table's name, its columns, and their values.
pub(crate) struct Row {
    pub(crate) table: &'static str,
    pub(crate) columns: &'static [&'static str],
    pub(crate) values: Vec<Cell>,
}

/// A value in a [`Row`].
pub(crate) enum Cell {
    Text(String),
    Bytes(Vec<u8>),
    Int(i64),
    Null,
}

/// What [`Store::lookup_record`] found.
#[derive(Debug)]
pub enum Lookup {
    /// No record has the key.
    Missing,
    /// The record is exactly the candidate.
    Same,
    /// The record, which differs from the candidate.
    Differs(Record),
}

/// A run's id: unique and increasing across restarts.
pub type RunId = u64;

/// A queue entry's key: priority, then due time, then a sequence number.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct QueueKey(pub Vec<u8>);

impl QueueKey {
    /// The key of run `id`, queued at `priority` (0 is served first) and
    /// due at `due`: keys sort as the queue is served, in every backend.
    pub(crate) fn new(priority: u8, due: DateTime<Utc>, id: RunId) -> QueueKey {
        let mut k = vec![priority];
        k.extend_from_slice(&sortable_millis(due));
        k.extend_from_slice(&id.to_be_bytes());
        QueueKey(k)
    }
}

/// An instant as bytes that sort as it does: milliseconds with the sign
/// bit flipped, big-endian.
pub(crate) fn sortable_millis(t: DateTime<Utc>) -> [u8; 8] {
    ((t.timestamp_millis() as u64) ^ (1 << 63)).to_be_bytes()
}

/// What finishing a run writes beside it.
pub struct Finish<'a, L, O> {
    /// The task's state writes (none: the key is cleared).
    pub state: &'a [(String, Option<String>)],
    /// Dedupe-ledger changes, by dedupe key (none: the entry is cleared).
    pub ledger: &'a [(String, Option<L>)],
    /// New outbox entries: id, when due, the entry.
    pub outbox: &'a [(u64, DateTime<Utc>, O)],
    /// The run's messages with their statuses, numbered from 0 (see
    /// [`RunStore::add_messages`]).
    pub messages: &'a [(&'a str, &'a TaskMessage)],
}

/// What a migration did.
#[derive(Debug, Clone, PartialEq)]
pub struct Migrated {
    /// The version the store was in.
    pub from: u32,
    /// The version it is in now.
    pub to: u32,
    /// The copy taken before anything changed.
    pub backup: PathBuf,
    /// Values rewritten.
    pub values: u64,
}

/// One place where an index disagrees with the records.
#[derive(Debug, Clone, PartialEq)]
pub struct Drift(pub String);

impl std::fmt::Display for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// An outbox entry after a delivery attempt: its id, its new state, the
/// time it was due, and when it is due next (`None`: sent, or failed for
/// good).
pub type OutboxUpdate = (u64, OutboxEntry, DateTime<Utc>, Option<DateTime<Utc>>);

/// A record as the store holds it, not yet decoded: a page is read in one
/// pass and decoded where it is used, across cores, in place for a rule to
/// read and in full only for the records that are kept.
pub struct StoredRecord {
    key: Held,
    bytes: Held,
}

/// Bytes as a backend hands them over: sled's shared buffers are kept, not
/// copied.
enum Held {
    Sled(sled::IVec),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Held {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Held::Sled(v) => v,
            Held::Owned(v) => v,
        }
    }
}

impl StoredRecord {
    fn sled(key: sled::IVec, bytes: sled::IVec) -> StoredRecord {
        StoredRecord { key: Held::Sled(key), bytes: Held::Sled(bytes) }
    }

    fn owned(key: Vec<u8>, bytes: Vec<u8>) -> StoredRecord {
        StoredRecord { key: Held::Owned(key), bytes: Held::Owned(bytes) }
    }

    /// Its fields, read in place: names and text borrowed, not copied.
    pub fn fields(&self) -> Result<crate::records::Fields<'_>> {
        decode("records", &self.key, &self.bytes)
    }

    /// The record, decoded.
    pub fn record(&self) -> Result<Record> {
        decode("records", &self.key, &self.bytes)
    }
}

/// Every encoded value starts with the schema version it was written in
/// (two bytes, big-endian), so a value never decodes under a layout it was
/// not written for.
const VALUE_VERSION: [u8; 2] = (SCHEMA_VERSION as u16).to_be_bytes();

/// A stored value's bytes: the schema version, then postcard. Every backend
/// keeps values this way, so a copy between them moves bytes unchanged.
pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // postcard only fails on a full fixed buffer or an unsupported serde
    // feature; neither can happen with `to_extend` on our own types.
    postcard::to_extend(value, VALUE_VERSION.to_vec()).expect("postcard encodes store types")
}

/// A stored value, read back; `tree` and `k` name it in an error.
pub(crate) fn decode<'a, T: serde::Deserialize<'a>>(tree: &'static str, k: &[u8], v: &'a [u8]) -> Result<T> {
    let corrupt = |reason: String| Error::Corrupt { tree, key: String::from_utf8_lossy(k).replace('\0', "/"), reason };
    match v.split_first_chunk::<2>() {
        Some((version, body)) if *version == VALUE_VERSION => {
            postcard::from_bytes(body).map_err(|e| corrupt(e.to_string()))
        }
        Some((version, _)) => Err(corrupt(format!(
            "written in schema version {}, this build reads {SCHEMA_VERSION}; run `schoolbell store migrate`",
            u16::from_be_bytes(*version)
        ))),
        None => Err(corrupt("too short to hold a schema version".into())),
    }
}

/// Records in collections, each keyed by one field and indexed by others.
pub trait RecordStore {
    /// Defines a collection, or changes its indexes (rebuilding them).
    fn define_collection(&self, name: &str, spec: &CollectionSpec) -> Result<()>;
    /// A collection's spec, if it exists.
    fn collection(&self, name: &str) -> Result<Option<CollectionSpec>>;
    /// Every collection's name.
    fn collection_names(&self) -> Result<Vec<String>>;
    /// Inserts or replaces records, all or none.
    fn put_records(&self, collection: &str, records: &[Record]) -> Result<usize>;
    /// An import's writes, removals and ledger entry, all or none.
    fn commit_import(
        &self,
        collection: &str,
        writes: &[Record],
        removes: &[String],
        ledger_key: &str,
        entry: &str,
    ) -> Result<usize>;
    /// What imported content with this ledger key, if anything did.
    fn import_ledger(&self, ledger_key: &str) -> Result<Option<String>>;
    /// One record by key.
    fn get_record(&self, collection: &str, key: &str) -> Result<Option<Record>>;
    /// Records by key, each compared with its candidate without decoding
    /// when equal, in the order asked. An import asks for a batch of rows at
    /// once, so a store across the network answers them in one round trip.
    fn lookup_records(&self, collection: &str, wanted: &[(String, &Record)]) -> Result<Vec<Lookup>>;
    /// A page of records in key order after `after`, and the key to go on from.
    fn scan_records(
        &self,
        collection: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Record>, Option<String>)>;
    /// How many records the collection holds.
    fn count_records(&self, collection: &str) -> Result<u64>;
    /// Keys of the records whose `fields` match `record`'s, through an index.
    fn find_by_index(&self, collection: &str, fields: &[String], record: &Record) -> Result<Vec<String>>;
    /// [`RecordStore::find_by_index`] for each ask, in the order asked. An
    /// import asks for a batch's fallback keys at once, so a store across
    /// the network answers them in one round trip.
    fn find_by_indexes(&self, collection: &str, asks: &[(&[String], &Record)]) -> Result<Vec<Vec<String>>> {
        asks.iter().map(|(fields, record)| self.find_by_index(collection, fields, record)).collect()
    }
    /// As [`RecordStore::scan_records`], with the records left encoded.
    fn scan_stored(
        &self,
        collection: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<StoredRecord>, Option<String>)>;
    /// A page of the records whose `fields` match `record`'s through their
    /// index, in key order after `after`, and the key to go on from: as
    /// [`RecordStore::scan_stored`], narrowed by the index.
    fn scan_index(
        &self,
        collection: &str,
        fields: &[String],
        record: &Record,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<StoredRecord>, Option<String>)>;
}

/// Tasks, and the index of when each is due.
pub trait TaskStore {
    /// One task.
    fn task(&self, name: &str) -> Result<Option<Task>>;
    /// Tasks by name, in the order asked (`None`: no such task). A tick
    /// reads its due tasks together: one round trip on a database server.
    fn tasks_named(&self, names: &[&str]) -> Result<Vec<Option<Task>>> {
        names.iter().map(|name| self.task(name)).collect()
    }
    /// Every task, by name.
    fn all_tasks(&self) -> Result<Vec<Task>>;
    /// Saves a task and moves its due entry from `old_due` to `new_due`, atomically.
    fn put_task(&self, task: &Task, old_due: Option<DateTime<Utc>>, new_due: Option<DateTime<Utc>>) -> Result<()>;
    /// Removes a task and its due entry.
    fn remove_task(&self, name: &str, due: Option<DateTime<Utc>>) -> Result<()>;
    /// Tasks due at or before `up_to`, earliest first.
    fn due_tasks(&self, up_to: DateTime<Utc>, limit: usize) -> Result<Vec<(DateTime<Utc>, String)>>;
    /// The earliest due time of any task.
    fn next_due(&self) -> Result<Option<DateTime<Utc>>>;
    /// Fires a task once: only if its due entry for `due` is still there,
    /// atomically removes it, saves the task with its next due time and,
    /// unless the fire is skipped, queues its run. False when the entry
    /// was already gone: another tick (or host) fired it.
    fn fire(
        &self,
        task: &Task,
        due: DateTime<Utc>,
        next: Option<DateTime<Utc>>,
        queued: Option<(u8, &Run)>,
    ) -> Result<bool>;
    /// [`TaskStore::fire`] for each fire, in one step where the store can:
    /// a minute's hundred fires are one round trip on a database server.
    /// Whether each fired, in the order given.
    fn fire_all(&self, fires: &[Firing<'_>]) -> Result<Vec<bool>> {
        fires.iter().map(|f| self.fire(f.task, f.due, f.next, f.queued)).collect()
    }
}

/// One fire for [`TaskStore::fire_all`], as the arguments of [`TaskStore::fire`].
pub struct Firing<'a> {
    /// The task, with its next fire worked out.
    pub task: &'a Task,
    /// The due time it fires for.
    pub due: DateTime<Utc>,
    /// Its next due time (`None`: it fires no more).
    pub next: Option<DateTime<Utc>>,
    /// The run it queues, at this priority (`None`: the fire is skipped).
    pub queued: Option<(u8, &'a Run)>,
}

/// Sequences, the run queue, runs, their messages and their import plans.
pub trait RunStore {
    /// The next number of a durable, gap-free sequence.
    fn next_sequence(&self, name: &str) -> Result<u64>;
    /// A new run id.
    fn new_run_id(&self) -> Result<RunId>;
    /// `n` new run ids, in increasing order, taken in one step where the
    /// store can.
    fn new_run_ids(&self, n: usize) -> Result<Vec<RunId>> {
        (0..n).map(|_| self.new_run_id()).collect()
    }
    /// Queues a run with its record, atomically.
    fn enqueue(&self, priority: u8, due: DateTime<Utc>, run: &Run) -> Result<QueueKey>;
    /// The queue in the order it is served.
    fn queued(&self) -> Result<Vec<(QueueKey, RunId)>>;
    /// The entry served after `after` (the first when none).
    fn queued_after(&self, after: Option<&QueueKey>) -> Result<Option<(QueueKey, RunId)>>;
    /// The entry served after `after`, with its run (`None`: the run is
    /// gone); a database server answers both in one round trip.
    fn queued_run_after(&self, after: Option<&QueueKey>) -> Result<Option<(QueueKey, RunId, Option<Run>)>> {
        let Some((key, id)) = self.queued_after(after)? else { return Ok(None) };
        Ok(Some((key, id, self.run(id)?)))
    }
    /// How many runs wait.
    fn queue_len(&self) -> usize;
    /// Takes an entry off the queue; false if it was not there.
    fn dequeue(&self, key: &QueueKey) -> Result<bool>;
    /// Takes the entry off the queue and saves the run as started, only if
    /// the entry was still there: a queued run starts once.
    fn start_run(&self, key: &QueueKey, run: &Run) -> Result<bool>;
    /// Saves a run (`finished`: when it ended, for retention).
    fn put_run(&self, run: &Run, finished: Option<DateTime<Utc>>) -> Result<()>;
    /// Saves a finished run with its task's state writes, ledger changes
    /// and outbox entries, all or none.
    fn finish_run(
        &self,
        run: &Run,
        finished: DateTime<Utc>,
        writes: &Finish<'_, LedgerEntry, OutboxEntry>,
    ) -> Result<()>;
    /// Saves finished runs that leave nothing behind but themselves (their
    /// messages are written), each as [`RunStore::finish_run`] would; in
    /// one step where the store can.
    fn finish_runs(&self, runs: &[(&Run, DateTime<Utc>)]) -> Result<()> {
        for (run, finished) in runs {
            self.finish_run(run, *finished, &Finish { state: &[], ledger: &[], outbox: &[], messages: &[] })?;
        }
        Ok(())
    }
    /// One run.
    fn run(&self, id: RunId) -> Result<Option<Run>>;
    /// Runs newest first, before `before`.
    fn runs(&self, before: Option<RunId>, limit: usize) -> Result<Vec<Run>>;
    /// Every run.
    fn all_runs(&self) -> Result<Vec<Run>>;
    /// Runs that finished before `cutoff`.
    fn finished_before(&self, cutoff: DateTime<Utc>) -> Result<Vec<RunId>>;
    /// Deletes a run, its messages and its plan.
    fn delete_run(&self, id: RunId, finished: Option<DateTime<Utc>>) -> Result<()>;
    /// Appends messages to a run, each with its status.
    fn add_messages(&self, run: RunId, first_seq: u64, messages: &[(&str, &TaskMessage)]) -> Result<()>;
    /// Keeps the fields of an import's rows as the file gave them (after
    /// masking), by line, for its Task Messages.
    /// Rows come in line order, as the file streams.
    fn add_message_rows(&self, run: RunId, rows: &crate::imports::ShownRows<'_>) -> Result<()>;
    /// The fields of some of a run's rows, by line (none where not kept).
    fn message_rows(&self, run: RunId, lines: &[u64]) -> Result<Vec<Option<Record>>>;
    /// The statuses a run's messages have, sorted.
    fn message_statuses(&self, run: RunId) -> Result<Vec<String>>;
    /// A page of a run's messages, with the position to go on from.
    fn messages(
        &self,
        run: RunId,
        status: Option<&str>,
        after: Option<u64>,
        limit: usize,
    ) -> Result<(Vec<TaskMessage>, Option<u64>)>;
    /// Keeps an import plan for its run.
    fn put_plan(&self, run: RunId, plan: &ImportPlan) -> Result<()>;
    /// A run's import plan.
    fn plan(&self, run: RunId) -> Result<Option<ImportPlan>>;
    /// Drops a run's import plan.
    fn remove_plan(&self, run: RunId) -> Result<()>;
    /// Keeps a held run's outstanding approval code (its MAC).
    fn put_approval(&self, run: RunId, approval: &Approval) -> Result<()>;
    /// A run's outstanding approval code.
    fn approval(&self, run: RunId) -> Result<Option<Approval>>;
    /// Drops a run's approval code.
    fn remove_approval(&self, run: RunId) -> Result<()>;
}

/// What a task remembers between runs: its state and its dedupe ledger.
pub trait LedgerStore {
    /// A task's state value.
    fn task_state(&self, task: &str, key: &str) -> Result<Option<String>>;
    /// Bytes a task's state holds: its keys and values.
    fn task_state_bytes(&self, task: &str) -> Result<u64>;
    /// Applies state writes, all or none (none clears a key).
    fn apply_task_state(&self, task: &str, writes: &[(String, Option<String>)]) -> Result<()>;
    /// A task's dedupe-ledger entries, by dedupe key.
    fn notified(&self, task: &str) -> Result<Vec<(String, LedgerEntry)>>;
    /// Drops a task's state and ledger.
    fn forget_task(&self, task: &str) -> Result<()>;
}

/// The email outbox.
pub trait OutboxStore {
    /// Entries due at or before `now`, oldest first. Where hosts share the
    /// store, they are claimed for this host as they are read: another
    /// host's call skips them until their outcome is written, they are
    /// released, or the claim lapses.
    fn outbox_due(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<(u64, OutboxEntry)>>;
    /// Entries in id order after `after`.
    fn outbox(&self, after: Option<u64>, limit: usize) -> Result<Vec<(u64, OutboxEntry)>>;
    /// Saves an entry's new state and moves its due entry, atomically.
    fn update_outbox(
        &self,
        id: u64,
        entry: &OutboxEntry,
        was_due: DateTime<Utc>,
        due: Option<DateTime<Utc>>,
    ) -> Result<()> {
        self.update_outbox_batch(&[(id, entry.clone(), was_due, due)])
    }
    /// Saves several entries' new states, each with its due entry moved
    /// atomically (`None`: no longer due), durably with one flush.
    fn update_outbox_batch(&self, updates: &[OutboxUpdate]) -> Result<()>;
    /// Drops an entry that is no longer due (sent or failed).
    fn remove_outbox(&self, id: u64) -> Result<()>;
    /// Gives back entries [`OutboxStore::outbox_due`] handed this host and
    /// that it did not send (the server did not answer), for any host to
    /// send next time. Where one process sends, nothing is claimed.
    fn release_outbox(&self, ids: &[u64]) -> Result<()> {
        let _ = ids;
        Ok(())
    }
}

/// Users, their token hashes, and sealed secrets.
pub trait AccountStore {
    /// One user.
    fn user(&self, name: &str) -> Result<Option<User>>;
    /// Saves a user.
    fn put_user(&self, user: &User) -> Result<()>;
    /// Every user.
    fn all_users(&self) -> Result<Vec<User>>;
    /// Removes a user; false if there was none.
    fn remove_user(&self, name: &str) -> Result<bool>;
    /// Keeps a token under its hash.
    fn put_token(&self, hash: &str, token: &Token) -> Result<()>;
    /// The token stored under a hash.
    fn token(&self, hash: &str) -> Result<Option<Token>>;
    /// Every token, with its hash.
    fn all_tokens(&self) -> Result<Vec<(String, Token)>>;
    /// Drops a token by hash; false if there was none.
    fn remove_token(&self, hash: &str) -> Result<bool>;
    /// Drops every token of a user.
    fn remove_tokens_of(&self, user: &str) -> Result<()>;
    /// Keeps a user's console password hash (a PHC string).
    fn put_password(&self, user: &str, hash: &str) -> Result<()>;
    /// A user's console password hash.
    fn password(&self, user: &str) -> Result<Option<String>>;
    /// Drops a user's console password; false if there was none.
    fn remove_password(&self, user: &str) -> Result<bool>;
    /// Keeps one of a user's saved views (replacing one of the same name).
    fn put_view(&self, user: &str, view: &SavedView) -> Result<()>;
    /// A user's saved views, by name.
    fn views(&self, user: &str) -> Result<Vec<SavedView>>;
    /// Drops a user's saved view; false if there was none.
    fn remove_view(&self, user: &str, name: &str) -> Result<bool>;
    /// Keeps a sealed secret.
    fn put_secret(&self, name: &str, sealed: &[u8]) -> Result<()>;
    /// A sealed secret.
    fn secret(&self, name: &str) -> Result<Option<Vec<u8>>>;
    /// The secrets' names.
    fn secret_names(&self) -> Result<Vec<String>>;
}

/// The append-only audit log.
pub trait AuditStore {
    /// Appends an entry; returns its number.
    fn append_audit(&self, entry: &AuditEntry) -> Result<u64>;
    /// Entries after `after`, oldest first.
    fn audit_log(&self, after: Option<u64>, limit: usize) -> Result<Vec<(u64, AuditEntry)>>;
    /// Removes the entries numbered `last` and before (retention); returns
    /// how many went.
    fn remove_audit_through(&self, last: u64) -> Result<u64>;
}

/// The account owner's import sources.
pub trait SourceStore {
    /// One source.
    fn source(&self, name: &str) -> Result<Option<Source>>;
    /// Saves a source (new or changed).
    fn put_source(&self, source: &Source) -> Result<()>;
    /// Removes a source; false if there was none.
    fn remove_source(&self, name: &str) -> Result<bool>;
    /// Every source, by name.
    fn all_sources(&self) -> Result<Vec<Source>>;
}

/// The rules' saved versions.
pub trait RuleStore {
    /// Adds `source` as rule `name`'s next version, and returns it.
    fn add_rule_version(
        &self,
        name: &str,
        source: &str,
        hash: &str,
        saved_by: &str,
        saved_at: DateTime<Utc>,
    ) -> Result<RuleVersion>;
    /// Each rule's newest version, by name.
    fn rule_heads(&self) -> Result<Vec<RuleVersion>>;
    /// Every version of rule `name`, oldest first.
    fn rule_history(&self, name: &str) -> Result<Vec<RuleVersion>>;
    /// How many versions were saved, of every rule: a host that sees it
    /// change knows another saved a rule.
    fn rule_versions(&self) -> Result<u64>;
}

/// The plugin registry and the components' bytes.
pub trait PluginStore {
    /// One plugin.
    fn plugin(&self, name: &str) -> Result<Option<PluginEntry>>;
    /// Saves a plugin.
    fn put_plugin(&self, entry: &PluginEntry) -> Result<()>;
    /// Removes a plugin; false if there was none.
    fn remove_plugin(&self, name: &str) -> Result<bool>;
    /// Every plugin, by name.
    fn all_plugins(&self) -> Result<Vec<PluginEntry>>;
    /// Keeps a component by hash; false if it was there.
    fn put_blob(&self, hash: &str, bytes: &[u8]) -> Result<bool>;
    /// A component by hash.
    fn blob(&self, hash: &str) -> Result<Option<Vec<u8>>>;
    /// Drops a component.
    fn remove_blob(&self, hash: &str) -> Result<()>;
}

/// Keeping the store itself.
pub trait Maintenance {
    /// Writes everything to disk. Call before reporting a commit as durable.
    fn flush(&self) -> Result<()>;
    /// The schema version of the data.
    fn schema_version(&self) -> Result<u32>;
    /// Every place an index disagrees with what it indexes.
    fn check(&self) -> Result<Vec<Drift>>;
    /// A copy into `dir` (new or empty).
    fn backup(&self, dir: &Path) -> Result<()>;
    /// Bytes the store takes on disk.
    fn size_on_disk(&self) -> Result<u64>;
    /// Whether other processes may use the store at once (a database
    /// server several hosts share), so that a run marked running may be
    /// another process's, running now.
    fn shared(&self) -> bool {
        false
    }
}

/// A host serving from a shared store, as the others see it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostInfo {
    /// The host's id: its machine name, process id and a random suffix.
    pub id: String,
    /// The machine's name.
    pub name: String,
    /// The process id on that machine.
    pub pid: u32,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// Its last heartbeat.
    pub heartbeat_at: DateTime<Utc>,
    /// Runs it holds leases on: running there now.
    pub runs_held: u64,
}

/// Hosts sharing one store: heartbeats, run leases and leaders for the
/// chores one host does. The embedded store has one host, and keeps none
/// of it: every default here is that host's answer.
pub trait HostStore: RunStore {
    /// This process's id among the hosts, if the store is shared.
    fn host_id(&self) -> Option<&str> {
        None
    }
    /// Records that this host is alive (registering it the first time).
    fn beat(&self) -> Result<()> {
        Ok(())
    }
    /// Every host that beat lately, with the runs each holds.
    fn hosts(&self) -> Result<Vec<HostInfo>> {
        Ok(Vec::new())
    }
    /// Extends this host's leases on `runs`; returns those it no longer
    /// holds (another host took them over after the lease lapsed).
    fn renew_leases(&self, runs: &[RunId]) -> Result<Vec<RunId>> {
        let _ = runs;
        Ok(Vec::new())
    }
    /// Takes over the leases that lapsed, whoever held them: each is
    /// returned to one caller only, which holds it now and settles its run
    /// with [`HostStore::settle_lapsed`]. A caller that dies first lets it
    /// lapse again, for another host to take.
    fn take_lapsed_leases(&self) -> Result<Vec<RunId>> {
        Ok(Vec::new())
    }
    /// Writes `ended` (a run whose lease this host took over, settled) and
    /// queues `again` (its work to run again, with its priority and due
    /// time), and lets the lease go: all in one step. False, with nothing
    /// written, when the lease is no longer this host's.
    fn settle_lapsed(&self, ended: &Run, again: Option<(u8, DateTime<Utc>, &Run)>) -> Result<bool> {
        self.put_run(ended, ended.finished_at)?;
        if let Some((priority, due, run)) = again {
            self.enqueue(priority, due, run)?;
        }
        Ok(true)
    }
    /// Whether this host leads `chore` now (taking it over when its leader
    /// stopped answering).
    fn lead(&self, chore: &str) -> Result<bool> {
        let _ = chore;
        Ok(true)
    }
    /// Claims the file `key` (a source and a name) for run `run`'s import:
    /// false while another run that still holds its lease has it.
    fn claim_file(&self, key: &str, run: RunId) -> Result<bool> {
        let _ = (key, run);
        Ok(true)
    }
    /// Calls `wake` whenever any host queues work, for as long as the store
    /// is open. Where one process queues everything, it knows already.
    fn on_new_work(&self, wake: Box<dyn Fn() + Send + Sync>) {
        let _ = wake;
    }
    /// Whether a run of `task` runs on any host, and whether one is queued:
    /// none where this process alone knows (it keeps count itself).
    fn task_activity(&self, task: &str) -> Result<Option<(bool, bool)>> {
        let _ = task;
        Ok(None)
    }
    /// [`HostStore::task_activity`] for each task, in the order asked.
    fn task_activities(&self, tasks: &[&str]) -> Result<Option<Vec<(bool, bool)>>> {
        Ok(tasks.iter().map(|task| self.task_activity(task)).collect::<Result<Vec<_>>>()?.into_iter().collect())
    }
}

impl HostStore for Store {}

/// Everything a backend provides: what the application core holds.
pub trait Backend:
    RecordStore
    + TaskStore
    + RunStore
    + LedgerStore
    + OutboxStore
    + AccountStore
    + SourceStore
    + AuditStore
    + RuleStore
    + PluginStore
    + Maintenance
    + HostStore
    + Send
    + Sync
{
}

impl<T> Backend for T where
    T: RecordStore
        + TaskStore
        + RunStore
        + LedgerStore
        + OutboxStore
        + AccountStore
        + SourceStore
        + AuditStore
        + RuleStore
        + PluginStore
        + Maintenance
        + HostStore
        + Send
        + Sync
{
}

/// Runs `write` again while it fails, for up to half a minute, where the
/// store is a database server (which may be restarting): the outcome of
/// something already done (an email sent, a run ended) is worth waiting
/// for, since losing it means doing it again. The embedded store's errors
/// do not pass, so it is tried once.
pub fn patiently<T, E: std::fmt::Display>(
    store: &dyn Backend,
    what: &str,
    write: impl FnMut() -> std::result::Result<T, E>,
) -> std::result::Result<T, E> {
    use std::time::{Duration, Instant};
    let deadline = Instant::now() + Duration::from_secs(30);
    backing_off(Duration::from_millis(100), Duration::from_secs(5), write, |e, _| {
        let again = store.shared() && Instant::now() < deadline;
        if again {
            tracing::warn!("Cannot record {what} yet, trying again: {e}");
        }
        again
    })
}

/// Makes `attempt` until it succeeds or `again`, given its error and the
/// wait before the next try, says to stop; the wait doubles from `first`
/// up to `longest`.
pub(crate) fn backing_off<T, E>(
    first: std::time::Duration,
    longest: std::time::Duration,
    mut attempt: impl FnMut() -> std::result::Result<T, E>,
    mut again: impl FnMut(&E, std::time::Duration) -> bool,
) -> std::result::Result<T, E> {
    let mut wait = first;
    loop {
        match attempt() {
            Err(e) if again(&e, wait) => {
                std::thread::sleep(wait);
                wait = (wait * 2).min(longest);
            }
            done => return done,
        }
    }
}

/// The traits, for `use crate::store::prelude::*` where a backend is used.
pub mod prelude {
    pub use super::{
        AccountStore, AuditStore, Backend, HostStore, LedgerStore, Maintenance, OutboxStore, PluginStore, RecordStore,
        RuleStore, RunStore, SourceStore, TaskStore,
    };
}
