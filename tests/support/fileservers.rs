//! Real file servers on loopback for the source tests: Samba's smbd and
//! vsftpd (from Debian, installed by `xtask/system-packages`), each started
//! with a throwaway config in a temporary folder, logging in as the
//! `schoolbell-test` account that script sets up, and killed with every
//! process it forked when the test ends.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

/// The account the servers log in as, and its password (set by
/// `xtask/system-packages`; it serves nothing but these loopback servers).
pub const ACCOUNT: &str = "schoolbell-test";
pub const PASSWORD: &str = "sb-loopback-only-7Qx";

fn account_ids() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id").args([flag, ACCOUNT]).output().unwrap();
        assert!(out.status.success(), "no `{ACCOUNT}` account: run xtask/system-packages (xtask/test does)");
        String::from_utf8(out.stdout).unwrap().trim().parse().unwrap()
    };
    (id("-u"), id("-g"))
}

/// A temporary folder the servers can reach, with `files/` owned by the
/// test account.
fn server_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let files = dir.path().join("files");
    std::fs::create_dir(&files).unwrap();
    let (uid, gid) = account_ids();
    std::os::unix::fs::chown(&files, Some(uid), Some(gid)).unwrap();
    dir
}

/// Starts `program` in a process group of its own, so that killing the
/// group takes its forked sessions with it.
fn spawn(program: &str, args: &[&str], log: &Path) -> Child {
    use std::os::unix::process::CommandExt;
    assert!(Path::new(program).exists(), "{program} is missing: run xtask/system-packages (xtask/test does)");
    let log = std::fs::File::create(log).unwrap();
    Command::new(program)
        .args(args)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

fn wait_for_port(port: u16, what: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        let said = std::fs::read_to_string(log).unwrap_or_default();
        assert!(Instant::now() < deadline, "{what} did not start on port {port}: {said}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Kills a process group at once, as a crash or a pulled cable would.
pub fn kill_group(leader: u32) {
    let _ = Command::new("kill").args(["-s", "KILL", "--", &format!("-{leader}")]).stderr(Stdio::null()).status();
}

/// A file server on loopback.
pub struct Server {
    pub dir: tempfile::TempDir,
    pub port: u16,
    child: Child,
    /// Its config file, which every process it forks has on its command line.
    conf: PathBuf,
}

impl Server {
    /// The folder it serves.
    pub fn files(&self) -> PathBuf {
        self.dir.path().join("files")
    }

    /// Names in the served folder, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.files())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// Kills the server and every session it forked (vsftpd's sessions
    /// leave its process group, so they are found by their command line).
    pub fn kill(&mut self) {
        kill_group(self.child.id());
        let _ = Command::new("pkill").args(["-KILL", "-f"]).arg(&self.conf).status();
        let _ = self.child.wait();
    }

    /// Its process group.
    pub fn group(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Samba's smbd with a writable share `exports` and a read-only one,
/// `readonly`, over the same folder; the domain is `DISTRICT`.
pub fn smbd() -> Server {
    smbd_with("")
}

/// [`smbd`] with more `[global]` settings (`server max protocol = SMB2_10`).
pub fn smbd_with(global: &str) -> Server {
    let dir = server_dir();
    let d = dir.path().display().to_string();
    for sub in ["private", "run", "lock", "state", "cache"] {
        std::fs::create_dir(dir.path().join(sub)).unwrap();
    }
    let port = free_port();
    let config = format!(
        "[global]\n  server role = standalone server\n  workgroup = DISTRICT\n  smb ports = {port}\n  interfaces = 127.0.0.1\n  bind interfaces only = yes\n\
         \x20 pid directory = {d}/run\n  lock directory = {d}/lock\n  state directory = {d}/state\n  cache directory = {d}/cache\n\
         \x20 private dir = {d}/private\n  ncalrpc dir = {d}/run/ncalrpc\n  log file = {d}/smbd.log\n\
         \x20 passdb backend = tdbsam:{d}/private/passdb.tdb\n  map to guest = Never\n  disable netbios = yes\n\
         \x20 load printers = no\n  printing = bsd\n  printcap name = /dev/null\n  disable spoolss = yes\n{global}\n\
         [exports]\n  path = {d}/files\n  read only = no\n[readonly]\n  path = {d}/files\n  read only = yes\n"
    );
    let conf = dir.path().join("smb.conf");
    std::fs::write(&conf, config).unwrap();
    let mut add = Command::new("smbpasswd")
        .args(["-c", &conf.display().to_string(), "-a", "-s", ACCOUNT])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("smbpasswd is missing: run xtask/system-packages (xtask/test does)");
    std::io::Write::write_all(add.stdin.as_mut().unwrap(), format!("{PASSWORD}\n{PASSWORD}\n").as_bytes()).unwrap();
    assert!(add.wait().unwrap().success(), "smbpasswd could not add {ACCOUNT}");
    let log = dir.path().join("smbd.out");
    let arg = format!("--configfile={}", conf.display());
    let child = spawn("/usr/sbin/smbd", &["--foreground", "--no-process-group", "--debug-stdout", &arg], &log);
    wait_for_port(port, "smbd", &log);
    Server { dir, port, child, conf }
}

/// vsftpd with TLS (implicit or explicit) and a self-signed certificate
/// for 127.0.0.1, the account chrooted to `files/`; `max_rate` caps each
/// transfer's bytes per second.
pub fn vsftpd(implicit: bool, max_rate: Option<u64>) -> Server {
    let dir = server_dir();
    let d = dir.path().display().to_string();
    std::fs::create_dir(dir.path().join("empty")).unwrap();
    certificate(dir.path());
    let port = free_port();
    let implicit = if implicit { "YES" } else { "NO" };
    let rate = max_rate.map(|r| format!("local_max_rate={r}\n")).unwrap_or_default();
    let config = format!(
        "listen=YES\nlisten_address=127.0.0.1\nlisten_port={port}\nbackground=NO\nanonymous_enable=NO\nlocal_enable=YES\nwrite_enable=YES\n\
         pam_service_name=schoolbell-test\nlocal_root={d}/files\nchroot_local_user=YES\nallow_writeable_chroot=YES\nsecure_chroot_dir={d}/empty\n\
         seccomp_sandbox=NO\nisolate_network=NO\nssl_enable=YES\nimplicit_ssl={implicit}\nallow_anon_ssl=NO\nforce_local_logins_ssl=YES\n\
         force_local_data_ssl=YES\nrequire_ssl_reuse=YES\nrsa_cert_file={d}/cert.pem\nrsa_private_key_file={d}/key.pem\n\
         pasv_enable=YES\npasv_address=127.0.0.1\nxferlog_enable=NO\nvsftpd_log_file={d}/vsftpd.log\n{rate}"
    );
    let conf = dir.path().join("vsftpd.conf");
    std::fs::write(&conf, config).unwrap();
    let log = dir.path().join("vsftpd.out");
    let child = spawn("/usr/sbin/vsftpd", &[&conf.display().to_string()], &log);
    wait_for_port(port, "vsftpd", &log);
    Server { dir, port, child, conf }
}

impl super::Sb {
    /// The SMB source `name` on loopback `port`: `share` and `path`, as
    /// [`ACCOUNT`] of domain `DISTRICT`, with the stored secret `credential`.
    pub fn add_smb(&self, name: &str, port: u16, share: &str, path: &str, credential: &str) {
        let port = port.to_string();
        self.ok(&[
            "source",
            "add-smb",
            name,
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--share",
            share,
            "--path",
            path,
            "--domain",
            "DISTRICT",
            "--user",
            ACCOUNT,
            "--credential",
            credential,
        ]);
    }
}

/// A hostile FTPS server (`hostile_ftp.py`, over Debian's pyftpdlib): it
/// serves `files/` over explicit TLS as `ACCOUNT`, and its listings also
/// name each of `names`, which are not plain file names. Every command it
/// receives goes to `commands.log`.
pub fn hostile_ftps(names: &[&str]) -> Server {
    let dir = server_dir();
    let d = dir.path();
    certificate(d);
    std::fs::write(d.join("names"), names.iter().map(|n| format!("{n}\n")).collect::<String>()).unwrap();
    let port = free_port();
    let script = super::root().join("tests/support/hostile_ftp.py");
    let conf = d.join("names");
    let path = |f: &str| d.join(f).display().to_string();
    let log = d.join("hostile.out");
    let child = spawn(
        "/usr/bin/python3",
        &[
            &script.display().to_string(),
            &port.to_string(),
            &path("files"),
            &path("cert.pem"),
            &path("key.pem"),
            ACCOUNT,
            PASSWORD,
            &path("names"),
            &path("commands.log"),
        ],
        &log,
    );
    wait_for_port(port, "the hostile FTPS server (python3-pyftpdlib)", &log);
    Server { dir, port, child, conf }
}

/// A self-signed certificate for 127.0.0.1, `cert.pem` and `key.pem` in `dir`.
fn certificate(dir: &Path) {
    let st = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1", "-keyout"])
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "openssl could not make a certificate");
}

impl Server {
    /// What a hostile server was asked, one command a line.
    pub fn commands(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("commands.log")).unwrap_or_default()
    }

    /// The server certificate's fingerprint, as `openssl x509 -fingerprint
    /// -sha256` prints it.
    pub fn certificate_fingerprint(&self) -> String {
        let out = Command::new("openssl")
            .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
            .arg(self.dir.path().join("cert.pem"))
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }
}

/// A loopback TCP relay to `port` that, once `limit` bytes have come back
/// from the server, calls `cut` and drops both sides: a server that dies
/// mid-download, at a byte count rather than a moment.
pub struct Relay {
    pub port: u16,
}

impl Relay {
    pub fn start(port: u16, limit: u64, cut: impl FnOnce() + Send + 'static) -> Relay {
        use std::io::{Read, Write};
        use std::sync::{Arc, Mutex};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let relay_port = listener.local_addr().unwrap().port();
        let cut = Arc::new(Mutex::new(Some(cut)));
        let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return };
                let (mut c_in, mut s_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16 * 1024];
                    while let Ok(n @ 1..) = c_in.read(&mut buf) {
                        if s_out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
                let (cut, sent) = (cut.clone(), sent.clone());
                std::thread::spawn(move || {
                    let (mut s_in, mut c_out) = (server, client);
                    let mut buf = [0u8; 16 * 1024];
                    while let Ok(n @ 1..) = s_in.read(&mut buf) {
                        if sent.fetch_add(n as u64, std::sync::atomic::Ordering::SeqCst) + n as u64 > limit {
                            if let Some(cut) = cut.lock().unwrap().take() {
                                cut();
                            }
                            let _ = c_out.shutdown(std::net::Shutdown::Both);
                            let _ = s_in.shutdown(std::net::Shutdown::Both);
                            return;
                        }
                        if c_out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Relay { port: relay_port }
    }
}
