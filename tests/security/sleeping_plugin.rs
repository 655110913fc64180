//! A plugin that waits on a clock (`std::thread::sleep`, a WASI wait the
//! epoch cannot interrupt) is still held to its deadline and its cancel,
//! and does not hold up the service's shutdown.

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::support::{Api, Sb, plugin, s, until};

/// A service whose plugins have `timeout` seconds, with a task `sleeper`
/// that sleeps an hour.
fn sleeper(timeout: u64) -> (Sb, String) {
    let sb = Sb::new();
    sb.file("data/schoolbell.toml", format!("[sandbox]\ntimeout_secs = {timeout}\ncancel_grace_secs = 30\n"));
    sb.ok(&["plugin", "install", "--grant-all", s(&plugin("test-hostile"))]);
    sb.ok(&[
        "task",
        "add",
        "sleeper",
        "--plugin",
        "test-hostile",
        "--schedule",
        "daily at 03:00",
        "--param",
        "behaviour=sleep",
    ]);
    let token = sb.ok(&["user", "token", "admin"]).trim().to_string();
    (sb, token)
}

fn time(run: &Value, field: &str) -> DateTime<Utc> {
    run[field].as_str().unwrap_or_else(|| panic!("run has no {field}: {run}")).parse().unwrap()
}

/// Starts the sleeper and waits until its guest is asleep (it reports
/// progress just before).
fn start_sleeping(api: &Api, token: &str) -> u64 {
    let (status, run) = api.json("POST", "/api/v1/tasks/sleeper/run-now", token, None);
    assert_eq!(status, 202, "{run}");
    let id = run["id"].as_u64().unwrap();
    until(60, "the sleeper to start sleeping", || {
        let (_, run) = api.json("GET", &format!("/api/v1/runs/{id}"), token, None);
        (run["status"] == "running" && run["progress_done"].as_u64() == Some(1)).then_some(())
    });
    id
}

#[test]
fn a_sleeping_plugin_fails_at_its_deadline() {
    let (sb, token) = sleeper(2);
    let server = sb.serve();
    let api = Api::new(&server.url);
    let id = start_sleeping(&api, &token);
    let run = api.settled(&token, id);
    assert_eq!(run["status"], "failed", "{run}");
    let error = run["error"].as_str().unwrap();
    assert!(error.contains("exceeded its time limit of 2 s"), "{error}");
    let took = time(&run, "finished_at") - time(&run, "started_at");
    assert!(took <= chrono::Duration::seconds(3), "the run was stopped after {took}");
    // The pool is free again: the next run gets a worker.
    let next = start_sleeping(&api, &token);
    assert_eq!(api.settled(&token, next)["status"], "failed");
}

#[test]
fn a_sleeping_plugin_is_cancelled_at_once() {
    let (sb, token) = sleeper(3600);
    let server = sb.serve();
    let api = Api::new(&server.url);
    let id = start_sleeping(&api, &token);
    let asked = Utc::now();
    let (status, answer) = api.json("POST", &format!("/api/v1/runs/{id}/cancel"), &token, None);
    assert_eq!(status, 200, "{answer}");
    let run = api.settled(&token, id);
    assert_eq!(run["status"], "cancelled", "{run}");
    // Well inside the 30 s grace a guest that runs code would get.
    let took = time(&run, "finished_at") - asked;
    assert!(took <= chrono::Duration::seconds(1), "cancel took {took}");
}

#[test]
fn serve_stops_while_a_plugin_sleeps() {
    let (sb, token) = sleeper(3600);
    let mut server = sb.serve();
    let api = Api::new(&server.url);
    let id = start_sleeping(&api, &token);
    std::process::Command::new("kill").args(["-TERM", &server.child.id().to_string()]).status().unwrap();
    // Shutdown gives runs the cancel grace (30 s here) and two seconds more.
    let exit = until(40, "serve to stop", || server.child.try_wait().unwrap());
    assert!(exit.success(), "{exit:?}");
    let shown = sb.ok(&["runs", "show", &id.to_string()]);
    assert!(shown.contains("cancelled"), "{shown}");
}
