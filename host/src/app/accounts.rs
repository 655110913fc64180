//! Users, their API tokens, and the stored secrets (SFTP keys, the SMTP
//! password). All of it is the account owner's, except that anyone may
//! read their own user.

use super::{App, Error, Result, owner_only};
use crate::users::{self, User};

/// The accounts service.
pub struct Accounts<'a> {
    pub(super) app: &'a App,
}

fn user_error(e: users::Error) -> Error {
    match e {
        users::Error::Unknown(_) => Error::NotFound(e.to_string()),
        users::Error::Store(e) => Error::Store(e),
        users::Error::BadToken | users::Error::Expired(_) => Error::Forbidden(e.to_string()),
    }
}

impl Accounts<'_> {
    /// Creates or replaces a user (the account owner only).
    pub fn put(&self, by: &User, user: &User) -> Result<()> {
        owner_only(by, "add or change users")?;
        users::put(&*self.app.store, user).map_err(user_error)?;
        let detail = format!("role {}, permissions {:?}", user.role, user.permissions);
        self.app.audit(&by.name, "user.put", &user.name, Some(detail))?;
        tracing::info!(user = %user.name, by = %by.name, "User saved.");
        Ok(())
    }

    /// Removes a user and every token of theirs (the account owner only).
    /// Their tasks and runs stay, as history; an owner cannot remove
    /// themselves, so the account always keeps one.
    pub fn remove(&self, by: &User, name: &str) -> Result<()> {
        owner_only(by, "remove users")?;
        if name == by.name {
            return Err(Error::Invalid(format!("{name} cannot remove themselves; another account owner can")));
        }
        let store = &*self.app.store;
        if !store.remove_user(name)? {
            return Err(Error::NotFound(format!("no user named `{name}`; `schoolbell user list` shows them")));
        }
        store.remove_tokens_of(name)?;
        store.flush()?;
        self.app.audit(&by.name, "user.remove", name, None)?;
        tracing::info!(user = %name, by = %by.name, "User removed.");
        Ok(())
    }

    /// Every API token's record, never the token (the account owner only).
    pub fn tokens(&self, by: &User) -> Result<Vec<users::Token>> {
        owner_only(by, "list API tokens")?;
        Ok(self.app.store.all_tokens()?.into_iter().map(|(_, t)| t).collect())
    }

    /// Revokes a token by its id (the account owner only): it stops working at once.
    pub fn revoke_token(&self, by: &User, id: &str) -> Result<users::Token> {
        owner_only(by, "revoke API tokens")?;
        let store = &*self.app.store;
        let found = store.all_tokens()?.into_iter().find(|(_, t)| t.id == id.trim());
        let Some((hash, token)) = found else {
            return Err(Error::NotFound(format!("no token with id `{id}`; `schoolbell user tokens` lists them")));
        };
        store.remove_token(&hash)?;
        store.flush()?;
        self.app.audit(&by.name, "token.revoke", &token.user, Some(format!("token {}", token.id)))?;
        tracing::info!(token = %token.id, user = %token.user, by = %by.name, "Token revoked.");
        Ok(token)
    }

    /// Every user (the account owner only).
    pub fn list(&self, by: &User) -> Result<Vec<User>> {
        owner_only(by, "list users")?;
        users::list(&*self.app.store).map_err(user_error)
    }

    /// Issues a new API token for `name`, shown once (the account owner
    /// only). The built-in `admin` is stored on its first token.
    pub fn issue_token(&self, by: &User, name: &str) -> Result<String> {
        owner_only(by, "issue API tokens")?;
        let store = &*self.app.store;
        if name == "admin" && store.user("admin")?.is_none() {
            users::put(store, &User::local_owner()).map_err(user_error)?;
        }
        let (token, record) = users::issue_token(store, name, self.app.now()).map_err(user_error)?;
        self.app.audit(&by.name, "token.issue", name, Some(format!("token {}", record.id)))?;
        tracing::info!(user = %name, token = %record.id, by = %by.name, "Token issued.");
        Ok(token)
    }

    /// Stores a secret, encrypted (the account owner only).
    pub fn set_secret(&self, by: &User, name: &str, value: &[u8]) -> Result<()> {
        owner_only(by, "store secrets")?;
        let secrets =
            self.app.access().secrets.as_ref().ok_or_else(|| Error::Invalid("no secrets are open here".into()))?;
        secrets.set(&*self.app.store, name, value).map_err(|e| Error::Failed(e.to_string()))?;
        self.app.audit(&by.name, "secret.set", name, None)?;
        tracing::info!(secret = %name, by = %by.name, "Secret stored.");
        Ok(())
    }

    /// The names of the stored secrets, never their values (the account owner only).
    pub fn secret_names(&self, by: &User) -> Result<Vec<String>> {
        owner_only(by, "list secrets")?;
        Ok(self.app.store.secret_names()?)
    }

    /// A secret's value, for the host's own use (the SMTP password).
    pub(super) fn secret(&self, name: &str) -> Result<Vec<u8>> {
        let secrets =
            self.app.access().secrets.as_ref().ok_or_else(|| Error::Invalid("no secrets are open here".into()))?;
        secrets.get(&*self.app.store, name).map_err(|e| Error::Invalid(e.to_string()))
    }
}
