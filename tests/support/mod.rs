//! Helpers shared by the end-to-end tests: the repository's paths, the
//! built plugins, and a temporary data directory driving the real binary.

#![allow(dead_code, unreachable_pub)]

pub mod fileservers;
pub mod postgres;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The roster mapping's column map for a file with ID, names and birth date.
pub const FOUR_COLUMNS: &str =
    "columns=student-id=Student ID; last-name=Last Name; first-name=First Name; birth-date=Birth Date:date";

/// The column map for a roster with ID, names, birth date, gender, grade
/// and SSN, the ID and the last three optional.
pub const SEVEN_COLUMNS: &str = "columns=student-id=Student ID?; last-name=Last Name; first-name=First Name; birth-date=Birth Date:date; gender=Gender?; grade=Grade:integer?; ssn=SSN?";

/// One student's attendance record, as `records load` takes it.
pub const ONE_ATTENDANCE: &str = r#"[
  {"student-id": "S1", "first-name": "Ann", "last-name": "Ng", "absences": 7, "division": "Upper", "campus": "North", "department": "Math", "level": "10"}
]"#;

/// The header of such a roster.
pub const SEVEN_HEADER: &str = "Student ID,Last Name,First Name,Birth Date,Gender,Grade,SSN\n";

impl Sb {
    /// A `batch` folder set up under `[sandbox.folders]` (after `config`,
    /// the rest of `schoolbell.toml`), and the source `name` over it.
    pub fn folder_source(&self, name: &str, config: &str) -> PathBuf {
        let batch = self.dir.path().join("batch");
        std::fs::create_dir_all(&batch).unwrap();
        self.file(
            "data/schoolbell.toml",
            format!("{config}\n[sandbox.folders]\nbatch = {:?}\n", batch.display().to_string()),
        );
        self.ok(&["source", "add-folder", name, "--folder", "batch"]);
        batch
    }

    /// Loads `json` (a list of records) into `attendance`, keyed by student ID.
    pub fn load_attendance(&self, json: &str) {
        let file = self.file("attendance.json", json);
        self.ok(&["records", "load", "attendance", s(&file), "--key", "student-id"]);
    }

    /// An import task `name` with the roster mapping over the four-column
    /// file, picking up `prefix*` from `source` into `students` keyed by
    /// student ID, run daily at 22:00; `extra` flags appended.
    pub fn roster_task(&self, name: &str, source: &str, prefix: &str, extra: &[&str]) {
        let mut args = vec![
            "task",
            "add",
            name,
            "--plugin",
            "import-csv-roster",
            "--schedule",
            "daily at 22:00",
            "--param",
            FOUR_COLUMNS,
            "--source",
            source,
            "--prefix",
            prefix,
            "--collection",
            "students",
            "--key",
            "student-id",
        ];
        args.extend_from_slice(extra);
        self.ok(&args);
    }

    /// `import file` of `body` (under the seven-column header) into
    /// `students` through `rule`, every row listed; `extra` flags appended.
    pub fn import_roster(&self, name: &str, rule: &str, body: &str, extra: &[&str]) -> Output {
        let file = self.file(name, format!("{SEVEN_HEADER}{body}"));
        let mut args =
            vec!["import", "file", "import-csv-roster", s(&file), "--into", "students", "--key", "student-id"];
        args.extend(["--match-rule", rule, "--param", SEVEN_COLUMNS, "--rows"]);
        args.extend(extra);
        self.run(&args)
    }
}

/// A small deterministic generator (xorshift64) for varied but repeatable
/// kill moments in crash tests.
pub struct Xorshift(pub u64);

impl Xorshift {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// The repository's root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn built(dir: &str, name: &str, how: &str) -> PathBuf {
    let path = root().join("target").join(dir).join(format!("{name}.wasm"));
    assert!(path.exists(), "{} is missing: build the plugins first with `{how}` (xtask/test does)", path.display());
    path
}

/// A plugin built by the standard toolchain.
pub fn plugin(name: &str) -> PathBuf {
    built("plugins", name, "xtask/build-plugins")
}

/// A plugin built by the registry-only fallback toolchain.
pub fn fallback_plugin(name: &str) -> PathBuf {
    built(
        "plugins-fallback",
        name,
        "SCHOOLBELL_GUEST_TOOLCHAIN=debian SCHOOLBELL_PLUGIN_OUT=target/plugins-fallback xtask/build-plugins",
    )
}

/// A temporary data directory and the binary to drive over it.
pub struct Sb {
    pub dir: tempfile::TempDir,
    /// The rules folder the binary is pointed at.
    pub rules: PathBuf,
    /// The throwaway PostgreSQL cluster the store lives in, when the suite
    /// runs on PostgreSQL (`SCHOOLBELL_TEST_STORE=postgres`); else the
    /// embedded store in the data directory.
    pub database: Option<Database>,
}

/// A sandbox's PostgreSQL database: a cluster of its own (for tests that
/// stop or restart the server), or a database of its own in a cluster
/// that the suite's sandboxes share while any of them is alive, so a
/// suite pays for one `initdb` rather than one per test.
#[derive(Clone)]
pub struct Database {
    pub cluster: std::sync::Arc<postgres::Postgres>,
    url: String,
}

impl Database {
    /// A cluster of its own, its database `postgres`.
    fn own() -> Database {
        let cluster = std::sync::Arc::new(postgres::Postgres::start());
        Database { url: cluster.url(), cluster }
    }

    /// A fresh database in the shared cluster, started if none is running.
    fn shared() -> Database {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::{Arc, Mutex, Weak};
        static CLUSTER: Mutex<Weak<postgres::Postgres>> = Mutex::new(Weak::new());
        static MADE: AtomicUsize = AtomicUsize::new(0);
        let cluster = {
            let mut shared = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
            shared.upgrade().unwrap_or_else(|| {
                let cluster = Arc::new(postgres::Postgres::start());
                *shared = Arc::downgrade(&cluster);
                cluster
            })
        };
        let url = cluster.database(&format!("test{}", MADE.fetch_add(1, Ordering::SeqCst)));
        Database { cluster, url }
    }

    /// The connection string of the sandbox's database.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// Restarts the cluster under every database in it.
    pub fn restart(&self) {
        self.cluster.restart();
    }
}

/// Whether this run of the suites keeps its stores in PostgreSQL.
pub fn on_postgres() -> bool {
    std::env::var("SCHOOLBELL_TEST_STORE").as_deref() == Ok("postgres")
}

impl Sb {
    /// A sandbox reading the shipped rules in place.
    pub fn new() -> Sb {
        Sb::make(tempfile::tempdir().unwrap(), root().join("rules"))
    }

    fn make(dir: tempfile::TempDir, rules: PathBuf) -> Sb {
        let database = on_postgres().then(Database::shared);
        let sb = Sb { dir, rules, database };
        if sb.database.is_some() {
            sb.ok(&["store", "migrate"]);
        }
        sb
    }

    /// A sandbox whose store is a fresh PostgreSQL cluster, whatever
    /// `SCHOOLBELL_TEST_STORE` says.
    pub fn on_database() -> Sb {
        let sb = Sb { dir: tempfile::tempdir().unwrap(), rules: root().join("rules"), database: Some(Database::own()) };
        sb.ok(&["store", "migrate"]);
        sb
    }

    /// Another host's data directory on `other`'s database: the same rules
    /// and the same secret key (hosts sharing a store must share it), its
    /// own configuration, compile cache and socket.
    pub fn sharing(other: &Sb) -> Sb {
        let sb = Sb { dir: tempfile::tempdir().unwrap(), rules: other.rules.clone(), database: other.database.clone() };
        std::fs::create_dir_all(sb.data()).unwrap();
        std::fs::set_permissions(sb.data(), std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        std::fs::copy(other.data().join("secret.key"), sb.data().join("secret.key")).unwrap();
        sb
    }

    /// A sandbox with its own copy of the shipped rules, for tests that save rules.
    pub fn with_own_rules() -> Sb {
        let dir = tempfile::tempdir().unwrap();
        let rules = dir.path().join("rules");
        std::fs::create_dir_all(&rules).unwrap();
        for entry in std::fs::read_dir(root().join("rules")).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, rules.join(path.file_name().unwrap())).unwrap();
        }
        Sb::make(dir, rules)
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn command(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_schoolbell"));
        c.arg("--data").arg(self.data()).arg("--rules").arg(&self.rules);
        c.env_remove("RUST_LOG");
        if let Some(database) = &self.database {
            c.env("SCHOOLBELL_STORE_BACKEND", "postgres").env("SCHOOLBELL_STORE_URL", database.url());
        }
        c
    }

    /// Runs the binary; returns its output whatever the exit status.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command().args(args).output().unwrap()
    }

    /// Runs the binary and expects success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        succeeded(self.run(args), &format!("schoolbell {args:?}"))
    }

    /// Runs the binary and expects failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "schoolbell {args:?} should have failed:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stderr).unwrap()
    }

    /// `user passwd USER` as `by`, the password on standard input; returns
    /// what it printed. As the user themselves, the password is their own;
    /// as an owner for someone else, it is a reset.
    pub fn passwd(&self, by: &str, user: &str, password: &str) -> String {
        use std::io::Write;
        let mut child = self
            .command()
            .args(["--as", by, "user", "passwd", user])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
        succeeded(child.wait_with_output().unwrap(), &format!("schoolbell user passwd {user}"))
    }

    /// Writes a file in the temporary directory and returns its path.
    pub fn file(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, contents).unwrap();
        path
    }
}

/// The stdout of a command `what` that must have succeeded.
pub fn succeeded(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Polls `check` until it returns `Some`, within `secs` seconds.
pub fn until<T>(secs: u64, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "gave up waiting: {what}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// The HTTP API of a running server, as a client sees it.
pub struct Api {
    url: String,
    agent: ureq::Agent,
}

impl Api {
    /// Waits, within two minutes, until run `id` is no longer queued or
    /// running (finished, or held for a person), and returns it.
    pub fn settled(&self, token: &str, id: u64) -> serde_json::Value {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            let (status, run) = self.json("GET", &format!("/api/v1/runs/{id}"), token, None);
            assert_eq!(status, 200, "{run}");
            if !["queued", "running"].contains(&run["status"].as_str().unwrap()) {
                return run;
            }
            assert!(std::time::Instant::now() < deadline, "run {id} did not settle: {run}");
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
    }

    pub fn new(url: &str) -> Api {
        let agent = ureq::Agent::config_builder().http_status_as_error(false).build().new_agent();
        Api { url: url.to_string(), agent }
    }

    pub fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> (u16, String) {
        let url = format!("{}{path}", self.url);
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut resp = match (method, body) {
            ("GET", _) => {
                let mut r = self.agent.get(&url);
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                r.call()
            }
            ("PUT", body) => {
                let mut r = self.agent.put(&url);
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                r.send_json(body.unwrap_or(serde_json::Value::Null))
            }
            ("DELETE", _) => {
                let mut r = self.agent.delete(&url);
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                r.call()
            }
            (_, body) => {
                let mut r = self.agent.post(&url);
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                match body {
                    Some(b) => r.send_json(b),
                    None => r.send_empty(),
                }
            }
        }
        .unwrap();
        (resp.status().as_u16(), resp.body_mut().read_to_string().unwrap())
    }

    /// A call whose answer is read as JSON (text when it is not).
    pub fn json(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let (status, text) = self.call(method, path, Some(token), body);
        (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
    }
}

/// A running `schoolbell serve`.
pub struct Server {
    pub child: std::process::Child,
    pub url: String,
}

impl Sb {
    /// Starts `serve` on a free loopback port and waits until it listens.
    pub fn serve(&self) -> Server {
        self.serve_with(&[], None)
    }

    /// [`Sb::serve`] with `env` set, and its log (stderr) written to `log`.
    pub fn serve_with(&self, env: &[(&str, &str)], log: Option<&Path>) -> Server {
        use std::io::BufRead;
        let stderr = match log {
            Some(path) => std::process::Stdio::from(std::fs::File::create(path).unwrap()),
            None => std::process::Stdio::inherit(),
        };
        let mut child = self
            .command()
            .args(["serve", "--listen", "127.0.0.1:0"])
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line).unwrap();
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://") || w.starts_with("https://"))
            .unwrap_or_else(|| panic!("serve did not say where it listens: {line:?}"))
            .to_string();
        Server { child, url }
    }
}

impl Server {
    /// Sends SIGTERM and waits for a clean exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        self.child.wait().unwrap()
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Server {
    /// A test that fails mid-way must not leave its server running (and
    /// holding the test harness's output pipe open).
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real OpenSSH server on loopback, for SFTP tests: its own host key,
/// one authorized client key, `internal-sftp`, no passwords.
pub struct Sshd {
    pub dir: tempfile::TempDir,
    pub port: u16,
    child: std::process::Child,
}

impl Sshd {
    /// Starts sshd (from Debian's openssh-server, which `xtask/test` installs).
    pub fn start() -> Sshd {
        let sshd = Path::new("/usr/sbin/sshd");
        assert!(sshd.exists(), "/usr/sbin/sshd is missing: install openssh-server (xtask/test does)");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for key in ["host_key", "client_key"] {
            let st = Command::new("ssh-keygen")
                .args(["-q", "-t", "ecdsa", "-b", "256", "-m", "PEM", "-N", "", "-f"])
                .arg(d.join(key))
                .status()
                .unwrap();
            assert!(st.success());
        }
        std::fs::copy(d.join("client_key.pub"), d.join("authorized_keys")).unwrap();
        std::fs::create_dir_all(d.join("files")).unwrap();
        std::fs::create_dir_all("/run/sshd").ok();
        let port = free_port();
        let user = std::env::var("USER").unwrap_or_else(|_| "root".into());
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\nAuthorizedKeysFile {d}/authorized_keys\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\nPermitRootLogin prohibit-password\n\
             StrictModes no\nUsePAM no\nAllowUsers {user}\nSubsystem sftp internal-sftp\n",
            d = d.display()
        );
        std::fs::write(d.join("sshd_config"), config).unwrap();
        let child = Command::new(sshd)
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(d.join("sshd_config"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "sshd did not start on port {port}");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Sshd { dir, port, child }
    }

    pub fn files(&self) -> PathBuf {
        self.dir.path().join("files")
    }

    pub fn client_key(&self) -> PathBuf {
        self.dir.path().join("client_key")
    }

    pub fn user(&self) -> String {
        std::env::var("USER").unwrap_or_else(|_| "root".into())
    }

    /// The server's host key fingerprint, as `ssh-keygen -l` prints it.
    pub fn fingerprint(&self) -> String {
        let out = Command::new("ssh-keygen")
            .args(["-l", "-E", "sha256", "-f"])
            .arg(self.dir.path().join("host_key.pub"))
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        text.split_whitespace().nth(1).unwrap().to_string()
    }

    /// `source add-sftp NAME` for this server, with the credential `key`.
    pub fn add_source(&self, sb: &Sb, name: &str, key: &str) {
        let port = self.port.to_string();
        let user = self.user();
        sb.ok(&[
            "source",
            "add-sftp",
            name,
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--user",
            &user,
            "--path",
            s(&self.files()),
            "--credential",
            key,
        ]);
    }
}

/// A self-signed certificate for `localhost` and its key, as `cert.pem`
/// and `key.pem` in `dir` (made with Debian's openssl).
pub fn self_signed(dir: &Path) {
    let st = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost", "-keyout"])
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "openssl could not make a certificate");
}

/// A free loopback port (nothing listens on it once this returns).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A real SMTP server on loopback: Debian's aiosmtpd (which `xtask/test`
/// installs), storing every message it accepts in a Maildir.
pub struct Smtp {
    pub dir: tempfile::TempDir,
    pub port: u16,
    child: std::process::Child,
}

impl Smtp {
    /// Starts the server on `port`.
    pub fn start(port: u16) -> Smtp {
        Smtp::spawn(port, tempfile::tempdir().unwrap(), &[])
    }

    /// Starts the server on `port` with STARTTLS required, under a
    /// self-signed certificate for `localhost` (in `cert.pem` of its folder).
    pub fn start_tls(port: u16) -> Smtp {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        self_signed(d);
        let (cert, key) = (d.join("cert.pem").display().to_string(), d.join("key.pem").display().to_string());
        Smtp::spawn(port, dir, &["--tlscert", &cert, "--tlskey", &key])
    }

    /// Starts the server on `port` speaking TLS from the first byte
    /// (SMTPS), under a self-signed certificate for `localhost`.
    pub fn start_smtps(port: u16) -> Smtp {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        self_signed(d);
        let (cert, key) = (d.join("cert.pem").display().to_string(), d.join("key.pem").display().to_string());
        Smtp::spawn(port, dir, &["--smtpscert", &cert, "--smtpskey", &key])
    }

    /// Starts the server on `port` offering `PIPELINING` (RFC 2920), which
    /// aiosmtpd does not by itself; it reads pipelined commands in order,
    /// and refuses the recipient `gone@district.test` for good.
    pub fn start_pipelining(port: u16) -> Smtp {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("pipelining.py"),
            "from aiosmtpd.handlers import Mailbox\n\n\
             class PipeliningMailbox(Mailbox):\n\
             \x20   async def handle_EHLO(self, server, session, envelope, hostname, responses):\n\
             \x20       session.host_name = hostname\n\
             \x20       return responses[:-1] + ['250-PIPELINING', responses[-1]]\n\n\
             \x20   async def handle_RSET(self, server, session, envelope):\n\
             \x20       # Whether the next command came in the same write.\n\
             \x20       with open('rsets', 'a') as log:\n\
             \x20           log.write('ahead\\n' if server._reader._buffer else 'alone\\n')\n\
             \x20       return '250 OK'\n\n\
             \x20   async def handle_MAIL(self, server, session, envelope, address, mail_options):\n\
             \x20       # Whether the rest of the envelope came in the same write.\n\
             \x20       with open('mails', 'a') as log:\n\
             \x20           log.write('grouped\\n' if server._reader._buffer else 'alone\\n')\n\
             \x20       envelope.mail_from = address\n\
             \x20       envelope.mail_options.extend(mail_options)\n\
             \x20       return '250 OK'\n\n\
             \x20   async def handle_RCPT(self, server, session, envelope, address, rcpt_options):\n\
             \x20       if address == 'gone@district.test':\n\
             \x20           return '550 5.1.1 No such user here'\n\
             \x20       envelope.rcpt_tos.append(address)\n\
             \x20       return '250 OK'\n",
        )
        .unwrap();
        Smtp::spawn_with(port, dir, "pipelining.PipeliningMailbox", &[])
    }

    /// For each `RSET` a pipelining server read: `ahead` when the next
    /// command had come with it, `alone` when not.
    pub fn rsets(&self) -> Vec<String> {
        self.log("rsets")
    }

    /// For each `MAIL` a pipelining server read: `grouped` when the rest
    /// of the envelope had come with it, `alone` when not.
    pub fn mails(&self) -> Vec<String> {
        self.log("mails")
    }

    fn log(&self, name: &str) -> Vec<String> {
        let log = std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        log.lines().map(str::to_string).collect()
    }

    pub fn certificate(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    fn spawn(port: u16, dir: tempfile::TempDir, extra: &[&str]) -> Smtp {
        Smtp::spawn_with(port, dir, "aiosmtpd.handlers.Mailbox", extra)
    }

    /// aiosmtpd with `handler` (a class on the folder's Python path).
    fn spawn_with(port: u16, dir: tempfile::TempDir, handler: &str, extra: &[&str]) -> Smtp {
        let python = Path::new("/usr/bin/python3");
        let child = Command::new(python)
            .env("PYTHONPATH", dir.path())
            .current_dir(dir.path())
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}"), "-c", handler])
            .args(extra)
            .arg(dir.path().join("maildir"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("cannot start aiosmtpd: install python3-aiosmtpd (xtask/test does)");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "aiosmtpd did not start on port {port}");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Smtp { dir, port, child }
    }

    /// Every message accepted so far, as raw text, in no particular order.
    pub fn messages(&self) -> Vec<String> {
        self.messages_with_arrival().into_iter().map(|(message, _)| message).collect()
    }

    /// Every message received, with when it arrived (its file's time).
    pub fn messages_with_arrival(&self) -> Vec<(String, chrono::DateTime<chrono::Utc>)> {
        let new = self.dir.path().join("maildir/new");
        let Ok(entries) = std::fs::read_dir(new) else { return Vec::new() };
        entries
            .map(|e| {
                let path = e.unwrap().path();
                let arrived = std::fs::metadata(&path).unwrap().modified().unwrap();
                (std::fs::read_to_string(&path).unwrap(), arrived.into())
            })
            .collect()
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
