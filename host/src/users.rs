//! Users, roles, permissions and API tokens.
//!
//! The account owner sees, cancels and deletes every run. Staff see,
//! cancel and delete their own. The `autopilot` permission also lets a
//! staff member see (not cancel or delete) runs triggered by a schedule or
//! a workflow. The `authorize` permission approves held imports. Tokens are
//! stored as SHA-256 hashes, never in plain text.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::store::{self, Backend};

/// A user's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The account owner: everything.
    Owner,
    /// Staff: their own tasks and runs.
    Staff,
}

/// An extra permission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    /// See runs triggered by schedules and workflows.
    Autopilot,
    /// Approve imports held for authorization.
    Authorize,
}

impl FromStr for Permission {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "autopilot" => Ok(Permission::Autopilot),
            "authorize" => Ok(Permission::Authorize),
            _ => Err(format!("`{s}` is not a permission; use autopilot or authorize")),
        }
    }
}

impl FromStr for JobEmail {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "always" => Ok(JobEmail::Always),
            "on-failure" => Ok(JobEmail::OnFailure),
            "never" => Ok(JobEmail::Never),
            _ => Err(format!("`{s}` is not a job-email preference; use always, on-failure or never")),
        }
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "owner" => Ok(Role::Owner),
            "staff" => Ok(Role::Staff),
            _ => Err(format!("`{s}` is not a role; use owner or staff")),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Owner => "owner",
            Role::Staff => "staff",
        })
    }
}

/// When a user wants a job-completion email.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobEmail {
    /// After every run.
    Always,
    /// Only after a failed run.
    #[default]
    OnFailure,
    /// Never.
    Never,
}

/// A user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    /// Login name.
    pub name: String,
    /// Email address for notifications.
    pub email: String,
    /// Role.
    pub role: Role,
    /// Extra permissions.
    pub permissions: Vec<Permission>,
    /// Job-completion email preference.
    pub job_email: JobEmail,
}

impl User {
    /// Whether the user holds a permission.
    pub fn has(&self, p: Permission) -> bool {
        self.role == Role::Owner || self.permissions.contains(&p)
    }

    /// The built-in local administrator the CLI acts as by default.
    pub fn local_owner() -> User {
        User {
            name: "admin".into(),
            email: "admin@localhost".into(),
            role: Role::Owner,
            permissions: vec![Permission::Autopilot, Permission::Authorize],
            job_email: JobEmail::OnFailure,
        }
    }
}

/// Errors about users.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No such user.
    #[error("no user named `{0}`; `schoolbell user list` shows them")]
    Unknown(String),
    /// The token matches no user.
    #[error("the API token is not valid; create one with `schoolbell user token NAME`")]
    BadToken,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] store::Error),
}

/// Hashes a token for storage and lookup.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Creates or replaces a user.
pub fn put(store: &dyn Backend, user: &User) -> Result<(), Error> {
    store.put_user(user)?;
    store.flush()?;
    Ok(())
}

/// A user by name.
pub fn get(store: &dyn Backend, name: &str) -> Result<User, Error> {
    if let Some(u) = store.user(name)? {
        return Ok(u);
    }
    if name == "admin" {
        return Ok(User::local_owner());
    }
    Err(Error::Unknown(name.into()))
}

/// Every user.
pub fn list(store: &dyn Backend) -> Result<Vec<User>, Error> {
    Ok(store.all_users()?)
}

/// Issues a new API token for a user; only its hash is stored. Returns the
/// token, to be shown once.
pub fn issue_token(store: &dyn Backend, name: &str) -> Result<String, Error> {
    let user = get(store, name)?;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| store::Error::Corrupt {
        tree: "tokens",
        key: name.into(),
        reason: format!("no randomness for a token: {e}"),
    })?;
    let token = format!("sb_{}", hex::encode(bytes));
    store.put_token(&token_hash(&token), &user.name)?;
    store.flush()?;
    Ok(token)
}

/// The user a bearer token belongs to.
pub fn authenticate(store: &dyn Backend, token: &str) -> Result<User, Error> {
    let name = store.token_user(&token_hash(token))?.ok_or(Error::BadToken)?;
    get(store, &name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    #[allow(unused_imports)]
    use crate::store::prelude::*;

    #[test]
    fn tokens_are_stored_only_as_hashes_and_authenticate_their_user() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let ann = User {
            name: "ann".into(),
            email: "ann@x".into(),
            role: Role::Staff,
            permissions: vec![],
            job_email: JobEmail::Always,
        };
        put(&store, &ann).unwrap();
        let token = issue_token(&store, "ann").unwrap();
        assert!(token.starts_with("sb_") && token.len() == 67);
        assert_eq!(authenticate(&store, &token).unwrap(), ann);
        assert!(matches!(authenticate(&store, "sb_nope"), Err(Error::BadToken)));
        drop(store);
        let raw = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| std::fs::read(e.unwrap().path()).ok())
            .any(|bytes| bytes.windows(token.len()).any(|w| w == token.as_bytes()));
        assert!(!raw, "the plain token must not be on disk");
    }
}
