//! Running Schoolbell as a district's IT team does: the health endpoints a
//! load balancer polls, the metrics Prometheus scrapes, the JSON log a
//! collector reads (with nothing private in it), `SIGHUP`, and a backup
//! restored into a new data directory. All through the real binary.

mod support;

use serde_json::Value;
use support::{Api, Sb, Smtp, free_port, plugin, s, until};

fn attendance_setup(sb: &Sb) {
    sb.ok(&["plugin", "install", "--grant-all", s(&plugin("notifier-attendance"))]);
    sb.load_attendance(
        r#"[{"student-id": "S1", "first-name": "Ann", "last-name": "Ng", "absences": 12, "division": "", "campus": "North", "department": "", "level": ""},
            {"student-id": "S2", "first-name": "Bo", "last-name": "Li", "absences": 1, "division": "", "campus": "North", "department": "", "level": ""}]"#,
    );
    sb.ok(&["user", "add", "ada", "--email", "ada@district.test"]);
    sb.ok(&[
        "task",
        "add",
        "attendance",
        "--plugin",
        "notifier-attendance",
        "--schedule",
        "daily at 07:00",
        "--notify",
        "ada",
    ]);
}

/// The binary over another data directory, with the sandbox's rules.
fn at(sb: &Sb, data: &std::path::Path) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_schoolbell"));
    c.arg("--data").arg(data).arg("--rules").arg(&sb.rules).env_remove("RUST_LOG");
    c
}

/// The value of the first series of a scrape that starts with `series`.
fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find(|l| l.starts_with(series)).and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[test]
fn readyz_turns_503_naming_the_scheduler_while_its_loop_is_stuck_and_200_after() {
    let sb = Sb::new();
    let stall = sb.dir.path().join("stall");
    let server = sb.serve_with(&[("SCHOOLBELL_FAULT_STALL_SCHEDULER", s(&stall))], None);
    let api = Api::new(&server.url);
    assert_eq!(api.call("GET", "/healthz", None, None).0, 200);
    let ready = until(10, "readyz 200", || {
        let (status, body) = api.call("GET", "/readyz", None, None);
        (status == 200).then_some(body)
    });
    assert!(ready.contains(r#""name":"scheduler","ok":true"#), "{ready}");

    std::fs::write(&stall, "").unwrap();
    let stuck = until(30, "readyz 503 while the loop is stuck", || {
        let (status, body) = api.call("GET", "/readyz", None, None);
        (status == 503).then_some(body)
    });
    let stuck: Value = serde_json::from_str(&stuck).unwrap();
    let scheduler = part(&stuck, "scheduler");
    assert_eq!(scheduler["ok"], false, "{stuck}");
    assert!(scheduler["detail"].as_str().unwrap().contains("stuck"), "{stuck}");
    assert_eq!(api.call("GET", "/healthz", None, None).0, 200, "the process is up all the same");

    std::fs::remove_file(&stall).unwrap();
    ready_within(&api, 10, "readyz 200 once the loop runs again");
    server.terminate();
}

/// Waits until `/readyz` answers 200.
fn ready_within(api: &Api, secs: u64, what: &str) {
    until(secs, what, || (api.call("GET", "/readyz", None, None).0 == 200).then_some(()));
}

/// The part of a readiness answer named `name`.
fn part(readiness: &Value, name: &str) -> Value {
    readiness["parts"].as_array().unwrap().iter().find(|p| p["name"] == name).unwrap().clone()
}

#[test]
fn readyz_names_an_smtp_server_that_does_not_answer_and_is_ready_once_it_does() {
    let sb = Sb::new();
    let port = free_port();
    sb.file(
        "data/schoolbell.toml",
        format!("[email]\nsmtp_host = \"127.0.0.1\"\nsmtp_port = {port}\ntls = \"none\"\n"),
    );
    let server = sb.serve();
    let api = Api::new(&server.url);
    let (status, body) = api.call("GET", "/readyz", None, None);
    assert_eq!(status, 503, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    let smtp = part(&body, "smtp");
    // Unauthenticated: whether it answers, not where it is.
    assert_eq!(smtp["detail"], "unreachable", "{body}");
    assert!(!body.to_string().contains(&port.to_string()), "{body}");
    let _smtp = Smtp::start(port);
    // The last answer is reused for a few seconds, so the relay is not
    // asked at every poll.
    ready_within(&api, 30, "readyz 200 once the SMTP server greets");
    let (_, body) = api.call("GET", "/readyz", None, None);
    let body: Value = serde_json::from_str(&body).unwrap();
    // Not the server's banner (its software and version).
    assert_eq!(part(&body, "smtp")["detail"], "ok", "{body}");
    server.terminate();
}

#[test]
fn metrics_counters_move_after_a_run_and_the_token_guards_them() {
    let sb = Sb::new();
    // By default nobody reads the metrics.
    let server = sb.serve();
    let (status, body) = Api::new(&server.url).call("GET", "/metrics", None, None);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("[metrics] token_file"), "{body}");
    server.terminate();
    sb.file("data/metrics.token", "scrape-me\n");
    sb.file("data/schoolbell.toml", "[metrics]\ntoken_file = \"metrics.token\"\n");
    attendance_setup(&sb);
    let server = sb.serve();
    let api = Api::new(&server.url);
    let (status, _) = api.call("GET", "/metrics", None, None);
    assert_eq!(status, 401, "without the metrics token");
    let (status, _) = api.call("GET", "/metrics", Some("wrong"), None);
    assert_eq!(status, 401, "with another token");
    let (status, before) = api.call("GET", "/metrics", Some("scrape-me"), None);
    assert_eq!(status, 200);
    let runs = r#"schoolbell_runs_total{kind="notifier",status="succeeded"}"#;
    assert_eq!(sample(&before, runs), None, "no run yet:\n{before}");
    assert_eq!(sample(&before, "schoolbell_queue_depth"), Some(0.0), "{before}");

    sb.ok(&["task", "run-now", "attendance", "--wait"]);
    let (_, after) = api.call("GET", "/metrics", Some("scrape-me"), None);
    assert_eq!(sample(&after, runs), Some(1.0), "{after}");
    assert_eq!(sample(&after, r#"schoolbell_run_duration_seconds_count{kind="notifier"}"#), Some(1.0), "{after}");
    assert_eq!(sample(&after, r#"schoolbell_plugin_instantiations_total{plugin="notifier-attendance"}"#), Some(1.0));
    assert_eq!(
        sample(&after, r#"schoolbell_rule_evaluations_total{rule="attendance_threshold"}"#),
        Some(2.0),
        "{after}"
    );
    assert_eq!(sample(&after, r#"schoolbell_outbox_entries{status="pending"}"#), Some(1.0), "{after}");
    assert!(sample(&after, "schoolbell_store_size_bytes").unwrap() > 0.0, "{after}");
    assert!(after.contains("# TYPE schoolbell_run_duration_seconds histogram"), "{after}");
    server.terminate();
}

#[test]
fn json_logs_carry_the_run_and_never_a_secret_token_or_masked_value() {
    let sb = Sb::new();
    let planted_secret = "PLANTED-SMTP-PASSWORD-71c3";
    let (ssn, birth) = ("987-65-4321", "2011-03-04");
    sb.file(
        "data/schoolbell.toml",
        format!(
            "[log]\nformat = \"json\"\nfilter = \"schoolbell=trace\"\n\n[email]\nsmtp_host = \"127.0.0.1\"\nsmtp_port = {}\ntls = \"none\"\nusername = \"bell\"\npassword_secret = \"smtp\"\nretry_base_secs = 1\n",
            free_port()
        ),
    );
    let secret = sb.file("smtp.txt", planted_secret);
    sb.ok(&["secret", "set", "smtp", "--file", s(&secret)]);
    attendance_setup(&sb);
    sb.ok(&["plugin", "install", "--grant-all", s(&plugin("import-csv-roster"))]);
    let token = sb.ok(&["user", "token", "admin"]).trim().to_string();
    let log = sb.dir.path().join("serve.log");
    let server = sb.serve_with(&[], Some(&log));
    let api = Api::new(&server.url);

    // A notifier run (its email fails: no server answers), an import with
    // a sensitive row and a broken one, API calls with a token and with a
    // wrong one.
    sb.ok(&["task", "run-now", "attendance", "--wait"]);
    let body = format!("S9,Doe,Jane,{birth},F,5,{ssn}\nS10,Roe,Rick,03/04/2011x,M,5,876-54-3210\n");
    let out = sb.import_roster("roster.csv", "match_student", &body, &[]);
    assert!(!String::from_utf8_lossy(&out.stdout).is_empty(), "{out:?}");
    assert_eq!(api.json("GET", "/api/v1/runs", &token, None).0, 200);
    assert_eq!(api.json("GET", "/api/v1/runs", "sb_PLANTED-WRONG-TOKEN", None).0, 401);
    let text = until(30, "the mailer's failed attempt in the log", || {
        let text = std::fs::read_to_string(&log).unwrap();
        text.contains("Email not sent").then_some(text)
    });
    server.terminate();
    let text = std::fs::read_to_string(&log).unwrap_or(text);

    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    for line in &lines {
        for key in ["timestamp", "level", "target", "message"] {
            assert!(line.get(key).is_some(), "no `{key}`: {line}");
        }
    }
    let finished = lines.iter().find(|l| l["message"] == "Run finished.").expect("a finished run");
    assert_eq!(finished["span"]["task"], "attendance", "{finished}");
    assert_eq!(finished["span"]["plugin"], "notifier-attendance", "{finished}");
    assert_eq!(finished["span"]["user"], "admin", "{finished}");
    assert!(finished["span"]["run"].is_number(), "{finished}");
    for planted in [planted_secret, &token, "PLANTED-WRONG-TOKEN", ssn, "876-54-3210", birth, "987654321"] {
        assert!(!text.contains(planted), "the log holds `{planted}`:\n{text}");
    }
}

#[test]
fn sighup_reloads_the_rules_and_the_log_filter_and_names_keys_that_need_a_restart() {
    let sb = Sb::with_own_rules();
    let log = sb.dir.path().join("serve.log");
    let config = sb.file("data/schoolbell.toml", "[log]\nfilter = \"schoolbell=warn\"\n");
    let token = sb.ok(&["user", "token", "admin"]).trim().to_string();
    let server = sb.serve_with(&[], Some(&log));
    let api = Api::new(&server.url);
    let names = |api: &Api| api.json("GET", "/api/v1/rules", &token, None).1.to_string();
    assert!(!names(&api).contains("late_again"));

    std::fs::write(sb.rules.join("late_again.rhai"), "absences > 20\n").unwrap();
    std::fs::write(&config, "[log]\nfilter = \"schoolbell=info\"\n\n[api]\nrequest_timeout_secs = 5\n").unwrap();
    let hup = || {
        std::process::Command::new("kill").args(["-HUP", &server.child.id().to_string()]).status().unwrap();
    };
    hup();
    until(10, "the new rule listed", || names(&api).contains("late_again").then_some(()));
    let text = until(10, "the reload in the log", || {
        let text = std::fs::read_to_string(&log).unwrap();
        text.contains("only after a restart").then_some(text)
    });
    assert!(text.contains("api.request_timeout_secs"), "{text}");
    assert!(!text.contains("log.filter"), "the filter is applied, not deferred: {text}");
    // The new filter (info) lets the reload's own info line through.
    assert!(text.contains("Reloaded the rules"), "{text}");

    // A broken rule: nothing changes, and the log says which file.
    std::fs::write(sb.rules.join("broken.rhai"), "absences >\n").unwrap();
    std::fs::remove_file(sb.rules.join("late_again.rhai")).unwrap();
    hup();
    let text = until(10, "the failed reload in the log", || {
        let text = std::fs::read_to_string(&log).unwrap();
        text.contains("Reload (SIGHUP) failed").then_some(text)
    });
    assert!(text.contains("broken.rhai"), "{text}");
    assert!(names(&api).contains("late_again"), "the rules stay as they were");
    server.terminate();
}

#[test]
fn a_backup_restored_into_a_new_data_directory_has_every_task_run_and_outbox_entry() {
    let sb = Sb::new();
    attendance_setup(&sb);
    sb.ok(&["task", "add", "nightly", "--plugin", "notifier-attendance", "--schedule", "daily at 23:00"]);
    let server = sb.serve();
    sb.ok(&["task", "run-now", "attendance", "--wait"]);
    sb.ok(&["task", "run-now", "nightly", "--wait"]);
    let backup = sb.dir.path().join("backup");
    sb.ok(&["store", "backup", s(&backup)]);
    let listed = |data: &std::path::Path| {
        let json = |args: &[&str]| -> Value {
            let out = support::succeeded(at(&sb, data).args(args).output().unwrap(), &format!("{args:?}"));
            serde_json::from_str(&out).unwrap()
        };
        (json(&["task", "list", "--json"]), json(&["runs", "list", "--json"]), json(&["notify", "outbox", "--json"]))
    };
    let before = listed(&sb.data());
    server.terminate();
    assert_eq!(before.0.as_array().unwrap().len(), 2, "{}", before.0);
    assert_eq!(before.1.as_array().unwrap().len(), 2, "{}", before.1);
    assert_eq!(before.2.as_array().unwrap().len(), 1, "{}", before.2);

    let restored = sb.dir.path().join("restored");
    let restore = || at(&sb, &restored).args(["store", "restore", s(&backup)]).output().unwrap();
    let out = restore();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("no secret.key"), "the missing key is pointed out: {said}");
    std::fs::copy(sb.data().join("secret.key"), restored.join("secret.key")).unwrap();
    assert_eq!(listed(&restored), before);
    let again = restore();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already has a store"), "{again:?}");
}

#[test]
fn the_service_runs_without_transparent_huge_pages_whose_faults_stall_its_scheduler() {
    let sb = Sb::new();
    let server = sb.serve();
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).unwrap();
    // The line is there on kernels with the switch (4.15 and later).
    let line = status.lines().find(|l| l.starts_with("THP_enabled:")).expect("THP_enabled in /proc/PID/status");
    assert_eq!(line.split_whitespace().nth(1), Some("0"), "{line}");
}
