//! FTPS sources: FTP over TLS, implicit (port 990) or explicit (`AUTH
//! TLS`), in passive mode, with a user and a password from a stored secret.
//!
//! The server's certificate is verified against the system's roots, or,
//! for a server with a self-signed certificate, against the SHA-256
//! fingerprint the account owner pinned on the source. Nothing is ever
//! accepted unverified: the password goes only to a server that proved who
//! it is. Data connections go to the address the control connection
//! reached, whatever address the server's passive reply names.

use std::io::Write;
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use suppaftp::{FtpError, RustlsConnector, RustlsFtpStream, Status};

use super::Error;
use super::remote::{CONNECT_TIMEOUT, IO_TIMEOUT, Remote, reach};

/// Where an FTPS source points, as the account owner defined it.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Server {
    pub(super) host: String,
    pub(super) port: u16,
    /// TLS from the first byte (`true`), or `AUTH TLS` after the greeting.
    pub(super) implicit: bool,
    pub(super) user: String,
    /// The folder on the server.
    pub(super) folder: String,
    /// The pinned certificate fingerprint (`SHA256:` and colon-separated hex).
    pub(super) pin: Option<String>,
    /// The source's name, for messages.
    pub(super) source: String,
}

impl Server {
    pub(super) fn shown(&self) -> String {
        format!("source `{}` (ftps://{}@{}:{}{})", self.source, self.user, self.host, self.port, self.folder)
    }
}

/// The SHA-256 fingerprint of a certificate, as `openssl x509 -fingerprint
/// -sha256` prints it, after `SHA256:`.
pub(super) fn fingerprint(der: &[u8]) -> String {
    use sha2::Digest;
    let hex: Vec<String> = sha2::Sha256::digest(der).iter().map(|b| format!("{b:02X}")).collect();
    format!("SHA256:{}", hex.join(":"))
}

/// A fingerprint as people paste it (`SHA256:ab:cd…`, `sha256
/// Fingerprint=AB:CD…`, or bare hex), written the one way sources keep it.
pub fn normalize_fingerprint(text: &str) -> Option<String> {
    let text = text.trim();
    let bare = text.rsplit(['=', ' ']).next().unwrap_or(text);
    let bare = bare.strip_prefix("SHA256:").or_else(|| bare.strip_prefix("sha256:")).unwrap_or(bare);
    let hex: String = bare.chars().filter(|c| *c != ':').collect();
    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let bytes: Vec<String> =
        hex.to_ascii_uppercase().as_bytes().chunks(2).map(|c| String::from_utf8_lossy(c).into()).collect();
    Some(format!("SHA256:{}", bytes.join(":")))
}

/// What the verifier saw of the server's certificate, for the error that
/// follows a refused handshake.
#[derive(Debug, Default)]
struct Seen {
    fingerprint: Option<String>,
    refused: Option<String>,
}

/// Verifies against the pin when there is one, else against the system's
/// roots, and remembers what it saw.
#[derive(Debug)]
struct Verifier {
    pin: Option<String>,
    roots: Option<Arc<rustls::client::WebPkiServerVerifier>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    seen: Arc<Mutex<Seen>>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented = fingerprint(end_entity);
        let verdict = match (&self.pin, &self.roots) {
            (Some(pin), _) if *pin == presented => Ok(ServerCertVerified::assertion()),
            (Some(pin), _) => Err(format!("it is not the pinned certificate {pin}")),
            (None, Some(roots)) => roots
                .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
                .map_err(|e| untrusted(&e, server_name)),
            (None, None) => Err("this machine has no trusted root certificates".into()),
        };
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.fingerprint = Some(presented);
        verdict.map_err(|why| {
            seen.refused = Some(why);
            rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure)
        })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// Why the system's roots do not vouch for a certificate, in words.
fn untrusted(e: &rustls::Error, server_name: &ServerName<'_>) -> String {
    use rustls::CertificateError as C;
    let why = match e {
        rustls::Error::InvalidCertificate(C::UnknownIssuer | C::Other(_)) => {
            "no authority this machine trusts signed it (it is self-signed, or from a private authority)".to_string()
        }
        rustls::Error::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
            format!("it is not issued for {}", server_name.to_str())
        }
        rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => "it has expired".into(),
        rustls::Error::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => {
            "it is not valid yet".into()
        }
        e => e.to_string(),
    };
    format!("this machine's trusted roots do not vouch for it: {why}")
}

/// The system's trusted roots, read once.
fn system_roots() -> Option<Arc<rustls::RootCertStore>> {
    static ROOTS: std::sync::OnceLock<Option<Arc<rustls::RootCertStore>>> = std::sync::OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = rustls::RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            (added > 0).then(|| Arc::new(roots))
        })
        .clone()
}

/// An open, logged-in FTPS session in the source's folder.
pub(super) struct Conn {
    ftp: RustlsFtpStream,
    server: Server,
}

impl Conn {
    /// Connects, verifies the server's certificate, logs in and opens the
    /// folder; each failure says which step failed.
    pub(super) fn connect(server: &Server, password: &str) -> Result<Conn, Error> {
        let shown = server.shown();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = system_roots().and_then(|roots| {
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider.clone()).build().ok()
        });
        let seen = Arc::new(Mutex::new(Seen::default()));
        let verifier = Verifier { pin: server.pin.clone(), roots, provider: provider.clone(), seen: seen.clone() };
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Remote(format!("{shown}: cannot set up TLS: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        let connector = RustlsConnector::from(Arc::new(config));
        // A refused certificate surfaces as whatever step first needed TLS;
        // what the verifier saw says what went wrong.
        let tls_failure = |e: FtpError| -> Error {
            let seen = seen.lock().unwrap_or_else(|e| e.into_inner());
            match (&seen.refused, &seen.fingerprint) {
                (Some(why), Some(fp)) => Error::Remote(format!(
                    "{shown}: refused the server's TLS certificate {fp}: {why}; if the server's administrator confirms that fingerprint, pin it with `schoolbell source accept {} {fp}`",
                    server.source
                )),
                _ => {
                    tracing::warn!(source = %server.source, error = %e, "An FTPS server's TLS handshake failed.");
                    Error::Remote(format!(
                        "{shown}: the TLS handshake failed (is it an FTPS server, and {} TLS?)",
                        if server.implicit { "implicit" } else { "explicit" }
                    ))
                }
            }
        };
        let ftp = if server.implicit {
            // The library connects itself for implicit TLS; reaching the
            // server first says which of DNS and TCP failed, if one did,
            // and names the address it then connects to.
            let addr = reach(&shown, &server.source, &server.host, server.port)?
                .peer_addr()
                .map_err(|e| Error::Remote(format!("{shown}: the connection dropped at once: {e}")))?;
            RustlsFtpStream::connect_secure_implicit(addr, connector, &server.host).map_err(tls_failure)?
        } else {
            let tcp = reach(&shown, &server.source, &server.host, server.port)?;
            let plain = RustlsFtpStream::connect_with_stream(tcp)
                .map_err(|e| Error::Remote(format!("{shown}: the server did not greet as FTP does: {e}")))?;
            plain.into_secure(connector, &server.host).map_err(tls_failure)?
        };
        ftp.get_ref().set_read_timeout(Some(IO_TIMEOUT)).ok();
        ftp.get_ref().set_write_timeout(Some(IO_TIMEOUT)).ok();
        // The library opens data connections with no timeout, so a server
        // that stalls mid-listing or mid-download would hold the run for
        // ever; each data connection gets the control connection's limits.
        let mut ftp = ftp.passive_stream_builder(|addr| {
            let tcp =
                std::net::TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).map_err(FtpError::ConnectionError)?;
            tcp.set_read_timeout(Some(IO_TIMEOUT)).map_err(FtpError::ConnectionError)?;
            tcp.set_write_timeout(Some(IO_TIMEOUT)).map_err(FtpError::ConnectionError)?;
            Ok(tcp)
        });
        ftp.set_passive_nat_workaround(true);
        ftp.login(server.user.as_str(), password).map_err(|e| match &e {
            FtpError::UnexpectedResponse(r) if r.status == Status::NotLoggedIn => Error::Remote(format!(
                "{shown}: the server refused the user name or password (check the user, and the secret's password)"
            )),
            _ => tls_failure(e),
        })?;
        if server.implicit {
            // Explicit TLS asks for protected data connections as it starts
            // TLS; implicit TLS starts before any command, so ask now.
            for command in ["PBSZ 0", "PROT P"] {
                ftp.custom_command(command, &[Status::CommandOk]).map_err(|e| {
                    Error::Remote(format!("{shown}: the server refused encrypted data connections ({command}): {e}"))
                })?;
            }
        }
        ftp.transfer_type(suppaftp::types::FileType::Binary)
            .map_err(|e| Error::Remote(format!("{shown}: the server refused binary transfers: {e}")))?;
        ftp.cwd(server.folder.as_str()).map_err(|e| {
            tracing::warn!(source = %server.source, error = %e, "An FTPS folder could not be opened.");
            Error::Remote(format!("{shown}: the folder does not exist, or the user may not open it"))
        })?;
        Ok(Conn { ftp, server: server.clone() })
    }

    fn failed(&self, name: &str, what: &str, e: &FtpError) -> Error {
        let said = match e {
            FtpError::UnexpectedResponse(r) => String::from_utf8_lossy(&r.body).trim().to_string(),
            e => e.to_string(),
        };
        let file = if name.is_empty() { String::new() } else { format!("/{name}") };
        Error::Remote(format!("{}{file}: {what}: {said}", self.server.shown()))
    }
}

impl Remote for Conn {
    fn shown(&self) -> String {
        self.server.shown()
    }

    fn list(&mut self, prefix: &str) -> Result<Vec<(String, u64)>, Error> {
        let lines = self.ftp.list(None).map_err(|e| self.failed("", "cannot list the folder", &e))?;
        let mut out: Vec<(String, u64)> = lines
            .iter()
            .filter_map(|line| suppaftp::list::File::try_from(line.as_str()).ok())
            .filter(|f| f.is_file() && f.name().starts_with(prefix) && !f.name().starts_with("P_"))
            .map(|f| (f.name().to_string(), f.size() as u64))
            .collect();
        out.sort();
        Ok(out)
    }

    fn read_into(&mut self, name: &str, to: &mut dyn Write) -> Result<(), Error> {
        let copied = self.ftp.retr(name, |from| std::io::copy(from, to).map_err(FtpError::ConnectionError));
        copied.map(drop).map_err(|e| self.failed(name, "cannot download", &e))
    }

    fn rename(&mut self, from: &str, to: &str) -> Result<(), Error> {
        self.ftp.rename(from, to).map_err(|e| self.failed(from, &format!("cannot rename to {to}"), &e))
    }

    fn create(&mut self, name: &str) -> Result<(), Error> {
        self.ftp.put_file(name, &mut std::io::empty()).map(drop).map_err(|e| self.failed(name, "cannot create", &e))
    }

    fn remove(&mut self, name: &str) -> Result<(), Error> {
        self.ftp.rm(name).map_err(|e| self.failed(name, "cannot remove", &e))
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let _ = self.ftp.quit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_kept_one_way() {
        let hex = "ab".repeat(32);
        let want = format!("SHA256:{}", ["AB"; 32].join(":"));
        for pasted in
            [format!("SHA256:{hex}"), format!("sha256 Fingerprint={}", ["ab"; 32].join(":")), hex.clone(), want.clone()]
        {
            assert_eq!(normalize_fingerprint(&pasted).as_deref(), Some(want.as_str()), "{pasted}");
        }
        assert_eq!(normalize_fingerprint("SHA256:abc"), None);
    }
}
