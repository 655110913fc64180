//! The audit log: who changed tasks, sources, rules, grants and users, who
//! issued and revoked tokens, who failed to sign in, and who read plans,
//! messages, the outbox or record data. Append-only, in its own part of
//! the store: deleting runs does not touch it. The account owner reads it
//! (`schoolbell audit`, `GET /api/v1/audit`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AuditEntry {
    /// When.
    pub at: DateTime<Utc>,
    /// Who: a user name, or `-` for a failed sign-in.
    pub user: String,
    /// What, such as `task.add`, `token.revoke`, `run.messages.read`.
    pub action: String,
    /// What it was done to: a task, run, source, rule, plugin or user name.
    pub target: String,
    /// More, such as a token's id or a grant; never personal data.
    pub detail: Option<String>,
}
