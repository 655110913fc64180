//! A file server that was taken over lists names that are paths. The host
//! skips each with a message, stages what it downloads under names of its
//! own, and never loads compiled code it did not write.

use crate::support::fileservers::{self, ACCOUNT, PASSWORD};
use crate::support::{Sb, plugin, s};

const HOSTILE: [&str; 4] = ["../x", "/etc/y", "a/../../z", "a\\b"];

#[test]
fn a_hostile_ftps_listing_cannot_write_outside_staging() {
    let ftpd = fileservers::hostile_ftps(&HOSTILE);
    std::fs::write(
        ftpd.files().join("roster.csv"),
        "Student ID,Last Name,First Name,Birth Date\nS1,Ng,Ann,2010-01-02\nS2,Li,Bo,2011-02-03\n",
    )
    .unwrap();
    let sb = Sb::new();
    sb.ok(&["plugin", "install", "--grant-all", s(&plugin("import-csv-roster"))]);
    sb.file("data/schoolbell.toml", "[scheduler]\npickup_settle_ms = 10\n");
    let pw = sb.file("pw", PASSWORD);
    sb.ok(&["secret", "set", "sis-pw", "--file", s(&pw)]);
    let port = ftpd.port.to_string();
    let add = ["--host", "127.0.0.1", "--port", &port, "--tls", "explicit", "--user", ACCOUNT, "--path", "/"];
    sb.ok(&[&["source", "add-ftps", "sis"][..], &add, &["--credential", "sis-pw"]].concat());
    sb.ok(&["source", "accept", "sis", &ftpd.certificate_fingerprint()]);
    // What a name joined onto staging/ would have replaced: the data
    // directory's own files.
    let data = sb.data();
    std::fs::write(data.join("x"), "the host's own file").unwrap();
    let before = tree(&data);

    let tested = sb.ok(&["source", "test", "sis"]);
    assert!(tested.contains("1 file(s) named *: roster.csv (4 listed name(s)"), "{tested}");
    sb.roster_task("sis", "sis", "", &["--confirm-percent", "100", "--authorize-percent", "100"]);
    let out = sb.ok(&["import", "run", "sis"]);
    assert!(out.contains("succeeded"), "{out}");

    let messages = sb.ok(&["runs", "messages", "1"]);
    for name in HOSTILE {
        let said = format!("the server listed a file name that is not a plain name: {}; skipped", name.escape_debug());
        assert!(messages.contains(&said), "no message for {name:?}:\n{messages}");
    }
    let students: serde_json::Value = serde_json::from_str(&sb.ok(&["records", "list", "students", "--json"])).unwrap();
    assert_eq!(students.as_array().map(Vec::len), Some(2), "the well-named file beside them imports");

    assert_eq!(std::fs::read_to_string(data.join("x")).unwrap(), "the host's own file");
    assert!(!std::path::Path::new("/etc/y").exists());
    let after = tree(&data);
    let outside_staging: Vec<_> = after.iter().filter(|p| !before.contains(p) && !p.starts_with("staging")).collect();
    assert!(outside_staging.iter().all(|p| p.starts_with("store") || p.starts_with("cache")), "{outside_staging:?}");
    // The client never asked for a hostile name.
    let commands = ftpd.commands();
    assert!(commands.contains("RETR roster.csv"), "{commands}");
    for name in HOSTILE {
        assert!(!commands.lines().any(|l| l.ends_with(name)), "the host asked for {name:?}:\n{commands}");
    }
}

/// Every path under `dir`, relative to it.
fn tree(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            out.push(path.strip_prefix(dir).unwrap().to_path_buf());
            if path.is_dir() {
                stack.push(path);
            }
        }
    }
    out
}

#[test]
fn the_compile_cache_loads_only_what_the_host_wrote() {
    let sb = Sb::new();
    sb.ok(&["plugin", "install", "--grant-all", s(&plugin("notifier-attendance"))]);
    sb.ok(&["check"]);
    let cache = sb.data().join("cache");
    let files: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    // Planted code in its place: one byte changed, still a file wasmtime
    // would map as native code.
    let mut code = std::fs::read(&files[0]).unwrap();
    let last = code.len() - 1;
    code[last] ^= 0xff;
    std::fs::write(&files[0], &code).unwrap();
    let log = sb.command().args(["check"]).env("RUST_LOG", "schoolbell=warn").output().unwrap();
    assert!(log.status.success(), "{}", String::from_utf8_lossy(&log.stderr));
    let said = String::from_utf8_lossy(&log.stderr);
    assert!(said.contains("not the one this host wrote"), "{said}");
    // Compiled again and written back: the file is the host's own again.
    assert_ne!(std::fs::read(&files[0]).unwrap(), code);
}

#[test]
fn a_new_component_under_a_trusted_name_gets_no_grants_unless_kept() {
    let sb = Sb::new();
    let standard = plugin("notifier-attendance");
    // The same plugin built by the other toolchain: other bytes, same name.
    let other = crate::support::fallback_plugin("notifier-attendance");
    sb.ok(&["plugin", "install", "--grant-all", s(&standard)]);
    sb.ok(&["plugin", "grant", "notifier-attendance", "staff"]);
    let granted = |sb: &Sb| -> Vec<String> {
        let shown: serde_json::Value =
            serde_json::from_str(&sb.ok(&["plugin", "inspect", "notifier-attendance", "--json"])).unwrap();
        shown["granted"].as_array().unwrap().iter().map(|g| g.to_string()).collect()
    };
    let before = granted(&sb);
    assert_eq!(before.len(), 2, "{before:?}");
    let out = sb.ok(&["plugin", "install", "--keep-grants", s(&other)]);
    assert!(out.contains("replacing"), "{out}");
    assert_eq!(granted(&sb), before, "kept when asked");
    let out = sb.ok(&["plugin", "install", s(&standard)]);
    assert!(out.contains("grants dropped"), "{out}");
    assert_eq!(granted(&sb), Vec::<String>::new(), "a replacement starts with no grants");
}

#[test]
fn an_smb_server_must_speak_smb3() {
    let old = fileservers::smbd_with("  server max protocol = SMB2_10");
    let current = fileservers::smbd();
    let sb = Sb::new();
    let pw = sb.file("pw", PASSWORD);
    sb.ok(&["secret", "set", "sis-pw", "--file", s(&pw)]);
    sb.add_smb("old", old.port, "exports", "/", "sis-pw");
    sb.add_smb("current", current.port, "exports", "/", "sis-pw");
    let err = sb.fails(&["source", "test", "old"]);
    let line = err.lines().find(|l| l.starts_with("error:")).unwrap_or_default();
    assert!(line.contains("source `old`") && line.contains("SMB3 or later"), "{err}");
    let out = sb.ok(&["source", "test", "current"]);
    assert!(out.contains("files can be renamed there"), "{out}");
}
