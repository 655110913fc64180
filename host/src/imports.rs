//! Imports: run a vendor's mapping over a file and store the rows.
//!
//! An import maps the whole file through the vendor's component, matches
//! each row to the existing records by the admin's match rule (its keys in
//! priority order, each looked up through an index, so matching costs
//! O(rows)), works out what changes, and applies every change in one
//! atomic batch (all or nothing). Each row is reported: new, updated
//! (field by field, before and after), existing (unchanged), duplicate,
//! several matches (one message per candidate; the row is not applied), or
//! error (with line and field).

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::plugins::{self, Capability, LogLine, PluginHost, RowError, RunRequest};
use crate::records::{Record, Value};
use crate::rules;
use crate::store::{self, CollectionSpec, Store};

/// Where an import's rows go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportTarget {
    /// The input file.
    pub source: String,
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

/// What happens to one row.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "outcome")]
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
    /// The row cannot be applied.
    Error {
        /// The field at fault.
        field: Option<String>,
        /// What is wrong.
        message: String,
    },
}

/// One row's outcome, with its line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RowReport {
    /// The line the row is on.
    pub line: u64,
    /// What happens to it.
    #[serde(flatten)]
    pub outcome: RowOutcome,
}

impl RowReport {
    /// The status word of the row's messages.
    pub fn status(&self) -> &'static str {
        match self.outcome {
            RowOutcome::New { .. } => "new",
            RowOutcome::Updated { .. } => "updated",
            RowOutcome::Existing { .. } => "existing",
            RowOutcome::Multiple { .. } => "multiple",
            RowOutcome::Duplicate { .. } => "duplicate",
            RowOutcome::Error { .. } => "error",
        }
    }

    /// The row's messages for the Task Messages tab: one, or one per
    /// candidate when several records matched.
    pub fn messages(&self) -> Vec<(Option<String>, String)> {
        match &self.outcome {
            RowOutcome::New { key } => vec![(None, format!("new record {key}"))],
            RowOutcome::Existing { key } => vec![(None, format!("record {key} is unchanged; skipped"))],
            RowOutcome::Updated { key, matched_on, changes } => {
                let list: Vec<String> = changes.iter().map(|(f, b, a)| format!("{f}: {b} → {a}")).collect();
                vec![(None, format!("record {key} (matched on {matched_on}) updated: {}", list.join("; ")))]
            }
            RowOutcome::Multiple { candidates, matched_on } => candidates
                .iter()
                .map(|c| {
                    (None, format!("multiple matching records on {matched_on}: candidate {c}; the row is not applied"))
                })
                .collect(),
            RowOutcome::Duplicate { key, first_line } => {
                vec![(None, format!("record {key} was already set by line {first_line}; skipped"))]
            }
            RowOutcome::Error { field, message } => vec![(field.clone(), message.clone())],
        }
    }
}

/// What an import of one file did.
#[derive(Debug, Serialize)]
pub struct ImportReport {
    /// The file.
    pub file: String,
    /// The collection.
    pub collection: String,
    /// Records written (new plus updated).
    pub stored: u64,
    /// Counts by outcome: new, updated, existing, multiple, duplicate, error.
    pub counts: BTreeMap<String, u64>,
    /// Every row's outcome, in file order.
    pub rows: Vec<RowReport>,
    /// Rows the mapping refused, with line and field.
    pub errors: Vec<RowError>,
    /// The plugin's log.
    pub log: Vec<LogLine>,
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
}

/// Defines (or extends) a collection: its key field and indexes.
pub fn define_collection(
    store: &store::Store,
    collection: &str,
    key: Option<&str>,
    indexes: &[String],
) -> Result<(), Error> {
    let existing = store.collection(collection)?;
    let key_field = match (key, &existing) {
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

/// Maps `target.source` through `plugin` and stores the rows, all or
/// nothing. The plugin must ask for, and be granted, `write:COLLECTION`.
pub fn import_file(
    host: &PluginHost,
    plugin: &str,
    target: &ImportTarget,
    request: &RunRequest,
) -> Result<ImportReport, Error> {
    let entry = host.entry(plugin)?;
    let cap = Capability::WriteCollection(target.collection.clone());
    let asks = || entry.capabilities.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(", ");
    if !entry.capabilities.contains(&cap) {
        return Err(Error::Target(format!(
            "plugin {plugin} does not produce `{}` records (it asks for: {})",
            target.collection,
            asks()
        )));
    }
    if !entry.granted.contains(&cap) {
        return Err(Error::Target(format!(
            "plugin {plugin} may write `{}` only once an admin grants it: `schoolbell plugin grant {plugin} {cap}`",
            target.collection
        )));
    }
    let path = Path::new(&target.source);
    let input = std::fs::File::open(path).map_err(|source| Error::Open { path: target.source.clone(), source })?;
    let mut rows = Vec::new();
    let outcome = host.run_mapping(plugin, &target.source, std::io::BufReader::new(input), request, |batch| {
        rows.extend(batch.into_iter().map(|r| (r.line, r.record)));
        Ok(())
    })?;
    let store = host.store();
    define_collection(store, &target.collection, target.key_field.as_deref(), &target.indexes)?;
    let keys = match &target.match_rule {
        Some(name) => {
            let rules = host.rules();
            rules.match_keys(&*rules.get(name)?)?
        }
        None => Vec::new(),
    };
    let plan = plan(store, &target.collection, &keys, rows, &outcome.errors)?;
    let stored = store.put_records(&target.collection, &plan.writes)? as u64;
    store.flush()?;
    // A row with several field errors counts once.
    let mut counted = HashSet::new();
    let mut counts = BTreeMap::new();
    for r in &plan.rows {
        if counted.insert((r.status(), r.line)) {
            *counts.entry(r.status().to_string()).or_insert(0) += 1;
        }
    }
    Ok(ImportReport {
        file: target.source.clone(),
        collection: target.collection.clone(),
        stored,
        counts,
        rows: plan.rows,
        errors: outcome.errors,
        log: outcome.log,
    })
}

/// The changes an import makes: every row's outcome and the records to write.
pub struct Plan {
    /// Every row's outcome, in file order (mapping errors included).
    pub rows: Vec<RowReport>,
    /// The records to write: new ones and updated ones, merged.
    pub writes: Vec<Record>,
}

/// How a row matched.
enum Match {
    New,
    One(String, String),
    Several(Vec<String>, String),
}

/// Finds a row's records by the match keys in priority order: the first key
/// whose fields the row has and that finds anything decides.
fn find(
    store: &Store,
    collection: &str,
    spec: &CollectionSpec,
    keys: &[Vec<String>],
    row: &Record,
) -> Result<Match, Error> {
    let has = |f: &String| row.get(f).is_some_and(|v| !matches!(v, Value::Null) && !v.to_key_text().trim().is_empty());
    for key in keys {
        if !key.iter().all(has) {
            continue;
        }
        let name = key.join(" + ");
        let found = if key.len() == 1 && key[0] == spec.key_field {
            let k = row[&spec.key_field].to_key_text();
            store.get_record(collection, &k)?.map(|_| vec![k]).unwrap_or_default()
        } else {
            store.find_by_index(collection, key, row)?
        };
        match found.len() {
            0 => continue,
            1 => return Ok(Match::One(found.into_iter().next().unwrap_or_default(), name)),
            _ => return Ok(Match::Several(found, name)),
        }
    }
    Ok(Match::New)
}

/// Works out what each row does, without writing anything.
pub fn plan(
    store: &Store,
    collection: &str,
    keys: &[Vec<String>],
    rows: Vec<(u64, Record)>,
    mapping_errors: &[RowError],
) -> Result<Plan, Error> {
    let spec = store
        .collection(collection)?
        .ok_or_else(|| Error::Target(format!("collection `{collection}` does not exist")))?;
    // The key field always matches first, whatever the rule says.
    let mut keys: Vec<Vec<String>> = keys.to_vec();
    let by_key = vec![spec.key_field.clone()];
    keys.retain(|k| *k != by_key);
    keys.insert(0, by_key);
    // Lookups go through indexes: make sure every match key has one.
    let missing: Vec<Vec<String>> = keys.iter().skip(1).filter(|k| !spec.indexes.contains(k)).cloned().collect();
    if !missing.is_empty() {
        let mut with = spec.clone();
        with.indexes.extend(missing);
        store.define_collection(collection, &with)?;
    }
    let mut out = Vec::with_capacity(rows.len() + mapping_errors.len());
    let mut writes = Vec::new();
    let mut seen: BTreeMap<String, u64> = BTreeMap::new();
    let mut errors = mapping_errors.iter().peekable();
    let error = |e: &RowError| RowReport {
        line: e.line,
        outcome: RowOutcome::Error { field: e.field.clone(), message: e.message.clone() },
    };
    for (line, row) in rows {
        while let Some(e) = errors.next_if(|e| e.line <= line) {
            out.push(error(e));
        }
        let outcome = match find(store, collection, &spec, &keys, &row)? {
            Match::Several(candidates, matched_on) => RowOutcome::Multiple { candidates, matched_on },
            Match::New => match row.get(&spec.key_field).map(Value::to_key_text).filter(|k| !k.trim().is_empty()) {
                None => RowOutcome::Error {
                    field: Some(spec.key_field.clone()),
                    message: format!("no record matches and the row has no `{}` to create one with", spec.key_field),
                },
                Some(key) if seen.contains_key(&key) => RowOutcome::Duplicate { first_line: seen[&key], key },
                Some(key) => {
                    seen.insert(key.clone(), line);
                    writes.push(row);
                    RowOutcome::New { key }
                }
            },
            Match::One(key, matched_on) => {
                if let Some(first_line) = seen.get(&key) {
                    RowOutcome::Duplicate { key, first_line: *first_line }
                } else {
                    seen.insert(key.clone(), line);
                    let existing = store.get_record(collection, &key)?.unwrap_or_default();
                    let mut merged = existing.clone();
                    let mut changes = Vec::new();
                    for (field, after) in row {
                        // The record keeps its key even when another key matched it.
                        if field == spec.key_field {
                            continue;
                        }
                        let before = existing.get(&field).cloned().unwrap_or(Value::Null);
                        if before != after {
                            changes.push((field.clone(), before, after.clone()));
                            merged.insert(field, after);
                        }
                    }
                    if changes.is_empty() {
                        RowOutcome::Existing { key }
                    } else {
                        writes.push(merged);
                        RowOutcome::Updated { key, matched_on, changes }
                    }
                }
            }
        };
        out.push(RowReport { line, outcome });
    }
    out.extend(errors.map(error));
    Ok(Plan { rows: out, writes })
}
