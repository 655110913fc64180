//! The audit log: who changed tasks, sources, rules, grants and users, who
//! issued and revoked tokens, who failed to sign in, and who read plans,
//! messages, the outbox or record data. Append-only, in its own part of
//! the store: deleting runs does not touch it. The account owner reads it
//! (`schoolbell audit`, `GET /api/v1/audit`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The longest detail an entry keeps, in bytes.
pub const MAX_DETAIL: usize = 1024;

/// `text` as an entry keeps it: control characters dropped (so that
/// `schoolbell audit` prints none to a terminal), cut at `max` bytes on a
/// character boundary, with `…` where it was cut.
pub fn plain(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max));
    for c in text.chars().filter(|c| !c.is_control()) {
        if out.len() + c.len_utf8() > max {
            out.push('…');
            break;
        }
        out.push(c);
    }
    out
}

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
