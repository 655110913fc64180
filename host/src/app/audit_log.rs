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
}
