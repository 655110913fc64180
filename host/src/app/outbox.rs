//! The outbox: the emails runs made, waiting, sent and failed. The owner
//! sees every email; staff see those of their own tasks. Sending belongs
//! to the account owner (and to `serve`, which sends as it goes).

use std::collections::HashSet;

use super::{App, Error, Result, owner_only};
use crate::notify::smtp::{Delivered, Mailer};
use crate::notify::{self, Delivery, OutboxEntry};
use crate::users::{Role, User};

/// The outbox service.
pub struct Outbox<'a> {
    pub(super) app: &'a App,
}

impl Outbox<'_> {
    /// The newest `limit` entries `user` may see, with `status` when given.
    pub fn list(&self, user: &User, status: Option<Delivery>, limit: usize) -> Result<Vec<(u64, OutboxEntry)>> {
        let own: Option<HashSet<String>> = match user.role {
            Role::Owner => None,
            Role::Staff | Role::Removed => Some(self.app.tasks().list(user)?.into_iter().map(|t| t.name).collect()),
        };
        self.app.audit(&user.name, "outbox.read", "outbox", None)?;
        Ok(notify::outbox_newest(&*self.app.store, limit, |e| {
            status.is_none_or(|s| e.status == s) && own.as_ref().is_none_or(|o| o.contains(&e.task))
        })?)
    }

    /// Purges sent and failed emails older than `[email] retention_days`
    /// (pending ones stay until they are sent or fail); how many went.
    pub(super) fn purge(&self, now: chrono::DateTime<chrono::Utc>) -> Result<usize> {
        let cutoff = now - chrono::Duration::days(i64::from(self.app.config.email.retention_days));
        let store = &self.app.store;
        let mut purged = 0;
        let mut after = None;
        // Ids grow with time: the scan stops at the first entry too young.
        'scan: loop {
            let page = store.outbox(after, 256)?;
            let Some((last, _)) = page.last() else { break };
            after = Some(*last);
            for (id, entry) in page {
                if entry.created >= cutoff {
                    break 'scan;
                }
                if entry.status != notify::Delivery::Pending {
                    store.remove_outbox(id)?;
                    notify::tally::removed(entry.status);
                    purged += 1;
                }
            }
        }
        if purged > 0 {
            store.flush()?;
            tracing::info!(purged, "Retention purged old emails from the outbox.");
        }
        Ok(purged)
    }

    /// The mailer for the `[email]` settings, with the SMTP password from
    /// the stored secrets; none when no SMTP server is set.
    pub fn mailer(&self) -> Result<Option<Mailer>> {
        let email = &self.app.config.email;
        let password = match &email.password_secret {
            Some(name) => {
                let secret = self.app.users().secret(name)?;
                let text = String::from_utf8(secret)
                    .map_err(|_| Error::Invalid(format!("the SMTP password secret `{name}` is not UTF-8 text")))?;
                Some(text.trim().to_string())
            }
            None => None,
        };
        Mailer::new(email, password).map_err(|e| Error::Invalid(e.to_string()))
    }

    /// Sends due emails through `mailer` until `stop` is set: the service's
    /// sender thread.
    pub fn serve(&self, mailer: &Mailer, stop: &std::sync::atomic::AtomicBool) {
        mailer.serve(&*self.app.store, stop, std::time::Duration::from_secs(1));
    }

    /// Sends the emails due now (the account owner only).
    pub fn send_due(&self, user: &User) -> Result<Delivered> {
        owner_only(user, "send the outbox")?;
        let Some(mailer) = self.mailer()? else {
            let config = match self.app.data_dir() {
                Some(d) => d.join("schoolbell.toml").display().to_string(),
                None => "schoolbell.toml".into(),
            };
            return Err(Error::Invalid(format!(
                "no SMTP server is set: add smtp_host (and from, tls) under [email] in {config}"
            )));
        };
        mailer.deliver_due(&*self.app.store, self.app.now()).map_err(|e| Error::Failed(e.to_string()))
    }
}
