//! What a staff member sets up runs with a staff member's reach: a
//! plugin's grants serve the tasks the owner sets up, staff use only the
//! plugins the owner offered them with the parameter values allowed, and
//! priority, task counts and fire intervals are checked in the service.

use serde_json::json;

use crate::support::{Api, Sb, plugin, s};

fn task(name: &str, plugin: &str, params: serde_json::Value) -> serde_json::Value {
    json!({ "name": name, "plugin": plugin, "schedule": "daily at 03:00", "params": params })
}

#[test]
fn staff_use_only_what_the_owner_offered_them() {
    let sb = Sb::new();
    sb.folder_source("sis", "[tasks]\nmax_per_user = 3\nmin_interval_minutes = 60\n");
    sb.ok(&["plugin", "install", "--grant-all", s(&plugin("export-names-csv")), s(&plugin("cleanup-batch-folder"))]);
    sb.ok(&["user", "add", "sam", "--role", "staff", "--email", "sam@district.test"]);
    let admin = sb.ok(&["user", "token", "admin"]).trim().to_string();
    let sam = sb.ok(&["user", "token", "sam"]).trim().to_string();
    let server = sb.serve();
    let api = Api::new(&server.url);
    let post = |token: &str, body: serde_json::Value| api.json("POST", "/api/v1/tasks", token, Some(body));

    // Granted to the plugin, but not offered to staff: every student's SSN
    // into a file of sam's choosing is refused.
    let (status, body) = post(&sam, task("ssns", "export-names-csv", json!({ "fields": "ssn", "file": "x.csv" })));
    assert_eq!(status, 403, "{body}");
    assert!(body["error"].as_str().unwrap().contains("plugin export-names-csv is not offered to staff"), "{body}");

    // Offered with fixed and allowed values: only those.
    sb.ok(&["plugin", "grant", "export-names-csv", "staff:fields=student-id,last-name|student-id;file=names.csv"]);
    let (status, body) = post(&sam, task("ssns", "export-names-csv", json!({ "fields": "ssn" })));
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("only to student-id,last-name or student-id, not `ssn`"),
        "{body}"
    );
    let (status, body) =
        post(&sam, task("names", "export-names-csv", json!({ "fields": "student-id", "file": "../../x" })));
    assert_eq!(status, 403, "{body}");
    let (status, body) = post(&sam, task("names", "export-names-csv", json!({ "fields": "student-id" })));
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["task"]["params"]["file"], "names.csv", "the fixed value is set: {body}");

    // A fixed value holds even when staff leave it out.
    sb.ok(&["plugin", "grant", "cleanup-batch-folder", "staff:days=30"]);
    let (status, body) = post(&sam, task("wipe", "cleanup-batch-folder", json!({ "days": 0 })));
    assert_eq!(status, 403, "{body}");
    let (status, body) = post(&sam, task("tidy", "cleanup-batch-folder", json!({})));
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["task"]["params"]["days"], 30, "{body}");
    // The owner is not bound by what staff may do.
    let (status, body) = post(&admin, task("owners-wipe", "cleanup-batch-folder", json!({ "days": 0 })));
    assert_eq!(status, 201, "{body}");

    // High priority needs the set-priority permission, in the service.
    let urgent = json!({ "name": "urgent", "plugin": "cleanup-batch-folder", "schedule": "daily at 04:00", "high_priority": true });
    let (status, body) = post(&sam, urgent);
    assert_eq!(status, 403, "{body}");
    assert!(body["error"].as_str().unwrap().contains("set-priority permission"), "{body}");

    // At most [tasks] max_per_user (3 here) tasks a user.
    let (status, body) = post(&sam, task("third", "cleanup-batch-folder", json!({})));
    assert_eq!(status, 201, "{body}");
    let (status, body) = post(&sam, task("fourth", "cleanup-batch-folder", json!({})));
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("([tasks] max_per_user)"), "{body}");

    // Fires no more often than [tasks] min_interval_minutes (60 here).
    let often = json!({ "name": "often", "plugin": "cleanup-batch-folder", "schedule": "every 5 minutes" });
    let (status, body) = post(&admin, often);
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("[tasks] min_interval_minutes (60)"), "{body}");
    server.terminate();
}

#[test]
fn what_a_run_may_write_in_a_folder_is_bounded() {
    let sb = Sb::new();
    let batch = sb.folder_source("sis", "[sandbox]\nmax_files = 5\nmax_file_bytes = 16\n");
    sb.ok(&["plugin", "install", "--grant-all", s(&plugin("export-names-csv"))]);
    let students = sb.file("students.json", r#"[{"student-id": "S1", "last-name": "Ng", "first-name": "Ann"}]"#);
    sb.ok(&["records", "load", "students", s(&students), "--key", "student-id"]);
    sb.ok(&["task", "add", "names", "--plugin", "export-names-csv", "--schedule", "daily at 03:00"]);
    let out = sb.run(&["task", "run-now", "names", "--wait"]);
    let shown = sb.ok(&["runs", "show", "1"]);
    assert!(shown.contains("failed") && shown.contains("([sandbox] max_file_bytes)"), "{shown}\n{out:?}");
    assert!(!batch.join("names.csv").exists(), "the file past the cap was written");
}
