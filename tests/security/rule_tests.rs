//! Testing a rule runs its author's code over data: it takes the
//! permission saving takes, and is bounded in rows and in total time; what
//! it prints goes to its author, not the service log, and a draft's name
//! never becomes a metrics label.

use serde_json::json;

use crate::support::{Api, Sb};

fn rows(n: usize) -> serde_json::Value {
    json!((0..n).map(|i| json!({ "absences": i })).collect::<Vec<_>>())
}

#[test]
fn rule_tests_need_the_owner_and_are_bounded() {
    let sb = Sb::with_own_rules();
    sb.file("data/schoolbell.toml", "[api]\nmetrics_token = \"scrape\"\n[rules]\ntest_max_rows = 100\ntest_max_ms = 300\ntimeout_ms = 100\nmax_operations = 1000000000\n");
    sb.ok(&["user", "add", "sam", "--role", "staff", "--email", "sam@district.test"]);
    let admin = sb.ok(&["user", "token", "admin"]).trim().to_string();
    let sam = sb.ok(&["user", "token", "sam"]).trim().to_string();
    let log = sb.dir.path().join("serve.log");
    let server = sb.serve_with(&[("RUST_LOG", "schoolbell=info")], Some(&log));
    let api = Api::new(&server.url);
    let test = |token: &str, name: &str, source: &str, sample: serde_json::Value| {
        api.json(
            "POST",
            &format!("/api/v1/rules/{name}/test"),
            token,
            Some(json!({ "source": source, "sample": sample, "params": {} })),
        )
    };

    // Staff may not save rules, so they may not test them either.
    let (status, body) = test(&sam, "attendance_threshold", "absences > 3", rows(5));
    assert_eq!(status, 403, "{body}");
    assert!(body["error"].as_str().unwrap().contains("only the account owner may test rules"), "{body}");

    // More rows than [rules] test_max_rows: refused before any runs.
    let (status, body) = test(&admin, "attendance_threshold", "absences > 3", rows(101));
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("at most 100 sample rows ([rules] test_max_rows)"), "{body}");

    // Every row spins to its own 100 ms limit: the test stops at 300 ms in
    // all, not after 100 rows' worth.
    let (status, body) = test(&admin, "attendance_threshold", "loop {} ; true", rows(100));
    assert_eq!(status, 200, "{body}");
    let stopped = body["stopped"].as_str().expect("the answer says the test stopped");
    assert!(stopped.contains("([rules] test_max_ms)"), "{stopped}");
    assert!(body["rows"].as_array().unwrap().len() < 100, "{body}");

    // What the draft prints comes back in the answer, not in the log.
    let (status, body) = test(&admin, "draft_never_saved", r#"print("seen " + absences); absences > 3"#, rows(3));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["printed"]["lines"], json!(["seen 0", "seen 1", "seen 2"]), "{body}");
    let (status, metrics) = api.call("GET", "/metrics", Some("scrape"), None);
    assert_eq!(status, 200, "{metrics}");
    assert!(!metrics.contains("draft_never_saved"), "a draft's name became a label:\n{metrics}");
    server.terminate();
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(!said.contains("seen 1"), "a test's print reached the service log:\n{said}");
}
