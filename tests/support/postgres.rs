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
        let pg = Postgres { dir, bin, owner };
        pg.run(
            "initdb",
            &["-D", &pg.data(), "-U", "schoolbell", "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync"],
        );
        pg.resume();
        pg
    }

    /// Starts the server of a cluster made or stopped before.
    pub fn resume(&self) {
        let options = format!(
            "-k {} -c listen_addresses='' -c fsync=off -c full_page_writes=off -c max_connections=200",
            self.socket().display()
        );
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
        format!("host={} user=schoolbell dbname=postgres", self.socket().display())
    }

    /// Makes an empty database `name` in the cluster, and returns its
    /// connection string: a test's own, on a cluster tests share.
    pub fn database(&self, name: &str) -> String {
        let socket = self.socket().display().to_string();
        self.run("createdb", &["-h", &socket, "-U", "schoolbell", name]);
        format!("host={socket} user=schoolbell dbname={name}")
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
