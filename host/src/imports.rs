//! Imports: run a vendor's mapping over a file and store the rows.
//!
//! For now an import maps the whole file, then stores every mapped row in
//! one atomic batch (all or nothing), reporting each refused row with its
//! line and field. Matching, diff and the mass-change guard build on this.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::plugins::{self, Capability, LogLine, PluginHost, RowError, RunRequest};
use crate::store::{self, CollectionSpec};

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
}

/// What an import of one file did.
#[derive(Debug, Serialize)]
pub struct ImportReport {
    /// The file.
    pub file: String,
    /// The collection.
    pub collection: String,
    /// Rows stored.
    pub stored: u64,
    /// Rows refused, with line and field.
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
        rows.extend(batch.into_iter().map(|r| r.record));
        Ok(())
    })?;
    let store = host.store();
    define_collection(store, &target.collection, target.key_field.as_deref(), &target.indexes)?;
    let stored = store.put_records(&target.collection, &rows)? as u64;
    store.flush()?;
    Ok(ImportReport {
        file: target.source.clone(),
        collection: target.collection.clone(),
        stored,
        errors: outcome.errors,
        log: outcome.log,
    })
}
