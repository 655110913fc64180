//! How a host reaches PostgreSQL over TCP: TLS through rustls, verified
//! against the system's roots or `[store] ca_file`, with the server's name
//! checked. Whoever sits between a host and its database could otherwise
//! read every record, or write an owner's token hash.
//!
//! `sslmode` in the url is honoured as libpq spells it: `verify-full` (the
//! default for TCP: encrypted, the certificate verified and issued for the
//! host named), `require` (encrypted, the certificate not verified: a
//! network the operator trusts not to impersonate the server) and
//! `disable` (no TLS). A Unix socket needs none, and gets none.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_postgres::config::{Host, SslMode};

use super::Error;

/// What makes each connection's TLS.
pub(super) type Tls = tokio_postgres_rustls::MakeRustlsConnect;

/// A connection's stream, with or without TLS.
pub(super) type Stream = <Tls as tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>>::Stream;

/// The `sslmode`s this host honours.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Mode {
    Disable,
    Require,
    VerifyFull,
}

/// Takes `sslmode` out of a connection string (a URL or `key=value`
/// pairs), which tokio-postgres reads only in part (it has no
/// `verify-full`), and returns the rest with the mode named, if one was.
pub(super) fn take_sslmode(url: &str) -> Result<(String, Option<Mode>), Error> {
    let (rest, value) = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        match url.split_once('?') {
            None => (url.to_string(), None),
            Some((base, query)) => {
                let mut value = None;
                let kept: Vec<&str> = query
                    .split('&')
                    .filter(|pair| match pair.strip_prefix("sslmode=") {
                        Some(v) => {
                            value = Some(v.to_string());
                            false
                        }
                        None => true,
                    })
                    .collect();
                let rest = if kept.is_empty() { base.to_string() } else { format!("{base}?{}", kept.join("&")) };
                (rest, value)
            }
        }
    } else {
        let mut value = None;
        let mut kept = Vec::new();
        let mut words = url.split_whitespace().peekable();
        while let Some(word) = words.next() {
            // `sslmode=x`, `sslmode = x` and `sslmode =x` alike.
            let Some(after) = word.strip_prefix("sslmode") else {
                kept.push(word.to_string());
                continue;
            };
            let after = if after.is_empty() { words.next().unwrap_or_default() } else { after };
            let after = after.strip_prefix('=').unwrap_or(after);
            value = Some(if after.is_empty() { words.next().unwrap_or_default().to_string() } else { after.into() });
        }
        (kept.join(" "), value)
    };
    let mode = match value.as_deref() {
        None => None,
        Some("disable") => Some(Mode::Disable),
        Some("require") => Some(Mode::Require),
        Some("verify-full") => Some(Mode::VerifyFull),
        Some(other) => {
            return Err(Error::Config(format!(
                "url: sslmode `{other}` is not one this host honours: use `verify-full` (the default), `require` or `disable`"
            )));
        }
    };
    Ok((rest, mode))
}

/// Sets `pg`'s TLS as `mode` says (default `verify-full` over TCP; a
/// connection only over Unix sockets uses none), and builds what makes
/// each connection's TLS.
pub(super) fn configure(
    pg: &mut tokio_postgres::Config,
    mode: Option<Mode>,
    ca_file: Option<&Path>,
) -> Result<Tls, Error> {
    let over_tcp = pg.get_hosts().iter().any(|h| matches!(h, Host::Tcp(_))) || pg.get_hosts().is_empty();
    let mode = if over_tcp { mode.unwrap_or(Mode::VerifyFull) } else { Mode::Disable };
    pg.ssl_mode(if mode == Mode::Disable { SslMode::Disable } else { SslMode::Require });
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("cannot set up TLS for the database: {e}")))?;
    let config = match mode {
        Mode::Require => {
            builder.dangerous().with_custom_certificate_verifier(Arc::new(Unverified(provider))).with_no_client_auth()
        }
        Mode::Disable | Mode::VerifyFull => builder.with_root_certificates(roots(ca_file)?).with_no_client_auth(),
    };
    Ok(Tls::new(config))
}

/// `ca_file`'s certificates, or the system's trusted roots.
fn roots(ca_file: Option<&Path>) -> Result<rustls::RootCertStore, Error> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(file) => {
            let unreadable =
                |why: String| Error::Config(format!("[store] ca_file {}: {why}; name a PEM file", file.display()));
            let pem = std::fs::read(file).map_err(|e| unreadable(e.to_string()))?;
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<_, _>>()
                .map_err(|e| unreadable(format!("{e:?}")))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(unreadable("holds no certificate".into()));
            }
        }
        None => {
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        }
    }
    Ok(roots)
}

/// `sslmode=require`: the connection is encrypted and the handshake's
/// signatures checked, but whose certificate it is, is not.
#[derive(Debug)]
struct Unverified(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_is_taken_from_either_form() {
        let (rest, mode) = take_sslmode("postgres://u@db.example/sb?sslmode=require&connect_timeout=3").unwrap();
        assert_eq!((rest.as_str(), mode), ("postgres://u@db.example/sb?connect_timeout=3", Some(Mode::Require)));
        let (rest, mode) = take_sslmode("postgresql://u@db.example/sb?sslmode=verify-full").unwrap();
        assert_eq!((rest.as_str(), mode), ("postgresql://u@db.example/sb", Some(Mode::VerifyFull)));
        let (rest, mode) = take_sslmode("host=db.example sslmode = disable dbname=sb").unwrap();
        assert_eq!((rest.as_str(), mode), ("host=db.example dbname=sb", Some(Mode::Disable)));
        let (rest, mode) = take_sslmode("host=/run/postgresql dbname=sb").unwrap();
        assert_eq!((rest.as_str(), mode), ("host=/run/postgresql dbname=sb", None));
        let err = take_sslmode("host=db sslmode=prefer").unwrap_err().to_string();
        assert!(err.contains("sslmode `prefer` is not one this host honours"), "{err}");
    }

    #[test]
    fn tcp_defaults_to_verify_full_and_sockets_to_none() {
        let mut tcp: tokio_postgres::Config = "host=db.example dbname=sb".parse().unwrap();
        configure(&mut tcp, None, None).unwrap();
        assert_eq!(tcp.get_ssl_mode(), SslMode::Require);
        let mut socket: tokio_postgres::Config = "host=/run/postgresql dbname=sb".parse().unwrap();
        configure(&mut socket, Some(Mode::VerifyFull), None).unwrap();
        assert_eq!(socket.get_ssl_mode(), SslMode::Disable);
    }
}
