//! The store itself, for the account owner: its schema version and the
//! migration this start made, a check of indexes against records, and a
//! backup while the service runs.

use std::path::Path;

use super::{App, Error, Result, lock, owner_only};
use crate::store::{Drift, Migrated};
use crate::users::User;

/// The storage service.
pub struct Storage<'a> {
    pub(super) app: &'a App,
}

impl Storage<'_> {
    /// The migration this process made when it opened the store, if any.
    pub fn migrated(&self) -> Option<&Migrated> {
        self.app.migrated.as_ref()
    }

    /// Whether other hosts share the store (a PostgreSQL database).
    pub fn shared(&self) -> bool {
        self.app.store.shared()
    }

    /// The hosts serving from the store, with their heartbeats and the runs
    /// each holds: one, this process, on the embedded store.
    pub fn hosts(&self, user: &User) -> Result<Vec<crate::store::HostInfo>> {
        owner_only(user, "list the hosts")?;
        let hosts = self.app.store.hosts()?;
        if !hosts.is_empty() {
            return Ok(hosts);
        }
        let now = chrono::Utc::now();
        Ok(vec![crate::store::HostInfo {
            id: "embedded".into(),
            name: crate::store::machine_name(),
            pid: std::process::id(),
            started_at: self.app.started_at,
            heartbeat_at: now,
            runs_held: lock(&self.app.engine.live).len() as u64,
        }])
    }

    /// Checks indexes against what they index: every collection's indexes
    /// and counts, and the due index against the tasks. One line each.
    pub fn check(&self, user: &User) -> Result<Vec<Drift>> {
        owner_only(user, "check the store")?;
        let store = &*self.app.store;
        let mut drift = store.check()?;
        let far = chrono::DateTime::<chrono::Utc>::MAX_UTC;
        let due: std::collections::BTreeSet<(i64, String)> =
            store.due_tasks(far, usize::MAX)?.into_iter().map(|(t, n)| (t.timestamp_millis(), n)).collect();
        let mut wanted = std::collections::BTreeSet::new();
        for task in store.all_tasks()? {
            if let Some(next) = task.next_fire.filter(|_| task.enabled) {
                wanted.insert((next.timestamp_millis(), task.name.clone()));
            }
        }
        for (_, name) in wanted.difference(&due) {
            drift.push(Drift(format!("task `{name}`: not in the due index, so it would never fire")));
        }
        for (_, name) in due.difference(&wanted) {
            drift.push(Drift(format!("due index: an entry for task `{name}` that its task does not have")));
        }
        Ok(drift)
    }

    /// Copies the store into `dir` (new or empty), with fires and import
    /// decisions held meanwhile so no task or plan changes under it.
    pub fn backup(&self, user: &User, dir: &Path) -> Result<()> {
        owner_only(user, "back up the store")?;
        let _fires = lock(&self.app.engine.fire_lock);
        let _decisions = lock(&self.app.import_lock);
        self.app.store.backup(dir).map_err(|e| match e {
            crate::store::Error::Backup { .. } => Error::Invalid(e.to_string()),
            other => Error::Store(other),
        })?;
        tracing::info!(dir = %dir.display(), by = %user.name, "Store backed up.");
        Ok(())
    }
}
