//! SFTP sources: `sftp://user@host:port/folder`, with key authentication
//! from a stored (encrypted) secret. Files are listed by prefix, downloaded
//! to the data directory's staging folder once their size holds still, and
//! renamed on the server only after the import's commit is durable.

use std::io::Read;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use super::Error;

/// Where an SFTP source points.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Remote {
    /// Login name.
    pub(super) user: String,
    /// Host name or address.
    pub(super) host: String,
    /// Port (default 22).
    pub(super) port: u16,
    /// The folder on the server.
    pub(super) folder: String,
}

impl Remote {
    /// Parses `sftp://user@host[:port]/folder`.
    pub(super) fn parse(url: &str) -> Result<Remote, Error> {
        let bad = |m: &str| Error::Target(format!("source `{url}`: {m}; write sftp://user@host:port/folder"));
        let rest = url.strip_prefix("sftp://").ok_or_else(|| bad("not an sftp:// address"))?;
        let (authority, folder) = rest.split_once('/').ok_or_else(|| bad("no folder"))?;
        let (user, hostport) = authority.split_once('@').ok_or_else(|| bad("no user"))?;
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().map_err(|_| bad("the port is not a number"))?),
            None => (hostport, 22),
        };
        if user.is_empty() || host.is_empty() {
            return Err(bad("the user or host is empty"));
        }
        Ok(Remote { user: user.into(), host: host.into(), port, folder: format!("/{folder}") })
    }

    fn shown(&self) -> String {
        format!("sftp://{}@{}:{}{}", self.user, self.host, self.port, self.folder)
    }
}

/// An open SFTP session.
pub(super) struct Conn {
    sftp: ssh2::Sftp,
    _session: ssh2::Session,
    remote: Remote,
}

impl Conn {
    /// Connects and authenticates with the private key `key_pem`.
    pub(super) fn connect(remote: &Remote, key_pem: &str) -> Result<Conn, Error> {
        let fail = |what: &str, e: &dyn std::fmt::Display| Error::Remote(format!("{}: {what}: {e}", remote.shown()));
        let addr = (remote.host.as_str(), remote.port)
            .to_socket_addrs()
            .map_err(|e| fail("cannot resolve the host", &e))?
            .next()
            .ok_or_else(|| fail("cannot resolve the host", &"no address"))?;
        let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).map_err(|e| fail("cannot connect", &e))?;
        let mut session = ssh2::Session::new().map_err(|e| fail("cannot start SSH", &e))?;
        session.set_timeout(30_000);
        session.set_tcp_stream(tcp);
        session.handshake().map_err(|e| fail("SSH handshake failed", &e))?;
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

    /// Copies a remote file to `to`; returns its size.
    pub(super) fn download(&self, name: &str, to: &Path) -> Result<u64, Error> {
        let fail =
            |e: &dyn std::fmt::Display| Error::Remote(format!("{}/{name}: cannot download: {e}", self.remote.shown()));
        let mut remote = self.sftp.open(self.path(name)).map_err(|e| fail(&e))?;
        let mut local = std::fs::File::create(to).map_err(|e| fail(&e))?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        loop {
            let n = remote.read(&mut buf).map_err(|e| fail(&e))?;
            if n == 0 {
                break;
            }
            std::io::Write::write_all(&mut local, &buf[..n]).map_err(|e| fail(&e))?;
            total += n as u64;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_with_and_without_a_port() {
        assert_eq!(
            Remote::parse("sftp://sis@files.district.org/exports/daily").unwrap(),
            Remote { user: "sis".into(), host: "files.district.org".into(), port: 22, folder: "/exports/daily".into() }
        );
        assert_eq!(Remote::parse("sftp://a@127.0.0.1:2222/x").unwrap().port, 2222);
        let e = Remote::parse("sftp://files.district.org/x").unwrap_err().to_string();
        assert!(e.contains("no user; write sftp://user@host:port/folder"), "{e}");
    }
}
