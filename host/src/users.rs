//! Users, roles, permissions and API tokens.
//!
//! The account owner sees, cancels and deletes every run. Staff see,
//! cancel and delete their own. The `autopilot` permission also lets a
//! staff member see (not cancel or delete) runs triggered by a schedule or
//! a workflow. The `authorize` permission approves held imports. Tokens are
//! stored as SHA-256 hashes, never in plain text.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
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
    /// No one: what is left of the stored `admin` once an owner removed
    /// it, so that the built-in owner does not come back in its place.
    Removed,
}

/// An extra permission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    /// See runs triggered by schedules and workflows.
    Autopilot,
    /// Approve imports held for authorization.
    Authorize,
    /// Submit runs at high priority.
    #[serde(rename = "set-priority")]
    SetPriority,
}

impl FromStr for Permission {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "autopilot" => Ok(Permission::Autopilot),
            "authorize" => Ok(Permission::Authorize),
            "set-priority" => Ok(Permission::SetPriority),
            _ => Err(format!("`{s}` is not a permission; use autopilot, authorize or set-priority")),
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
            Role::Removed => "removed",
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
            permissions: vec![Permission::Autopilot, Permission::Authorize, Permission::SetPriority],
            job_email: JobEmail::OnFailure,
        }
    }
}

/// An API token as stored: never the token itself, only its hash (the
/// key it is stored under) and what people need to manage it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Token {
    /// Its id: the first 12 hex digits of its hash, safe to show.
    pub id: String,
    /// Whose it is.
    pub user: String,
    /// When it was issued; it expires `[api] token_days` later.
    pub created_at: DateTime<Utc>,
    /// When it was last used (to the minute).
    pub last_used_at: Option<DateTime<Utc>>,
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
    /// The token is past its expiry.
    #[error("the API token expired on {0}; ask the account owner for a new one (`schoolbell user token NAME`)")]
    Expired(String),
    /// A console session past its idle or total lifetime.
    #[error("the console session ended: {0}")]
    SessionEnded(String),
    /// Too many failed sign-ins from this address, or for this user name.
    #[error("too many failed sign-ins from this address or for this user; wait {0} s and try again")]
    Throttled(u64),
    /// A password the console would not accept.
    #[error("{0}")]
    WeakPassword(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] store::Error),
}

/// The shortest console password accepted, in characters.
pub const MIN_PASSWORD_CHARS: usize = 12;

/// Hashes a console password with Argon2id (memory-hard) and a random
/// salt, as a PHC string; the password itself is never stored.
pub fn hash_password(password: &str) -> Result<String, Error> {
    use argon2::password_hash::PasswordHasher;
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(Error::WeakPassword(format!(
            "the password is too short: use at least {MIN_PASSWORD_CHARS} characters (a few words make a good one)"
        )));
    }
    argon2::Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| Error::WeakPassword(format!("the password cannot be hashed: {e}")))
}

/// The longest user name, in bytes.
pub const MAX_NAME: usize = 64;

/// Whether `name` is a user name as every face takes it: 1 to
/// [`MAX_NAME`] ASCII letters, digits, dots, dashes and underscores.
pub fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// Marks a stored password hash that someone else set (an owner's reset):
/// the user signs in with it, but it proves nothing of them to the
/// two-person rule until they change it themselves.
pub const PROVISIONAL: &str = "provisional:";

/// Whether a stored password was set by someone other than its user.
pub fn is_provisional(stored: &str) -> bool {
    stored.starts_with(PROVISIONAL)
}

/// Whether `password` matches a stored hash. Without a hash the work is
/// done anyway against a fixed one, so a wrong user name takes as long as
/// a wrong password and does not tell which users exist.
pub fn verify_password(stored: Option<&str>, password: &str) -> bool {
    use argon2::password_hash::PasswordVerifier;
    use argon2::password_hash::phc::PasswordHash;
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let decoy = DECOY.get_or_init(|| hash_password("no user has this password").unwrap_or_default());
    let stored = stored.map(|s| s.strip_prefix(PROVISIONAL).unwrap_or(s));
    let Ok(hash) = PasswordHash::new(stored.unwrap_or(decoy)) else { return false };
    argon2::Argon2::default().verify_password(password.as_bytes(), &hash).is_ok() && stored.is_some()
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
        if u.role == Role::Removed {
            return Err(Error::Unknown(name.into()));
        }
        return Ok(u);
    }
    if name == "admin" {
        return Ok(User::local_owner());
    }
    Err(Error::Unknown(name.into()))
}

/// Every user.
pub fn list(store: &dyn Backend) -> Result<Vec<User>, Error> {
    Ok(store.all_users()?.into_iter().filter(|u| u.role != Role::Removed).collect())
}

/// The owner name a removed user's tasks and runs keep: no user can be
/// given it (a user name has no spaces), so a new user of the same name
/// inherits none of them.
pub fn removed_name(name: &str) -> String {
    format!("{name} (removed)")
}

/// Issues a new API token for a user; only its hash is stored. Returns the
/// token, to be shown once, and its record.
pub fn issue_token(store: &dyn Backend, name: &str, now: DateTime<Utc>) -> Result<(String, Token), Error> {
    let user = get(store, name)?;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| store::Error::Corrupt {
        tree: "tokens",
        key: name.into(),
        reason: format!("no randomness for a token: {e}"),
    })?;
    let token = format!("sb_{}", hex::encode(bytes));
    let hash = token_hash(&token);
    let record = Token { id: hash[..12].to_string(), user: user.name, created_at: now, last_used_at: None };
    store.put_token(&hash, &record)?;
    store.flush()?;
    Ok((token, record))
}

/// A console session's own lifetimes, apart from an API token's.
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    /// How long it may go unused.
    pub idle: chrono::Duration,
    /// How long it lasts at most, however busy.
    pub max: chrono::Duration,
}

/// The user a bearer token belongs to, if it has not expired after
/// `token_days` (nor, for a console session, past `session`'s limits: such
/// a session is removed); its last use is noted (once a minute at most).
pub fn authenticate(
    store: &dyn Backend,
    token: &str,
    now: DateTime<Utc>,
    token_days: u32,
    session: Option<SessionLimits>,
) -> Result<User, Error> {
    let hash = token_hash(token);
    let mut record = store.token(&hash)?.ok_or(Error::BadToken)?;
    if let Some(limits) = session {
        let idle = now - record.last_used_at.unwrap_or(record.created_at);
        // Uses are noted to the minute: a session is idle past the limit plus that minute.
        if idle > limits.idle + chrono::Duration::minutes(1) || now - record.created_at > limits.max {
            store.remove_token(&hash)?;
            return Err(Error::SessionEnded(
                "it was idle longer than [console] idle_minutes, or older than max_hours; sign in again".into(),
            ));
        }
    }
    let expires = record.created_at + chrono::Duration::days(i64::from(token_days));
    if now >= expires {
        return Err(Error::Expired(expires.format("%Y-%m-%d").to_string()));
    }
    let user = get(store, &record.user)?;
    if record.last_used_at.is_none_or(|t| now - t >= chrono::Duration::minutes(1)) {
        record.last_used_at = Some(now);
        store.put_token(&hash, &record)?;
    }
    Ok(user)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    #[allow(unused_imports)]
    use crate::store::prelude::*;

    #[test]
    fn passwords_are_stored_hashed_and_verified() {
        assert!(matches!(hash_password("short"), Err(Error::WeakPassword(_))));
        let hash = hash_password("correct horse battery").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(!hash.contains("correct horse"));
        assert!(verify_password(Some(&hash), "correct horse battery"));
        assert!(!verify_password(Some(&hash), "correct horse battery!"));
        assert!(!verify_password(None, "no user has this password"));
    }

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
        let now = Utc::now();
        let (token, record) = issue_token(&store, "ann", now).unwrap();
        assert!(token.starts_with("sb_") && token.len() == 67);
        assert_eq!(record.id.len(), 12);
        assert_eq!(authenticate(&store, &token, now, 90, None).unwrap(), ann);
        assert!(matches!(authenticate(&store, "sb_nope", now, 90, None), Err(Error::BadToken)));
        let later = now + chrono::Duration::days(90);
        assert!(matches!(authenticate(&store, &token, later, 90, None), Err(Error::Expired(_))));
        drop(store);
        let raw = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| std::fs::read(e.unwrap().path()).ok())
            .any(|bytes| bytes.windows(token.len()).any(|w| w == token.as_bytes()));
        assert!(!raw, "the plain token must not be on disk");
    }
}
