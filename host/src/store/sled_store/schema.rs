//! The stored schema over time, in the sled backend: the migrations from older layouts (run at
//! start, after a backup), backups, and the check of indexes against
//! records.
//!
//! Schema versions:
//! - 1: values are bare postcard.
//! - 2: every encoded value starts with its schema version (two bytes).

use std::path::Path;

use sled::Transactional;

use super::{Error, Record, Result, SCHEMA_VERSION, Store, VALUE_VERSION, decode, index_entries, io, key};
use crate::store::{Drift, Migrated};

/// One step: upgrades the store from the version it is listed with to the
/// next. Returns how many values it rewrote.
type Step = fn(&Store) -> Result<u64>;

/// Every step, oldest first. A change to a stored type adds one here.
const MIGRATIONS: &[(u32, &str, Step)] = &[(1, "every stored value carries its schema version", values_carry_version)];

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
    ]
}

/// 1 → 2: prefixes every encoded value with its schema version. Each tree
/// is rewritten in one transaction with a mark in `meta`, so a crash part
/// way leaves every tree either wholly old and unmarked or wholly new and
/// marked, and running again finishes the rest without wrapping twice.
fn values_carry_version(store: &Store) -> Result<u64> {
    let mut rewritten = 0;
    for (name, tree, prefix) in encoded_trees(store) {
        let mark = format!("migrated:2:{name}");
        if store.meta.get(&mark).map_err(io("meta"))?.is_some() {
            continue;
        }
        let items = match &prefix {
            Some(p) => tree.scan_prefix(p).collect::<Vec<_>>(),
            None => tree.iter().collect(),
        };
        let mut pairs = Vec::with_capacity(items.len());
        for item in items {
            let (k, v) = item.map_err(io(name))?;
            let mut wrapped = VALUE_VERSION.to_vec();
            wrapped.extend_from_slice(&v);
            pairs.push((k, wrapped));
        }
        rewritten += pairs.len() as u64;
        (tree, &store.meta)
            .transaction(|(t, meta)| {
                for (k, v) in &pairs {
                    t.insert(k, v.as_slice())?;
                }
                meta.insert(mark.as_bytes(), &[])?;
                Ok(())
            })
            .map_err(|e: sled::transaction::TransactionError<()>| match e {
                sled::transaction::TransactionError::Storage(source) => {
                    Error::Io { tree: name, source: Box::new(source) }
                }
                sled::transaction::TransactionError::Abort(()) => {
                    Error::Corrupt { tree: name, key: String::new(), reason: "the migration was aborted".into() }
                }
            })?;
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
            let shown = |k: &[u8]| String::from_utf8_lossy(k).replace(['\0', '\u{1f}'], "/");
            for k in expected.difference(&found) {
                drift.push(Drift(format!("collection `{name}`: index entry missing: {}", shown(k))));
            }
            for k in found.difference(&expected) {
                drift.push(Drift(format!("collection `{name}`: index entry for no record: {}", shown(k))));
            }
            let counted = self.count_records(&name)?;
            if counted != records {
                drift.push(Drift(format!(
                    "collection `{name}`: the count says {counted}, but {records} records are stored"
                )));
            }
        }
        Ok(drift)
    }
}
