//! SFTP sources: `sftp://user@host:port/folder`, with key authentication
//! from a stored (encrypted) secret. Files are listed by prefix, downloaded
//! to the data directory's staging folder once their size holds still, and
//! renamed on the server only after the import's commit is durable.

use std::io::Read;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

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
        // Errors name the source, not what the network said about the
        // address: a source is the owner's, and its failures should not
        // map the district's internal hosts for whoever reads the run.
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            tracing::warn!(source = %self.source, error = %e, "{what}");
            Error::Remote(format!("{}: {what}", self.shown()))
        };
        let addr = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| fail("cannot resolve the host", &e))?
            .next()
            .ok_or_else(|| fail("cannot resolve the host", &"no address"))?;
        let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).map_err(|e| fail("cannot connect", &e))?;
        let mut session = ssh2::Session::new().map_err(|e| fail("cannot start SSH", &e))?;
        session.set_timeout(30_000);
        session.set_tcp_stream(tcp);
        session.handshake().map_err(|e| fail("the SSH handshake failed", &e))?;
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

    /// Files in the folder whose names start with `prefix` (never `P_`
    /// ones), with their sizes, by name.
    pub(super) fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>, Error> {
        let entries = self
            .sftp
            .readdir(Path::new(&self.remote.folder))
            .map_err(|e| Error::Remote(format!("{}: cannot list the folder: {e}", self.remote.shown())))?;
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

    /// Copies a remote file to `to` (a new file only its owner may read),
    /// stopping past `limit` bytes; returns its size.
    pub(super) fn download(&self, name: &str, to: &Path, limit: u64) -> Result<u64, Error> {
        let fail =
            |e: &dyn std::fmt::Display| Error::Remote(format!("{}/{name}: cannot download: {e}", self.remote.shown()));
        let mut remote = self.sftp.open(self.path(name)).map_err(|e| fail(&e))?;
        let _ = std::fs::remove_file(to);
        let mut local = crate::secrets::private_file(to).map_err(|e| fail(&e))?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        loop {
            let n = remote.read(&mut buf).map_err(|e| fail(&e))?;
            if n == 0 {
                break;
            }
            std::io::Write::write_all(&mut local, &buf[..n]).map_err(|e| fail(&e))?;
            total += n as u64;
            if total > limit {
                drop(local);
                let _ = std::fs::remove_file(to);
                return Err(Error::TooLarge { file: format!("{}/{name}", self.remote.shown()), size: total, limit });
            }
        }
        local.sync_all().map_err(|e| fail(&e))?;
        Ok(total)
    }

    /// Renames a file in the folder.
    pub(super) fn rename(&self, from: &str, to: &str) -> Result<(), Error> {
        self.sftp
            .rename(&self.path(from), &self.path(to), None)
            .map_err(|e| Error::Remote(format!("{}/{from}: cannot rename to {to}: {e}", self.remote.shown())))
    }
}
