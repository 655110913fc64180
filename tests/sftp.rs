//! SFTP imports against a real OpenSSH server on loopback with key
//! authentication: the owner's source with its pinned host key, test
//! connection, pickup, rename on the server after the commit, a credential
//! that is stored encrypted and never printed, and a server with another
//! host key refused.

mod support;

use support::{Sb, Sshd, plugin, s};

#[test]
fn an_sftp_import_picks_up_by_prefix_and_renames_on_the_server() {
    let sshd = Sshd::start();
    let sb = Sb::new();
    sb.ok(&["plugin", "install", "--grant-all", s(&plugin("import-csv-roster"))]);
    sb.file("data/schoolbell.toml", "[scheduler]\npickup_settle_ms = 50\n");
    let out = sb.ok(&["secret", "set", "sis-key", "--file", s(&sshd.client_key())]);
    assert_eq!(out.trim(), "secret sis-key stored (encrypted)");
    let key = std::fs::read_to_string(sshd.client_key()).unwrap();
    let body = key.lines().nth(1).unwrap();
    assert_eq!(sb.ok(&["secret", "list"]).trim(), "sis-key");

    std::fs::write(
        sshd.files().join("IC_Roster_1.csv"),
        "Student ID,Last Name,First Name,Birth Date\nS1,Ng,Ann,2010-01-02\nS2,Li,Bo,2011-03-04\n",
    )
    .unwrap();
    std::fs::write(sshd.files().join("notes.txt"), "not ours").unwrap();
    sshd.add_source(&sb, "sis", "sis-key");
    // Nothing reaches the server, nor is a key sent to it, before the owner
    // accepts its host key as `source test` shows it.
    let fingerprint = sshd.fingerprint();
    let err = sb.fails(&["source", "test", "sis", "--prefix", "IC_Roster"]);
    assert!(err.contains(&format!("presents host key {fingerprint}")), "{err}");
    assert!(err.contains(&format!("schoolbell source accept sis {fingerprint}")), "{err}");
    sb.ok(&["source", "accept", "sis", &fingerprint]);
    let out = sb.ok(&["source", "test", "sis", "--prefix", "IC_Roster"]);
    assert!(out.contains("1 file(s) named IC_Roster*"), "{out}");
    sb.roster_task("sis", "sis", "IC_Roster", &[]);
    let out = sb.ok(&["import", "test-connection", "sis"]);
    assert!(out.contains(&format!("connected to sftp://{}@127.0.0.1:{}", sshd.user(), sshd.port)), "{out}");
    assert!(out.contains("1 file(s) named IC_Roster*"), "{out}");

    let out = sb.ok(&["import", "run", "sis"]);
    assert!(out.contains("run 1: succeeded"), "{out}");
    let students: serde_json::Value = serde_json::from_str(&sb.ok(&["records", "list", "students", "--json"])).unwrap();
    assert_eq!(students.as_array().unwrap().len(), 2);
    let names: Vec<String> = std::fs::read_dir(sshd.files())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().any(|n| n.starts_with("P_IC_Roster_1.csv_")), "{names:?}");
    assert!(names.contains(&"notes.txt".to_string()));

    // The key is nowhere in what people and scripts read, nor in the store in the clear.
    for args in [&["task", "show", "sis", "--json"][..], &["task", "list"][..], &["runs", "show", "1"][..]] {
        assert!(!sb.ok(args).contains(body), "{args:?} printed the key");
    }
    let leaked = walk(&sb.data().join("store")).iter().any(|b| b.windows(body.len()).any(|w| w == body.as_bytes()));
    assert!(!leaked, "the key is stored in the clear");

    // A wrong key is refused with a message that says what to check.
    let other = sb.file("other_key", std::fs::read(sshd.dir.path().join("host_key")).unwrap());
    sb.ok(&["secret", "set", "sis-key", "--file", s(&other)]);
    let err = sb.fails(&["import", "test-connection", "sis"]);
    assert!(err.contains("the server refused the key (check the user and the authorized key)"), "{err}");
}

/// A server at the source's address with another host key (reinstalled,
/// or a man in the middle) is refused before the key is offered, and the
/// run says why and what to do.
#[test]
fn a_server_with_another_host_key_is_refused() {
    let real = Sshd::start();
    let other = Sshd::start();
    let sb = Sb::new();
    sb.ok(&["plugin", "install", "--grant-all", s(&plugin("import-csv-roster"))]);
    sb.ok(&["secret", "set", "sis-key", "--file", s(&other.client_key())]);
    std::fs::write(
        other.files().join("IC_Roster_1.csv"),
        "Student ID,Last Name,First Name,Birth Date\nS1,Ng,Ann,2010-01-02\n",
    )
    .unwrap();
    // The owner accepted the real server's key; the address now answers with another.
    other.add_source(&sb, "sis", "sis-key");
    sb.ok(&["source", "accept", "sis", &real.fingerprint()]);
    let err = sb.fails(&["source", "test", "sis"]);
    assert!(
        err.contains(&format!("presents host key {}, not the accepted {}", other.fingerprint(), real.fingerprint())),
        "{err}"
    );
    sb.roster_task("sis", "sis", "IC_Roster", &[]);
    let out = sb.run(&["import", "run", "sis"]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("refusing to connect"), "{text}");
    assert!(
        sb.ok(&["records", "list", "students"]).contains("0 of 0")
            || !sb.ok(&["records", "list", "students"]).contains("S1")
    );
    assert!(other.files().join("IC_Roster_1.csv").exists(), "nothing was picked up or renamed");
}

fn walk(dir: &std::path::Path) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() { out.extend(walk(&p)) } else { out.push(std::fs::read(p).unwrap()) }
    }
    out
}
