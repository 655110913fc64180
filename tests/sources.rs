//! SMB and FTPS imports against real servers on loopback (Samba's smbd and
//! vsftpd): pickup by prefix, import, rename on the server, nothing
//! imported twice, a file still growing left alone, one-line errors that
//! name the failing step without echoing the password, and a server that
//! dies mid-download failing its run with nothing imported.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use support::fileservers::{self, PASSWORD, Server};
use support::{Sb, plugin, s};

const HEADER: &str = "Student ID,Last Name,First Name,Birth Date\n";

fn sb_with_password() -> Sb {
    let sb = Sb::new();
    sb.ok(&["plugin", "install", "--grant-all", s(&plugin("import-csv-roster"))]);
    sb.file("data/schoolbell.toml", "[scheduler]\npickup_settle_ms = 300\n");
    let pw = sb.file("pw", PASSWORD);
    sb.ok(&["secret", "set", "sis-pw", "--file", s(&pw)]);
    sb
}

fn add_task(sb: &Sb, source: &str) {
    // The second file adds half again to the first: not a mass change here.
    sb.roster_task(source, source, "IC_Roster", &["--confirm-percent", "100", "--authorize-percent", "100"]);
}

fn students(sb: &Sb) -> usize {
    let list: serde_json::Value = serde_json::from_str(&sb.ok(&["records", "list", "students", "--json"])).unwrap();
    list.as_array().map_or(0, Vec::len)
}

fn roster(folder: &std::path::Path, name: &str, ids: &[&str]) {
    let rows: String = ids.iter().map(|id| format!("{id},Ng,Ann,2010-01-02\n")).collect();
    std::fs::write(folder.join(name), format!("{HEADER}{rows}")).unwrap();
}

/// Appends a row to `name` every few milliseconds until dropped: a file a
/// server is still receiving.
struct Growing(Arc<AtomicBool>, Option<std::thread::JoinHandle<()>>);

impl Growing {
    fn start(server: &Server, name: &str) -> Growing {
        let path = server.files().join(name);
        std::fs::write(&path, HEADER).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let writer = std::thread::spawn(move || {
            let mut i = 0;
            while !flag.load(Ordering::SeqCst) {
                let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
                std::io::Write::write_all(&mut f, format!("G{i},Ng,Ann,2010-01-02\n").as_bytes()).unwrap();
                i += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Growing(stop, Some(writer))
    }
}

impl Drop for Growing {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
        if let Some(w) = self.1.take() {
            w.join().unwrap();
        }
    }
}

/// Two prefixed files picked up by one run: it imports the first and
/// queues a run for the second, which starts once it ends; each file is
/// renamed on the server after its commit; a file still growing waits; the
/// next run imports nothing. Under `serve`, as a district runs it.
fn picks_up_renames_and_imports_nothing_twice(sb: &Sb, server: &Server, source: &str) {
    roster(&server.files(), "IC_Roster_1.csv", &["S1", "S2"]);
    roster(&server.files(), "IC_Roster_2.csv", &["S3"]);
    std::fs::write(server.files().join("notes.txt"), "not ours").unwrap();
    let out = sb.ok(&["source", "test", source, "--prefix", "IC_Roster"]);
    assert!(out.contains("2 file(s) named IC_Roster*: IC_Roster_1.csv, IC_Roster_2.csv"), "{out}");
    assert!(out.contains("files can be renamed there"), "{out}");
    add_task(sb, source);
    let token = sb.ok(&["user", "token", "admin"]).trim().to_string();
    let serve = sb.serve();
    let api = support::Api::new(&serve.url);
    {
        let _growing = Growing::start(server, "IC_Roster_3.csv");
        let out = sb.ok(&["import", "run", source]);
        assert!(out.contains("succeeded"), "{out}");
        let messages = sb.ok(&["runs", "messages", "1"]);
        assert!(messages.contains("IC_Roster_3.csv is still being written; it is left for the next run"), "{messages}");
        assert!(
            messages.contains("1 more file(s) are ready; run 2 imports the next one once this run ends"),
            "{messages}"
        );
        assert_eq!(api.settled(&token, 2)["status"], "succeeded");
    }
    std::fs::remove_file(server.files().join("IC_Roster_3.csv")).unwrap();
    assert_eq!(students(sb), 3);
    let names = server.names();
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(names[0].starts_with("P_IC_Roster_1.csv_") && names[1].starts_with("P_IC_Roster_2.csv_"), "{names:?}");
    assert_eq!(names[2], "notes.txt");
    let out = sb.ok(&["import", "run", source]);
    assert!(out.contains("files: 0") || out.contains("files 0") || out.contains("0 files"), "{out}");
    assert_eq!(students(sb), 3, "the next run imports nothing");
    assert_eq!(server.names(), names);
    serve.terminate();
}

/// The server dies once the download is under way: the run fails, says
/// so, imports nothing, and leaves no staged copy behind.
fn dies_mid_download(sb: &Sb, server_files: &std::path::Path, source: &str, kill: impl FnOnce()) {
    let rows: String = (0..60_000).map(|i| format!("D{i:06},Ng,Ann,2010-01-02\n")).collect();
    std::fs::write(server_files.join("IC_Roster_big.csv"), format!("{HEADER}{rows}")).unwrap();
    add_task(sb, source);
    let run = sb.command().args(["import", "run", source]).stdout(std::process::Stdio::piped()).spawn().unwrap();
    // Staged under a name the host makes, never the server's.
    let staging = sb.data().join("staging");
    let staged = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(&staging).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    kill_when(|| staged().iter().any(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > 0)), deadline, kill);
    let out = run.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    let shown = sb.ok(&["runs", "show", "1"]);
    assert!(shown.contains("failed"), "{shown}");
    assert!(shown.contains("cannot download"), "{shown}");
    assert_eq!(students(sb), 0, "nothing is imported from a file cut short");
    assert_eq!(staged(), Vec::<std::path::PathBuf>::new(), "the partial copy is removed");
    assert!(server_files.join("IC_Roster_big.csv").exists(), "the file is not renamed");
}

fn kill_when(ready: impl Fn() -> bool, deadline: Instant, kill: impl FnOnce()) {
    while !ready() {
        assert!(Instant::now() < deadline, "the download did not start");
        std::thread::sleep(Duration::from_millis(5));
    }
    kill();
}

fn add_ftps(sb: &Sb, name: &str, server: &Server, tls: &str, path: &str, credential: &str) {
    let port = server.port.to_string();
    sb.ok(&[
        "source",
        "add-ftps",
        name,
        "--host",
        "127.0.0.1",
        "--port",
        &port,
        "--tls",
        tls,
        "--user",
        fileservers::ACCOUNT,
        "--path",
        path,
        "--credential",
        credential,
    ]);
}

#[test]
fn an_smb_import_picks_up_by_prefix_renames_on_the_share_and_imports_nothing_twice() {
    let smbd = fileservers::smbd();
    let sb = sb_with_password();
    sb.add_smb("sis", smbd.port, "exports", "/", "sis-pw");
    picks_up_renames_and_imports_nothing_twice(&sb, &smbd, "sis");
}

#[test]
fn smb_failures_are_one_line_and_name_the_step() {
    let smbd = fileservers::smbd();
    let sb = sb_with_password();
    let wrong = sb.file("wrong", "not-the-password");
    sb.ok(&["secret", "set", "wrong-pw", "--file", s(&wrong)]);
    sb.add_smb("wrong-password", smbd.port, "exports", "/", "wrong-pw");
    sb.add_smb("read-only", smbd.port, "readonly", "/", "sis-pw");
    sb.add_smb("no-folder", smbd.port, "exports", "/missing", "sis-pw");
    sb.add_smb("no-share", smbd.port, "nope", "/", "sis-pw");
    sb.add_smb("closed", support::free_port(), "exports", "/", "sis-pw");
    sb.ok(&[
        "source",
        "add-smb",
        "unknown-host",
        "--host",
        "nosuch.invalid",
        "--share",
        "exports",
        "--user",
        "u",
        "--credential",
        "sis-pw",
    ]);
    for (source, says) in [
        ("wrong-password", "the server refused the user name or password"),
        ("read-only", "no permission to rename files in the folder"),
        ("no-folder", "the folder does not exist in the share"),
        ("no-share", "the server has no share named `nope`"),
        ("closed", "cannot connect to port"),
        ("unknown-host", "cannot resolve the host name `nosuch.invalid` (DNS)"),
    ] {
        let err = sb.fails(&["source", "test", source]);
        let line = err.lines().find(|l| l.starts_with("error:")).unwrap_or_default();
        assert!(line.contains(&format!("source `{source}`")) && line.contains(says), "{source}: {err}");
        assert!(!err.contains(PASSWORD) && !err.contains("not-the-password"), "{source} echoed a password: {err}");
    }
}

#[test]
fn an_smb_server_dying_mid_download_fails_the_run_and_imports_nothing() {
    let smbd = fileservers::smbd();
    let group = smbd.group();
    // The share is reached through a relay that kills smbd once 256 KiB of
    // the file have come back: mid-download, at a byte count.
    let relay = fileservers::Relay::start(smbd.port, 256 * 1024, move || fileservers::kill_group(group));
    let sb = sb_with_password();
    sb.add_smb("sis", relay.port, "exports", "/", "sis-pw");
    dies_mid_download(&sb, &smbd.files(), "sis", || {});
}

#[test]
fn an_ftps_import_verifies_the_pinned_certificate_picks_up_renames_and_imports_nothing_twice() {
    let ftpd = fileservers::vsftpd(false, None);
    let sb = sb_with_password();
    add_ftps(&sb, "sis", &ftpd, "explicit", "/", "sis-pw");
    // A self-signed certificate is refused until its fingerprint is pinned.
    let fingerprint = ftpd.certificate_fingerprint();
    let hex = fingerprint.rsplit('=').next().unwrap();
    let err = sb.fails(&["source", "test", "sis"]);
    assert!(err.contains(&format!("refused the server's TLS certificate SHA256:{hex}")), "{err}");
    assert!(err.contains(&format!("schoolbell source accept sis SHA256:{hex}")), "{err}");
    // Pinned as openssl prints it.
    let out = sb.ok(&["source", "accept", "sis", &fingerprint]);
    assert!(out.contains(&format!("certificate SHA256:{hex} pinned")), "{out}");
    picks_up_renames_and_imports_nothing_twice(&sb, &ftpd, "sis");
}

#[test]
fn ftps_failures_are_one_line_and_name_the_step() {
    let ftpd = fileservers::vsftpd(true, None);
    let other = fileservers::vsftpd(true, None);
    let sb = sb_with_password();
    let wrong = sb.file("wrong", "not-the-password");
    sb.ok(&["secret", "set", "wrong-pw", "--file", s(&wrong)]);
    let pin = ftpd.certificate_fingerprint();
    for (name, server, path, credential, pinned) in [
        ("ok", &ftpd, "/", "sis-pw", &pin),
        ("wrong-password", &ftpd, "/", "wrong-pw", &pin),
        ("no-folder", &ftpd, "/missing", "sis-pw", &pin),
        ("wrong-certificate", &other, "/", "sis-pw", &pin),
    ] {
        add_ftps(&sb, name, server, "implicit", path, credential);
        sb.ok(&["source", "accept", name, pinned]);
    }
    let out = sb.ok(&["source", "test", "ok"]);
    assert!(out.contains("connected to ftps://") && out.contains("files can be renamed there"), "{out}");
    let other_hex = other.certificate_fingerprint().rsplit('=').next().unwrap().to_string();
    for (source, says) in [
        ("wrong-password", "the server refused the user name or password".to_string()),
        ("no-folder", "the folder does not exist, or the user may not open it".to_string()),
        (
            "wrong-certificate",
            format!("refused the server's TLS certificate SHA256:{other_hex}: it is not the pinned certificate"),
        ),
    ] {
        let err = sb.fails(&["source", "test", source]);
        let line = err.lines().find(|l| l.starts_with("error:")).unwrap_or_default();
        assert!(line.contains(&format!("source `{source}`")) && line.contains(&says), "{source}: {err}");
        assert!(!err.contains(PASSWORD) && !err.contains("not-the-password"), "{source} echoed a password: {err}");
    }
}

#[test]
fn an_ftps_server_dying_mid_download_fails_the_run_and_imports_nothing() {
    // Transfers capped at 200 kB/s: the 2.4 MB file takes seconds, and the
    // server is killed as soon as its first bytes are staged.
    let mut ftpd = fileservers::vsftpd(true, Some(200_000));
    let sb = sb_with_password();
    add_ftps(&sb, "sis", &ftpd, "implicit", "/", "sis-pw");
    sb.ok(&["source", "accept", "sis", &ftpd.certificate_fingerprint()]);
    let files = ftpd.files();
    dies_mid_download(&sb, &files, "sis", || ftpd.kill());
}

#[test]
fn the_api_tests_a_source_lists_what_it_would_pick_up_and_names_the_failing_step() {
    let smbd = fileservers::smbd();
    roster(&smbd.files(), "IC_Roster_1.csv", &["S1"]);
    let sb = sb_with_password();
    let wrong = sb.file("wrong", "not-the-password");
    sb.ok(&["secret", "set", "wrong-pw", "--file", s(&wrong)]);
    let token = sb.ok(&["user", "token", "admin"]).trim().to_string();
    let server = sb.serve();
    let api = support::Api::new(&server.url);
    let share = |credential: &str| {
        serde_json::json!({ "smb": {
            "host": "127.0.0.1", "port": smbd.port, "share": "exports", "domain": "DISTRICT",
            "user": fileservers::ACCOUNT, "credential": credential,
        }})
    };
    let (status, body) = api.json("PUT", "/api/v1/sources/sis", &token, Some(share("sis-pw")));
    assert_eq!(status, 201, "{body}");
    let (status, body) = api.json("POST", "/api/v1/sources/sis/test?prefix=IC_Roster", &token, None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["files"], serde_json::json!(["IC_Roster_1.csv"]));
    let (status, body) = api.json("PUT", "/api/v1/sources/wrong", &token, Some(share("wrong-pw")));
    assert_eq!(status, 201, "{body}");
    let (status, body) = api.json("POST", "/api/v1/sources/wrong/test", &token, None);
    let text = body.to_string();
    assert!((400..500).contains(&status), "{status} {text}");
    assert!(text.contains("the server refused the user name or password"), "{text}");
    assert!(!text.contains(PASSWORD) && !text.contains("not-the-password"), "{text}");
    server.terminate();
}

/// Without `serve`, `import run` returns only once the run it started for
/// the next ready file has ended too: the process runs it to its end
/// rather than leave it running with nobody to finish it.
#[test]
fn the_cli_alone_runs_the_next_files_import_to_its_end() {
    let sb = Sb::new();
    sb.ok(&["plugin", "install", "--grant-all", s(&plugin("import-csv-roster"))]);
    let batch = sb.dir.path().join("batch");
    std::fs::create_dir_all(&batch).unwrap();
    let config =
        format!("[scheduler]\npickup_settle_ms = 300\n[sandbox.folders]\nbatch = {:?}\n", batch.display().to_string());
    sb.file("data/schoolbell.toml", config);
    sb.ok(&["source", "add-folder", "sis", "--folder", "batch"]);
    // The second file adds a quarter to the first: not a mass change.
    roster(&batch, "IC_Roster_1.csv", &["S1", "S2", "S3", "S4"]);
    roster(&batch, "IC_Roster_2.csv", &["S5"]);
    add_task(&sb, "sis");
    let out = sb.ok(&["import", "run", "sis"]);
    assert!(out.contains("succeeded"), "{out}");
    let second = sb.ok(&["runs", "show", "2"]);
    assert!(second.contains("succeeded"), "the next file's run ended: {second}");
    assert_eq!(students(&sb), 5);
}
