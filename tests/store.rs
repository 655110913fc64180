//! The store across upgrades and while it serves: a data directory written
//! at an older schema opens, after a backup, with every task, run, ledger
//! entry and outbox entry intact; `store check` finds indexes in step; and
//! `store backup` copies the store while `serve` holds it.

mod support;

use serde_json::Value;
use support::{Sb, plugin, s};

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() { copy_dir(&path, &target) } else { std::fs::copy(&path, &target).map(|_| ()).unwrap() }
    }
}

fn json(sb: &Sb, args: &[&str]) -> Value {
    serde_json::from_str(&sb.ok(args)).unwrap()
}

#[test]
fn a_store_written_at_schema_1_opens_with_everything_intact() {
    let sb = Sb::new();
    copy_dir(&support::root().join("tests/fixtures/store-v1"), &sb.data());
    // Git keeps no modes beyond the executable bit: a restored key is made
    // private again, as an operator restoring a backup would.
    std::fs::set_permissions(sb.data().join("secret.key"), std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .unwrap();
    sb.ok(&["plugin", "install", "--grant-all", s(&plugin("notifier-attendance"))]);

    let backups: Vec<_> =
        std::fs::read_dir(sb.data().join("backups")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(backups.len(), 1, "one backup, taken before migrating: {backups:?}");
    assert!(backups[0].to_string_lossy().starts_with("store-v1-"), "{backups:?}");
    assert!(sb.ok(&["store", "migrate"]).contains("nothing to do"), "migrated once");

    let tasks = json(&sb, &["task", "list", "--json"]);
    let names: Vec<&str> = tasks.as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["attendance", "sams", "weekly"]);
    assert_eq!(tasks[0]["notify"]["group"], serde_json::json!(["counselor@district.test"]));
    assert_eq!(tasks[0]["rules"], serde_json::json!(["attendance_threshold"]));
    assert_eq!(tasks[1]["owner"], "sam");
    assert_eq!(tasks[2]["enabled"], false);

    let runs = json(&sb, &["runs", "list", "--json"]);
    assert_eq!(runs.as_array().unwrap().len(), 2, "{runs}");
    assert_eq!((runs[1]["id"].as_u64(), runs[1]["status"].as_str()), (Some(1), Some("succeeded")));
    assert_eq!(runs[1]["progress_done"], 7);
    assert_eq!((runs[0]["id"].as_u64(), runs[0]["status"].as_str()), (Some(2), Some("queued")));
    let messages = json(&sb, &["runs", "messages", "1", "--json"]);
    assert_eq!(messages["messages"].as_array().unwrap().len(), 4, "{messages}");

    let outbox = json(&sb, &["notify", "outbox", "--json"]);
    assert_eq!(outbox.as_array().unwrap().len(), 4);
    assert!(outbox.as_array().unwrap().iter().all(|e| e["entry"]["to"] == "counselor@district.test"));

    assert!(sb.ok(&["user", "list"]).contains("sam"));
    assert_eq!(sb.ok(&["secret", "list"]).trim(), "smtp");
    assert!(sb.ok(&["records", "list", "attendance"]).contains("(7 of 7 records)"));
    sb.ok(&["store", "check"]);

    // The dedupe ledger came through: the same four are not notified again.
    sb.ok(&["task", "run-now", "attendance", "--wait"]);
    let runs = json(&sb, &["runs", "list", "--task", "attendance", "--json"]);
    assert_eq!(runs[0]["summary"]["deduped"], 4, "{}", runs[0]);
    assert_eq!(runs[0]["summary"]["emails"], 0, "{}", runs[0]);
}

#[test]
fn store_backup_copies_the_store_while_serve_runs() {
    let sb = Sb::new();
    sb.ok(&["plugin", "install", "--grant-all", s(&plugin("notifier-attendance"))]);
    sb.ok(&["task", "add", "morning", "--plugin", "notifier-attendance", "--schedule", "daily at 07:00"]);
    let server = sb.serve();
    let copy = sb.dir.path().join("copy");
    let out = sb.ok(&["store", "backup", s(&copy.join("store"))]);
    assert!(out.contains("store copied to"), "{out}");
    let err = sb.fails(&["store", "backup", s(&copy.join("store"))]);
    assert!(err.contains("not empty"), "{err}");
    server.terminate();
    // The copy is a store: a data directory around it opens.
    std::fs::copy(sb.data().join("secret.key"), copy.join("secret.key")).unwrap();
    let restored = std::process::Command::new(env!("CARGO_BIN_EXE_schoolbell"))
        .args(["--data", s(&copy), "--rules", s(&sb.rules), "task", "list", "--json"])
        .output()
        .unwrap();
    assert!(restored.status.success(), "{}", String::from_utf8_lossy(&restored.stderr));
    let tasks: Value = serde_json::from_slice(&restored.stdout).unwrap();
    assert_eq!(tasks[0]["name"], "morning");
}

#[test]
fn store_check_reports_an_index_that_drifted() {
    let sb = Sb::new();
    let file = sb.file("people.json", r#"[{"id": "1", "name": "Ann"}, {"id": "2", "name": "Bo"}]"#);
    sb.ok(&["records", "load", "people", s(&file), "--key", "id", "--index", "name"]);
    assert!(sb.ok(&["store", "check"]).starts_with("ok"));
    // Drift no operation makes: one index entry lost, one left for a record
    // that is not there.
    {
        let db = sled::open(sb.data().join("store")).unwrap();
        let records = db.open_tree("records").unwrap();
        let ann = records.scan_prefix(b"i\0people\0name\0ann").next().unwrap().unwrap().0;
        records.remove(ann).unwrap();
        records.insert(b"i\0people\0name\0cy\0".iter().chain(b"3").copied().collect::<Vec<u8>>(), &[]).unwrap();
        db.flush().unwrap();
    }
    let err = sb.fails(&["store", "check"]);
    assert!(err.contains("2 problems"), "{err}");
    assert!(err.contains("collection `people`: index entry missing: i/people/name/ann/1"), "{err}");
    assert!(err.contains("collection `people`: index entry for no record: i/people/name/cy/3"), "{err}");
}

/// Moving up: the demo's data directory, copied by `store copy` into an
/// empty PostgreSQL schema, reads back the same through every listing,
/// passes `store check` there, and keeps working (a task runs on it); a
/// second copy into the filled schema is refused.
#[test]
fn store_copy_moves_the_demo_data_into_postgres_unchanged() {
    let sb = Sb::new();
    let batch = sb.dir.path().join("batch");
    sb.file("data/schoolbell.toml", format!("[sandbox.folders]\nbatch = \"{}\"\n", batch.display()));
    let now = ("SCHOOLBELL_NOW", "2026-11-30T12:00:00Z");
    let plugins = support::root().join("target/plugins");
    let demo = sb.command().env(now.0, now.1).args(["demo", "--plugins", s(&plugins)]).output().unwrap();
    assert!(demo.status.success(), "{}", String::from_utf8_lossy(&demo.stderr));
    let cluster = support::postgres::Postgres::start();
    let on = |backend: Option<&str>, args: &[&str]| -> String {
        let mut c = sb.command();
        c.env(now.0, now.1);
        if let Some(url) = backend {
            c.env("SCHOOLBELL_STORE_BACKEND", "postgres")
                .env("SCHOOLBELL_STORE_URL", url)
                .env("SCHOOLBELL_STORE_SCHEMA", "district");
        }
        support::succeeded(c.args(args).output().unwrap(), &format!("{args:?}"))
    };
    let listings: [&[&str]; 9] = [
        &["task", "list", "--json"],
        &["runs", "list", "--limit", "1000", "--json"],
        &["records", "list", "students", "--limit", "1000", "--json"],
        &["records", "list", "attendance", "--limit", "1000", "--json"],
        &["user", "list"],
        &["plugin", "list"],
        &["notify", "outbox", "--limit", "1000", "--json"],
        &["source", "list"],
        &["runs", "messages", "1"],
    ];
    let before: Vec<String> = listings.iter().map(|args| on(None, args)).collect();
    let url = cluster.url();
    let out = on(None, &["store", "copy", "--to", &url, "--schema", "district"]);
    assert!(out.contains("into the PostgreSQL schema `district`"), "{out}");
    assert!(out.contains("runs"), "{out}");
    let after: Vec<String> = listings.iter().map(|args| on(Some(&url), args)).collect();
    for ((args, b), a) in listings.iter().zip(&before).zip(&after) {
        assert_eq!(b, a, "{args:?} reads the same after the copy");
    }
    assert!(on(Some(&url), &["store", "check"]).contains("ok"), "the copied indexes agree with the records");
    let task = json(&sb, &["task", "list", "--json"])[0]["name"].as_str().unwrap().to_string();
    let mut run = sb.command();
    run.env(now.0, now.1)
        .env("SCHOOLBELL_STORE_BACKEND", "postgres")
        .env("SCHOOLBELL_STORE_URL", &url)
        .env("SCHOOLBELL_STORE_SCHEMA", "district")
        .args(["task", "run-now", &task, "--wait"]);
    let ran = run.output().unwrap();
    assert!(String::from_utf8_lossy(&ran.stdout).contains(&task), "{}", String::from_utf8_lossy(&ran.stderr));
    let again = sb.command().args(["store", "copy", "--to", &url, "--schema", "district"]).output().unwrap();
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("holds data already"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}
