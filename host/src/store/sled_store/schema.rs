//! The stored schema over time, in the sled backend: the migrations from older layouts (run at
//! start, after a backup), backups, and the check of indexes against
//! records.
//!
//! Schema versions:
//! - 1: values are bare postcard.
//! - 2: every encoded value starts with its schema version (two bytes).
//! - 3: tokens are records (id, user, issued, last used) rather than a
//!   bare user name; approval codes live apart from the runs.

use std::path::Path;

use sled::Transactional;

use super::{Error, Record, Result, SCHEMA_VERSION, Store, decode, index_entries, io, key};
use crate::store::{Drift, Migrated};

/// One step: upgrades the store from the version it is listed with to the
/// next. Returns how many values it rewrote.
type Step = fn(&Store) -> Result<u64>;

/// Every step, oldest first. A change to a stored type adds one here.
const MIGRATIONS: &[(u32, &str, Step)] = &[
    (1, "every stored value carries its schema version", values_carry_version),
    (2, "tokens carry ids and dates; approval codes leave the runs", tokens_and_approvals),
];

/// The runs as schema 2 stored them: with the approval code's hash, which
/// every viewer of the run could read.
#[derive(serde::Deserialize)]
struct RunV2 {
    id: crate::store::RunId,
    task: String,
    plugin: String,
    owner: String,
    trigger: crate::runs::Trigger,
    status: crate::runs::RunStatus,
    fire_time: Option<chrono::DateTime<chrono::Utc>>,
    queued_at: chrono::DateTime<chrono::Utc>,
    started_at: Option<chrono::DateTime<chrono::Utc>>,
    finished_at: Option<chrono::DateTime<chrono::Utc>>,
    progress_done: u64,
    progress_total: Option<u64>,
    summary: std::collections::BTreeMap<String, u64>,
    error: Option<String>,
    keep: bool,
    message_count: u64,
    cancel_requested_by: Option<String>,
    dry_run: bool,
    audit: Vec<crate::runs::Audit>,
    _approval_code_hash: Option<String>,
}

impl From<RunV2> for crate::runs::Run {
    fn from(r: RunV2) -> Self {
        crate::runs::Run {
            id: r.id,
            task: r.task,
            plugin: r.plugin,
            owner: r.owner,
            trigger: r.trigger,
            status: r.status,
            fire_time: r.fire_time,
            queued_at: r.queued_at,
            started_at: r.started_at,
            finished_at: r.finished_at,
            progress_done: r.progress_done,
            progress_total: r.progress_total,
            summary: r.summary,
            error: r.error,
            keep: r.keep,
            message_count: r.message_count,
            cancel_requested_by: r.cancel_requested_by,
            dry_run: r.dry_run,
            audit: r.audit,
        }
    }
}

/// How one value is rewritten: `None` leaves it as it is.
type Rewrite<'a> = &'a dyn Fn(&[u8], &[u8]) -> Result<Option<Vec<u8>>>;

/// Rewrites one tree's values (those under `prefix`) in one transaction
/// with a mark in `meta`, so a crash part way leaves the tree either wholly
/// old and unmarked or wholly new and marked, and running again finishes
/// the rest without rewriting twice.
fn rewrite_tree(
    store: &Store,
    to: u32,
    name: &'static str,
    tree: &sled::Tree,
    prefix: Option<&[u8]>,
    f: Rewrite<'_>,
) -> Result<u64> {
    let mark = format!("migrated:{to}:{name}");
    if store.meta.get(&mark).map_err(io("meta"))?.is_some() {
        return Ok(0);
    }
    let items = match prefix {
        Some(p) => tree.scan_prefix(p).collect::<Vec<_>>(),
        None => tree.iter().collect(),
    };
    let mut pairs = Vec::with_capacity(items.len());
    for item in items {
        let (k, v) = item.map_err(io(name))?;
        if let Some(new) = f(&k, &v)? {
            pairs.push((k, new));
        }
    }
    let rewritten = pairs.len() as u64;
    (tree, &store.meta)
        .transaction(|(t, meta)| {
            for (k, v) in &pairs {
                t.insert(k, v.as_slice())?;
            }
            meta.insert(mark.as_bytes(), &[])?;
            Ok(())
        })
        .map_err(|e: sled::transaction::TransactionError<()>| match e {
            sled::transaction::TransactionError::Storage(source) => Error::Io { tree: name, source: Box::new(source) },
            sled::transaction::TransactionError::Abort(()) => {
                Error::Corrupt { tree: name, key: String::new(), reason: "the migration was aborted".into() }
            }
        })?;
    Ok(rewritten)
}

/// The two-byte header of values written at schema `version`.
fn header(version: u32) -> [u8; 2] {
    (version as u16).to_be_bytes()
}

/// 2 → 3: every value gets the new header; runs drop their approval code's
/// hash (an outstanding code is void: an authorizer issues a new one), and
/// each token becomes a record, issued now for the purpose of expiry.
fn tokens_and_approvals(store: &Store) -> Result<u64> {
    let (old, new) = (header(2), header(3));
    let mut rewritten = 0;
    for (name, tree, prefix) in encoded_trees(store) {
        let reheader = |k: &[u8], v: &[u8]| -> Result<Option<Vec<u8>>> {
            match v.split_first_chunk::<2>() {
                Some((h, body)) if *h == old => {
                    if name == "runs" {
                        let run: RunV2 = postcard::from_bytes(body).map_err(|e| Error::Corrupt {
                            tree: "runs",
                            key: String::from_utf8_lossy(k).into_owned(),
                            reason: e.to_string(),
                        })?;
                        return Ok(Some(super::encode(&crate::runs::Run::from(run))));
                    }
                    let mut out = new.to_vec();
                    out.extend_from_slice(body);
                    Ok(Some(out))
                }
                _ => Ok(None),
            }
        };
        rewritten += rewrite_tree(store, 3, name, tree, prefix.as_deref(), &reheader)?;
    }
    let now = chrono::Utc::now();
    let token = |k: &[u8], v: &[u8]| -> Result<Option<Vec<u8>>> {
        if v.split_first_chunk::<2>().is_some_and(|(h, _)| *h == new)
            && decode::<crate::users::Token>("tokens", k, v).is_ok()
        {
            return Ok(None);
        }
        let hash = String::from_utf8_lossy(k);
        let record = crate::users::Token {
            id: hash.chars().take(12).collect(),
            user: String::from_utf8_lossy(v).into_owned(),
            created_at: now,
            last_used_at: None,
        };
        Ok(Some(super::encode(&record)))
    };
    rewritten += rewrite_tree(store, 3, "tokens", &store.tokens.tree, None, &token)?;
    Ok(rewritten)
}

/// The trees whose values are encoded with `encode`, and which of their
/// keys hold such values (records share their tree with index entries,
/// counts and the import ledger).
fn encoded_trees(store: &Store) -> Vec<(&'static str, &sled::Tree, Option<Vec<u8>>)> {
    vec![
        ("collections", &store.collections.tree, None),
        ("records", &store.records, Some(key(&[b"r", b""]))),
        ("plugins", &store.plugins, None),
        ("tasks", &store.tasks, None),
        ("users", &store.users, None),
        ("runs", &store.runs, None),
        ("run_messages", &store.messages, None),
        ("notified", &store.notified, None),
        ("outbox", &store.outbox, None),
        ("import_plans", &store.plans, None),
        ("sources", &store.sources.tree, None),
        ("rule_versions", &store.rules.tree, None),
        ("passwords", &store.passwords.tree, None),
        ("views", &store.views.tree, None),
        ("run_message_chunks", &store.message_rows.tree, None),
        ("audit", &store.audit.tree, None),
        ("approvals", &store.approvals.tree, None),
        // `tokens` held bare user names up to schema 2; from schema 3 on
        // they are encoded, and a step after 3 lists them here.
    ]
}

/// 1 → 2: prefixes every encoded value with its schema version.
fn values_carry_version(store: &Store) -> Result<u64> {
    let mut rewritten = 0;
    for (name, tree, prefix) in encoded_trees(store) {
        let wrap = |_: &[u8], v: &[u8]| -> Result<Option<Vec<u8>>> {
            let mut wrapped = header(2).to_vec();
            wrapped.extend_from_slice(v);
            Ok(Some(wrapped))
        };
        rewritten += rewrite_tree(store, 2, name, tree, prefix.as_deref(), &wrap)?;
    }
    Ok(rewritten)
}

impl Store {
    /// Opens the store in `path`, upgrading a store written by an older
    /// build: first a backup into `backups/store-vN-<UTC time>`, then every
    /// step from its version to this build's. Each step is safe to run
    /// again after a crash.
    pub fn open_and_migrate(path: &Path, backups: &Path) -> Result<(Store, Option<Migrated>)> {
        let store = Store::open_any(path)?;
        let from = store.schema_version()?;
        if from >= SCHEMA_VERSION {
            return Ok((store, None));
        }
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
        let backup = backups.join(format!("store-v{from}-{stamp}"));
        store.backup(&backup)?;
        let mut values = 0;
        for (version, what, step) in MIGRATIONS.iter().filter(|(v, ..)| *v >= from) {
            tracing::warn!(from = version, to = version + 1, "Migrating the store: {what}.");
            values += step(&store)?;
            store.meta.insert("schema_version", &(version + 1).to_be_bytes()).map_err(io("meta"))?;
            store.flush()?;
        }
        Ok((store, Some(Migrated { from, to: SCHEMA_VERSION, backup, values })))
    }

    /// Copies every tree into a new store in `dir` (which must not exist
    /// or be empty), flushed before it returns. Each tree is copied as it
    /// stands when its turn comes; `serve` runs it between runs' writes.
    pub(in crate::store) fn backup(&self, dir: &Path) -> Result<()> {
        let failed = |reason: String| Error::Backup { path: dir.to_path_buf(), reason };
        if dir.read_dir().is_ok_and(|mut d| d.next().is_some()) {
            return Err(failed("the folder is not empty; pick a new one".into()));
        }
        self.flush()?;
        let copy = sled::Config::new().path(dir).open().map_err(|e| failed(e.to_string()))?;
        copy.import(self.db.export());
        copy.flush().map_err(|e| failed(e.to_string()))?;
        Ok(())
    }

    /// Copies the backup in `from` (what [`Store::backup`] wrote) into
    /// `to`, a data directory's `store` folder that is new or empty. A
    /// backup from an older schema is copied as it is, and migrated (after
    /// a backup of its own) when the data directory is next opened.
    pub fn restore(from: &Path, to: &Path) -> Result<()> {
        let failed = |reason: String| Error::Backup { path: to.to_path_buf(), reason };
        if !from.join("conf").exists() {
            return Err(failed(format!(
                "{} holds no backup (a folder `schoolbell store backup` wrote, with a `conf` file and `db`)",
                from.display()
            )));
        }
        if to.read_dir().is_ok_and(|mut d| d.next().is_some()) {
            return Err(failed(
                "the data directory already has a store; restore into a new data directory, or move its `store` folder away first"
                    .into(),
            ));
        }
        Store::open_any(from)?.backup(to)
    }

    /// Checks every collection's indexes and counts against its records;
    /// one line per disagreement.
    pub(in crate::store) fn check(&self) -> Result<Vec<Drift>> {
        let mut drift = Vec::new();
        for name in self.collection_names()? {
            let Some(spec) = self.collection(&name)? else { continue };
            let mut expected = std::collections::BTreeSet::new();
            let mut records = 0u64;
            let prefix = key(&[b"r", name.as_bytes(), b""]);
            for item in self.records.scan_prefix(&prefix) {
                let (k, v) = item.map_err(io("records"))?;
                let record: Record = match decode("records", &k, &v) {
                    Ok(r) => r,
                    Err(e) => {
                        drift.push(Drift(format!("collection `{name}`: {e}")));
                        continue;
                    }
                };
                records += 1;
                for (ik, _) in index_entries(&name, &spec, &record, &k[prefix.len()..]) {
                    expected.insert(ik);
                }
            }
            let mut found = std::collections::BTreeSet::new();
            for item in self.records.scan_prefix(key(&[b"i", name.as_bytes(), b""])) {
                found.insert(item.map_err(io("records"))?.0.to_vec());
            }
            let shown = |k: &Vec<u8>| String::from_utf8_lossy(k).replace(['\0', '\u{1f}'], "/");
            let counted = self.count_records(&name)?;
            drift.extend(crate::store::index_drift(&name, &expected, &found, shown, counted, records));
        }
        Ok(drift)
    }
}
