//! Saved views of the runs grid (the View Manager): a user names a set of
//! filters and columns and gets it back later. Kept per user.

use serde::{Deserialize, Serialize};

/// The grid's columns, in their default order.
pub const COLUMNS: &[&str] =
    &["task", "kind", "status", "progress", "owner", "trigger", "queued", "started", "finished", "duration"];

/// One saved view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedView {
    /// Its name, unique per user.
    pub name: String,
    /// The grid's query string: filters and sort, as in the address bar.
    pub query: String,
    /// The columns shown, in order (names from [`COLUMNS`]).
    pub columns: Vec<String>,
}

impl SavedView {
    /// Checks the name and the columns; the query is parsed where it is used.
    pub fn check(&self) -> Result<(), String> {
        let name = self.name.trim();
        if name.is_empty() || name.chars().count() > 60 || name.chars().any(char::is_control) {
            return Err("a view's name must be 1 to 60 characters, without control characters".into());
        }
        if self.columns.is_empty() {
            return Err("a view shows at least one column".into());
        }
        if let Some(bad) = self.columns.iter().find(|c| !COLUMNS.contains(&c.as_str())) {
            return Err(format!("`{bad}` is not a column; the columns are {}", COLUMNS.join(", ")));
        }
        if self.query.len() > 2000 {
            return Err("a view's filters are longer than 2000 characters".into());
        }
        Ok(())
    }
}
