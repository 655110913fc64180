//! SFTP imports against a real OpenSSH server on loopback with key
//! authentication: test connection, pickup, rename on the server after the
//! commit, and a credential that is stored encrypted and never printed.

mod support;

use support::{FOUR_COLUMNS, Sb, Sshd, plugin, s};

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
    let columns = FOUR_COLUMNS;
    sb.ok(&[
        "task",
        "add",
        "sis",
        "--plugin",
        "import-csv-roster",
        "--schedule",
        "daily at 22:00",
        "--param",
        columns,
        "--source",
        &sshd.url(),
        "--credential",
        "sis-key",
        "--prefix",
        "IC_Roster",
        "--collection",
        "students",
        "--key",
        "student-id",
    ]);
    let out = sb.ok(&["import", "test-connection", "sis"]);
    assert!(out.contains(&format!("connected to {}: 1 file(s) named IC_Roster*", sshd.url())), "{out}");

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

fn walk(dir: &std::path::Path) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() { out.extend(walk(&p)) } else { out.push(std::fs::read(p).unwrap()) }
    }
    out
}
