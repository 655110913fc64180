//! Import sources: the account owner defines, tests, accepts and removes
//! them; tasks refer to them by name. Only the owner may see them, since
//! they say where the district's files live.

use super::{App, Error, Result, owner_only};
use crate::imports;
use crate::sources::{Location, Source};
use crate::users::User;

/// The sources service.
pub struct Sources<'a> {
    pub(super) app: &'a App,
}

impl Sources<'_> {
    fn get(&self, name: &str) -> Result<Source> {
        self.app.store.source(name)?.ok_or_else(|| {
            Error::NotFound(format!("no source named `{name}`; `schoolbell source list` shows the sources"))
        })
    }

    /// Every source (the account owner only).
    pub fn list(&self, by: &User) -> Result<Vec<Source>> {
        owner_only(by, "see import sources")?;
        Ok(self.app.store.all_sources()?)
    }

    /// One source (the account owner only).
    pub fn show(&self, by: &User, name: &str) -> Result<Source> {
        owner_only(by, "see import sources")?;
        self.get(name)
    }

    /// Defines a new source (the account owner only). An SFTP source's host
    /// key is accepted separately, after `test` shows it.
    pub fn add(&self, by: &User, name: &str, location: Location) -> Result<Source> {
        owner_only(by, "define import sources")?;
        let app = self.app;
        if app.store.source(name)?.is_some() {
            return Err(Error::Conflict(format!(
                "a source named `{name}` exists; remove it first or pick another name"
            )));
        }
        let source = Source { name: name.into(), location, created_by: by.name.clone(), created_at: app.now() };
        source.check(&app.config.sandbox.folders).map_err(|e| Error::Invalid(e.to_string()))?;
        app.store.put_source(&source)?;
        app.store.flush()?;
        app.audit(&by.name, "source.add", name, Some(source.shown()))?;
        tracing::info!(source = %name, by = %by.name, "Source defined.");
        Ok(source)
    }

    /// Removes a source (the account owner only); refused while a task uses it.
    pub fn remove(&self, by: &User, name: &str) -> Result<()> {
        owner_only(by, "remove import sources")?;
        let app = self.app;
        self.get(name)?;
        let users: Vec<String> = app
            .store
            .all_tasks()?
            .into_iter()
            .filter(|t| t.import.as_ref().is_some_and(|i| i.source == name))
            .map(|t| t.name)
            .collect();
        if !users.is_empty() {
            return Err(Error::Conflict(format!(
                "source `{name}` is used by task(s) {}; remove them first",
                users.join(", ")
            )));
        }
        app.store.remove_source(name)?;
        app.store.flush()?;
        app.audit(&by.name, "source.remove", name, None)?;
        tracing::info!(source = %name, by = %by.name, "Source removed.");
        Ok(())
    }

    /// Reaches a source: an SFTP server's host key fingerprint, whether it
    /// is the accepted one, and what files it holds (the account owner only).
    pub fn test(&self, by: &User, name: &str, prefix: &str) -> Result<imports::Reached> {
        owner_only(by, "test import sources")?;
        let source = self.get(name)?;
        imports::test_source(&*self.app.store, &source, prefix, self.app.access())
            .map_err(|e| Error::Invalid(e.to_string()))
    }

    /// Accepts an SFTP server's host key, or pins an FTPS server's
    /// certificate, as `test` showed it (the account owner only). From then
    /// on a server with another key or certificate is refused.
    pub fn accept(&self, by: &User, name: &str, fingerprint: &str) -> Result<Source> {
        owner_only(by, "accept a server's host key or certificate")?;
        let app = self.app;
        let mut source = self.get(name)?;
        match &mut source.location {
            Location::Sftp { host_key, .. } => *host_key = Some(fingerprint.trim().to_string()),
            Location::Ftps { certificate, .. } => {
                let pin = imports::normalize_fingerprint(fingerprint).ok_or_else(|| {
                    Error::Invalid(format!(
                        "`{}` is not a certificate fingerprint: write SHA256:AB:CD:… (64 hex digits), as `schoolbell source test {name}` or `openssl x509 -fingerprint -sha256` shows it",
                        fingerprint.trim()
                    ))
                })?;
                *certificate = Some(pin);
            }
            Location::Folder { .. } | Location::Smb { .. } => {
                return Err(Error::Invalid(format!(
                    "source `{name}` has no host key or certificate to accept: only SFTP and FTPS sources do"
                )));
            }
        }
        source.check(&app.config.sandbox.folders).map_err(|e| Error::Invalid(e.to_string()))?;
        app.store.put_source(&source)?;
        app.store.flush()?;
        app.audit(&by.name, "source.accept", name, Some(fingerprint.trim().to_string()))?;
        tracing::info!(source = %name, by = %by.name, key = %fingerprint, "Host key accepted.");
        Ok(source)
    }
}
