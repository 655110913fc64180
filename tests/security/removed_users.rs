//! Removing a user leaves nothing that acts for them, and nothing a new
//! user of the same name inherits.

use crate::support::{Sb, plugin, s};

fn setup() -> Sb {
    let sb = Sb::new();
    sb.ok(&["plugin", "install", "--grant-all", s(&plugin("notifier-attendance"))]);
    sb.ok(&["plugin", "grant", "notifier-attendance", "staff"]);
    sb.load_attendance(crate::support::ONE_ATTENDANCE);
    for name in ["sam", "pat", "ann"] {
        sb.ok(&["user", "add", name, "--role", "staff", "--email", &format!("{name}@district.test")]);
    }
    for (task, owner) in [("sams", "sam"), ("pats", "pat")] {
        sb.ok(&["--as", owner, "task", "add", task, "--plugin", "notifier-attendance", "--schedule", "daily at 07:00"]);
        sb.ok(&["--as", owner, "task", "run-now", task, "--wait"]);
    }
    sb
}

fn listed(sb: &Sb, who: &str, what: &[&str]) -> serde_json::Value {
    let mut args = vec!["--as", who];
    args.extend_from_slice(what);
    args.push("--json");
    serde_json::from_str(&sb.ok(&args)).unwrap()
}

#[test]
fn a_removed_users_tasks_stop_and_a_namesake_inherits_nothing() {
    let sb = setup();
    let out = sb.ok(&["user", "remove", "sam"]);
    assert!(out.contains("their tasks, disabled: sams"), "{out}");
    let task = listed(&sb, "admin", &["task", "show", "sams"]);
    assert_eq!(task["task"]["enabled"], false, "{task}");
    assert_eq!(task["task"]["owner"], "sam (removed)", "{task}");

    // A new sam sees none of the old one's tasks or runs.
    sb.ok(&["user", "add", "sam", "--role", "staff", "--email", "new.sam@district.test"]);
    assert_eq!(listed(&sb, "sam", &["task", "list"]).as_array().map(Vec::len), Some(0));
    assert_eq!(listed(&sb, "sam", &["runs", "list"]).as_array().map(Vec::len), Some(0));

    // Handed on instead: the task stays enabled, now ann's.
    let out = sb.ok(&["user", "remove", "pat", "--to", "ann"]);
    assert!(out.contains("their tasks, now ann's: pats"), "{out}");
    let task = listed(&sb, "admin", &["task", "show", "pats"]);
    assert_eq!((task["task"]["owner"].as_str(), task["task"]["enabled"].as_bool()), (Some("ann"), Some(true)));
}

#[test]
fn the_built_in_owner_does_not_come_back() {
    let sb = Sb::new();
    sb.ok(&["user", "add", "admin", "--role", "owner", "--email", "admin@district.test"]);
    sb.ok(&["user", "add", "olga", "--role", "owner", "--email", "olga@district.test"]);
    sb.ok(&["--as", "olga", "user", "remove", "admin"]);
    let err = sb.fails(&["--as", "admin", "task", "list"]);
    assert!(err.contains("no user named `admin`"), "{err}");
    let users = sb.ok(&["--as", "olga", "user", "list"]);
    assert!(!users.contains("admin"), "{users}");
}

#[test]
fn the_store_is_not_replaced_under_a_running_server_and_names_are_plain() {
    let sb = Sb::new();
    let backup = sb.dir.path().join("backup");
    let server = sb.serve();
    sb.ok(&["store", "backup", s(&backup)]);
    let err = sb.fails(&["store", "restore", s(&backup)]);
    assert!(err.contains("stop the service first"), "{err}");
    let err = sb.fails(&["store", "copy", "--to", "host=/nowhere dbname=x"]);
    assert!(err.contains("stop the service first"), "{err}");

    // The API takes the user names the console takes, no others.
    let token = sb.ok(&["user", "token", "admin"]).trim().to_string();
    let api = crate::support::Api::new(&server.url);
    let user = serde_json::json!({ "role": "staff", "email": "x@district.test" });
    for name in ["bad%20name", "%1b%5b31m", &"x".repeat(65)] {
        let (status, body) = api.json("PUT", &format!("/api/v1/users/{name}"), &token, Some(user.clone()));
        assert_eq!(status, 400, "{name}: {body}");
    }
    assert_eq!(api.json("PUT", "/api/v1/users/good.name", &token, Some(user)).0, 200);
}
