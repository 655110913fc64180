//! Collections of records (students, attendance, staff, ...): load a set
//! of records, and read a page of one. Student data is the account
//! owner's to load and to read in bulk.

use super::{App, Error, Result, owner_only};
use crate::imports;
use crate::records::Record;
use crate::users::User;

/// The collections service.
pub struct Collections<'a> {
    pub(super) app: &'a App,
}

/// A page of a collection.
#[derive(Debug, Clone)]
pub struct Page {
    /// The records, by key.
    pub records: Vec<Record>,
    /// How many the collection holds.
    pub total: u64,
}

impl Collections<'_> {
    /// Loads records into a collection (defining it, or adding indexes),
    /// all or nothing. `shown` names where they came from in errors.
    pub fn load(
        &self,
        user: &User,
        collection: &str,
        key: Option<&str>,
        indexes: &[String],
        records: &[Record],
        shown: &str,
    ) -> Result<usize> {
        owner_only(user, "load records")?;
        let store = &*self.app.store;
        imports::define_collection(store, collection, key, indexes).map_err(|e| Error::Invalid(e.to_string()))?;
        let n = store.put_records(collection, records).map_err(|e| Error::Invalid(format!("{shown}: {e}")))?;
        store.flush()?;
        self.app.audit(&user.name, "records.load", collection, Some(format!("{n} records")))?;
        tracing::info!(collection, records = n, by = %user.name, "Records loaded.");
        Ok(n)
    }

    /// The first `limit` records of a collection.
    pub fn page(&self, user: &User, collection: &str, limit: usize) -> Result<Page> {
        owner_only(user, "read records in bulk")?;
        let store = &*self.app.store;
        if store.collection(collection)?.is_none() {
            return Err(Error::NotFound(format!(
                "collection `{collection}` does not exist; collections: {}",
                store.collection_names()?.join(", ")
            )));
        }
        self.app.audit(&user.name, "records.read", collection, Some(format!("first {limit}")))?;
        let (records, _) = store.scan_records(collection, None, limit)?;
        Ok(Page { records, total: store.count_records(collection)? })
    }
}
