//! Secrets: credentials (SFTP keys) stored encrypted at rest and never
//! printed. Each is sealed with XChaCha20-Poly1305 under a key kept in the
//! data directory (`secret.key`, mode 0600) apart from the store, so a copy
//! of the store alone reveals nothing.

use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use crate::store::{self, Backend};

/// Errors about secrets. None of them includes a secret's value.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The key file cannot be read or made.
    #[error("the secrets key {}: {source}", path.display())]
    Key {
        /// The key file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Others may read the key file.
    #[error(
        "the secrets key {} may be read by others (mode {mode:o}): `chmod 600 {}`, and find out who may have copied it",
        path.display(),
        path.display()
    )]
    Exposed {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// No secret by that name.
    #[error("no secret named `{0}`; store one with `schoolbell secret set {0} --file PATH`")]
    Unknown(String),
    /// The secret does not decrypt: the key file is not the one it was sealed with.
    #[error("secret `{0}` cannot be decrypted with this data directory's secret.key; set it again")]
    Undecryptable(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] store::Error),
}

/// The secrets of one data directory.
pub struct Secrets {
    cipher: XChaCha20Poly1305,
    /// Keys for other purposes, each derived from the secrets key.
    approvals: zeroize::Zeroizing<[u8; 32]>,
}

impl Secrets {
    /// Opens the key at `path` (by default `secret.key` in the data
    /// directory), making it on first use. A key that others may read is
    /// refused: whoever reads it reads every secret.
    pub fn open(path: &Path) -> Result<Secrets, Error> {
        use std::os::unix::fs::PermissionsExt;
        let key_error = |source| Error::Key { path: path.to_path_buf(), source };
        let key = match std::fs::read(path) {
            Ok(k) => zeroize::Zeroizing::new(k),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut k = zeroize::Zeroizing::new(vec![0u8; 32]);
                getrandom::fill(&mut k).map_err(|e| key_error(std::io::Error::other(e.to_string())))?;
                write_private(path, &k).map_err(key_error)?;
                k
            }
            Err(e) => return Err(key_error(e)),
        };
        if key.len() != 32 {
            return Err(key_error(std::io::Error::other("it is not 32 bytes")));
        }
        let mode = std::fs::metadata(path).map_err(key_error)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(Error::Exposed { path: path.to_path_buf(), mode });
        }
        let cipher =
            XChaCha20Poly1305::new_from_slice(&key).map_err(|_| key_error(std::io::Error::other("bad key length")))?;
        let approvals = zeroize::Zeroizing::new(derive(&key, "schoolbell approval codes v1"));
        Ok(Secrets { cipher, approvals })
    }

    /// The key approval codes are MACed under.
    pub fn approval_key(&self) -> [u8; 32] {
        *self.approvals
    }

    /// Seals and stores a secret.
    pub fn set(&self, store: &dyn Backend, name: &str, value: &[u8]) -> Result<(), Error> {
        let mut nonce = [0u8; 24];
        getrandom::fill(&mut nonce)
            .map_err(|e| Error::Key { path: "secret.key".into(), source: std::io::Error::other(e.to_string()) })?;
        // The name is bound into the ciphertext: a sealed value copied
        // under another name does not open.
        let payload = Payload { msg: value, aad: name.as_bytes() };
        let sealed =
            self.cipher.encrypt(XNonce::from_slice(&nonce), payload).map_err(|_| Error::Undecryptable(name.into()))?;
        let mut stored = nonce.to_vec();
        stored.extend_from_slice(&sealed);
        store.put_secret(name, &stored)?;
        store.flush()?;
        Ok(())
    }

    /// A secret's value.
    pub fn get(&self, store: &dyn Backend, name: &str) -> Result<Vec<u8>, Error> {
        let stored = store.secret(name)?.ok_or_else(|| Error::Unknown(name.into()))?;
        if stored.len() < 24 {
            return Err(Error::Undecryptable(name.into()));
        }
        let (nonce, sealed) = stored.split_at(24);
        let nonce = XNonce::from_slice(nonce);
        if let Ok(value) = self.cipher.decrypt(nonce, Payload { msg: sealed, aad: name.as_bytes() }) {
            return Ok(value);
        }
        // Sealed before names were bound in: opened once more the old way,
        // and sealed again the new way.
        let value = self.cipher.decrypt(nonce, sealed).map_err(|_| Error::Undecryptable(name.into()))?;
        self.set(store, name, &value)?;
        Ok(value)
    }
}

/// HMAC-SHA-256 of `message` under `key`.
pub fn mac(key: &[u8], message: &[u8]) -> [u8; 32] {
    use hmac::Mac;
    // HMAC takes a key of any length.
    let mut m = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(message);
    m.finalize().into_bytes().into()
}

/// Whether `tag` is the HMAC-SHA-256 of `message` under `key`, compared
/// in constant time.
pub fn verify_mac(key: &[u8], message: &[u8], tag: &[u8]) -> bool {
    use hmac::Mac;
    let mut m = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(message);
    m.verify_slice(tag).is_ok()
}

/// A key for `purpose`, derived from the secrets key: one key file, a
/// separate key per use.
fn derive(key: &[u8], purpose: &str) -> [u8; 32] {
    mac(key, purpose.as_bytes())
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    private_file(path)?.write_all(bytes)
}

/// Creates a new file only its owner may read and write. It must not exist
/// yet, and a symbolic link planted at its name is not followed.
pub fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).custom_flags(libc_nofollow()).open(path)
}

/// `O_NOFOLLOW` on Linux; `create_new` already refuses an existing link,
/// this also covers a link that appears between checks.
const fn libc_nofollow() -> i32 {
    0o400000
}

/// Creates a folder (and its parents) that only its owner may enter, and
/// tightens an existing one.
pub fn private_dir(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    #[allow(unused_imports)]
    use crate::store::prelude::*;

    #[test]
    fn secrets_round_trip_and_are_not_stored_in_the_clear() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let secrets = Secrets::open(&dir.path().join("secret.key")).unwrap();
        let value = b"-----BEGIN OPENSSH PRIVATE KEY----- very secret";
        secrets.set(&store, "sftp", value).unwrap();
        assert_eq!(secrets.get(&store, "sftp").unwrap(), value);
        assert!(matches!(secrets.get(&store, "other"), Err(Error::Unknown(_))));
        // A sealed value moved under another name does not open.
        store.put_secret("moved", &store.secret("sftp").unwrap().unwrap()).unwrap();
        assert!(matches!(secrets.get(&store, "moved"), Err(Error::Undecryptable(_))));
        drop(store);
        let leaked = walk(&dir.path().join("store")).into_iter().any(|b| b.windows(11).any(|w| w == b"very secret"));
        assert!(!leaked, "the secret must not be on disk in the clear");
    }

    #[test]
    fn a_key_others_may_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.key");
        Secrets::open(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Secrets::open(&path).err().unwrap().to_string();
        assert!(e.contains("may be read by others (mode 644): `chmod 600"), "{e}");
    }

    fn walk(dir: &Path) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() { out.extend(walk(&p)) } else { out.push(std::fs::read(p).unwrap()) }
        }
        out
    }
}
