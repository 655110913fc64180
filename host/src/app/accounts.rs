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
        users::Error::BadToken | users::Error::Expired(_) | users::Error::SessionEnded(_) => {
            Error::Forbidden(e.to_string())
        }
        users::Error::WeakPassword(_) => Error::Invalid(e.to_string()),
        users::Error::Throttled(_) => Error::TooMany(e.to_string()),
    }
}

/// What removing a user did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Removal {
    /// Their tasks, by name: handed on, or disabled.
    pub tasks: Vec<String>,
    /// Whom the tasks went to, when someone.
    pub handed_to: Option<String>,
    /// Their finished runs, kept under an owner name no user can have.
    pub runs: usize,
    /// Their queued and running runs, cancelled.
    pub cancelled: usize,
}

impl Accounts<'_> {
    /// Creates or replaces a user (the account owner only).
    pub fn put(&self, by: &User, user: &User) -> Result<()> {
        owner_only(by, "add or change users")?;
        // Names reach logs, audit entries, file names and the console:
        // every face gets the same plain ones.
        if !users::is_plain_name(&user.name) {
            return Err(Error::Invalid(format!(
                "a user name is 1 to {} letters, digits, dots, dashes and underscores",
                users::MAX_NAME
            )));
        }
        users::put(&*self.app.store, user).map_err(user_error)?;
        let detail = format!("role {}, permissions {:?}", user.role, user.permissions);
        self.app.audit(&by.name, "user.put", &user.name, Some(detail))?;
        tracing::info!(user = %user.name, by = %by.name, "User saved.");
        Ok(())
    }

    /// Removes a user and every token of theirs (the account owner only).
    /// Their tasks and runs stay, as history; an owner cannot remove
    /// themselves, so the account always keeps one.
    ///
    /// Nothing is left acting for them: their tasks are handed to `to`, or
    /// else disabled; their queued and running runs are cancelled; their
    /// tasks (when not handed on) and finished runs keep an owner name no
    /// user can have ([`users::removed_name`]), so a new user of the same
    /// name inherits none of them. A stored `admin` leaves a mark behind,
    /// so the built-in owner does not come back in its place.
    pub fn remove(&self, by: &User, name: &str, to: Option<&str>) -> Result<Removal> {
        owner_only(by, "remove users")?;
        if name == by.name {
            return Err(Error::Invalid(format!("{name} cannot remove themselves; another account owner can")));
        }
        let store = &*self.app.store;
        if let Some(to) = to {
            if to == name {
                return Err(Error::Invalid(format!("{name}'s tasks cannot be handed to {name}")));
            }
            users::get(store, to).map_err(user_error)?;
        }
        if !store.remove_user(name)? {
            return Err(Error::NotFound(format!("no user named `{name}`; `schoolbell user list` shows them")));
        }
        store.remove_tokens_of(name)?;
        store.remove_password(name)?;
        for view in store.views(name)? {
            store.remove_view(name, &view.name)?;
        }
        if name == "admin" {
            let mark = User { role: users::Role::Removed, permissions: Vec::new(), ..User::local_owner() };
            store.put_user(&mark)?;
        }
        let gone = users::removed_name(name);
        let mut removal = Removal { handed_to: to.map(str::to_string), ..Removal::default() };
        {
            let _guard = super::lock(&self.app.engine.fire_lock);
            for mut task in store.all_tasks()?.into_iter().filter(|t| t.owner == name) {
                let old_due = if task.enabled { task.next_fire } else { None };
                match to {
                    Some(to) => task.owner = to.to_string(),
                    None => {
                        task.enabled = false;
                        task.owner = gone.clone();
                    }
                }
                let due = if task.enabled { task.next_fire } else { None };
                store.put_task(&task, old_due, due)?;
                removal.tasks.push(task.name);
            }
        }
        self.app.engine.schedule_changed();
        let mut before = None;
        loop {
            let page = store.runs(before, 1_000)?;
            let Some(last) = page.last() else { break };
            before = Some(last.id);
            for mut run in page.into_iter().filter(|r| r.owner == name) {
                if !run.status.is_finished() {
                    if self.app.runs().cancel(by, run.id).is_ok() {
                        removal.cancelled += 1;
                    }
                    continue;
                }
                run.owner = gone.clone();
                store.put_run(&run, run.finished_at)?;
                removal.runs += 1;
            }
        }
        store.flush()?;
        self.app.run_changed();
        let detail = format!(
            "tasks {} {}; {} runs kept as {gone}; {} cancelled",
            removal.tasks.join(", "),
            to.map_or_else(|| "disabled".to_string(), |to| format!("handed to {to}")),
            removal.runs,
            removal.cancelled
        );
        self.app.audit(&by.name, "user.remove", name, Some(detail))?;
        tracing::info!(user = %name, by = %by.name, "User removed.");
        Ok(removal)
    }

    /// Changes the caller's own password, given the current one: every
    /// other session and token of theirs ends (all but `keep`, the hash of
    /// the session asking). Returns how many ended.
    pub fn change_own_password(&self, by: &User, current: &str, new: &str, keep: Option<&str>) -> Result<usize> {
        let store = &*self.app.store;
        if !users::verify_password(store.password(&by.name)?.as_deref(), current) {
            self.app.audit(&by.name, "user.password.refused", &by.name, Some("wrong current password".into()))?;
            return Err(Error::Forbidden("the current password is wrong; nothing was changed".into()));
        }
        let hash = users::hash_password(new).map_err(user_error)?;
        store.put_password(&by.name, &hash)?;
        let ended = self.end_sessions(&by.name, keep)?;
        store.flush()?;
        self.app.audit(
            &by.name,
            "user.password",
            &by.name,
            Some(format!("{ended} other sessions and tokens ended")),
        )?;
        Ok(ended)
    }

    /// Ends every session and token of `name` but `keep` (a token hash);
    /// returns how many.
    fn end_sessions(&self, name: &str, keep: Option<&str>) -> Result<usize> {
        let store = &*self.app.store;
        let mut ended = 0;
        for (hash, token) in store.all_tokens()? {
            if token.user == name && Some(hash.as_str()) != keep {
                store.remove_token(&hash)?;
                ended += 1;
            }
        }
        Ok(ended)
    }

    /// Sets a user's console password: the account owner for anyone,
    /// everyone else for themselves. When the owner sets another user's
    /// password, that user's sessions and tokens end. Returns how many
    /// ended.
    pub fn set_password(&self, by: &User, name: &str, password: &str) -> Result<usize> {
        if by.name != name {
            owner_only(by, "set another user's password")?;
        }
        let store = &*self.app.store;
        if name == "admin" && store.user("admin")?.is_none() {
            users::put(store, &User::local_owner()).map_err(user_error)?;
        }
        users::get(store, name).map_err(user_error)?;
        let hash = users::hash_password(password).map_err(user_error)?;
        // Set for someone else, it is theirs to sign in with, not to vouch
        // for them in the two-person rule (see `review::Proof`).
        let hash = if by.name != name { format!("{}{hash}", users::PROVISIONAL) } else { hash };
        store.put_password(name, &hash)?;
        // A reset is a reset: whoever held the old sessions is out.
        let ended = if by.name != name { self.end_sessions(name, None)? } else { 0 };
        store.flush()?;
        self.app.audit(&by.name, "user.password", name, Some(format!("{ended} sessions and tokens ended")))?;
        tracing::info!(user = %name, by = %by.name, ended, "Password set.");
        Ok(ended)
    }

    /// Signs a person in with their password: a new session token (an API
    /// token, so the same checks and expiry apply). A wrong name and a
    /// wrong password are one answer, in the same time.
    /// `from` is the client's address: after five failures a minute from
    /// it, or for the name, each further attempt waits.
    pub fn sign_in(&self, name: &str, password: &str, from: &str) -> Result<(User, String)> {
        let store = &*self.app.store;
        let name = name.trim();
        let keys = [super::throttle::address(from), super::throttle::user_name(name)];
        if let Some(wait) = self.app.throttle.wait(&keys, std::time::Instant::now()) {
            return Err(Error::TooMany(users::Error::Throttled(wait.as_secs().max(1)).to_string()));
        }
        let stored = if name.is_empty() || !users::is_plain_name(name) { None } else { store.password(name)? };
        if !users::verify_password(stored.as_deref(), password) {
            self.app.failed_sign_in(&keys, from, name, "wrong user name or password")?;
            return Err(Error::Forbidden("the user name or the password is wrong".into()));
        }
        self.app.throttle.succeeded(&keys[1]);
        let (token, record) = users::issue_token(store, name, self.app.now()).map_err(user_error)?;
        let user = users::get(store, name).map_err(user_error)?;
        self.app.audit(name, "sign-in", name, Some(format!("session {}", record.id)))?;
        Ok((user, token))
    }

    /// Ends a session: its token stops working at once.
    pub fn sign_out(&self, by: &User, token: &str) -> Result<()> {
        let store = &*self.app.store;
        store.remove_token(&users::token_hash(token))?;
        store.flush()?;
        self.app.audit(&by.name, "sign-out", &by.name, None)?;
        Ok(())
    }

    /// Sets the caller's own job-completion email preference.
    pub fn set_job_email(&self, by: &User, preference: users::JobEmail) -> Result<User> {
        let store = &*self.app.store;
        let mut user = users::get(store, &by.name).map_err(user_error)?;
        user.job_email = preference;
        users::put(store, &user).map_err(user_error)?;
        self.app.audit(&by.name, "user.job-email", &by.name, Some(format!("{preference:?}")))?;
        Ok(user)
    }

    /// The caller's saved views.
    pub fn views(&self, by: &User) -> Result<Vec<crate::views::SavedView>> {
        Ok(self.app.store.views(&by.name)?)
    }

    /// Saves one of the caller's views (replacing one of the same name).
    pub fn save_view(&self, by: &User, view: crate::views::SavedView) -> Result<()> {
        view.check().map_err(Error::Invalid)?;
        let views = self.app.store.views(&by.name)?;
        if views.len() >= 100 && !views.iter().any(|v| v.name == view.name) {
            return Err(Error::Invalid("you have 100 saved views; remove one first".into()));
        }
        self.app.store.put_view(&by.name, &view)?;
        Ok(self.app.store.flush()?)
    }

    /// Removes one of the caller's views.
    pub fn remove_view(&self, by: &User, name: &str) -> Result<()> {
        if !self.app.store.remove_view(&by.name, name)? {
            return Err(Error::NotFound(format!("you have no view named `{name}`")));
        }
        Ok(self.app.store.flush()?)
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
