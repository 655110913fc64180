//! The contract every storage backend keeps, as checks over `&dyn Backend`.
//! A new backend runs [`all`] on a fresh, empty store of its own and must
//! pass every check; the sled store runs it in the test below.

use chrono::{DateTime, Utc};

use super::{Backend, CollectionSpec, Finish, Firing, Lookup};
use crate::audit::AuditEntry;
use crate::notify::{LedgerEntry, MailKind, OutboxEntry};
use crate::plugins::{PluginEntry, PluginKind};
use crate::records::{Record, Value};
use crate::runs::{Run, RunStatus, TaskMessage, Trigger};
use crate::tasks::{Task, TaskKind};
use crate::users::{JobEmail, Role, Token, User};

fn at(minute: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000 + minute * 60, 0).unwrap()
}

fn record(id: &str, name: &str) -> Record {
    [("id".to_string(), Value::Text(id.into())), ("name".to_string(), Value::Text(name.into()))].into_iter().collect()
}

fn run(id: u64, task: &str) -> Run {
    Run::queued(id, task, "p", "admin", Trigger::Schedule, Some(at(0)), at(0), false)
}

/// Every check, each on its own part of the store.
pub(crate) fn all(b: &dyn Backend) {
    records(b);
    tasks_fire_once(b);
    runs_start_once(b);
    messages_page_and_filter(b);
    finishing_a_run_lands_whole(b);
    outbox(b);
    accounts(b);
    sources(b);
    rule_versions(b);
    approvals(b);
    plugins(b);
    b.flush().unwrap();
    assert_eq!(b.check().unwrap(), vec![], "a store written only through the traits has no drift");
}

fn records(b: &dyn Backend) {
    let spec = CollectionSpec { key_field: "id".into(), indexes: vec![vec!["name".into()]] };
    b.define_collection("people", &spec).unwrap();
    assert_eq!(b.collection("people").unwrap(), Some(spec));
    assert_eq!(b.put_records("people", &[record("1", "Ann"), record("2", "Bo"), record("3", " ANN ")]).unwrap(), 3);
    assert_eq!(b.count_records("people").unwrap(), 3);
    let mut ann = b.find_by_index("people", &["name".into()], &record("x", "ann")).unwrap();
    ann.sort();
    assert_eq!(ann, ["1", "3"], "index lookups trim and ignore case");
    // Asked together, each ask gets what it gets alone, in the order asked.
    let name = ["name".to_string()];
    let probes = [record("x", "bo"), record("x", "nobody"), record("x", ""), record("x", "Ann")];
    let asks: Vec<(&[String], &Record)> = probes.iter().map(|p| (&name[..], p)).collect();
    assert_eq!(
        b.find_by_indexes("people", &asks).unwrap(),
        [vec!["2".to_string()], vec![], vec![], vec!["1".into(), "3".into()]],
        "a batch of index lookups answers each ask in order, keys sorted"
    );
    // Paging through an index gives the same records, in key order.
    let scan = |probe: &str, after: Option<&str>, limit: usize| {
        let (page, next) = b.scan_index("people", &name, &record("x", probe), after, limit).unwrap();
        (page.iter().map(|r| r.record().unwrap()).collect::<Vec<_>>(), next)
    };
    assert_eq!(scan("Ann", None, 1), (vec![record("1", "Ann")], Some("1".into())));
    assert_eq!(scan("Ann", Some("1"), 5), (vec![record("3", " ANN ")], None));
    assert_eq!(scan("Zed", None, 5), (vec![], None));
    let (stored, _) = b.scan_stored("people", None, 5).unwrap();
    let fields = stored[0].fields().unwrap();
    assert_eq!(fields, crate::records::fields(&record("1", "Ann")), "read in place, a record has its fields");
    let (bo, cy) = (record("2", "Bo"), record("2", "Cy"));
    let looked = b.lookup_records("people", &[("2".into(), &bo), ("9".into(), &cy), ("2".into(), &cy)]).unwrap();
    assert!(
        matches!(looked.as_slice(), [Lookup::Same, Lookup::Missing, Lookup::Differs(r)] if *r == bo),
        "a batch of lookups answers each in the order asked"
    );
    // An update moves the record's index entry.
    b.put_records("people", &[record("3", "Cy")]).unwrap();
    assert_eq!(b.find_by_index("people", &["name".into()], &record("x", "ann")).unwrap(), ["1"]);
    assert_eq!(b.count_records("people").unwrap(), 3);
    // An import lands whole, with its ledger entry.
    let n = b.commit_import("people", &[record("4", "Di")], &["1".into()], "hash-1", "run 7").unwrap();
    assert!(n >= 1);
    assert_eq!(b.import_ledger("hash-1").unwrap().as_deref(), Some("run 7"));
    assert_eq!(b.get_record("people", "1").unwrap(), None);
    assert_eq!(b.count_records("people").unwrap(), 3);
    let (page, next) = b.scan_records("people", None, 2).unwrap();
    assert_eq!(page.len(), 2);
    let (rest, _) = b.scan_records("people", next.as_deref(), 10).unwrap();
    assert_eq!(rest.len(), 1, "pages follow on without repeating");
    // Redefining the indexes rebuilds them.
    b.define_collection("people", &CollectionSpec { key_field: "id".into(), indexes: vec![] }).unwrap();
    assert!(
        b.find_by_index("people", &["name".into()], &record("x", "di")).map_or(true, |keys| keys.is_empty()),
        "no index, no lookup"
    );
    b.define_collection("people", &CollectionSpec { key_field: "id".into(), indexes: vec![vec!["name".into()]] })
        .unwrap();
    assert_eq!(b.find_by_index("people", &["name".into()], &record("x", "di")).unwrap(), ["4"]);
    assert_eq!(b.collection_names().unwrap(), ["people"]);
}

fn tasks_fire_once(b: &dyn Backend) {
    let mut task = Task::by_hand("nightly".into(), TaskKind::Notifier, "p", Record::new(), "admin", at(0));
    task.enabled = true;
    task.next_fire = Some(at(10));
    b.put_task(&task, None, task.next_fire).unwrap();
    assert_eq!(b.task("nightly").unwrap(), Some(task.clone()));
    assert_eq!(b.due_tasks(at(9), 10).unwrap(), vec![]);
    assert_eq!(b.due_tasks(at(10), 10).unwrap(), vec![(at(10), "nightly".to_string())]);
    assert_eq!(b.next_due().unwrap(), Some(at(10)));
    // A due time fires once: the second fire of it finds its entry gone.
    task.next_fire = Some(at(20));
    let queued = run(b.new_run_id().unwrap(), "nightly");
    assert!(b.fire(&task, at(10), task.next_fire, Some((1, &queued))).unwrap());
    assert!(!b.fire(&task, at(10), task.next_fire, Some((1, &run(999, "nightly")))).unwrap());
    assert_eq!(b.queued().unwrap().into_iter().map(|(_, id)| id).collect::<Vec<_>>(), [queued.id]);
    assert_eq!(b.run(999).unwrap(), None, "the refused fire queued nothing");
    assert_eq!(b.due_tasks(at(30), 10).unwrap(), vec![(at(20), "nightly".to_string())]);
    assert_eq!(b.all_tasks().unwrap().len(), 1);
    // Fired together, each fires as it would alone: a skipped fire moves
    // its task on and queues nothing, and a due time gone fires nothing.
    let mut weekly = Task::by_hand("weekly".into(), TaskKind::Notifier, "p", Record::new(), "admin", at(0));
    weekly.enabled = true;
    weekly.next_fire = Some(at(20));
    b.put_task(&weekly, None, weekly.next_fire).unwrap();
    assert_eq!(
        b.tasks_named(&["weekly", "gone", "nightly"]).unwrap(),
        [Some(weekly.clone()), None, b.task("nightly").unwrap()],
        "tasks read together come in the order asked"
    );
    weekly.next_fire = Some(at(40));
    task.next_fire = Some(at(30));
    let ids = b.new_run_ids(2).unwrap();
    assert!(ids.len() == 2 && ids[0] > queued.id && ids[1] > ids[0], "run ids taken together increase: {ids:?}");
    let nightly = run(ids[0], "nightly");
    let fires = [
        Firing { task: &weekly, due: at(20), next: weekly.next_fire, queued: None },
        Firing { task: &task, due: at(20), next: task.next_fire, queued: Some((1, &nightly)) },
        Firing { task: &task, due: at(10), next: task.next_fire, queued: Some((1, &run(ids[1], "nightly"))) },
    ];
    assert_eq!(b.fire_all(&fires).unwrap(), [true, true, false]);
    assert_eq!(b.queued().unwrap().into_iter().map(|(_, id)| id).collect::<Vec<_>>(), [queued.id, nightly.id]);
    assert_eq!(b.run(ids[1]).unwrap(), None, "the refused fire queued nothing");
    assert_eq!(b.due_tasks(at(50), 10).unwrap(), vec![(at(30), "nightly".to_string()), (at(40), "weekly".to_string())]);
    b.remove_task("weekly", Some(at(40))).unwrap();
    task.next_fire = Some(at(20));
    b.put_task(&task, Some(at(30)), task.next_fire).unwrap();
    b.remove_task("nightly", Some(at(20))).unwrap();
    assert_eq!(b.task("nightly").unwrap(), None);
    assert_eq!(b.next_due().unwrap(), None);
    // Leave the queue empty for the next check.
    for (key, _) in b.queued().unwrap() {
        b.dequeue(&key).unwrap();
    }
}

fn runs_start_once(b: &dyn Backend) {
    let first = b.next_sequence("contract").unwrap();
    assert_eq!(b.next_sequence("contract").unwrap(), first + 1, "sequences count up by one");
    let low = run(b.new_run_id().unwrap(), "a");
    let high = run(b.new_run_id().unwrap(), "b");
    assert!(high.id > low.id, "run ids increase");
    b.enqueue(1, at(0), &low).unwrap();
    let high_key = b.enqueue(0, at(5), &high).unwrap();
    assert_eq!(b.queue_len(), 2);
    let (key, id) = b.queued_after(None).unwrap().unwrap();
    assert_eq!((key.clone(), id), (high_key, high.id), "high priority is served first");
    assert_eq!(b.queued_after(Some(&key)).unwrap().map(|(_, id)| id), Some(low.id));
    let mut started = high.clone();
    started.status = RunStatus::Running;
    assert!(b.start_run(&key, &started).unwrap());
    assert!(!b.start_run(&key, &started).unwrap(), "a queued run starts once");
    assert_eq!(b.run(high.id).unwrap().unwrap().status, RunStatus::Running);
    let mut done = started;
    done.status = RunStatus::Succeeded;
    b.put_run(&done, Some(at(6))).unwrap();
    assert_eq!(b.finished_before(at(7)).unwrap(), [high.id]);
    assert_eq!(b.runs(None, 10).unwrap().first().map(|r| r.id), Some(high.id), "newest first");
    b.delete_run(high.id, Some(at(6))).unwrap();
    assert_eq!(b.run(high.id).unwrap(), None);
    assert_eq!(b.finished_before(at(7)).unwrap(), Vec::<u64>::new());
    let (key, _) = b.queued_after(None).unwrap().unwrap();
    assert!(b.dequeue(&key).unwrap());
    assert!(!b.dequeue(&key).unwrap());
}

fn messages_page_and_filter(b: &dyn Backend) {
    let r = run(b.new_run_id().unwrap(), "m");
    b.put_run(&r, None).unwrap();
    let messages: Vec<TaskMessage> = (0..5)
        .map(|seq| TaskMessage {
            seq,
            row: Some(seq + 2),
            status: if seq % 2 == 0 { "error".into() } else { "new".into() },
            field: None,
            message: format!("row {seq}"),
        })
        .collect();
    let with_status: Vec<(&str, &TaskMessage)> = messages.iter().map(|m| (m.status.as_str(), m)).collect();
    b.add_messages(r.id, 0, &with_status).unwrap();
    let (page, next) = b.messages(r.id, None, None, 2).unwrap();
    assert_eq!(page, messages[..2]);
    let (rest, _) = b.messages(r.id, None, next, 10).unwrap();
    assert_eq!(rest, messages[2..]);
    let (errors, _) = b.messages(r.id, Some("error"), None, 10).unwrap();
    assert_eq!(errors.iter().map(|m| m.seq).collect::<Vec<_>>(), [0, 2, 4]);
    let mut row = crate::records::Record::new();
    row.insert("last-name".into(), crate::records::Value::Text("Ng".into()));
    let mapped = |lines: &[u64]| -> Vec<crate::plugins::MappedRow> {
        lines.iter().map(|&line| crate::plugins::MappedRow { line, record: row.clone() }).collect()
    };
    let privacy = crate::privacy::Privacy::default();
    // Two batches, the way a file streams: a line is found in the batch
    // that holds it, and a line no batch holds is none.
    b.add_message_rows(r.id, &crate::imports::ShownRows::new(&mapped(&[2]), &privacy)).unwrap();
    b.add_message_rows(r.id, &crate::imports::ShownRows::new(&mapped(&[5, 7]), &privacy)).unwrap();
    let found = b.message_rows(r.id, &[1, 2, 3, 5, 6, 7, 8]).unwrap();
    let some = Some(row.clone());
    assert_eq!(found, vec![None, some.clone(), None, some.clone(), None, some, None]);
    b.delete_run(r.id, None).unwrap();
    assert_eq!(b.message_rows(r.id, &[2]).unwrap(), vec![None], "a run's rows go with it");
}

fn finishing_a_run_lands_whole(b: &dyn Backend) {
    let mut r = run(b.new_run_id().unwrap(), "watch");
    r.status = RunStatus::Succeeded;
    let entry = LedgerEntry { first: at(1), last: at(1), count: 1 };
    let mail = OutboxEntry::new(
        r.id,
        "watch",
        MailKind::Notification,
        "a@district.test".into(),
        "s".into(),
        "b".into(),
        "k",
        at(1),
    );
    let oid = b.next_sequence("outbox").unwrap();
    let state = [("since".to_string(), Some("2026-01-01".to_string()))];
    let ledger = [("k".to_string(), Some(entry.clone()))];
    let outbox = [(oid, at(1), mail.clone())];
    let said = |seq: u64, status: &str| TaskMessage {
        seq,
        row: None,
        status: status.into(),
        field: None,
        message: format!("message {seq}"),
    };
    let (sent, skipped) = (said(0, "sent"), said(1, "skipped"));
    let messages = [("sent", &sent), ("skipped", &skipped)];
    b.finish_run(&r, at(1), &Finish { state: &state, ledger: &ledger, outbox: &outbox, messages: &messages[..1] })
        .unwrap();
    assert_eq!(b.run(r.id).unwrap().unwrap().status, RunStatus::Succeeded);
    assert_eq!(
        b.messages(r.id, None, None, 10).unwrap().0,
        std::slice::from_ref(&sent),
        "the messages land with the run"
    );
    // A run that leaves nothing else behind, with its messages.
    let mut alone = run(b.new_run_id().unwrap(), "watch");
    alone.status = RunStatus::Failed;
    b.finish_run(&alone, at(2), &Finish { state: &[], ledger: &[], outbox: &[], messages: &messages }).unwrap();
    assert_eq!(b.run(alone.id).unwrap().unwrap().status, RunStatus::Failed);
    assert_eq!(b.messages(alone.id, Some("skipped"), None, 10).unwrap().0, [skipped]);
    b.delete_run(alone.id, Some(at(2))).unwrap();
    // Several such runs at once, as the engine's committer writes them.
    let (mut one, mut two) = (run(b.new_run_id().unwrap(), "watch"), run(b.new_run_id().unwrap(), "watch"));
    one.status = RunStatus::Succeeded;
    two.status = RunStatus::Failed;
    b.finish_runs(&[(&one, at(3)), (&two, at(4))]).unwrap();
    assert_eq!(b.run(one.id).unwrap().unwrap().status, RunStatus::Succeeded);
    assert_eq!(b.run(two.id).unwrap().unwrap().status, RunStatus::Failed);
    let by = |t: i64| -> Vec<u64> {
        b.finished_before(at(t)).unwrap().into_iter().filter(|id| [one.id, two.id].contains(id)).collect()
    };
    assert_eq!(by(3), [one.id], "each is in retention by its own finish");
    assert_eq!(by(4), [one.id, two.id]);
    b.delete_run(one.id, Some(at(3))).unwrap();
    b.delete_run(two.id, Some(at(4))).unwrap();
    assert_eq!(b.task_state("watch", "since").unwrap().as_deref(), Some("2026-01-01"));
    assert_eq!(b.notified("watch").unwrap(), vec![("k".to_string(), entry)]);
    assert_eq!(b.outbox(None, 10).unwrap(), vec![(oid, mail)]);
    b.apply_task_state("watch", &[("since".into(), None)]).unwrap();
    assert_eq!(b.task_state("watch", "since").unwrap(), None);
    b.apply_task_state("watch", &[("other".into(), Some("x".into()))]).unwrap();
    b.forget_task("watch").unwrap();
    assert_eq!(b.task_state("watch", "other").unwrap(), None);
    assert_eq!(b.notified("watch").unwrap(), vec![]);
}

fn outbox(b: &dyn Backend) {
    let due = b.outbox_due(at(1), 10).unwrap();
    assert_eq!(due.len(), 1);
    let (oid, mut mail) = due[0].clone();
    assert_eq!(b.outbox_due(at(0), 10).unwrap(), vec![], "not due before its time");
    mail.attempts = 1;
    b.update_outbox(oid, &mail, at(1), Some(at(30))).unwrap();
    assert_eq!(b.outbox_due(at(29), 10).unwrap(), vec![]);
    assert_eq!(b.outbox_due(at(30), 10).unwrap(), vec![(oid, mail.clone())]);
    b.update_outbox(oid, &mail, at(30), None).unwrap();
    assert_eq!(b.outbox_due(at(1000), 10).unwrap(), vec![], "no longer due once settled");
    assert_eq!(b.outbox(None, 10).unwrap(), vec![(oid, mail)]);
}

fn accounts(b: &dyn Backend) {
    let sam = User {
        name: "sam".into(),
        email: "sam@x".into(),
        role: Role::Staff,
        permissions: vec![],
        job_email: JobEmail::Never,
    };
    b.put_user(&sam).unwrap();
    assert_eq!(b.user("sam").unwrap(), Some(sam.clone()));
    assert_eq!(b.all_users().unwrap(), vec![sam]);
    let token = Token { id: "h1".into(), user: "sam".into(), created_at: at(0), last_used_at: None };
    b.put_token("h1hash", &token).unwrap();
    b.put_token("h2hash", &Token { id: "h2".into(), ..token.clone() }).unwrap();
    assert_eq!(b.token("h1hash").unwrap(), Some(token.clone()));
    assert_eq!(b.all_tokens().unwrap().len(), 2);
    assert!(b.remove_token("h2hash").unwrap());
    b.remove_tokens_of("sam").unwrap();
    assert_eq!(b.token("h1hash").unwrap(), None);
    assert!(b.remove_user("sam").unwrap());
    assert_eq!(b.user("sam").unwrap(), None);
    let entry =
        AuditEntry { at: at(1), user: "admin".into(), action: "task.add".into(), target: "t".into(), detail: None };
    let first = b.append_audit(&entry).unwrap();
    let second = b.append_audit(&AuditEntry { action: "task.remove".into(), ..entry.clone() }).unwrap();
    assert_eq!(b.audit_log(None, 10).unwrap().len(), 2);
    assert_eq!(
        b.audit_log(Some(first), 10).unwrap(),
        vec![(second, AuditEntry { action: "task.remove".into(), ..entry })]
    );
    b.put_password("sam", "$argon2id$x").unwrap();
    assert_eq!(b.password("sam").unwrap().as_deref(), Some("$argon2id$x"));
    assert!(b.remove_password("sam").unwrap());
    assert_eq!(b.password("sam").unwrap(), None);
    let view =
        crate::views::SavedView { name: "failed".into(), query: "status=failed".into(), columns: vec!["task".into()] };
    b.put_view("sam", &view).unwrap();
    b.put_view("samuel", &crate::views::SavedView { name: "other".into(), ..view.clone() }).unwrap();
    b.put_view("sam", &crate::views::SavedView { query: "status=running".into(), ..view.clone() }).unwrap();
    assert_eq!(b.views("sam").unwrap().len(), 1, "one view per name, and only sam's (not samuel's)");
    assert_eq!(b.views("sam").unwrap()[0].query, "status=running");
    assert!(b.remove_view("sam", "failed").unwrap());
    assert_eq!(b.views("sam").unwrap(), vec![]);
    b.put_secret("smtp", b"sealed").unwrap();
    assert_eq!(b.secret("smtp").unwrap().as_deref(), Some(&b"sealed"[..]));
    assert_eq!(b.secret_names().unwrap(), ["smtp"]);
}

fn approvals(b: &dyn Backend) {
    let approval =
        crate::runs::Approval { mac: "m".into(), issued_by: "ana".into(), expires_at: at(60), failed_attempts: 0 };
    b.put_approval(7, &approval).unwrap();
    assert_eq!(b.approval(7).unwrap(), Some(approval));
    b.remove_approval(7).unwrap();
    assert_eq!(b.approval(7).unwrap(), None);
}

fn sources(b: &dyn Backend) {
    use crate::sources::{Location, Source};
    let sis = Source {
        name: "sis".into(),
        location: Location::Folder { folder: "batch".into(), path: Some("rosters".into()) },
        created_by: "admin".into(),
        created_at: at(0),
    };
    let ftp = Source {
        name: "ftp".into(),
        location: Location::Sftp {
            host: "files.test".into(),
            port: 22,
            user: "sis".into(),
            path: "/out".into(),
            credential: "key".into(),
            host_key: Some("SHA256:abc".into()),
        },
        ..sis.clone()
    };
    b.put_source(&sis).unwrap();
    b.put_source(&ftp).unwrap();
    assert_eq!(b.source("sis").unwrap(), Some(sis.clone()));
    assert_eq!(b.all_sources().unwrap(), vec![ftp, sis]);
    assert!(b.remove_source("sis").unwrap());
    assert!(!b.remove_source("sis").unwrap());
    assert_eq!(b.source("sis").unwrap(), None);
}

fn rule_versions(b: &dyn Backend) {
    assert_eq!((b.rule_versions().unwrap(), b.rule_heads().unwrap()), (0, vec![]));
    let first = b.add_rule_version("late", "absences > 5", "h1", "rules folder", at(0)).unwrap();
    // A name that sorts right after "late" keeps its versions apart.
    let other = b.add_rule_version("late-b", "true", "h3", "admin", at(1)).unwrap();
    let second = b.add_rule_version("late", "absences > 7", "h2", "admin", at(2)).unwrap();
    assert_eq!((first.version, second.version, other.version), (1, 2, 1), "each save takes the next number");
    assert_eq!((second.saved_by.as_str(), second.saved_at, second.source.as_str()), ("admin", at(2), "absences > 7"));
    assert_eq!(b.rule_history("late").unwrap(), vec![first, second.clone()]);
    assert_eq!(b.rule_heads().unwrap(), vec![second, other], "the newest of each rule, by name");
    assert_eq!(b.rule_versions().unwrap(), 3);
    assert_eq!(b.rule_history("nothing").unwrap(), vec![]);
}

fn plugins(b: &dyn Backend) {
    let entry = PluginEntry {
        name: "p".into(),
        version: "1.0.0".into(),
        kind: PluginKind::Notifier,
        description: String::new(),
        hash: "abc".into(),
        size: 3,
        wit_version: "0.1.2".into(),
        params: vec![],
        capabilities: vec![],
        granted: vec![],
    };
    assert!(b.put_blob("abc", b"wasm").unwrap());
    assert!(!b.put_blob("abc", b"wasm").unwrap(), "the same blob twice is stored once");
    b.put_plugin(&entry).unwrap();
    assert_eq!(b.plugin("p").unwrap(), Some(entry.clone()));
    assert_eq!(b.all_plugins().unwrap(), vec![entry]);
    assert_eq!(b.blob("abc").unwrap().as_deref(), Some(&b"wasm"[..]));
    assert!(b.remove_plugin("p").unwrap());
    assert!(!b.remove_plugin("p").unwrap());
    b.remove_blob("abc").unwrap();
    assert_eq!(b.blob("abc").unwrap(), None);
}

#[test]
fn the_sled_store_keeps_the_storage_contract() {
    let dir = tempfile::tempdir().unwrap();
    let store = super::Store::open(dir.path()).unwrap();
    all(&store);
}
