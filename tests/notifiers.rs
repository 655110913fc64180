//! The shipped notifier plugins, built from `plugins/` and run through the
//! real binary: birthday, immunization expiration (once per person),
//! status additions since the last run (a watermark), blank grades to the
//! lead faculty, batch folder cleanup and the name CSV export.

mod support;

use serde_json::Value;
use support::{Sb, plugin, s};

fn install(sb: &Sb, name: &str) {
    sb.ok(&["plugin", "install", "--grant-all", s(&plugin(name))]);
}

fn load(sb: &Sb, collection: &str, key: &str, json: &str) {
    let file = sb.file(&format!("{collection}.json"), json);
    sb.ok(&["records", "load", collection, s(&file), "--key", key]);
}

/// Runs a notifier once (state kept under `task`); its notifications.
fn notify(sb: &Sb, name: &str, task: &str, params: &[&str]) -> Vec<Value> {
    let mut args = vec!["notify", "run", name, "--task", task, "--json"];
    for p in params {
        args.extend(["--param", p]);
    }
    let out: Value = serde_json::from_str(&sb.ok(&args)).unwrap();
    out["notifications"].as_array().unwrap().clone()
}

fn subjects(ns: &[Value]) -> Vec<String> {
    ns.iter().map(|n| n["subject"].as_str().unwrap().to_string()).collect()
}

const STUDENTS: &str = r#"[
  {"student-id": "S1", "first-name": "Ann", "last-name": "Ng", "birth-date": "2010-11-23", "email": "ann@district.test"},
  {"student-id": "S2", "first-name": "Bo", "last-name": "Li, Jr.", "birth-date": "2008-02-29"},
  {"student-id": "S3", "first-name": "Cy", "last-name": "Ko", "birth-date": "2008-11-23"}
]"#;

#[test]
fn birthdays_with_an_age_filter_a_greeting_and_leap_days() {
    let sb = Sb::new();
    install(&sb, "notifier-birthday");
    load(&sb, "students", "student-id", STUDENTS);
    let today = notify(&sb, "notifier-birthday", "b", &["date=2026-11-23"]);
    assert_eq!(subjects(&today), ["Birthday: Ann Ng turns 16 today", "Birthday: Cy Ko turns 18 today"]);
    let eighteen = notify(&sb, "notifier-birthday", "b", &["date=2026-11-23", "age=18"]);
    assert_eq!(subjects(&eighteen), ["Birthday: Cy Ko turns 18 today"]);
    let greeted = notify(&sb, "notifier-birthday", "b", &["date=2026-11-23", "age=16", "greet=true"]);
    assert_eq!(subjects(&greeted), ["Birthday: Ann Ng turns 16 today", "Happy birthday, Ann!"]);
    assert_eq!(greeted[1]["recipient"], serde_json::json!({"person": "S1"}), "{greeted:?}");
    // Born on 29 February: remembered on the 28th in a common year.
    let leap = notify(&sb, "notifier-birthday", "b", &["date=2026-02-28"]);
    assert_eq!(subjects(&leap), ["Birthday: Bo Li, Jr. turns 18 today"]);
    assert!(notify(&sb, "notifier-birthday", "b", &["date=2026-11-24"]).is_empty());
}

#[test]
fn immunizations_expiring_soon_are_notified_once_per_person() {
    let sb = Sb::new();
    sb.file("data/schoolbell.toml", "[email]\nallowed_domains = [\"district.test\"]\n");
    install(&sb, "notifier-immunization");
    load(
        &sb,
        "immunizations",
        "id",
        r#"[
          {"id": "1", "student-id": "S1", "first-name": "Ann", "last-name": "Ng", "vaccine": "MMR", "expires": "2026-12-01"},
          {"id": "2", "student-id": "S2", "first-name": "Bo", "last-name": "Li", "vaccine": "Tdap", "expires": "2027-06-01"},
          {"id": "3", "student-id": "S3", "first-name": "Cy", "last-name": "Ko", "vaccine": "HepB", "expires": "2026-11-01"}
        ]"#,
    );
    sb.ok(&[
        "task",
        "add",
        "shots",
        "--plugin",
        "notifier-immunization",
        "--schedule",
        "daily at 06:00",
        "--notify",
        "nurse@district.test",
        "--dedupe",
        "once",
        "--param",
        "date=2026-11-23",
    ]);
    let first = sb.ok(&["task", "run-now", "shots", "--wait"]);
    assert!(first.contains("emails 2") && first.contains("notifications 2"), "{first}");
    let messages = sb.ok(&["runs", "messages", "1"]);
    assert!(messages.contains("Immunization: Ann Ng MMR expires on 2026-12-01 (8 days)"), "{messages}");
    assert!(messages.contains("Immunization: Cy Ko HepB expired on 2026-11-01"), "{messages}");
    let second = sb.ok(&["task", "run-now", "shots", "--wait"]);
    assert!(second.contains("deduped 2") && second.contains("emails 0"), "once per person: {second}");
}

#[test]
fn status_additions_since_the_last_run_follow_a_watermark() {
    let sb = Sb::new();
    install(&sb, "notifier-status-since");
    let change = |id: &str, student: &str, status: &str, added: &str| {
        format!(
            r#"{{"change-id": "{id}", "student-id": "{student}", "first-name": "F{student}", "last-name": "L{student}", "status": "{status}", "added": "{added}"}}"#
        )
    };
    let two =
        [change("c1", "S1", "Probation", "2026-11-20T09:00:00"), change("c2", "S2", "Honors", "2026-11-21T10:30:00")];
    load(&sb, "status-changes", "change-id", &format!("[{}]", two.join(",")));
    let first = notify(&sb, "notifier-status-since", "watch", &[]);
    assert_eq!(subjects(&first), ["Status added: FS1 LS1 is now Probation", "Status added: FS2 LS2 is now Honors"]);
    assert!(notify(&sb, "notifier-status-since", "watch", &[]).is_empty(), "nothing since the last run");
    load(&sb, "status-changes", "change-id", &format!("[{}]", change("c3", "S3", "Probation", "2026-11-22T08:00:00")));
    let third = notify(&sb, "notifier-status-since", "watch", &[]);
    assert_eq!(subjects(&third), ["Status added: FS3 LS3 is now Probation"]);
    // Another task keeps its own watermark.
    assert_eq!(notify(&sb, "notifier-status-since", "other", &["status=Probation"]).len(), 2);
}

/// A task's watermark and dedupe ledger go with it: a new task of the same
/// name starts afresh, unless the old one was removed with --keep-history.
#[test]
fn removing_a_task_forgets_its_state_unless_asked_to_keep_it() {
    let sb = Sb::new();
    install(&sb, "notifier-status-since");
    load(
        &sb,
        "status-changes",
        "change-id",
        r#"[{"change-id": "c1", "student-id": "S1", "first-name": "Ann", "last-name": "Ng", "status": "Probation", "added": "2026-11-20T09:00:00"}]"#,
    );
    let add = || sb.ok(&["task", "add", "watch", "--plugin", "notifier-status-since", "--schedule", "daily at 07:00"]);
    let notifications = || -> u64 {
        sb.ok(&["task", "run-now", "watch", "--wait"]);
        let runs: serde_json::Value =
            serde_json::from_str(&sb.ok(&["runs", "list", "--task", "watch", "--json"])).unwrap();
        runs[0]["summary"]["notifications"].as_u64().unwrap()
    };
    add();
    assert_eq!(notifications(), 1);
    assert_eq!(notifications(), 0, "the watermark holds between runs");
    sb.ok(&["task", "remove", "watch", "--keep-history"]);
    add();
    assert_eq!(notifications(), 0, "kept: the new task carries on from the old watermark");
    sb.ok(&["task", "remove", "watch"]);
    add();
    assert_eq!(notifications(), 1, "forgotten: the new task starts afresh");
}

#[test]
fn blank_grades_go_to_the_sections_lead_faculty() {
    let sb = Sb::new();
    install(&sb, "notifier-blank-grades");
    load(
        &sb,
        "sections",
        "section-id",
        r#"[
          {"section-id": "ALG-1", "course": "Algebra I", "end-date": "2026-11-01", "lead-faculty": "F1"},
          {"section-id": "BIO-2", "course": "Biology", "end-date": "2026-12-15", "lead-faculty": "F2"},
          {"section-id": "ART-3", "course": "Art", "end-date": "2026-10-01", "lead-faculty": "F2"}
        ]"#,
    );
    load(
        &sb,
        "grades",
        "grade-id",
        r#"[
          {"grade-id": "g1", "section-id": "ALG-1", "student-id": "S1", "grade": ""},
          {"grade-id": "g2", "section-id": "ALG-1", "student-id": "S2", "grade": null},
          {"grade-id": "g3", "section-id": "ALG-1", "student-id": "S3", "grade": "B+"},
          {"grade-id": "g4", "section-id": "BIO-2", "student-id": "S1", "grade": ""},
          {"grade-id": "g5", "section-id": "ART-3", "student-id": "S1", "grade": "A"}
        ]"#,
    );
    load(&sb, "staff", "staff-id", r#"[{"staff-id": "F1", "email": "f1@district.test"}, {"staff-id": "F2"}]"#);
    sb.ok(&[
        "task",
        "add",
        "grades",
        "--plugin",
        "notifier-blank-grades",
        "--schedule",
        "daily at 06:00",
        "--param",
        "date=2026-11-23",
        "--param",
        "days_after=7",
    ]);
    let out = sb.ok(&["task", "run-now", "grades", "--wait"]);
    assert!(out.contains("notifications 1") && out.contains("emails 1"), "{out}");
    let outbox: Value = serde_json::from_str(&sb.ok(&["notify", "outbox", "--json"])).unwrap();
    let entry = &outbox[0]["entry"];
    assert_eq!(entry["to"], "f1@district.test");
    assert_eq!(entry["subject"], "2 blank grades in Algebra I");
}

#[test]
fn the_batch_folder_is_cleaned_and_exported_to_only_when_granted() {
    let sb = Sb::new();
    let batch = sb.dir.path().join("batch");
    std::fs::create_dir_all(&batch).unwrap();
    sb.file("data/schoolbell.toml", format!("[sandbox.folders]\nbatch = \"{}\"\n", batch.display()));
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(40 * 86_400);
    for name in ["P_roster.csv_20261001T000000Z", "P_fresh.csv_20261122T000000Z", "IC_Roster_old.csv"] {
        let path = batch.join(name);
        std::fs::write(&path, "x").unwrap();
        if !name.contains("fresh") {
            std::fs::File::options().write(true).open(&path).unwrap().set_modified(old).unwrap();
        }
    }
    sb.ok(&["plugin", "install", s(&plugin("cleanup-batch-folder"))]);
    let err = sb.fails(&["notify", "run", "cleanup-batch-folder"]);
    assert!(err.contains("grant cleanup-batch-folder read:folder:batch"), "{err}");
    for cap in ["read:folder:batch", "write:folder:batch"] {
        sb.ok(&["plugin", "grant", "cleanup-batch-folder", cap]);
    }
    sb.ok(&["notify", "run", "cleanup-batch-folder", "--param", "days=30"]);
    let mut left: Vec<String> =
        std::fs::read_dir(&batch).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    left.sort();
    assert_eq!(left, ["IC_Roster_old.csv", "P_fresh.csv_20261122T000000Z"], "only old processed files go");

    install(&sb, "export-names-csv");
    load(&sb, "students", "student-id", STUDENTS);
    sb.ok(&["notify", "run", "export-names-csv", "--param", "file=names.csv"]);
    let csv = std::fs::read_to_string(batch.join("names.csv")).unwrap();
    assert_eq!(csv, "student-id,last-name,first-name\r\nS1,Ng,Ann\r\nS2,\"Li, Jr.\",Bo\r\nS3,Ko,Cy\r\n");
    let err = sb.fails(&["notify", "run", "export-names-csv", "--param", "file=../escape.csv"]);
    assert!(err.contains("not a plain file name"), "{err}");
}

/// `notify run` is a run like any other: its emails go to the outbox and
/// its ledger holds them back next time; `--dry-run` only shows them.
#[test]
fn notify_run_writes_the_outbox_and_ledger_and_a_dry_run_writes_nothing() {
    let sb = Sb::new();
    install(&sb, "notifier-birthday");
    load(&sb, "students", "student-id", STUDENTS);
    let run = |extra: &[&str]| -> Value {
        let mut args = vec!["notify", "run", "notifier-birthday", "--task", "bday", "--json"];
        args.extend(["--param", "date=2026-11-23", "--param", "greet=true"]);
        args.extend(extra);
        serde_json::from_str(&sb.ok(&args)).unwrap()
    };
    let outbox =
        || serde_json::from_str::<Value>(&sb.ok(&["notify", "outbox", "--json"])).unwrap().as_array().unwrap().len();
    let dry = run(&["--dry-run"]);
    assert!(dry["notifications"].as_array().unwrap().len() >= 3, "{dry}");
    assert_eq!(dry["emails"], 0, "{dry}");
    assert_eq!(outbox(), 0, "a dry run sends nothing");
    let real = run(&[]);
    assert_eq!(real["emails"], 1, "Ann's greeting goes to her address: {real}");
    assert_eq!(outbox(), 1);
    let again = run(&[]);
    assert_eq!(again["emails"], 0, "the ledger holds it back: {again}");
    assert_eq!(run(&["--dry-run"])["emails"], 0);
    assert_eq!(outbox(), 1, "and a dry run still adds nothing");
    let runs: Value = serde_json::from_str(&sb.ok(&["runs", "list", "--task", "bday", "--json"])).unwrap();
    assert_eq!(runs.as_array().unwrap().len(), 4, "every notify run is a run: {runs}");
}
