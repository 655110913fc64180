//! Hosts reach PostgreSQL over TCP through verified TLS: a cluster with
//! `ssl=on`, a certificate the test's own CA signed, and `hostssl` the
//! only way in over TCP.

use crate::support::Sb;
use crate::support::postgres::Postgres;

/// `store migrate` against `url`, with `[store] ca_file = ca` when given:
/// its output, and whether it succeeded.
fn migrate(url: &str, ca: Option<&std::path::Path>) -> (bool, String) {
    let sb = Sb::new();
    let config = match ca {
        Some(ca) => format!("[store]\nca_file = {:?}\n", ca.display().to_string()),
        None => String::new(),
    };
    sb.file("data/schoolbell.toml", config);
    let out = sb
        .command()
        .env("SCHOOLBELL_STORE_BACKEND", "postgres")
        .env("SCHOOLBELL_STORE_URL", url)
        .args(["store", "migrate"])
        .output()
        .unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), said)
}

/// The one error line of a failed command.
fn error_line(said: &str) -> &str {
    let errors: Vec<&str> = said.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "one error line: {said}");
    errors[0]
}

#[test]
fn hosts_reach_postgres_over_verified_tls() {
    let cluster = Postgres::start_tls();
    let port = cluster.tls_port.unwrap();
    let tcp = format!("host=127.0.0.1 port={port} user=schoolbell dbname=postgres");

    // verify-full (the default over TCP) against the CA that signed it.
    let (ok, said) = migrate(&tcp, Some(&cluster.ca()));
    assert!(ok, "{said}");
    let (ok, said) = migrate(&format!("{tcp} sslmode=verify-full"), Some(&cluster.ca()));
    assert!(ok, "{said}");

    // Another CA: refused, in one line that names the server.
    let other = Postgres::start_tls();
    let (ok, said) = migrate(&tcp, Some(&other.ca()));
    assert!(!ok, "a certificate another CA signed was taken: {said}");
    let line = error_line(&said);
    assert!(line.contains("127.0.0.1") && line.contains("invalid peer certificate: UnknownIssuer"), "{line}");

    // The right CA, but a name the certificate was not issued for.
    let by_name = format!("host=localhost hostaddr=127.0.0.1 port={port} user=schoolbell dbname=postgres");
    let (ok, said) = migrate(&by_name, Some(&cluster.ca()));
    assert!(!ok, "a certificate for another name was taken: {said}");
    let line = error_line(&said);
    assert!(line.contains("certificate not valid for name \"localhost\""), "{line}");

    // Without TLS, a hostssl-only server lets nobody in.
    let (ok, said) = migrate(&format!("{tcp} sslmode=disable"), Some(&cluster.ca()));
    assert!(!ok, "a connection without TLS was let in: {said}");
    assert!(error_line(&said).contains("no encryption"), "{said}");

    // `require` encrypts without verifying: the operator's word that the
    // network is trusted.
    let (ok, said) = migrate(&format!("{tcp} sslmode=require"), Some(&other.ca()));
    assert!(ok, "{said}");

    // A Unix socket needs no TLS.
    let (ok, said) = migrate(&cluster.url(), None);
    assert!(ok, "{said}");
}
