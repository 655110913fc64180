//! SMB sources: a folder on a Windows or Samba share, with a domain user
//! and a password from a stored secret, through Samba's own client library
//! (Debian's `libsmbclient`, by way of `pavao`).
//!
//! libsmbclient keeps process-wide state, so pavao runs one SMB call at a
//! time across the process; pickup is a listing and a few downloads, so
//! that costs nothing that matters. It is never allowed to fall back to an
//! anonymous (guest) login: a wrong password is an error, not an empty
//! folder.

use std::io::Write;

use pavao::{SmbClient, SmbCredentials, SmbError, SmbOpenOptions, SmbOptions};

use super::Error;
use super::remote::{Remote, reach};

/// Where an SMB source points, as the account owner defined it.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Share {
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) share: String,
    /// The folder inside the share, `/` for its top.
    pub(super) folder: String,
    pub(super) domain: Option<String>,
    pub(super) user: String,
    /// The source's name, for messages.
    pub(super) source: String,
}

impl Share {
    pub(super) fn shown(&self) -> String {
        let user = match &self.domain {
            Some(d) => format!("{d}\\{}", self.user),
            None => self.user.clone(),
        };
        format!("source `{}` (smb://{user}@{}:{}/{}{})", self.source, self.host, self.port, self.share, self.folder)
    }

    /// A path inside the share, as pavao takes it.
    fn path(&self, name: &str) -> String {
        let folder = self.folder.trim_end_matches('/');
        if name.is_empty() { format!("{folder}/") } else { format!("{folder}/{name}") }
    }
}

/// An open, logged-in SMB session on the share.
pub(super) struct Conn {
    client: SmbClient,
    share: Share,
}

/// What the library's error says, in words, for the cases people can act on.
fn said(e: &SmbError) -> String {
    match e {
        SmbError::Io(io) => match io.kind() {
            std::io::ErrorKind::NotFound => "not found".into(),
            std::io::ErrorKind::PermissionDenied => "permission denied".into(),
            _ => io.to_string(),
        },
        e => e.to_string(),
    }
}

/// EACCES or EPERM: libsmbclient's word for a refused logon or access.
fn denied(e: &SmbError) -> bool {
    matches!(e, SmbError::Io(io) if io.kind() == std::io::ErrorKind::PermissionDenied)
}

fn missing(e: &SmbError) -> bool {
    matches!(e, SmbError::Io(io) if io.kind() == std::io::ErrorKind::NotFound)
}

impl Conn {
    /// Connects, logs in and checks the share and the folder; each failure
    /// says which step failed.
    pub(super) fn connect(share: &Share, password: &str) -> Result<Conn, Error> {
        let shown = share.shown();
        // The library says little about the network; reaching the server
        // first says which of DNS and TCP failed, if one did.
        drop(reach(&shown, &share.source, &share.host, share.port)?);
        let mut credentials = SmbCredentials::default()
            .server(format!("smb://{}:{}", share.host, share.port))
            .share(format!("/{}", share.share))
            .username(&share.user)
            .password(password);
        if let Some(domain) = &share.domain {
            credentials = credentials.workgroup(domain);
        }
        // SMB3 at least: SMB1 and SMB2 lack the integrity a district's
        // student files need between the filer and this host.
        let options = SmbOptions::default()
            .no_auto_anonymous_login(true)
            .case_sensitive(true)
            .min_protocol(pavao::SmbDialect::Smb300);
        let client = SmbClient::new(credentials, options)
            .map_err(|e| Error::Remote(format!("{shown}: cannot start the SMB client: {e}")))?;
        // The share's top first: a refusal there is the login, not the folder.
        client.stat("/").map_err(|e| {
            tracing::warn!(source = %share.source, error = %e, "An SMB share could not be opened.");
            if denied(&e) {
                Error::Remote(format!(
                    "{shown}: the server refused the user name or password, or the user may not use share `{}` (check the domain, the user, and the secret's password)",
                    share.share
                ))
            } else if missing(&e) {
                Error::Remote(format!("{shown}: the server has no share named `{}`", share.share))
            } else {
                Error::Remote(format!(
                    "{shown}: cannot open the share: {} (this host speaks SMB3 or later only: check that the server offers it)",
                    said(&e)
                ))
            }
        })?;
        let folder = client.stat(share.path("")).map_err(|e| {
            Error::Remote(if missing(&e) {
                format!("{shown}: the folder does not exist in the share")
            } else {
                format!("{shown}: cannot open the folder: {}", said(&e))
            })
        })?;
        if !folder.mode.is_dir() {
            return Err(Error::Remote(format!("{shown}: the folder is a file, not a folder")));
        }
        Ok(Conn { client, share: share.clone() })
    }

    fn failed(&self, name: &str, what: &str, e: &SmbError) -> Error {
        let file = if name.is_empty() { String::new() } else { format!("/{name}") };
        Error::Remote(format!("{}{file}: {what}: {}", self.share.shown(), said(e)))
    }
}

impl Remote for Conn {
    fn shown(&self) -> String {
        self.share.shown()
    }

    fn list(&mut self, prefix: &str) -> Result<Vec<(String, u64)>, Error> {
        let entries =
            self.client.list_dirplus(self.share.path("")).map_err(|e| self.failed("", "cannot list the folder", &e))?;
        let mut out: Vec<(String, u64)> = entries
            .into_iter()
            .filter(|e| e.get_type() == pavao::SmbDirentType::File)
            .filter(|e| e.name().starts_with(prefix) && !e.name().starts_with("P_"))
            .map(|e| (e.name().to_string(), e.size))
            .collect();
        out.sort();
        Ok(out)
    }

    fn read_into(&mut self, name: &str, to: &mut dyn Write) -> Result<(), Error> {
        let mut file = self
            .client
            .open_with(self.share.path(name), SmbOpenOptions::default().read(true))
            .map_err(|e| self.failed(name, "cannot open", &e))?;
        std::io::copy(&mut file, to)
            .map(drop)
            .map_err(|e| Error::Remote(format!("{}/{name}: cannot download: {e}", self.share.shown())))
    }

    fn rename(&mut self, from: &str, to: &str) -> Result<(), Error> {
        self.client
            .rename(self.share.path(from), self.share.path(to))
            .map_err(|e| self.failed(from, &format!("cannot rename to {to}"), &e))
    }

    fn create(&mut self, name: &str) -> Result<(), Error> {
        let options = SmbOpenOptions::default().write(true).create(true).exclusive(true).mode(0o600);
        self.client
            .open_with(self.share.path(name), options)
            .map(drop)
            .map_err(|e| self.failed(name, "cannot create", &e))
    }

    fn remove(&mut self, name: &str) -> Result<(), Error> {
        self.client.unlink(self.share.path(name)).map_err(|e| self.failed(name, "cannot remove", &e))
    }
}
