//! What every source does for pickup, whatever it speaks: list a folder by
//! prefix, copy a file down, rename it once its import is durable. A local
//! folder, SFTP, FTPS and SMB each implement [`Remote`]; the pickup, the
//! settle check, the size cap, the staging copy and the rename probe are
//! written once, here.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Access, Error, Picked, PickedFile};

/// How long a server has to accept a connection.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connected server may stay silent.
pub(super) const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// One open connection to a source's folder.
pub(super) trait Remote {
    /// The source, for messages: its name and where it points, never a
    /// secret.
    fn shown(&self) -> String;

    /// A file of the folder, for messages.
    fn shown_file(&self, name: &str) -> String {
        format!("{}/{name}", self.shown())
    }

    /// Files in the folder whose names start with `prefix` (never `P_`
    /// ones, which are done), with their sizes, by name.
    fn list(&mut self, prefix: &str) -> Result<Vec<(String, u64)>, Error>;

    /// Writes a file's bytes to `to`.
    fn read_into(&mut self, name: &str, to: &mut dyn Write) -> Result<(), Error>;

    /// Renames a file in the folder.
    fn rename(&mut self, from: &str, to: &str) -> Result<(), Error>;

    /// Creates an empty file in the folder (the rename probe's).
    fn create(&mut self, name: &str) -> Result<(), Error>;

    /// Removes a file from the folder (the rename probe's).
    fn remove(&mut self, name: &str) -> Result<(), Error>;

    /// Where the file already is on this machine, for a local folder: it is
    /// read in place instead of copied.
    fn in_place(&self, name: &str) -> Option<PathBuf> {
        let _ = name;
        None
    }
}

/// Resolves and connects to `host:port`, saying which of the two failed.
/// Errors name the source, not what the network said about the address: a
/// source is the owner's, and its failures should not map the district's
/// internal hosts for whoever reads the run.
pub(super) fn reach(shown: &str, source: &str, host: &str, port: u16) -> Result<TcpStream, Error> {
    let addr = resolve(shown, source, host, port)?;
    let tcp = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).map_err(|e| {
        tracing::warn!(source, error = %e, "A source's server did not accept a connection.");
        let why = match e.kind() {
            std::io::ErrorKind::ConnectionRefused => "refused",
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => "timed out",
            _ => "failed",
        };
        Error::Remote(format!(
            "{shown}: cannot connect to port {port} ({why}): check the port, and that the server runs and lets this machine in"
        ))
    })?;
    tcp.set_read_timeout(Some(IO_TIMEOUT)).ok();
    tcp.set_write_timeout(Some(IO_TIMEOUT)).ok();
    Ok(tcp)
}

/// The first address of `host`.
fn resolve(shown: &str, source: &str, host: &str, port: u16) -> Result<SocketAddr, Error> {
    let unknown = |e: &dyn std::fmt::Display| {
        tracing::warn!(source, error = %e, "A source's host name did not resolve.");
        Error::Remote(format!("{shown}: cannot resolve the host name `{host}` (DNS): check its spelling"))
    };
    (host, port).to_socket_addrs().map_err(|e| unknown(&e))?.next().ok_or_else(|| unknown(&"no address"))
}

/// Picks up the first (by name) of the folder's files named `prefix*`
/// whose sizes held still for `settle`, copying it (or hashing it in place,
/// for a local folder); the others that held still are counted, not copied,
/// and each one still growing gets a note. A file larger than `[imports]
/// max_file_bytes` is refused, not read.
pub(super) fn pickup(
    conn: &mut dyn Remote,
    prefix: &str,
    settle: Duration,
    access: &Access,
    claim: &mut dyn FnMut(&str) -> Result<bool, Error>,
) -> Result<Picked, Error> {
    let mut picked = Picked::default();
    let (before, refused) = plain_names(conn.list(prefix)?);
    for name in refused {
        picked.skipped.push(format!(
            "{}: the server listed a file name that is not a plain name: {}; skipped",
            conn.shown(),
            name.escape_debug()
        ));
    }
    if !before.is_empty() && !settle.is_zero() {
        std::thread::sleep(settle);
    }
    let after: BTreeMap<String, u64> = plain_names(conn.list(prefix)?).0.into_iter().collect();
    for (name, size) in before {
        let in_place = conn.in_place(&name);
        let shown = in_place.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| conn.shown_file(&name));
        if after.get(&name) != Some(&size) {
            picked.notes.push(format!("{shown} is still being written; it is left for the next run"));
            continue;
        }
        if picked.file.is_some() {
            picked.more += 1;
            continue;
        }
        // Another host's run is importing it.
        if !claim(&name)? {
            continue;
        }
        access.check_size(&shown, size)?;
        if let Some(path) = in_place {
            let (hash, size) = super::hash_file(&path).map_err(|source| Error::Open { path: shown.clone(), source })?;
            picked.file = Some(PickedFile { path: shown, hash, size, remote: None });
            continue;
        }
        crate::secrets::private_dir(&access.staging)
            .map_err(|e| Error::Open { path: access.staging.display().to_string(), source: e })?;
        // The server's name stays data: the staged copy's name is the
        // host's own, so no listed name can point outside staging.
        let local = access.staging.join(staged_name(&conn.shown(), &name));
        download(conn, &name, &local, access.limits.max_file_bytes)?;
        let (hash, size) =
            super::hash_file(&local).map_err(|source| Error::Open { path: local.display().to_string(), source })?;
        picked.file = Some(PickedFile { path: local.display().to_string(), hash, size, remote: Some(name) });
    }
    Ok(picked)
}

/// Splits a listing into the files with plain names and the names that
/// are not plain. A server chooses what it lists; a name holding a path
/// separator, a control character or a dot segment would, joined onto a
/// local folder, reach outside it.
pub(super) fn plain_names(listed: Vec<(String, u64)>) -> (Vec<(String, u64)>, Vec<String>) {
    let mut plain = Vec::with_capacity(listed.len());
    let mut refused = Vec::new();
    for (name, size) in listed {
        if is_plain_file_name(&name) { plain.push((name, size)) } else { refused.push(name) }
    }
    (plain, refused)
}

/// A file name with no path in it: not empty, not `.` or `..`, and
/// without `/`, `\`, NUL or any other control character.
///
/// A plugin's file names in a granted folder are held to it too.
pub(crate) fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.chars().any(|c| c == '/' || c == '\\' || c.is_control())
}

/// The name a download is staged under: made by the host from the source
/// and the server's name (the same file gets the same name, so a retried
/// download replaces its own earlier copy and nothing else).
fn staged_name(source: &str, name: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::new().chain_update(source).chain_update([0x1f]).chain_update(name).finalize();
    format!("download-{}", hex::encode(&digest[..16]))
}

/// Copies a file of the folder to `to` (a new file only its owner may
/// read), stopping past `limit` bytes; a copy cut short is removed.
fn download(conn: &mut dyn Remote, name: &str, to: &Path, limit: u64) -> Result<u64, Error> {
    let shown = conn.shown_file(name);
    let fail = |e: &dyn std::fmt::Display| Error::Remote(format!("{shown}: cannot download: {e}"));
    let _ = std::fs::remove_file(to);
    let file = crate::secrets::private_file(to).map_err(|e| fail(&e))?;
    let mut capped = Capped { file, written: 0, limit };
    let copied = conn.read_into(name, &mut capped);
    let Capped { file, written, .. } = capped;
    let done = copied.and_then(|()| file.sync_all().map_err(|e| fail(&e)));
    match done {
        _ if written > limit => {
            let _ = std::fs::remove_file(to);
            Err(Error::TooLarge { file: shown, size: written, limit })
        }
        Err(e) => {
            let _ = std::fs::remove_file(to);
            Err(e)
        }
        Ok(()) => Ok(written),
    }
}

/// A file that refuses to grow past its limit.
struct Capped {
    file: std::fs::File,
    written: u64,
    limit: u64,
}

impl Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.written += buf.len() as u64;
        if self.written > self.limit {
            return Err(std::io::Error::other("the file is larger than [imports] max_file_bytes"));
        }
        self.file.write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// Checks that files can be renamed in the folder, as every import does
/// after its commit: creates a probe file, renames it and removes it. The
/// probe's names start with `P_`, which pickup never takes, so one left
/// behind by a dropped connection is harmless.
pub(super) fn probe_rename(conn: &mut dyn Remote) -> Result<(), Error> {
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ");
    let probe = format!("P_schoolbell-probe_{stamp}");
    let moved = format!("{probe}_renamed");
    let shown = conn.shown();
    let refused = |step: &str, e: Error| {
        Error::Remote(format!(
            "{shown}: no permission to rename files in the folder, which every import does to mark its file done ({step} a probe file: {}); ask the server's administrator for write access",
            e.to_string().rsplit(": ").next().unwrap_or_default()
        ))
    };
    conn.create(&probe).map_err(|e| refused("creating", e))?;
    if let Err(e) = conn.rename(&probe, &moved) {
        let _ = conn.remove(&probe);
        return Err(refused("renaming", e));
    }
    conn.remove(&moved).map_err(|e| refused("removing", e))
}

/// A folder on this machine, under `[sandbox.folders]`.
pub(super) struct Folder {
    pub(super) path: PathBuf,
    pub(super) shown: String,
}

impl Remote for Folder {
    fn shown(&self) -> String {
        self.shown.clone()
    }

    fn list(&mut self, prefix: &str) -> Result<Vec<(String, u64)>, Error> {
        let open_error = |e: std::io::Error| Error::Open { path: self.shown.clone(), source: e };
        let files = super::local_files(&self.path, prefix).map_err(open_error)?;
        Ok(files
            .into_iter()
            .filter_map(|p| {
                // A file gone between the listing and now is not listed.
                let size = std::fs::symlink_metadata(&p).ok()?.len();
                Some((p.file_name()?.to_string_lossy().into_owned(), size))
            })
            .collect())
    }

    fn read_into(&mut self, name: &str, to: &mut dyn Write) -> Result<(), Error> {
        let path = self.path.join(name);
        let shown = path.display().to_string();
        let mut file = std::fs::File::open(&path).map_err(|source| Error::Open { path: shown.clone(), source })?;
        std::io::copy(&mut file, to).map_err(|source| Error::Open { path: shown, source })?;
        Ok(())
    }

    fn rename(&mut self, from: &str, to: &str) -> Result<(), Error> {
        std::fs::rename(self.path.join(from), self.path.join(to))
            .map_err(|source| Error::Rename { file: self.shown_file(from), source })
    }

    fn create(&mut self, name: &str) -> Result<(), Error> {
        std::fs::File::create_new(self.path.join(name))
            .map(drop)
            .map_err(|source| Error::Open { path: self.shown_file(name), source })
    }

    fn remove(&mut self, name: &str) -> Result<(), Error> {
        std::fs::remove_file(self.path.join(name)).map_err(|source| Error::Open { path: self.shown_file(name), source })
    }

    fn in_place(&self, name: &str) -> Option<PathBuf> {
        Some(self.path.join(name))
    }
}
