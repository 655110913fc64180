//! Import sources: the places import tasks pick files up from. The
//! account owner defines each one by name, and a task refers to it by that
//! name, so nothing a staff user or a plugin supplies ever becomes a server
//! path or a network address.
//!
//! A source is a folder the district set up under `[sandbox.folders]` (or
//! a subfolder of one); an SFTP server with its host, port, folder, stored
//! credential and the SHA-256 fingerprint of its host key, which the owner
//! accepts after `source test` shows it; an FTPS server, whose certificate
//! the system's roots or a fingerprint pinned by the owner vouch for; or an
//! SMB share with its domain user.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A named import source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Source {
    /// Its name, which tasks use.
    pub name: String,
    /// Where it is.
    pub location: Location,
    /// Who defined it.
    pub created_by: String,
    /// When.
    pub created_at: DateTime<Utc>,
}

/// Where a source is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Location {
    /// A folder set up under `[sandbox.folders]`, or a subfolder of it.
    Folder {
        /// The folder's name in `[sandbox.folders]`.
        folder: String,
        /// A subfolder inside it (relative, without `..`).
        #[serde(default)]
        path: Option<String>,
    },
    /// A folder on an SFTP server.
    Sftp {
        /// Host name or address.
        host: String,
        /// Port.
        port: u16,
        /// Login name.
        user: String,
        /// The folder on the server.
        path: String,
        /// The stored secret holding the private key.
        credential: String,
        /// The server's accepted host key, `SHA256:` and base64, as
        /// `source test` shows it; none until the owner accepts one.
        #[serde(default)]
        host_key: Option<String>,
    },
    /// A folder on an FTPS server (FTP over TLS, passive mode).
    Ftps {
        /// Host name or address.
        host: String,
        /// Port: by default 990 for implicit TLS, 21 for explicit.
        #[serde(default)]
        port: Option<u16>,
        /// TLS from the first byte (implicit), or `AUTH TLS` after the
        /// greeting (explicit).
        #[serde(default)]
        tls: FtpsTls,
        /// Login name.
        user: String,
        /// The folder on the server.
        path: String,
        /// The stored secret holding the password.
        credential: String,
        /// A pinned certificate, `SHA256:` and colon-separated hex (as
        /// `openssl x509 -fingerprint -sha256` prints it), for a server
        /// whose certificate no system root vouches for; none to verify
        /// against the system's roots.
        #[serde(default)]
        certificate: Option<String>,
    },
    /// A folder on an SMB (Windows) share.
    Smb {
        /// Host name or address.
        host: String,
        /// Port.
        #[serde(default = "smb_port")]
        port: u16,
        /// The share's name.
        share: String,
        /// The folder inside the share (`/` for its top).
        #[serde(default = "top")]
        path: String,
        /// The user's domain (`DOMAIN\user`), if any.
        #[serde(default)]
        domain: Option<String>,
        /// Login name.
        user: String,
        /// The stored secret holding the password.
        credential: String,
    },
}

/// How an FTPS server starts TLS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum FtpsTls {
    /// TLS from the first byte, on port 990.
    #[default]
    Implicit,
    /// `AUTH TLS` after a plain greeting, on port 21.
    Explicit,
}

impl FtpsTls {
    /// The port servers listen on for it.
    pub fn default_port(self) -> u16 {
        match self {
            FtpsTls::Implicit => 990,
            FtpsTls::Explicit => 21,
        }
    }
}

fn smb_port() -> u16 {
    445
}

fn top() -> String {
    "/".into()
}

/// What is wrong with a source.
#[derive(Debug, thiserror::Error)]
pub enum Invalid {
    /// The name cannot be used.
    #[error("source name `{0}`: use letters, digits, `-` and `_` (at most 64)")]
    Name(String),
    /// The folder is not one the district set up.
    #[error(
        "source `{source_name}`: no folder `{folder}` under [sandbox.folders] in schoolbell.toml; the folders are: {known}"
    )]
    UnknownFolder {
        /// The source.
        source_name: String,
        /// The folder asked for.
        folder: String,
        /// The folders there are.
        known: String,
    },
    /// The subfolder leaves its folder.
    #[error("source `{source_name}`: the subfolder `{path}` must be relative and stay inside its folder (no `..`)")]
    Escapes {
        /// The source.
        source_name: String,
        /// The subfolder asked for.
        path: String,
    },
    /// A field is empty or malformed.
    #[error("source `{source_name}`: {message}")]
    Field {
        /// The source.
        source_name: String,
        /// What is wrong.
        message: String,
    },
}

impl Source {
    /// Checks a source against the district's folders before it is saved.
    pub fn check(&self, folders: &BTreeMap<String, PathBuf>) -> Result<(), Invalid> {
        let ok = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
        if self.name.is_empty() || self.name.len() > 64 || !self.name.chars().all(ok) {
            return Err(Invalid::Name(self.name.clone()));
        }
        let field = |message: &str| Invalid::Field { source_name: self.name.clone(), message: message.into() };
        let remote_fields = |host: &str, user: &str, path: &str, credential: &str, what: &str| {
            if host.is_empty() || host.contains(['/', '@', ' ']) {
                return Err(field("the host must be a host name or address"));
            }
            if user.is_empty() {
                return Err(field("the user is empty"));
            }
            if !path.starts_with('/') {
                return Err(field("the server folder must be an absolute path, such as /exports"));
            }
            if credential.is_empty() {
                return Err(field(&format!("a remote source needs a credential: a stored secret with {what}")));
            }
            Ok(())
        };
        match &self.location {
            Location::Folder { folder, path } => {
                if !folders.contains_key(folder) {
                    let known: Vec<&str> = folders.keys().map(String::as_str).collect();
                    return Err(Invalid::UnknownFolder {
                        source_name: self.name.clone(),
                        folder: folder.clone(),
                        known: if known.is_empty() { "none yet".into() } else { known.join(", ") },
                    });
                }
                if let Some(p) = path
                    && !Path::new(p).components().all(|c| matches!(c, Component::Normal(_)))
                {
                    return Err(Invalid::Escapes { source_name: self.name.clone(), path: p.clone() });
                }
            }
            Location::Sftp { host, user, path, credential, host_key, .. } => {
                remote_fields(host, user, path, credential, "the private key")?;
                if host_key.as_deref().is_some_and(|k| !k.starts_with("SHA256:")) {
                    return Err(field("a host key is written SHA256:base64, as `schoolbell source test` shows it"));
                }
            }
            Location::Ftps { host, user, path, credential, certificate, .. } => {
                remote_fields(host, user, path, credential, "the password")?;
                if certificate
                    .as_deref()
                    .is_some_and(|c| crate::imports::normalize_fingerprint(c).as_deref() != Some(c))
                {
                    return Err(field(
                        "a pinned certificate is written SHA256:AB:CD:… (64 hex digits), as `openssl x509 -fingerprint -sha256` prints it",
                    ));
                }
            }
            Location::Smb { host, share, path, domain, user, credential, .. } => {
                remote_fields(host, user, path, credential, "the password")?;
                if share.is_empty() || share.contains(['/', '\\']) {
                    return Err(field("the share is its name alone, such as `exports`"));
                }
                if path.split('/').any(|p| p == "..") {
                    return Err(field("the folder must stay inside the share (no `..`)"));
                }
                if domain.as_deref().is_some_and(|d| d.is_empty() || d.contains(['\\', '/', '@'])) {
                    return Err(field("the domain is its name alone, such as `DISTRICT`"));
                }
            }
        }
        Ok(())
    }

    /// Where it is, for people: a folder source shows its folder's name,
    /// never the server path behind it.
    pub fn shown(&self) -> String {
        match &self.location {
            Location::Folder { folder, path: None } => format!("folder {folder}"),
            Location::Folder { folder, path: Some(p) } => format!("folder {folder}/{p}"),
            Location::Sftp { host, port, user, path, .. } => format!("sftp://{user}@{host}:{port}{path}"),
            Location::Ftps { host, port, tls, user, path, .. } => {
                format!("ftps://{user}@{host}:{}{path}", port.unwrap_or(tls.default_port()))
            }
            Location::Smb { host, port, share, path, domain: Some(d), user, .. } => {
                format!("smb://{d}\\{user}@{host}:{port}/{share}{path}")
            }
            Location::Smb { host, port, share, path, user, .. } => format!("smb://{user}@{host}:{port}/{share}{path}"),
        }
    }

    /// The local folder of a folder source, resolved against the district's
    /// folders; `None` for a remote source. The resolved folder must stay
    /// inside its root even through symbolic links.
    pub fn local_folder(&self, folders: &BTreeMap<String, PathBuf>) -> Option<Result<PathBuf, Invalid>> {
        let Location::Folder { folder, path } = &self.location else { return None };
        Some(self.check(folders).and_then(|()| {
            let root = &folders[folder];
            let Some(p) = path else { return Ok(root.clone()) };
            let joined = root.join(p);
            // A folder that does not exist yet cannot escape; pickup says it is missing.
            match (joined.canonicalize(), root.canonicalize()) {
                (Ok(real), Ok(real_root)) if !real.starts_with(&real_root) => {
                    Err(Invalid::Escapes { source_name: self.name.clone(), path: p.clone() })
                }
                _ => Ok(joined),
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folders(dir: &Path) -> BTreeMap<String, PathBuf> {
        BTreeMap::from([("batch".to_string(), dir.to_path_buf())])
    }

    fn folder(name: &str, folder: &str, path: Option<&str>) -> Source {
        Source {
            name: name.into(),
            location: Location::Folder { folder: folder.into(), path: path.map(Into::into) },
            created_by: "admin".into(),
            created_at: DateTime::<Utc>::MIN_UTC,
        }
    }

    #[test]
    fn a_folder_source_names_a_district_folder() {
        let dir = tempfile::tempdir().unwrap();
        let f = folders(dir.path());
        folder("sis", "batch", Some("rosters")).check(&f).unwrap();
        let e = folder("sis", "etc", None).check(&f).unwrap_err().to_string();
        assert!(e.contains("no folder `etc` under [sandbox.folders]") && e.contains("batch"), "{e}");
    }

    #[test]
    fn a_subfolder_cannot_leave_its_folder() {
        let dir = tempfile::tempdir().unwrap();
        let f = folders(&dir.path().join("batch"));
        std::fs::create_dir_all(dir.path().join("batch")).unwrap();
        for bad in ["../x", "/etc", "a/../../b"] {
            let e = folder("sis", "batch", Some(bad)).check(&f).unwrap_err().to_string();
            assert!(e.contains("must be relative and stay inside"), "{bad}: {e}");
        }
        std::os::unix::fs::symlink("/etc", dir.path().join("batch/link")).unwrap();
        let e = folder("sis", "batch", Some("link")).local_folder(&f).unwrap().unwrap_err().to_string();
        assert!(e.contains("stay inside"), "{e}");
    }

    #[test]
    fn names_are_plain() {
        let dir = tempfile::tempdir().unwrap();
        let e = folder("../sis", "batch", None).check(&folders(dir.path())).unwrap_err().to_string();
        assert!(e.contains("use letters, digits"), "{e}");
    }
}
