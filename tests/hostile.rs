//! A vendor's broken plugin against a running service: each hostile
//! behaviour fails its own run with a message naming the cap it hit, or
//! succeeds within bounds, and the service's resident memory stays under
//! 300 MiB throughout (its peak, read from the child's /proc/PID/status).
//!
//! The ten million refused calls take half a minute in a debug build; the
//! short pass makes one million. `SCHOOLBELL_HOSTILE_FULL=1` (which
//! `xtask/fuzz` sets) makes all ten.

mod support;

use std::time::{Duration, Instant};

use support::{Api, Sb, plugin, s};

fn peak_resident_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM in /proc/PID/status");
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib / 1024
}

#[test]
fn hostile_plugins_fail_their_own_runs_and_the_host_stays_small() {
    let sb = Sb::new();
    sb.ok(&["plugin", "install", "--grant-all", s(&plugin("test-hostile"))]);
    // A `describe` that never returns fails the install within its own short deadline.
    let started = Instant::now();
    let err = sb.fails(&["plugin", "install", s(&plugin("test-slow-describe"))]);
    assert!(err.contains("exceeded its time limit"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(60), "install waited {:?}", started.elapsed());
    let token = sb.ok(&["user", "token", "admin"]).trim().to_string();
    let behaviours = ["flood", "big-body", "state-keys", "state-value", "refusals", "chatter"];
    let refusals = if std::env::var_os("SCHOOLBELL_HOSTILE_FULL").is_some() { 10_000_000 } else { 1_000_000 };
    for b in behaviours {
        sb.ok(&[
            "task",
            "add",
            b,
            "--plugin",
            "test-hostile",
            "--schedule",
            "daily at 03:00",
            "--param",
            &format!("behaviour={b}"),
            "--param",
            &format!("times={refusals}"),
        ]);
    }
    let server = sb.serve();
    let pid = server.child.id();
    let api = Api::new(&server.url);
    let mut outcomes = Vec::new();
    for b in behaviours {
        let t = Instant::now();
        let (status, run) = api.json("POST", &format!("/api/v1/tasks/{b}/run-now"), &token, None);
        assert_eq!(status, 202, "{run}");
        let done = api.settled(&token, run["id"].as_u64().unwrap());
        let peak = peak_resident_mib(pid);
        eprintln!("{b}: {:?}, peak {peak} MiB", t.elapsed());
        assert!(peak < 300, "after {b} the host's peak resident memory is {peak} MiB");
        outcomes.push((
            b,
            done["status"].as_str().unwrap().to_string(),
            done["error"].as_str().unwrap_or("").to_string(),
        ));
    }
    let outcome = |b: &str| outcomes.iter().find(|o| o.0 == b).unwrap().clone();
    let (_, status, error) = outcome("flood");
    assert_eq!(status, "failed");
    assert!(error.contains("memory") || error.contains("hostcall_limit_mib"), "{error}");
    let (_, status, error) = outcome("big-body");
    assert_eq!(status, "failed");
    assert!(error.contains("more than 16 MiB in one call ([sandbox] hostcall_limit_mib)"), "{error}");
    let (_, status, error) = outcome("state-keys");
    assert_eq!(status, "failed");
    assert!(error.contains("[sandbox] state_limit_bytes") && error.contains("more refusals"), "{error}");
    let (_, status, error) = outcome("state-value");
    assert_eq!(status, "succeeded", "{error}");
    let (_, status, error) = outcome("refusals");
    assert_eq!(status, "failed");
    assert!(error.contains("did not declare") && error.contains("more refusals"), "{error}");
    let (_, status, error) = outcome("chatter");
    assert_eq!(status, "succeeded", "{error}");
    // Nothing of the 50 MB body reached the outbox.
    let (_, outbox) = api.json("GET", "/api/v1/outbox", &token, None);
    assert!(outbox.to_string().len() < 1 << 20, "the outbox holds {} bytes", outbox.to_string().len());
    server.terminate();
}
