//! The scheduler with a hand-moved clock, over a real store and the real
//! plugins: fires, misfires, overlap, priority, cancel, delete, retention
//! and recovery.

mod support;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use schoolbell::app::{App, Error, ManualClock, SchedulerConfig};
use schoolbell::config::Config;
use schoolbell::plugins::{PluginHost, SandboxConfig};
use schoolbell::rules::RuleSet;
use schoolbell::runs::{Run, RunStatus};
use schoolbell::store::prelude::*;
use schoolbell::store::{CollectionSpec, Store};
use schoolbell::tasks::{Misfire, Overlap, TaskSpec};
use schoolbell::users::{JobEmail, Role, User};

struct Fixture {
    _dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
    sched: Arc<App>,
    host: Arc<PluginHost>,
    store: Arc<dyn Backend>,
}

fn t0() -> DateTime<Utc> {
    "2026-09-01T12:00:00Z".parse().unwrap()
}

fn fixture() -> Fixture {
    fixture_with_workers(2)
}

fn fixture_with_workers(workers: usize) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_backend(&dir.path().join("store")).unwrap();
    store.define_collection("attendance", &CollectionSpec { key_field: "student-id".into(), indexes: vec![] }).unwrap();
    let rules = Arc::new(RuleSet::load_dir(&support::root().join("rules"), Default::default()).unwrap());
    let sandbox = SandboxConfig { cancel_grace_secs: 1, timeout_secs: 60, ..SandboxConfig::default() };
    let host = Arc::new(PluginHost::new(store.clone(), rules, &dir.path().join("cache"), sandbox).unwrap());
    for p in ["notifier-attendance", "test-hostile"] {
        host.install(&support::plugin(p)).unwrap();
        host.grant_all(p).unwrap();
    }
    // Staff tasks below use test-hostile's misbehaviours.
    host.grant("test-hostile", "staff:behaviour=loop|well".parse().unwrap()).unwrap();
    let clock = Arc::new(ManualClock::new(t0()));
    let config = Config { scheduler: SchedulerConfig { workers, ..SchedulerConfig::default() }, ..Config::default() };
    let sched = App::new(host.clone(), clock.clone(), config);
    Fixture { _dir: dir, clock, sched, host, store }
}

fn admin() -> User {
    User::local_owner()
}

fn staff(name: &str) -> User {
    User { name: name.into(), email: String::new(), role: Role::Staff, permissions: vec![], job_email: JobEmail::Never }
}

fn every_minute(name: &str) -> TaskSpec {
    TaskSpec {
        name: name.into(),
        plugin: "notifier-attendance".into(),
        schedule: "every 1 minutes".into(),
        ..TaskSpec::default()
    }
}

fn hostile(name: &str, behaviour: &str) -> TaskSpec {
    TaskSpec {
        name: name.into(),
        plugin: "test-hostile".into(),
        schedule: "every 1 minutes".into(),
        params: [("behaviour".to_string(), serde_json::json!(behaviour))].into(),
        ..TaskSpec::default()
    }
}

fn runs_of(f: &Fixture, task: &str) -> Vec<Run> {
    f.sched.runs().list(&admin(), None, Some(task), 1000).unwrap()
}

async fn until_finished(f: &Fixture, id: u64) -> Run {
    for _ in 0..400 {
        f.sched.engine().dispatch().unwrap();
        let run = f.sched.runs().show(&admin(), id).unwrap();
        if run.status.is_finished() {
            return run;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("run {id} did not finish");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fire_time_gives_one_run_however_often_the_scheduler_ticks() {
    let f = fixture();
    let task = f.sched.tasks().add(&admin(), every_minute("a")).unwrap();
    assert_eq!(task.next_fire, Some(t0() + chrono::Duration::minutes(1)));
    f.clock.set(t0() + chrono::Duration::minutes(1));
    assert_eq!(f.sched.engine().tick().unwrap(), 1);
    assert_eq!(f.sched.engine().tick().unwrap(), 0);
    assert_eq!(f.sched.engine().tick().unwrap(), 0);
    let runs = runs_of(&f, "a");
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].status, RunStatus::Queued);
    assert_eq!(runs[0].fire_time, Some(t0() + chrono::Duration::minutes(1)));
    assert_eq!(f.sched.tasks().show(&admin(), "a").unwrap().next_fire, Some(t0() + chrono::Duration::minutes(2)));
    let done = until_finished(&f, runs[0].id).await;
    assert_eq!(done.status, RunStatus::Succeeded, "{:?}", done.error);
    assert_eq!(done.summary.get("notifications"), Some(&0));
}

#[tokio::test(flavor = "multi_thread")]
async fn missed_fires_run_once_or_are_skipped_as_the_task_says() {
    let f = fixture();
    f.sched.tasks().add(&admin(), TaskSpec { misfire: Misfire::RunOnce, ..every_minute("catch-up") }).unwrap();
    f.sched.tasks().add(&admin(), TaskSpec { misfire: Misfire::Skip, ..every_minute("skip") }).unwrap();
    f.clock.set(t0() + chrono::Duration::minutes(10));
    f.sched.engine().tick().unwrap();
    assert_eq!(runs_of(&f, "catch-up").len(), 1, "ten missed fires make one run");
    assert!(runs_of(&f, "skip").is_empty());
    for name in ["catch-up", "skip"] {
        assert_eq!(f.sched.tasks().show(&admin(), name).unwrap().next_fire, Some(t0() + chrono::Duration::minutes(11)));
    }
}

/// Each overlap policy, with the runs really dispatched: a still-running
/// run makes `skip` drop the fire, `queue-one` keep one fire waiting for it,
/// and `cancel-running` stop it for the new one.
#[tokio::test(flavor = "multi_thread")]
async fn overlap_policies_skip_queue_one_or_cancel_the_running_run() {
    let f = fixture_with_workers(6);
    for (name, overlap) in [("skip", Overlap::Skip), ("one", Overlap::QueueOne), ("cancel", Overlap::CancelRunning)] {
        f.sched.tasks().add(&admin(), TaskSpec { overlap, ..hostile(name, "loop") }).unwrap();
    }
    for m in 1..=3 {
        f.clock.set(t0() + chrono::Duration::minutes(m));
        f.sched.engine().tick().unwrap();
        f.sched.engine().dispatch().unwrap();
    }
    let statuses = |task: &str| -> Vec<RunStatus> {
        let mut runs = runs_of(&f, task);
        runs.sort_by_key(|r| r.id);
        runs.into_iter().map(|r| r.status).collect()
    };
    assert_eq!(statuses("skip"), [RunStatus::Running], "skip: the later fires are dropped");
    assert_eq!(
        statuses("one"),
        [RunStatus::Running, RunStatus::Queued],
        "queue-one: one fire waits, the third is dropped"
    );
    let cancel = {
        let mut runs = runs_of(&f, "cancel");
        runs.sort_by_key(|r| r.id);
        runs
    };
    assert_eq!(cancel.len(), 2, "cancel-running: a new run for the running one");
    let old = until_finished(&f, cancel[0].id).await;
    assert_eq!(old.status, RunStatus::Cancelled);
    assert!(old.error.unwrap().contains("did not stop by itself"));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while f.sched.runs().show(&admin(), cancel[1].id).unwrap().status != RunStatus::Running {
        assert!(std::time::Instant::now() < deadline, "the new run did not start once the old one stopped");
        f.sched.engine().dispatch().unwrap();
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(statuses("one"), [RunStatus::Running, RunStatus::Queued], "the queued fire still waits its turn");
    for task in ["skip", "one", "cancel"] {
        for run in runs_of(&f, task).into_iter().filter(|r| !r.status.is_finished()) {
            f.sched.runs().cancel(&admin(), run.id).unwrap();
        }
    }
    f.sched.engine().stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn high_priority_runs_are_served_first() {
    let f = fixture();
    f.sched.tasks().add(&admin(), every_minute("normal")).unwrap();
    f.sched.tasks().add(&admin(), TaskSpec { high_priority: true, ..every_minute("urgent") }).unwrap();
    let normal = f.sched.tasks().run_now(&admin(), "normal").unwrap();
    let urgent = f.sched.tasks().run_now(&admin(), "urgent").unwrap();
    let order: Vec<u64> = f.store.queued().unwrap().into_iter().map(|(_, id)| id).collect();
    assert_eq!(order, [urgent.id, normal.id]);
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_and_delete_follow_the_run_state_and_its_owner() {
    let f = fixture();
    let sam = staff("sam");
    let pat = staff("pat");
    f.sched.tasks().add(&sam, hostile("sams-loop", "loop")).unwrap();
    f.sched.tasks().add(&admin(), every_minute("owners")).unwrap();

    // Queued: cancelled at once.
    let queued = f.sched.tasks().run_now(&admin(), "owners").unwrap();
    assert_eq!(f.sched.runs().cancel(&admin(), queued.id).unwrap().status, RunStatus::Cancelled);
    assert!(f.store.queued().unwrap().is_empty());

    // Running: delete is refused; cancel by another staff member is "not found".
    let run = f.sched.tasks().run_now(&sam, "sams-loop").unwrap();
    f.sched.engine().dispatch().unwrap();
    match f.sched.runs().delete(&sam, run.id) {
        Err(Error::Conflict(m)) => assert_eq!(
            m,
            format!("run {} is running; only finished or cancelled runs can be deleted. Cancel it first", run.id)
        ),
        other => panic!("{other:?}"),
    }
    assert!(matches!(f.sched.runs().cancel(&pat, run.id), Err(Error::NotFound(_))));
    f.sched.runs().cancel(&sam, run.id).unwrap();
    let done = until_finished(&f, run.id).await;
    assert_eq!(done.status, RunStatus::Cancelled);
    assert_eq!(done.cancel_requested_by.as_deref(), Some("sam"));
    assert!(matches!(f.sched.runs().cancel(&sam, run.id), Err(Error::Conflict(_))));
    f.sched.runs().delete(&sam, run.id).unwrap();
    assert!(matches!(f.sched.runs().show(&admin(), run.id), Err(Error::NotFound(_))));
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_removes_old_runs_but_keeps_kept_ones() {
    let f = fixture();
    f.sched.tasks().add(&admin(), every_minute("plain")).unwrap();
    f.sched.tasks().add(&admin(), TaskSpec { keep: true, ..every_minute("kept") }).unwrap();
    let plain = f.sched.tasks().run_now(&admin(), "plain").unwrap();
    let kept = f.sched.tasks().run_now(&admin(), "kept").unwrap();
    until_finished(&f, plain.id).await;
    until_finished(&f, kept.id).await;
    let cancelled = f.sched.tasks().run_now(&admin(), "plain").unwrap();
    f.sched.runs().cancel(&admin(), cancelled.id).unwrap();

    f.clock.set(t0() + chrono::Duration::minutes(9));
    assert_eq!(f.sched.engine().sweep().unwrap(), 0);
    f.clock.set(t0() + chrono::Duration::minutes(11));
    assert_eq!(f.sched.engine().sweep().unwrap(), 1, "cancelled runs go after ten minutes");
    f.clock.set(t0() + chrono::Duration::days(59));
    assert_eq!(f.sched.engine().sweep().unwrap(), 0);
    f.clock.set(t0() + chrono::Duration::days(61));
    assert_eq!(f.sched.engine().sweep().unwrap(), 1, "completed runs go after 60 days");
    let left: Vec<String> =
        f.sched.runs().list(&admin(), None, None, 100).unwrap().into_iter().map(|r| r.task).collect();
    assert_eq!(left, ["kept"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn runs_left_running_by_a_crash_are_marked_interrupted() {
    let f = fixture();
    f.sched.tasks().add(&admin(), hostile("spin", "loop")).unwrap();
    let run = f.sched.tasks().run_now(&admin(), "spin").unwrap();
    f.sched.engine().dispatch().unwrap();
    assert_eq!(f.sched.runs().show(&admin(), run.id).unwrap().status, RunStatus::Running);
    // A second scheduler over the same store stands in for the restarted process.
    let after = App::new(f.host.clone(), f.clock.clone(), Config::default());
    assert_eq!(after.engine().recover().unwrap(), 1);
    let r = after.runs().show(&admin(), run.id).unwrap();
    assert_eq!(r.status, RunStatus::Interrupted);
    assert!(r.error.unwrap().contains("run the task again"));
    f.sched.engine().stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_a_crash_caught_starting_is_marked_interrupted() {
    let f = fixture();
    f.sched.tasks().add(&admin(), every_minute("nightly")).unwrap();
    let run = f.sched.tasks().run_now(&admin(), "nightly").unwrap();
    // The store takes the queue entry before it saves the start: a crash
    // between the two leaves the run queued in its record only.
    let (key, _) = f.store.queued().unwrap().into_iter().find(|(_, id)| *id == run.id).unwrap();
    assert!(f.store.dequeue(&key).unwrap());
    let after = App::new(f.host.clone(), f.clock.clone(), Config::default());
    assert_eq!(after.engine().recover().unwrap(), 1);
    let r = after.runs().show(&admin(), run.id).unwrap();
    assert_eq!(r.status, RunStatus::Interrupted, "not left queued for ever, outside the queue");
    let other = f.sched.tasks().run_now(&admin(), "nightly").unwrap();
    assert_eq!(after.engine().recover().unwrap(), 0, "a run still in the queue stays queued");
    assert_eq!(after.runs().show(&admin(), other.id).unwrap().status, RunStatus::Queued);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_tasks_are_refused_with_what_to_fix() {
    let f = fixture();
    let err = |spec: TaskSpec| f.sched.tasks().add(&admin(), spec).unwrap_err().to_string();
    assert_eq!(
        err(TaskSpec { zone: Some("Mars/Base".into()), ..every_minute("z") }),
        "task `z`, zone: `Mars/Base` is not an IANA time zone; write one like America/Chicago or Europe/Paris"
    );
    assert!(
        err(TaskSpec { schedule: "cron 61 * * * *".into(), ..every_minute("c") })
            .starts_with("task `c`, schedule: schedule `cron 61 * * * *`: invalid cron expression")
    );
    assert_eq!(
        err(TaskSpec { params: [("threshold".to_string(), serde_json::json!("lots"))].into(), ..every_minute("p") }),
        "task `p`, params: plugin notifier-attendance, parameter `threshold`: expected integer, got text `lots`"
    );
    assert!(
        err(TaskSpec { plugin: "nope".into(), ..every_minute("n") }).contains("no plugin named `nope` is installed")
    );
    f.sched.tasks().add(&admin(), every_minute("dup")).unwrap();
    assert!(err(every_minute("dup")).contains("a task named `dup` exists"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_start_with_fractions_of_a_second_fires_once_and_does_not_spin() {
    let f = fixture();
    let odd = t0() + chrono::Duration::nanoseconds(594_431_226);
    f.clock.set(odd);
    let task = f.sched.tasks().add(&admin(), every_minute("odd")).unwrap();
    assert_eq!(task.start, t0(), "starts are kept to whole seconds");
    f.clock.set(odd + chrono::Duration::minutes(1));
    assert_eq!(f.sched.engine().tick().unwrap(), 1);
    assert_eq!(f.sched.engine().tick().unwrap(), 0);
    assert_eq!(f.store.next_due().unwrap(), Some(t0() + chrono::Duration::minutes(2)));
}

#[tokio::test(flavor = "multi_thread")]
async fn sent_emails_are_purged_after_the_outbox_retention_and_pending_ones_stay() {
    let f = fixture();
    f.store.put_user(&User { email: "ada@district.test".into(), ..staff("ada") }).unwrap();
    let notify = schoolbell::notify::NotifySettings {
        group: vec!["ada".into()],
        dedupe: schoolbell::notify::Dedupe::EveryRun,
        ..Default::default()
    };
    let spec = TaskSpec { notify, ..hostile("mail", "well") };
    f.sched.tasks().add(&admin(), spec).unwrap();
    for _ in 0..2 {
        let run = f.sched.tasks().run_now(&admin(), "mail").unwrap();
        until_finished(&f, run.id).await;
    }
    let outbox = f.sched.outbox().list(&admin(), None, 10).unwrap();
    assert_eq!(outbox.len(), 2, "{outbox:?}");
    // The first was sent; the second never could be.
    let (id, mut sent) = outbox.iter().find(|(_, e)| e.run == 1).cloned().unwrap();
    let due = sent.next_attempt;
    sent.status = schoolbell::notify::Delivery::Sent;
    sent.sent_at = Some(t0());
    f.store.update_outbox(id, &sent, due, None).unwrap();

    f.clock.set(t0() + chrono::Duration::days(29));
    f.sched.engine().sweep().unwrap();
    assert_eq!(f.sched.outbox().list(&admin(), None, 10).unwrap().len(), 2);
    f.clock.set(t0() + chrono::Duration::days(31));
    f.sched.engine().sweep().unwrap();
    let left = f.sched.outbox().list(&admin(), None, 10).unwrap();
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].1.status, schoolbell::notify::Delivery::Pending);
}
