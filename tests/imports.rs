//! Import tasks end to end through the scheduler: batch-folder pickup,
//! rename after commit, the content ledger, test import and commit, and
//! the mass-change guard with its confirmation, authorization and audit.

mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use schoolbell::app::{App, Error, Proof, SchedulerConfig, SystemClock};
use schoolbell::config::Config;
use schoolbell::imports::{Guard, ImportTarget};
use schoolbell::plugins::{PluginHost, SandboxConfig};
use schoolbell::rules::RuleSet;
use schoolbell::runs::{Run, RunStatus};
use schoolbell::sources::Location;
use schoolbell::store::Store;
use schoolbell::store::prelude::*;
use schoolbell::tasks::TaskSpec;
use schoolbell::users::{JobEmail, Permission, Role, User};

const HEADER: &str = "Student ID,Last Name,First Name,Birth Date\n";

struct Fixture {
    dir: tempfile::TempDir,
    sched: Arc<App>,
    store: Arc<dyn Backend>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_backend(&dir.path().join("store")).unwrap();
    let rules = Arc::new(RuleSet::load_dir(&support::root().join("rules"), Default::default()).unwrap());
    let sandbox =
        SandboxConfig { folders: [("batch".to_string(), dir.path().join("batch"))].into(), ..SandboxConfig::default() };
    let host = Arc::new(PluginHost::new(store.clone(), rules, &dir.path().join("cache"), sandbox.clone()).unwrap());
    host.install(&support::plugin("import-csv-roster")).unwrap();
    host.grant_all("import-csv-roster").unwrap();
    let config = SchedulerConfig { pickup_settle_ms: 50, ..SchedulerConfig::default() };
    let sched = App::new(host, Arc::new(SystemClock), Config { scheduler: config, sandbox, ..Config::default() });
    std::fs::create_dir_all(dir.path().join("batch")).unwrap();
    let batch = Location::Folder { folder: "batch".into(), path: None };
    sched.sources().add(&admin(), "sis", batch).unwrap();
    Fixture { dir, sched, store }
}

impl Fixture {
    fn batch(&self) -> PathBuf {
        self.dir.path().join("batch")
    }

    fn drop_file(&self, name: &str, rows: std::ops::Range<usize>) -> PathBuf {
        let body: String = rows.map(|i| format!("S{i:04},Last{i},First{i},2010-01-{:02}\n", 1 + i % 28)).collect();
        let path = self.batch().join(name);
        std::fs::write(&path, format!("{HEADER}{body}")).unwrap();
        path
    }

    fn files(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.batch())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn task(&self, name: &str, guard: Guard) {
        let columns = "student-id=Student ID; last-name=Last Name; first-name=First Name; birth-date=Birth Date:date";
        let spec = TaskSpec {
            name: name.into(),
            plugin: "import-csv-roster".into(),
            schedule: "daily at 22:00".into(),
            params: [("columns".to_string(), serde_json::json!(columns))].into(),
            import: Some(ImportTarget {
                source: "sis".into(),
                prefix: Some("IC_Roster".into()),
                full_roster: false,
                guard,
                collection: "students".into(),
                key_field: Some("student-id".into()),
                indexes: vec![],
                match_rule: Some("match_student".into()),
                ..Default::default()
            }),
            ..TaskSpec::default()
        };
        self.sched.tasks().add(&admin(), spec).unwrap();
    }

    async fn finish(&self, queued: Run) -> Run {
        for _ in 0..400 {
            self.sched.engine().dispatch().unwrap();
            let r = self.sched.runs().show(&admin(), queued.id).unwrap();
            if !matches!(r.status, RunStatus::Queued | RunStatus::Running) {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("run {} did not finish", queued.id);
    }

    fn count(&self) -> u64 {
        self.store.count_records("students").unwrap()
    }
}

fn admin() -> User {
    User::local_owner()
}

fn user(name: &str, permissions: Vec<Permission>) -> User {
    User { name: name.into(), email: String::new(), role: Role::Staff, permissions, job_email: JobEmail::Never }
}

fn processed(names: &[String], original: &str) -> bool {
    names.iter().any(|n| n.starts_with(&format!("P_{original}_")) && n.ends_with('Z'))
}

#[tokio::test(flavor = "multi_thread")]
async fn files_are_picked_up_by_prefix_renamed_after_commit_and_never_imported_twice() {
    let f = fixture();
    f.task("roster", Guard::default());
    f.drop_file("IC_Roster_1.csv", 0..20);
    std::fs::write(f.batch().join("other.csv"), "not ours").unwrap();

    let run = f.finish(f.sched.tasks().run_now(&admin(), "roster").unwrap()).await;
    assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.error);
    assert_eq!(run.summary.get("new"), Some(&20));
    assert_eq!(f.count(), 20);
    let names = f.files();
    assert!(processed(&names, "IC_Roster_1.csv"), "{names:?}");
    assert!(names.contains(&"other.csv".to_string()), "files without the prefix stay");

    // The same bytes under a new name are reported, not imported again.
    let first = names.iter().find(|n| n.starts_with("P_")).unwrap().clone();
    std::fs::copy(f.batch().join(&first), f.batch().join("IC_Roster_again.csv")).unwrap();
    let run = f.finish(f.sched.tasks().run_now(&admin(), "roster").unwrap()).await;
    assert_eq!(run.status, RunStatus::Succeeded);
    assert_eq!(f.count(), 20);
    let (messages, _) = f.store.messages(run.id, None, None, 10).unwrap();
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(messages[0].status, "already-imported");
    assert!(
        messages[0].message.contains("IC_Roster_again.csv: already imported (run 1, file "),
        "{}",
        messages[0].message
    );
    assert!(processed(&f.files(), "IC_Roster_again.csv"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_test_import_changes_nothing_and_its_commit_applies_exactly_that_plan() {
    let f = fixture();
    f.task("roster", Guard::default());
    let spec = f.store.collection("students").unwrap();
    assert!(spec.is_some(), "the task's collection and indexes are made when the task is added");
    let file = f.drop_file("IC_Roster.csv", 0..10);
    let run = f.finish(f.sched.tasks().test_import(&admin(), "roster").unwrap()).await;
    assert_eq!(run.status, RunStatus::Succeeded);
    assert!(run.dry_run);
    assert_eq!(f.count(), 0, "a test import writes nothing");
    assert_eq!(f.store.collection("students").unwrap(), spec, "nor does it define or re-index the collection");
    assert!(file.exists(), "and leaves the file where it is");
    let plan = f.sched.imports().plan(&admin(), run.id).unwrap();
    assert_eq!(plan.counts.get("new"), Some(&10));

    let committed = f.sched.imports().commit(&admin(), run.id).unwrap();
    assert_eq!(committed.status, RunStatus::Succeeded);
    assert_eq!(committed.summary.get("written"), Some(&10));
    assert_eq!(f.count(), 10);
    assert!(!file.exists());
    assert_eq!(committed.audit.last().unwrap().action, "committed");
    assert!(matches!(f.sched.imports().commit(&admin(), run.id), Err(Error::Conflict(_))), "a plan commits once");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plan_whose_file_changed_is_refused() {
    let f = fixture();
    f.task("roster", Guard::default());
    let file = f.drop_file("IC_Roster.csv", 0..10);
    let run = f.finish(f.sched.tasks().test_import(&admin(), "roster").unwrap()).await;
    std::fs::write(&file, format!("{HEADER}S9999,Changed,Row,2010-01-01\n")).unwrap();
    match f.sched.imports().commit(&admin(), run.id) {
        Err(Error::Conflict(m)) => {
            assert!(m.contains("changed since the plan was made; run the test import again"), "{m}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(f.count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mass_change_waits_for_confirmation() {
    let f = fixture();
    f.task("roster", Guard::default());
    f.drop_file("IC_Roster_1.csv", 0..100);
    f.finish(f.sched.tasks().run_now(&admin(), "roster").unwrap()).await;
    // 100 existing; 15 renamed: 15% changed, nothing added.
    let body: String = (0..15).map(|i| format!("S{i:04},Renamed{i},First{i},2010-01-{:02}\n", 1 + i % 28)).collect();
    std::fs::write(f.batch().join("IC_Roster_2.csv"), format!("{HEADER}{body}")).unwrap();
    let sam = user("sam", vec![]);
    let run = f.finish(f.sched.tasks().run_now(&admin(), "roster").unwrap()).await;
    assert_eq!(run.status, RunStatus::AwaitingConfirmation);
    assert!(f.store.get_record("students", "S0001").unwrap().unwrap()["last-name"].to_key_text() == "Last1");
    assert!(
        matches!(f.sched.imports().confirm(&sam, run.id, None, Proof::Local), Err(Error::NotFound(_))),
        "staff cannot touch another's run"
    );
    match f.sched.imports().confirm(&admin(), run.id, None, Proof::Local) {
        Err(Error::Forbidden(m)) => assert!(m.contains("admin asked for run") && m.contains("someone else"), "{m}"),
        other => panic!("whoever asked for a run may not confirm it: {other:?}"),
    }
    let olga = User { role: Role::Owner, ..user("olga", vec![]) };
    let done = f.sched.imports().confirm(&olga, run.id, Some("spring name fixes".into()), Proof::Local).unwrap();
    assert_eq!(done.status, RunStatus::Succeeded);
    assert_eq!(done.summary.get("written"), Some(&15));
    assert_eq!(f.store.get_record("students", "S0001").unwrap().unwrap()["last-name"].to_key_text(), "Renamed1");
    let actions: Vec<(&str, &str)> = done.audit.iter().map(|a| (a.user.as_str(), a.action.as_str())).collect();
    assert_eq!(actions, [("olga", "confirmed"), ("olga", "committed")]);
    assert_eq!(done.audit[0].comment.as_deref(), Some("spring name fixes"));
}

#[tokio::test(flavor = "multi_thread")]
async fn mass_additions_need_a_request_and_an_authorized_approval_or_a_code() {
    let f = fixture();
    f.task("roster", Guard::default());
    f.drop_file("IC_Roster_1.csv", 0..10);
    f.finish(f.sched.tasks().run_now(&admin(), "roster").unwrap()).await;
    let auth = user("ana", vec![Permission::Authorize]);
    let clerk = user("cole", vec![]);

    // 10 existing, 5 new: 50% added.
    f.drop_file("IC_Roster_2.csv", 10..15);
    let run = f.finish(f.sched.tasks().run_now(&admin(), "roster").unwrap()).await;
    assert_eq!(run.status, RunStatus::AwaitingAuthorization);
    assert!(matches!(f.sched.imports().confirm(&admin(), run.id, None, Proof::Local), Err(Error::Conflict(_))));
    match f.sched.imports().approve(&auth, run.id, None, Proof::Local) {
        Err(Error::Conflict(m)) => assert!(m.contains("no authorization request yet"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(f.sched.imports().request(&admin(), run.id, "  "), Err(Error::Invalid(_))));
    f.sched.imports().request(&admin(), run.id, "new campus opens in January").unwrap();
    assert!(matches!(f.sched.imports().code(&clerk, run.id), Err(Error::Forbidden(_))));
    let code = f.sched.imports().code(&auth, run.id).unwrap();
    assert!(matches!(
        f.sched.imports().approve(&admin(), run.id, Some("WRONG"), Proof::Local),
        Err(Error::Forbidden(_))
    ));
    let done = f.sched.imports().approve(&admin(), run.id, Some(&code), Proof::Local).unwrap();
    assert_eq!(done.status, RunStatus::Succeeded);
    assert_eq!(f.count(), 15);
    let actions: Vec<&str> = done.audit.iter().map(|a| a.action.as_str()).collect();
    assert_eq!(actions, ["requested-authorization", "issued-approval-code", "approved-with-code", "committed"]);
    assert_eq!(done.audit[0].comment.as_deref(), Some("new campus opens in January"));

    // And by a user who holds the permission, without a code.
    f.drop_file("IC_Roster_3.csv", 15..25);
    let run = f.finish(f.sched.tasks().run_now(&admin(), "roster").unwrap()).await;
    assert_eq!(run.status, RunStatus::AwaitingAuthorization);
    f.sched.imports().request(&admin(), run.id, "summer enrollment").unwrap();
    assert!(
        matches!(f.sched.imports().approve(&admin(), run.id, Some(&code), Proof::Local), Err(Error::Forbidden(_))),
        "codes work once"
    );
    let done = f.sched.imports().approve(&auth, run.id, None, Proof::Local).unwrap();
    assert_eq!(done.status, RunStatus::Succeeded);
    assert_eq!(f.count(), 25);
}

/// Every row type of the report, through the real binary: a row that ends a
/// record, a row that removes one, and a full roster that inactivates or
/// removes the records it lacks.
#[test]
fn rows_end_and_remove_records_and_a_full_roster_inactivates_or_removes_the_rest() {
    use support::{Sb, s};
    let sb = Sb::new();
    sb.ok(&["plugin", "install", "--grant-all", s(&support::plugin("import-csv-roster"))]);
    let columns = "--param=columns=student-id=Student ID; last-name=Last Name; first-name=First Name; \
                   birth-date=Birth Date:date; end-date=End Date:date?; _action=Action?";
    let import = |name: &str, body: &str, extra: &[&str]| -> String {
        let file = sb.file(name, format!("Student ID,Last Name,First Name,Birth Date,End Date,Action\n{body}"));
        let mut args =
            vec!["import", "file", "import-csv-roster", s(&file), "--into", "students", "--key", "student-id"];
        args.extend([
            "--end-field",
            "end-date",
            columns,
            "--confirm-percent",
            "1000",
            "--authorize-percent",
            "1000",
            "--rows",
        ]);
        args.extend(extra);
        sb.ok(&args)
    };
    let first: String = (1..=6).map(|i| format!("S{i},Last{i},First{i},2010-01-0{i},,\n")).collect();
    let out = import("first.csv", &first, &[]);
    assert!(out.contains(": 6 new ("), "{out}");

    let second = "S1,Last1,First1,2010-01-01,2026-06-30,\n\
                  S2,Last2,First2,2010-01-02,,remove\n\
                  S3,Last3,First3,2010-01-03,,\n\
                  S9,Last9,First9,2010-01-09,,remove\n\
                  S4,Last4,First4,2010-01-04,,archive\n";
    let out = import("second.csv", second, &["--full-roster"]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].contains(": 1 ended, 2 error, 1 existing, 2 inactivated, 1 removed ("), "{out}");
    assert!(lines[0].ends_with("(4 records written to `students`)"), "{out}");
    assert!(
        lines.contains(&"  line 2 ended: record S1 (matched on student-id) ended: end-date: null → 2026-06-30"),
        "{out}"
    );
    assert!(lines.contains(&"  line 3 removed: record S2 removed at the row's request"), "{out}");
    assert!(
        lines.contains(&"  line 5 error, field `_action`: the row asks to remove a record, but no record matches it"),
        "{out}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("  line 6 error, field `_action`: action `archive` is not known")),
        "{out}"
    );
    assert!(lines.contains(&"  line 0 inactivated: record S5 is not in the full roster; inactivated"), "{out}");
    let students: serde_json::Value = serde_json::from_str(&sb.ok(&["records", "list", "students", "--json"])).unwrap();
    let keys: Vec<&str> = students.as_array().unwrap().iter().map(|r| r["student-id"].as_str().unwrap()).collect();
    assert_eq!(keys, ["S1", "S3", "S4", "S5", "S6"], "S2 is gone");
    let active =
        |id: &str| students.as_array().unwrap().iter().find(|r| r["student-id"] == id).unwrap()["active"].clone();
    assert_eq!((active("S3"), active("S5"), active("S6")), (serde_json::Value::Null, false.into(), false.into()));

    let out = import("third.csv", "S1,Last1,First1,2010-01-01,2026-06-30,\n", &["--full-roster", "--remove-missing"]);
    assert!(out.contains("1 existing, 4 removed"), "{out}");
    assert!(out.contains("  line 0 removed: record S4 is not in the full roster; removed"), "{out}");
    let students: serde_json::Value = serde_json::from_str(&sb.ok(&["records", "list", "students", "--json"])).unwrap();
    assert_eq!(students.as_array().unwrap().len(), 1, "{students}");
    let listed = sb.ok(&["records", "list", "students"]);
    assert!(listed.ends_with("(1 of 1 records)\n"), "the collection's count follows removals: {listed}");
}
