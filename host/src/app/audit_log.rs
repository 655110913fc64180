//! Reading the audit log: the account owner's alone.

use super::{App, Result, owner_only};
use crate::audit::AuditEntry;
use crate::users::User;

/// The audit log service.
pub struct AuditLog<'a> {
    pub(super) app: &'a App,
}

impl AuditLog<'_> {
    /// Up to `limit` entries after number `after`, oldest first, with
    /// their numbers (the account owner only).
    pub fn list(&self, by: &User, after: Option<u64>, limit: usize) -> Result<Vec<(u64, AuditEntry)>> {
        owner_only(by, "read the audit log")?;
        Ok(self.app.store.audit_log(after, limit)?)
    }

    /// Removes the entries older than `[audit] retention_days`, and notes
    /// that it did in the log itself; returns how many went.
    pub(crate) fn prune(&self) -> Result<u64> {
        let app = self.app;
        let cutoff = app.now() - chrono::Duration::days(app.config.audit.retention_days as i64);
        // Entries are numbered in the order they were written, so the
        // expired ones are a prefix: find its last number, page by page.
        let mut last = None;
        let mut after = None;
        'pages: loop {
            let page = app.store.audit_log(after, 1_000)?;
            let Some((n, _)) = page.last() else { break };
            after = Some(*n);
            for (n, entry) in &page {
                if entry.at >= cutoff {
                    break 'pages;
                }
                last = Some(*n);
            }
        }
        let Some(last) = last else { return Ok(0) };
        let removed = app.store.remove_audit_through(last)?;
        let detail = format!(
            "{removed} entries older than {} days ([audit] retention_days) removed",
            app.config.audit.retention_days
        );
        app.audit("-", "audit.retention", "audit", Some(detail))?;
        app.store.flush()?;
        Ok(removed)
    }
}
