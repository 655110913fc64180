//! The sled backend: every tree, key layout and encoding of the embedded
//! store, and nothing outside `store/sled*` sees a sled type. Writes that
//! must land together go through one `sled::Batch` on one tree, or one
//! transaction over several (atomic), and callers that report a commit as
//! durable flush first.

use std::marker::PhantomData;
use std::path::Path;
use std::sync::Mutex;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::records::Record;

mod export;
mod repos;
mod scheduling;
mod schema;

use super::{CollectionSpec, Error, Lookup, Result, SCHEMA_VERSION, StoredRecord, index_text};
pub(crate) use super::{check_name, decode, encode};

/// Key separator. Collection names, keys and field names may not hold it.
const SEP: u8 = 0;

/// The Schoolbell store.
pub struct Store {
    db: sled::Db,
    meta: sled::Tree,
    collections: Typed<CollectionSpec>,
    records: sled::Tree,
    blobs: sled::Tree,
    state: sled::Tree,
    plugins: sled::Tree,
    tasks: sled::Tree,
    due: sled::Tree,
    queue: sled::Tree,
    runs: sled::Tree,
    finished: sled::Tree,
    messages: sled::Tree,
    message_status: sled::Tree,
    message_rows: Typed<Vec<(u64, Record)>>,
    users: sled::Tree,
    tokens: Typed<crate::users::Token>,
    passwords: Typed<String>,
    views: Typed<crate::views::SavedView>,
    audit: Typed<crate::audit::AuditEntry>,
    approvals: Typed<crate::runs::Approval>,
    plans: sled::Tree,
    secrets: sled::Tree,
    sources: Typed<crate::sources::Source>,
    /// Rule versions by name and number (`name \0 version`).
    rules: Typed<crate::rules::RuleVersion>,
    notified: sled::Tree,
    outbox: sled::Tree,
    outbox_due: sled::Tree,
    /// Record writes read old values to maintain indexes and counts; one
    /// writer at a time keeps that read-modify-write consistent.
    write_lock: Mutex<()>,
    /// Flushes in progress and done, so that callers arriving together
    /// share one (see [`Store::flush`]).
    flushes: GroupFlush,
}

pub(crate) fn io(tree: &'static str) -> impl Fn(sled::Error) -> Error {
    move |source| Error::Io { tree, source: Box::new(source) }
}

pub(super) fn key(parts: &[&[u8]]) -> Vec<u8> {
    let mut k = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            k.push(SEP);
        }
        k.extend_from_slice(p);
    }
    k
}

impl Store {
    /// Opens (or creates) the store in `path`. A store written by an older
    /// build is refused with what to run; [`Store::open_and_migrate`]
    /// upgrades it.
    pub fn open(path: &Path) -> Result<Store> {
        let store = Store::open_any(path)?;
        match store.schema_version()? {
            found if found < SCHEMA_VERSION => Err(Error::Outdated { found }),
            _ => Ok(store),
        }
    }

    /// Opens the store in `path` as the backend the application holds.
    pub fn open_backend(path: &Path) -> Result<std::sync::Arc<dyn super::Backend>> {
        Ok(std::sync::Arc::new(Store::open(path)?))
    }

    fn open_any(path: &Path) -> Result<Store> {
        // sled's flusher thread lets go of the file lock a moment after the
        // last handle drops, so a reopen in the same process may wait briefly.
        let mut tries = 0;
        let db = loop {
            match sled::Config::new().path(path).open() {
                Ok(db) => break db,
                Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") && tries < 100 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(source) => {
                    return Err(Error::Open { path: path.to_path_buf(), source: Box::new(source) });
                }
            }
        };
        let tree = |name: &'static str| db.open_tree(name).map_err(io(name));
        let store = Store {
            meta: tree("meta")?,
            collections: Typed::new("collections", tree("collections")?),
            records: tree("records")?,
            blobs: tree("blobs")?,
            state: tree("task_state")?,
            plugins: tree("plugins")?,
            tasks: tree("tasks")?,
            due: tree("tasks_by_due")?,
            queue: tree("queue")?,
            runs: tree("runs")?,
            finished: tree("runs_by_finish")?,
            messages: tree("run_messages")?,
            message_status: tree("run_messages_by_status")?,
            message_rows: Typed::new("run_message_chunks", tree("run_message_chunks")?),
            users: tree("users")?,
            tokens: Typed::new("tokens", tree("tokens")?),
            passwords: Typed::new("passwords", tree("passwords")?),
            views: Typed::new("views", tree("views")?),
            audit: Typed::new("audit", tree("audit")?),
            approvals: Typed::new("approvals", tree("approvals")?),
            plans: tree("import_plans")?,
            secrets: tree("secrets")?,
            sources: Typed::new("sources", tree("sources")?),
            rules: Typed::new("rule_versions", tree("rule_versions")?),
            notified: tree("notified")?,
            outbox: tree("outbox")?,
            outbox_due: tree("outbox_by_due")?,
            db,
            write_lock: Mutex::new(()),
            flushes: GroupFlush::default(),
        };
        if store.meta.get("schema_version").map_err(io("meta"))?.is_none() {
            // A new store: nothing to migrate.
            store.meta.insert("schema_version", &SCHEMA_VERSION.to_be_bytes()).map_err(io("meta"))?;
        }
        let found = store.schema_version()?;
        if found > SCHEMA_VERSION {
            return Err(Error::Schema { found });
        }
        Ok(store)
    }

    /// The schema version the data on disk was written in.
    pub(in crate::store) fn schema_version(&self) -> Result<u32> {
        let Some(v) = self.meta.get("schema_version").map_err(io("meta"))? else { return Ok(SCHEMA_VERSION) };
        Ok(u32::from_be_bytes(v.as_ref().try_into().map_err(|_| Error::Corrupt {
            tree: "meta",
            key: "schema_version".into(),
            reason: format!("{} bytes, expected 4", v.len()),
        })?))
    }

    /// The next number of a durable, gap-free sequence (run ids). sled's
    /// own `generate_id` jumps by a million after each restart, which makes
    /// for ids nobody wants to type.
    pub(in crate::store) fn next_sequence(&self, name: &str) -> Result<u64> {
        let key = format!("seq:{name}");
        let v = self
            .meta
            .update_and_fetch(key.as_bytes(), |old| {
                let n = old.and_then(|o| o.try_into().ok()).map(u64::from_be_bytes).unwrap_or(0);
                Some((n + 1).to_be_bytes().to_vec())
            })
            .map_err(io("meta"))?;
        Ok(v.and_then(|v| v.as_ref().try_into().ok()).map(u64::from_be_bytes).unwrap_or(1))
    }

    /// Writes everything to disk. Call before reporting a commit as durable.
    ///
    /// Group commit: callers that arrive while a flush is under way wait
    /// for the next one, which covers all their writes, so runs finishing
    /// within a flush of each other share one disk sync instead of queueing
    /// for one each.
    pub(in crate::store) fn flush(&self) -> Result<()> {
        let flushes = &self.flushes;
        let mut state = flushes.state.lock().unwrap_or_else(|e| e.into_inner());
        // Every write this caller made came before this ticket.
        state.requested += 1;
        let ticket = state.requested;
        loop {
            if state.completed >= ticket {
                return Ok(());
            }
            if !state.flushing {
                state.flushing = true;
                let covers = state.requested;
                drop(state);
                let flushed = self.db.flush();
                state = flushes.state.lock().unwrap_or_else(|e| e.into_inner());
                state.flushing = false;
                if flushed.is_ok() {
                    state.completed = state.completed.max(covers);
                    state.synced += 1;
                }
                flushes.done.notify_all();
                // A failed flush is this caller's error; the others waiting
                // try their own.
                flushed.map_err(io("db"))?;
                continue;
            }
            state = flushes.done.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    // ----- collections and records -----

    /// Defines a collection, or updates its indexes (rebuilding them).
    pub(in crate::store) fn define_collection(&self, name: &str, spec: &CollectionSpec) -> Result<()> {
        check_name("collection", name)?;
        check_name("field", &spec.key_field)?;
        let _guard = self.write_lock.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.collections.get(name.as_bytes())?;
        if old.as_ref() == Some(spec) {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        // Drop the old index entries, then write the new ones.
        for item in self.records.scan_prefix(key(&[b"i", name.as_bytes(), b""])) {
            let (k, _) = item.map_err(io("records"))?;
            batch.remove(k);
        }
        for item in self.records.scan_prefix(key(&[b"r", name.as_bytes(), b""])) {
            let (k, v) = item.map_err(io("records"))?;
            let record: Record = decode("records", &k, &v)?;
            let rkey = &k[name.len() + 3..];
            for (ik, iv) in index_entries(name, spec, &record, rkey) {
                batch.insert(ik, iv);
            }
        }
        self.records.apply_batch(batch).map_err(io("records"))?;
        self.collections.put(name.as_bytes(), spec)
    }

    /// A collection's spec, if it exists.
    pub(in crate::store) fn collection(&self, name: &str) -> Result<Option<CollectionSpec>> {
        self.collections.get(name.as_bytes())
    }

    /// The names of all collections.
    pub(in crate::store) fn collection_names(&self) -> Result<Vec<String>> {
        self.collections.keys()
    }

    /// Inserts or replaces records, atomically: all of them land, with their
    /// index entries and the collection's count, or none does.
    pub(in crate::store) fn put_records(&self, collection: &str, records: &[Record]) -> Result<usize> {
        self.commit_records(collection, records, &[], None)
    }

    /// Commits an import atomically: its records, and the ledger entry that
    /// marks the file's content as imported, in one batch. A crash leaves
    /// either all of it or none of it.
    pub(in crate::store) fn commit_import(
        &self,
        collection: &str,
        records: &[Record],
        removes: &[String],
        file_hash: &str,
        entry: &str,
    ) -> Result<usize> {
        self.commit_records(collection, records, removes, Some((file_hash, entry)))
    }

    /// What the ledger says about a file's content hash: the import that
    /// committed it, if one did.
    pub(in crate::store) fn import_ledger(&self, file_hash: &str) -> Result<Option<String>> {
        Ok(self
            .records
            .get(key(&[b"l", file_hash.as_bytes()]))
            .map_err(io("records"))?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    fn commit_records(
        &self,
        collection: &str,
        records: &[Record],
        removes: &[String],
        ledger: Option<(&str, &str)>,
    ) -> Result<usize> {
        let spec = self.collection(collection)?.ok_or_else(|| Error::UnknownCollection(collection.into()))?;
        let _guard = self.write_lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut batch = sled::Batch::default();
        let mut added: u64 = 0;
        let mut pending = std::collections::HashSet::new();
        for (i, record) in records.iter().enumerate() {
            let rkey = spec.key_of(collection, record, i + 1)?;
            let k = key(&[b"r", collection.as_bytes(), rkey.as_bytes()]);
            let new_entries = index_entries(collection, &spec, record, rkey.as_bytes());
            // Index entries that stay the same (an update that leaves the
            // indexed fields alone, as most do) are neither removed nor
            // written again.
            let old_entries = match self.records.get(&k).map_err(io("records"))? {
                Some(old) => {
                    let old: Record = decode("records", &k, &old)?;
                    index_entries(collection, &spec, &old, rkey.as_bytes())
                }
                None => {
                    if pending.insert(rkey.clone()) {
                        added += 1;
                    }
                    Vec::new()
                }
            };
            for (ik, _) in &old_entries {
                if !new_entries.iter().any(|(n, _)| n == ik) {
                    batch.remove(ik.as_slice());
                }
            }
            for (ik, iv) in new_entries {
                if !old_entries.iter().any(|(o, _)| *o == ik) {
                    batch.insert(ik, iv);
                }
            }
            batch.insert(k, encode(record));
        }
        let mut removed: u64 = 0;
        for rkey in removes {
            let k = key(&[b"r", collection.as_bytes(), rkey.as_bytes()]);
            // A key that is already gone is no error: removing is idempotent.
            if let Some(old) = self.records.get(&k).map_err(io("records"))? {
                let old: Record = decode("records", &k, &old)?;
                for (ik, _) in index_entries(collection, &spec, &old, rkey.as_bytes()) {
                    batch.remove(ik);
                }
                batch.remove(k);
                removed += 1;
            }
        }
        let count_key = key(&[b"c", collection.as_bytes()]);
        let count = (self.read_count(&count_key)? + added).saturating_sub(removed);
        batch.insert(count_key, &count.to_be_bytes());
        if let Some((hash, entry)) = ledger {
            batch.insert(key(&[b"l", hash.as_bytes()]), entry.as_bytes());
        }
        self.records.apply_batch(batch).map_err(io("records"))?;
        Ok(records.len() + removed as usize)
    }

    fn read_count(&self, count_key: &[u8]) -> Result<u64> {
        Ok(match self.records.get(count_key).map_err(io("records"))? {
            Some(v) => u64::from_be_bytes(v.as_ref().try_into().map_err(|_| Error::Corrupt {
                tree: "records",
                key: String::from_utf8_lossy(count_key).into(),
                reason: "count is not 8 bytes".into(),
            })?),
            None => 0,
        })
    }

    /// One record by key.
    pub(in crate::store) fn get_record(&self, collection: &str, record_key: &str) -> Result<Option<Record>> {
        let k = key(&[b"r", collection.as_bytes(), record_key.as_bytes()]);
        self.records.get(&k).map_err(io("records"))?.map(|v| decode("records", &k, &v)).transpose()
    }

    /// A record by key, compared with `candidate` first by its stored
    /// bytes: an import's unchanged rows (most of a nightly roster) are
    /// recognised without decoding the record.
    pub(in crate::store) fn lookup_record(
        &self,
        collection: &str,
        record_key: &str,
        candidate: &Record,
    ) -> Result<Lookup> {
        let k = key(&[b"r", collection.as_bytes(), record_key.as_bytes()]);
        Ok(match self.records.get(&k).map_err(io("records"))? {
            None => Lookup::Missing,
            Some(v) if v.as_ref() == encode(candidate).as_slice() => Lookup::Same,
            Some(v) => Lookup::Differs(decode("records", &k, &v)?),
        })
    }

    /// Up to `limit` records after the key `after`, in key order, and the
    /// cursor for the next page (none at the end).
    pub(in crate::store) fn scan_records(
        &self,
        collection: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Record>, Option<String>)> {
        let (stored, next) = self.scan_stored(collection, after, limit)?;
        // Decoding a record costs several times what walking to it does.
        use rayon::prelude::*;
        let records = stored.par_iter().with_min_len(256).map(StoredRecord::record).collect::<Result<_>>()?;
        Ok((records, next))
    }

    /// As [`Store::scan_records`], with the records left encoded.
    pub(in crate::store) fn scan_stored(
        &self,
        collection: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<StoredRecord>, Option<String>)> {
        let prefix = key(&[b"r", collection.as_bytes(), b""]);
        let start = match after {
            // The smallest key greater than `after`: `after` followed by 0.
            Some(a) => {
                let mut k = key(&[b"r", collection.as_bytes(), a.as_bytes()]);
                k.push(0);
                k
            }
            None => prefix.clone(),
        };
        let mut out = Vec::new();
        for item in self.records.range(start..) {
            let (key, bytes) = item.map_err(io("records"))?;
            if !key.starts_with(&prefix) {
                return Ok((out, None));
            }
            if out.len() == limit {
                let last = out.last().map(|r: &StoredRecord| String::from_utf8_lossy(&r.key[prefix.len()..]).into());
                return Ok((out, last));
            }
            out.push(StoredRecord::sled(key, bytes));
        }
        Ok((out, None))
    }

    /// The number of records in a collection.
    pub(in crate::store) fn count_records(&self, collection: &str) -> Result<u64> {
        self.read_count(&key(&[b"c", collection.as_bytes()]))
    }

    /// Keys of the records whose `fields` match `record`'s values for them
    /// (trimmed, case-insensitive), through the collection's index on those
    /// fields. Errors if no such index exists.
    pub(in crate::store) fn find_by_index(
        &self,
        collection: &str,
        fields: &[String],
        record: &Record,
    ) -> Result<Vec<String>> {
        let Some(prefix) = index_prefix(collection, fields, record) else {
            return Ok(Vec::new());
        };
        let mut keys = Vec::new();
        for item in self.records.scan_prefix(&prefix) {
            let (k, _) = item.map_err(io("records"))?;
            keys.push(String::from_utf8_lossy(&k[prefix.len()..]).into_owned());
        }
        Ok(keys)
    }

    /// A page of the records whose `fields` match `record`'s through their
    /// index, in key order: entries of one index value are kept in record
    /// key order, so the page starts just past `after` within them.
    pub(in crate::store) fn scan_index(
        &self,
        collection: &str,
        fields: &[String],
        record: &Record,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<StoredRecord>, Option<String>)> {
        let Some(prefix) = index_prefix(collection, fields, record) else {
            return Ok((Vec::new(), None));
        };
        let mut start = prefix.clone();
        if let Some(after) = after {
            start.extend_from_slice(after.as_bytes());
            start.push(0);
        }
        let mut out = Vec::new();
        let mut last = None;
        for item in self.records.range(start..) {
            let (k, _) = item.map_err(io("records"))?;
            if !k.starts_with(&prefix) {
                return Ok((out, None));
            }
            if out.len() == limit {
                let cursor = last.map(|k: sled::IVec| String::from_utf8_lossy(&k[prefix.len()..]).into_owned());
                return Ok((out, cursor));
            }
            // An entry is written with its record in one batch, so it has one.
            let key = key(&[b"r", collection.as_bytes(), &k[prefix.len()..]]);
            if let Some(bytes) = self.records.get(&key).map_err(io("records"))? {
                out.push(StoredRecord::sled(key.into(), bytes));
            }
            last = Some(k);
        }
        Ok((out, None))
    }

    // ----- plugins -----

    /// The plugin registry: name to entry.
    pub(in crate::store) fn plugins<T: Serialize + DeserializeOwned>(&self) -> Typed<T> {
        Typed::new("plugins", self.plugins.clone())
    }

    /// Stores a component's bytes under their content hash. Returns false
    /// if the same bytes were already stored.
    pub(in crate::store) fn put_blob(&self, hash: &str, bytes: &[u8]) -> Result<bool> {
        let old = self.blobs.insert(hash.as_bytes(), bytes).map_err(io("blobs"))?;
        Ok(old.is_none())
    }

    /// A stored component's bytes.
    pub(in crate::store) fn blob(&self, hash: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.blobs.get(hash.as_bytes()).map_err(io("blobs"))?.map(|v| v.to_vec()))
    }

    /// Removes a stored component's bytes.
    pub(in crate::store) fn remove_blob(&self, hash: &str) -> Result<()> {
        self.blobs.remove(hash.as_bytes()).map_err(io("blobs"))?;
        Ok(())
    }

    // ----- per-task state -----

    /// A task's state value.
    pub(in crate::store) fn task_state(&self, task: &str, state_key: &str) -> Result<Option<String>> {
        let k = key(&[task.as_bytes(), state_key.as_bytes()]);
        Ok(self.state.get(k).map_err(io("task_state"))?.map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Applies a run's state writes atomically (none clears a key).
    pub(in crate::store) fn apply_task_state(&self, task: &str, writes: &[(String, Option<String>)]) -> Result<()> {
        check_name("task", task)?;
        let mut batch = sled::Batch::default();
        for (k, v) in writes {
            check_name("state key", k)?;
            let k = key(&[task.as_bytes(), k.as_bytes()]);
            match v {
                Some(v) => batch.insert(k, v.as_bytes()),
                None => batch.remove(k),
            }
        }
        self.state.apply_batch(batch).map_err(io("task_state"))
    }
}

/// Where the entries of the index on `fields` for `record`'s values start:
/// none when a value is empty, as such records have no entry.
fn index_prefix(collection: &str, fields: &[String], record: &Record) -> Option<Vec<u8>> {
    let text = index_text(record, fields)?;
    let name = fields.join("+");
    let mut prefix = key(&[b"i", collection.as_bytes(), name.as_bytes(), text.as_bytes()]);
    prefix.push(SEP);
    Some(prefix)
}

fn index_entries(collection: &str, spec: &CollectionSpec, record: &Record, rkey: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    spec.indexes
        .iter()
        .filter_map(|fields| {
            let mut entry = index_prefix(collection, fields, record)?;
            entry.extend_from_slice(rkey);
            Some((entry, Vec::new()))
        })
        .collect()
}

/// The flushes asked for and done (see [`Store::flush`]).
#[derive(Default)]
struct GroupFlush {
    state: Mutex<FlushState>,
    done: std::sync::Condvar,
}

#[derive(Default)]
struct FlushState {
    /// Tickets handed out: one per call.
    requested: u64,
    /// Every ticket up to this one is on disk.
    completed: u64,
    /// Whether a caller is flushing now.
    flushing: bool,
    /// Disk syncs done: fewer than calls when callers arrive together.
    synced: u64,
}

/// A tree of one serde type, keyed by name.
pub(in crate::store) struct Typed<T> {
    name: &'static str,
    tree: sled::Tree,
    _type: PhantomData<fn() -> T>,
}

impl<T: Serialize + DeserializeOwned> Typed<T> {
    pub(crate) fn new(name: &'static str, tree: sled::Tree) -> Self {
        Typed { name, tree, _type: PhantomData }
    }

    /// The value under `k`.
    pub(in crate::store) fn get(&self, k: &[u8]) -> Result<Option<T>> {
        self.tree.get(k).map_err(io(self.name))?.map(|v| decode(self.name, k, &v)).transpose()
    }

    /// Stores `value` under `k`.
    pub(in crate::store) fn put(&self, k: &[u8], value: &T) -> Result<()> {
        self.tree.insert(k, encode(value)).map_err(io(self.name))?;
        Ok(())
    }

    /// Removes `k`; returns whether it was there.
    pub(in crate::store) fn remove(&self, k: &[u8]) -> Result<bool> {
        Ok(self.tree.remove(k).map_err(io(self.name))?.is_some())
    }

    /// Every value, in key order.
    pub(in crate::store) fn all(&self) -> Result<Vec<T>> {
        self.tree
            .iter()
            .map(|item| {
                let (k, v) = item.map_err(io(self.name))?;
                decode(self.name, &k, &v)
            })
            .collect()
    }

    /// Every key, in order.
    pub(in crate::store) fn keys(&self) -> Result<Vec<String>> {
        self.tree.iter().keys().map(|k| Ok(String::from_utf8_lossy(&k.map_err(io(self.name))?).into_owned())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{Date, Value};

    fn student(id: &str, last: &str, first: &str, birth: &str) -> Record {
        let mut r = Record::new();
        r.insert("student-id".into(), Value::Text(id.into()));
        r.insert("last-name".into(), Value::Text(last.into()));
        r.insert("first-name".into(), Value::Text(first.into()));
        r.insert("birth-date".into(), Value::Date(Date::parse(birth).unwrap()));
        r
    }

    fn spec() -> CollectionSpec {
        CollectionSpec {
            key_field: "student-id".into(),
            indexes: vec![vec!["last-name".into(), "first-name".into(), "birth-date".into()]],
        }
    }

    #[test]
    fn callers_flushing_together_share_disk_syncs() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s")).unwrap();
        std::thread::scope(|scope| {
            for t in 0..8u8 {
                let store = &store;
                scope.spawn(move || {
                    for i in 0..20u8 {
                        store.meta.insert([t, i], &[1]).unwrap();
                        store.flush().unwrap();
                    }
                });
            }
        });
        let state = store.flushes.state.lock().unwrap();
        assert_eq!((state.requested, state.completed), (160, 160));
        assert!(state.synced < 160, "{} syncs for 160 flushes", state.synced);
    }

    #[test]
    fn records_survive_reopen_with_counts_and_indexes() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store.define_collection("students", &spec()).unwrap();
            store
                .put_records(
                    "students",
                    &[student("1", "Ng", "Ann", "2010-01-02"), student("2", "Ng", "Bo", "2011-03-04")],
                )
                .unwrap();
            store.flush().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.count_records("students").unwrap(), 2);
        let probe = student("x", " NG ", "ann", "2010-01-02");
        let fields = spec().indexes[0].clone();
        assert_eq!(store.find_by_index("students", &fields, &probe).unwrap(), vec!["1".to_string()]);
    }

    #[test]
    fn replacing_a_record_moves_its_index_entry_and_keeps_the_count() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.define_collection("students", &spec()).unwrap();
        store.put_records("students", &[student("1", "Ng", "Ann", "2010-01-02")]).unwrap();
        store.put_records("students", &[student("1", "Li", "Ann", "2010-01-02")]).unwrap();
        let fields = spec().indexes[0].clone();
        assert!(store.find_by_index("students", &fields, &student("", "Ng", "Ann", "2010-01-02")).unwrap().is_empty());
        assert_eq!(store.find_by_index("students", &fields, &student("", "Li", "Ann", "2010-01-02")).unwrap(), ["1"]);
        assert_eq!(store.count_records("students").unwrap(), 1);
    }

    #[test]
    fn a_batch_with_a_keyless_record_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.define_collection("students", &spec()).unwrap();
        let mut bad = student("3", "A", "B", "2010-01-01");
        bad.remove("student-id");
        let err = store.put_records("students", &[student("1", "Ng", "Ann", "2010-01-02"), bad]).unwrap_err();
        assert!(err.to_string().contains("record 2"), "{err}");
        assert_eq!(store.count_records("students").unwrap(), 0);
        assert!(store.get_record("students", "1").unwrap().is_none());
    }

    #[test]
    fn pages_walk_a_collection_in_key_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.define_collection("students", &spec()).unwrap();
        let all: Vec<Record> = (0..25).map(|i| student(&format!("{i:03}"), "L", "F", "2010-01-01")).collect();
        store.put_records("students", &all).unwrap();
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let (page, next) = store.scan_records("students", cursor.as_deref(), 10).unwrap();
            seen.extend(page.into_iter().map(|r| r["student-id"].to_key_text()));
            match next {
                Some(n) => cursor = Some(n),
                None => break,
            }
        }
        let expected: Vec<String> = (0..25).map(|i| format!("{i:03}")).collect();
        assert_eq!(seen, expected);
    }
}
