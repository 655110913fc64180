//! The sandbox holds: each hostile guest fails its own run with a clear
//! error, and the same host goes on serving the next run.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use schoolbell::plugins::{Error, PluginHost, RunControl, RunRequest, SandboxConfig};
use schoolbell::records::{Record, Value};
use schoolbell::rules::RuleSet;
use schoolbell::store::{CollectionSpec, Store};

struct Fixture {
    _dir: tempfile::TempDir,
    host: PluginHost,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_backend(&dir.path().join("store")).unwrap();
    store.define_collection("attendance", &CollectionSpec { key_field: "student-id".into(), indexes: vec![] }).unwrap();
    let rules = RuleSet::load_dir(&support::root().join("rules"), Default::default()).unwrap();
    let config = SandboxConfig { timeout_secs: 2, memory_limit_mib: 32, ..SandboxConfig::default() };
    let host = PluginHost::new(store, Arc::new(rules), &dir.path().join("cache"), config).unwrap();
    host.install(&support::plugin("test-hostile")).unwrap();
    host.grant_all("test-hostile").unwrap();
    Fixture { _dir: dir, host }
}

fn request(behaviour: &str) -> RunRequest {
    let mut params = Record::new();
    params.insert("behaviour".into(), Value::Text(behaviour.into()));
    RunRequest { task: "t".into(), params, control: RunControl::new(), ..RunRequest::default() }
}

/// Runs a hostile behaviour, then proves the host still serves a good run.
fn fails(f: &Fixture, behaviour: &str) -> Error {
    let err = f.host.run_notifier("test-hostile", &request(behaviour)).expect_err(behaviour);
    let ok = f.host.run_notifier("test-hostile", &request("well")).expect("the host serves the next run");
    assert_eq!(ok.notifications[0].subject, "behaved");
    err
}

#[test]
fn an_endless_loop_is_stopped_at_the_deadline() {
    let f = fixture();
    let started = Instant::now();
    let err = fails(&f, "loop");
    assert_eq!(err.to_string(), "plugin test-hostile 0.1.0 exceeded its time limit of 2 s and was stopped");
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[test]
fn a_memory_bomb_hits_the_memory_limit() {
    let f = fixture();
    let err = fails(&f, "memory");
    let msg = err.to_string();
    assert!(msg.starts_with("plugin test-hostile 0.1.0 tried to grow its memory to "), "{msg}");
    assert!(msg.ends_with("MiB; the limit is 32 MiB"), "{msg}");
}

#[test]
fn deep_recursion_overflows_the_guest_stack_not_the_host() {
    let f = fixture();
    let err = fails(&f, "recursion");
    assert_eq!(err.to_string(), "plugin test-hostile 0.1.0 crashed: its call stack overflowed (runaway recursion)");
}

#[test]
fn a_panic_is_reported_with_what_the_guest_printed() {
    let f = fixture();
    let err = fails(&f, "panic");
    let msg = err.to_string();
    assert!(msg.starts_with("plugin test-hostile 0.1.0 crashed: it reached `unreachable`"), "{msg}");
    assert!(msg.contains("test-hostile panicked on purpose"), "{msg}");
}

#[test]
fn huge_output_is_capped() {
    let f = fixture();
    let err = fails(&f, "huge-output");
    assert_eq!(
        err.to_string(),
        "plugin test-hostile 0.1.0 returned 150000 notifications; one call may return at most 100000"
    );
}

#[test]
fn reading_an_undeclared_collection_is_denied_even_if_granted_elsewhere() {
    let f = fixture();
    let err = fails(&f, "undeclared");
    assert_eq!(
        err.to_string(),
        "plugin test-hostile 0.1.0 was refused: it tried to read collection `staff`, which it did not declare in `describe`"
    );
}

/// Instances reuse the pool's memory slots, which are reset between runs
/// (only the pages a run wrote, where the kernel can tell): no run finds
/// what the run before it left in memory.
#[test]
fn no_run_finds_what_the_run_before_it_left_in_memory() {
    let f = fixture();
    for run in 0..4 {
        let out = f.host.run_notifier("test-hostile", &request("leftover")).unwrap();
        assert_eq!(out.notifications[0].subject, "found 0", "run {run}");
    }
}

#[test]
fn the_guest_sees_no_files_environment_arguments_or_network() {
    let f = fixture();
    // SAFETY (test): set before any thread reads the environment.
    let out = f.host.run_notifier("test-hostile", &request("ambient")).unwrap();
    assert_eq!(out.notifications[0].subject, "files=0 env=0 args=0 net=false");
}

#[test]
fn a_cancelled_guest_that_ignores_cancel_is_interrupted_after_the_grace_period() {
    let f = Arc::new(fixture());
    let req = request("loop");
    let control = req.control.clone();
    let worker = {
        let f = f.clone();
        std::thread::spawn(move || f.host.run_notifier("test-hostile", &req))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while control.progress().0 == 0 {
        assert!(std::time::Instant::now() < deadline, "the guest never started its loop");
        std::thread::sleep(Duration::from_millis(5));
    }
    control.cancel(Duration::from_millis(100));
    let err = worker.join().unwrap().unwrap_err();
    assert_eq!(
        err.to_string(),
        "plugin test-hostile 0.1.0 was cancelled and did not stop by itself (within its grace period, or while waiting), so it was interrupted"
    );
    assert!(f.host.run_notifier("test-hostile", &request("well")).is_ok());
}

#[test]
fn huge_output_keeps_only_the_capped_log() {
    let f = fixture();
    // The same behaviour with a larger output limit succeeds, with its
    // stdout and log capped rather than failing.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_backend(&dir.path().join("store")).unwrap();
    let rules = Arc::new(RuleSet::new(&dir.path().join("rules"), Default::default()));
    let config = SandboxConfig { output_limit: 200_000, ..SandboxConfig::default() };
    let host = PluginHost::new(store, rules, &dir.path().join("cache"), config).unwrap();
    host.install(&support::plugin("test-hostile")).unwrap();
    let out = host.run_notifier("test-hostile", &request("huge-output")).unwrap();
    assert_eq!(out.notifications.len(), 150_000);
    let total: usize = out.log.iter().map(|l| l.message.len()).sum();
    assert!(total < 3 * 64 * 1024 + 1024, "log kept {total} bytes");
    assert!(out.log.iter().any(|l| l.message.contains("log messages dropped")), "{:?}", out.log.last());
    assert!(out.log.iter().any(|l| l.message.starts_with("stdout: ")), "stdout was captured");
    assert!(out.log.iter().any(|l| l.message.contains("more bytes dropped")));
    drop(f);
}

#[test]
fn a_plugin_evaluates_only_the_rules_its_task_names() {
    let f = fixture();
    let err = fails(&f, "other-rule");
    assert!(err.to_string().contains("rule `attendance_threshold`, which its task does not name"), "{err}");
    let mut named = request("other-rule");
    named.rules = vec!["attendance_threshold".into()];
    // Named, the rule runs (and fails on the empty record it was given).
    let err = f.host.run_notifier("test-hostile", &named).unwrap_err().to_string();
    assert!(err.contains("Variable not found: absences"), "{err}");
}
