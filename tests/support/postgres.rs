//! A throwaway PostgreSQL cluster from Debian's packages, for the tests
//! that need a database: `initdb` into a temporary folder (as `nobody`
//! when the tests run as root, since PostgreSQL refuses root), listening
//! on a Unix socket in that folder and on no TCP port, stopped and removed
//! on drop. No test depends on a server someone else started.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A running cluster.
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// `(uid, gid)` the server runs as, when not as the tests' own user.
    owner: Option<(u32, u32)>,
    /// The loopback port it also listens on, TLS only, when it does.
    pub tls_port: Option<u16>,
}

/// The newest installed server's programs: `/usr/lib/postgresql/<v>/bin`.
fn server_bin() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed: run xtask/system-packages")
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).expect("no PostgreSQL server in /usr/lib/postgresql: run xtask/system-packages")
}

impl Postgres {
    /// Makes and starts a cluster, with superuser `schoolbell` and trust
    /// authentication on its socket (nothing else can reach it).
    pub fn start() -> Postgres {
        let bin = server_bin();
        let dir = tempfile::Builder::new().prefix("sb-pg").tempdir().unwrap();
        let owner = rustix::process::geteuid().is_root().then_some((65534, 65534));
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        let pg = Postgres { dir, bin, owner, tls_port: None };
        pg.run(
            "initdb",
            &["-D", &pg.data(), "-U", "schoolbell", "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync"],
        );
        pg.resume();
        pg
    }

    /// [`Postgres::start`], also listening on a loopback TCP port with
    /// `ssl=on` and a certificate for `127.0.0.1` that the test's own CA
    /// (`ca.pem`) signed; `pg_hba.conf` lets TCP in over TLS only
    /// (`hostssl`).
    pub fn start_tls() -> Postgres {
        let mut pg = Postgres::start();
        pg.stop();
        let dir = pg.dir.path();
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl").args(args).current_dir(dir).output().unwrap();
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        // Each cluster's CA has a name of its own, as two real CAs do.
        let ca = format!("/CN=Test CA {}", dir.file_name().unwrap().to_string_lossy());
        openssl(&[
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", &ca, "-keyout", "ca.key", "-out",
            "ca.pem",
        ]);
        openssl(&[
            "req",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ]);
        std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            "server.pem",
        ]);
        for file in ["server.key", "server.pem"] {
            let to = dir.join("data").join(file);
            std::fs::copy(dir.join(file), &to).unwrap();
            std::fs::set_permissions(&to, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
            if let Some((uid, gid)) = pg.owner {
                std::os::unix::fs::chown(&to, Some(uid), Some(gid)).unwrap();
            }
        }
        std::fs::write(dir.join("data/pg_hba.conf"), "local all all trust\nhostssl all all 127.0.0.1/32 trust\n")
            .unwrap();
        pg.tls_port = Some(std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port());
        pg.resume();
        pg
    }

    /// The CA that signed a TLS cluster's certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Starts the server of a cluster made or stopped before.
    pub fn resume(&self) {
        let tcp = match self.tls_port {
            Some(port) => {
                format!(
                    "-c listen_addresses=127.0.0.1 -p {port} -c ssl=on -c ssl_cert_file=server.pem -c ssl_key_file=server.key"
                )
            }
            None => "-c listen_addresses=''".into(),
        };
        let options =
            format!("-k {} {tcp} -c fsync=off -c full_page_writes=off -c max_connections=200", self.socket().display());
        let log = self.dir.path().join("server.log").display().to_string();
        self.run("pg_ctl", &["-D", &self.data(), "-l", &log, "-o", &options, "-w", "-t", "60", "start"]);
    }

    /// Stops the server (a fast shutdown: connections are cut) and waits
    /// until it is down.
    pub fn stop(&self) {
        self.run("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "-t", "60", "stop"]);
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    /// The folder holding the server's socket.
    pub fn socket(&self) -> &Path {
        self.dir.path()
    }

    /// A connection string to database `postgres` as `schoolbell`.
    pub fn url(&self) -> String {
        format!("host={} {}user=schoolbell dbname=postgres", self.socket().display(), self.port())
    }

    /// `port=N ` when the server listens on a port of its own (its socket
    /// is named for the port).
    fn port(&self) -> String {
        self.tls_port.map(|p| format!("port={p} ")).unwrap_or_default()
    }

    /// Makes an empty database `name` in the cluster, and returns its
    /// connection string: a test's own, on a cluster tests share.
    pub fn database(&self, name: &str) -> String {
        let socket = self.socket().display().to_string();
        let port = self.tls_port.unwrap_or(5432).to_string();
        self.run("createdb", &["-h", &socket, "-p", &port, "-U", "schoolbell", name]);
        format!("host={socket} {}user=schoolbell dbname={name}", self.port())
    }

    /// Restarts the server (a fast shutdown: connections are cut), as an
    /// operator's restart or a failover would.
    pub fn restart(&self) {
        // The log as at start: else the new server holds this call's pipes open.
        let log = self.dir.path().join("server.log").display().to_string();
        self.run("pg_ctl", &["-D", &self.data(), "-l", &log, "-m", "fast", "-w", "-t", "60", "restart"]);
    }

    fn run(&self, program: &str, args: &[&str]) {
        let mut command = Command::new(self.bin.join(program));
        command.args(args).env("LC_ALL", "C").current_dir(self.dir.path());
        if let Some((uid, gid)) = self.owner {
            use std::os::unix::process::CommandExt;
            command.uid(uid).gid(gid).env("HOME", self.dir.path());
        }
        let out = command.output().unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
        let log = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        assert!(
            out.status.success(),
            "{program} failed: {}{}\n{log}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let mut command = Command::new(self.bin.join("pg_ctl"));
        command.args(["-D", &self.data(), "-m", "immediate", "-w", "stop"]).current_dir(self.dir.path());
        if let Some((uid, gid)) = self.owner {
            use std::os::unix::process::CommandExt;
            command.uid(uid).gid(gid);
        }
        let _ = command.output();
    }
}
