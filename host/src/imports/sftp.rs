//! SFTP sources: `sftp://user@host:port/folder`, with key authentication
//! from a stored (encrypted) secret. Files are listed by prefix, downloaded
//! to the data directory's staging folder once their size holds still, and
//! renamed on the server only after the import's commit is durable.

use std::path::Path;

use super::Error;

/// Where an SFTP source points, as the account owner defined it.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Remote {
    /// Login name.
    pub(super) user: String,
    /// Host name or address.
    pub(super) host: String,
    /// Port.
    pub(super) port: u16,
    /// The folder on the server.
    pub(super) folder: String,
    /// The accepted host key fingerprint (`SHA256:` and base64).
    pub(super) host_key: Option<String>,
    /// The source's name, for messages.
    pub(super) source: String,
}

impl Remote {
    fn shown(&self) -> String {
        format!("source `{}` (sftp://{}@{}:{}{})", self.source, self.user, self.host, self.port, self.folder)
    }

    /// Connects and completes the SSH handshake, without logging in.
    fn handshake(&self) -> Result<ssh2::Session, Error> {
        let shown = self.shown();
        let tcp = super::remote::reach(&shown, &self.source, &self.host, self.port)?;
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            tracing::warn!(source = %self.source, error = %e, "{what}");
            Error::Remote(format!("{shown}: {what}"))
        };
        let mut session = ssh2::Session::new().map_err(|e| fail("cannot start SSH", &e))?;
        session.set_timeout(super::remote::IO_TIMEOUT.as_millis() as u32);
        session.set_tcp_stream(tcp);
        session.handshake().map_err(|e| fail("the SSH handshake failed (is it an SSH server?)", &e))?;
        Ok(session)
    }
}

/// The SHA-256 fingerprint of a server's host key, as OpenSSH writes it.
fn fingerprint(session: &ssh2::Session) -> Option<String> {
    use base64::Engine;
    let hash = session.host_key_hash(ssh2::HashType::Sha256)?;
    Some(format!("SHA256:{}", base64::engine::general_purpose::STANDARD_NO_PAD.encode(hash)))
}

/// The host key the server presents now.
pub(super) fn host_key(remote: &Remote) -> Result<String, Error> {
    let session = remote.handshake()?;
    fingerprint(&session).ok_or_else(|| Error::Remote(format!("{}: the server sent no host key", remote.shown())))
}

/// An open SFTP session.
pub(super) struct Conn {
    sftp: ssh2::Sftp,
    _session: ssh2::Session,
    remote: Remote,
}

impl Conn {
    /// Connects and authenticates with the private key `key_pem`.
    /// The server's host key must be the accepted one: otherwise nothing
    /// is sent to it, the key least of all.
    pub(super) fn connect(remote: &Remote, key_pem: &str) -> Result<Conn, Error> {
        let fail = |what: &str, e: &dyn std::fmt::Display| Error::Remote(format!("{}: {what}: {e}", remote.shown()));
        let session = remote.handshake()?;
        let seen = fingerprint(&session);
        match (&remote.host_key, &seen) {
            (None, _) => {
                return Err(Error::Remote(format!(
                    "{}: its host key is not accepted yet; `schoolbell source test {}` shows it",
                    remote.shown(),
                    remote.source
                )));
            }
            (Some(accepted), Some(seen)) if accepted == seen => {}
            (Some(accepted), seen) => {
                return Err(Error::Remote(format!(
                    "{}: the server's host key is {}, not the accepted {accepted}; refusing to connect (the server was reinstalled, or someone is in between: ask its administrator)",
                    remote.shown(),
                    seen.as_deref().unwrap_or("missing")
                )));
            }
        }
        session
            .userauth_pubkey_memory(&remote.user, None, key_pem, None)
            .map_err(|e| fail("the server refused the key (check the user and the authorized key)", &e))?;
        let sftp = session.sftp().map_err(|e| fail("the server offers no SFTP", &e))?;
        Ok(Conn { sftp, _session: session, remote: remote.clone() })
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        Path::new(&self.remote.folder).join(name)
    }
}

impl super::remote::Remote for Conn {
    fn shown(&self) -> String {
        self.remote.shown()
    }

    fn list(&mut self, prefix: &str) -> Result<Vec<(String, u64)>, Error> {
        let entries = self.sftp.readdir(Path::new(&self.remote.folder)).map_err(|e| {
            let what = match e.code() {
                ssh2::ErrorCode::SFTP(2) => "the folder does not exist",
                ssh2::ErrorCode::SFTP(3) => "the user may not list the folder",
                _ => "cannot list the folder",
            };
            Error::Remote(format!("{}: {what} ({e})", self.remote.shown()))
        })?;
        let mut out: Vec<(String, u64)> = entries
            .into_iter()
            .filter(|(_, stat)| stat.is_file())
            .filter_map(|(path, stat)| {
                let name = path.file_name()?.to_string_lossy().into_owned();
                (name.starts_with(prefix) && !name.starts_with("P_")).then_some((name, stat.size.unwrap_or(0)))
            })
            .collect();
        out.sort();
        Ok(out)
    }

    fn read_into(&mut self, name: &str, to: &mut dyn std::io::Write) -> Result<(), Error> {
        let fail =
            |e: &dyn std::fmt::Display| Error::Remote(format!("{}/{name}: cannot download: {e}", self.remote.shown()));
        let mut remote = self.sftp.open(self.path(name)).map_err(|e| fail(&e))?;
        std::io::copy(&mut remote, to).map_err(|e| fail(&e))?;
        Ok(())
    }

    fn rename(&mut self, from: &str, to: &str) -> Result<(), Error> {
        self.sftp
            .rename(&self.path(from), &self.path(to), None)
            .map_err(|e| Error::Remote(format!("{}/{from}: cannot rename to {to}: {e}", self.remote.shown())))
    }

    fn create(&mut self, name: &str) -> Result<(), Error> {
        self.sftp
            .create(&self.path(name))
            .map(drop)
            .map_err(|e| Error::Remote(format!("{}/{name}: cannot create: {e}", self.remote.shown())))
    }

    fn remove(&mut self, name: &str) -> Result<(), Error> {
        self.sftp
            .unlink(&self.path(name))
            .map_err(|e| Error::Remote(format!("{}/{name}: cannot remove: {e}", self.remote.shown())))
    }
}
