//! `schoolbell serve` end to end: the HTTP API with tokens and the
//! permission rules, graceful SIGTERM, and exactly-once fires across
//! SIGKILL.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Api, Sb, plugin, s};

fn setup() -> (Sb, String, String, String) {
    setup_in(Sb::new())
}

fn setup_in(sb: Sb) -> (Sb, String, String, String) {
    sb.ok(&["plugin", "install", "--grant-all", s(&plugin("notifier-attendance")), s(&plugin("test-hostile"))]);
    // Staff tasks below use the attendance notifier with these thresholds.
    sb.ok(&["plugin", "grant", "notifier-attendance", "staff:threshold=3|5"]);
    sb.load_attendance(support::ONE_ATTENDANCE);
    sb.ok(&["user", "add", "sam", "--role", "staff"]);
    sb.ok(&["user", "add", "pat", "--role", "staff", "--permission", "autopilot"]);
    let token = |u: &str| sb.ok(&["user", "token", u]).trim().to_string();
    let (admin, sam, pat) = (token("admin"), token("sam"), token("pat"));
    (sb, admin, sam, pat)
}

fn wait_finished(api: &Api, token: &str, id: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, run) = api.json("GET", &format!("/api/v1/runs/{id}"), token, None);
        assert_eq!(status, 200, "{run}");
        if ["succeeded", "failed", "cancelled", "interrupted"].contains(&run["status"].as_str().unwrap()) {
            return run;
        }
        assert!(Instant::now() < deadline, "run {id} did not finish: {run}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_api_serves_tasks_and_runs_behind_tokens_with_the_permission_rules() {
    let (sb, admin, sam, pat) = setup();
    let server = sb.serve();
    let api = Api::new(&server.url);

    let (status, doc) = api.call("GET", "/api/v1/openapi.json", None, None);
    assert_eq!(status, 200);
    let doc: Value = serde_json::from_str(&doc).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/api/v1/runs/{id}/cancel"]["post"].is_object());

    let (status, body) = api.call("GET", "/api/v1/tasks", None, None);
    assert_eq!(status, 401);
    assert!(body.contains("Authorization: Bearer TOKEN"), "{body}");
    assert_eq!(api.call("GET", "/api/v1/tasks", Some("sb_forged"), None).0, 401);

    let task = |name: &str| json!({ "name": name, "plugin": "notifier-attendance", "schedule": "daily at 07:00", "zone": "America/Chicago", "rules": ["attendance_threshold"] });
    let (status, view) = api.json("POST", "/api/v1/tasks", &admin, Some(task("owners")));
    assert_eq!(status, 201, "{view}");
    assert_eq!(view["next"].as_array().unwrap().len(), 5);
    assert!(view["next"][0]["local"].as_str().unwrap().contains("07:00 C"), "{view}");
    assert_eq!(api.json("POST", "/api/v1/tasks", &sam, Some(task("sams"))).0, 201);

    // Staff see only their own tasks.
    let (_, sams_tasks) = api.json("GET", "/api/v1/tasks", &sam, None);
    assert_eq!(sams_tasks.as_array().unwrap().len(), 1);
    let (status, body) = api.json("POST", "/api/v1/tasks/owners/run-now", &sam, None);
    assert_eq!(status, 403, "{body}");
    assert!(body["error"].as_str().unwrap().contains("staff may manage only their own tasks"));

    // A run by sam: sam and the owner see it; pat (autopilot) does not, as a person started it.
    let (status, run) = api.json("POST", "/api/v1/tasks/sams/run-now", &sam, None);
    assert_eq!(status, 202, "{run}");
    let id = run["id"].as_u64().unwrap();
    let done = wait_finished(&api, &sam, id);
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["summary"]["notifications"], 1);
    assert_eq!(api.json("GET", &format!("/api/v1/runs/{id}"), &admin, None).0, 200);
    assert_eq!(api.json("GET", &format!("/api/v1/runs/{id}"), &pat, None).0, 404);
    assert_eq!(api.json("POST", &format!("/api/v1/runs/{id}/cancel"), &pat, None).0, 404);
    assert_eq!(api.json("DELETE", &format!("/api/v1/runs/{id}"), &pat, None).0, 404);
    let (_, pats_runs) = api.json("GET", "/api/v1/runs", &pat, None);
    assert_eq!(pats_runs, json!([]));

    // Messages, as JSON and as CSV.
    let (_, page) = api.json("GET", &format!("/api/v1/runs/{id}/messages?status=notification"), &sam, None);
    assert_eq!(page["messages"][0]["message"], "Attendance: Ann Ng has 7 absences");
    let (status, csv) = api.call("GET", &format!("/api/v1/runs/{id}/messages?format=csv"), Some(&sam), None);
    assert_eq!(status, 200);
    assert_eq!(
        csv,
        "row,status,field,message\n,notification,,Attendance: Ann Ng has 7 absences\n,undeliverable,,Attendance: Ann Ng has 7 absences: the task's notification group is empty; set it with --notify\n"
    );

    // Finished: cancel is a conflict, delete works for the owner of the run.
    let (status, body) = api.json("POST", &format!("/api/v1/runs/{id}/cancel"), &sam, None);
    assert_eq!(status, 409, "{body}");
    assert_eq!(api.call("DELETE", &format!("/api/v1/runs/{id}"), Some(&sam), None).0, 204);
    assert_eq!(api.json("GET", &format!("/api/v1/runs/{id}"), &admin, None).0, 404);

    // Bad requests say what to fix.
    let bad = |method: &str, path: &str, body: Option<Value>| {
        let (status, v) = api.json(method, path, &admin, body);
        (status, v["error"].as_str().unwrap_or_default().to_string())
    };
    let (status, e) = bad(
        "POST",
        "/api/v1/tasks",
        Some(json!({ "name": "x", "plugin": "notifier-attendance", "schedule": "daily at 7" })),
    );
    assert_eq!(status, 400);
    assert!(e.contains("`7` is not a time; write HH:MM"), "{e}");
    let (status, e) = bad(
        "POST",
        "/api/v1/tasks",
        Some(
            json!({ "name": "x", "plugin": "notifier-attendance", "schedule": "daily at 07:00", "zone": "Moon/Base" }),
        ),
    );
    assert_eq!((status, e.contains("not an IANA time zone")), (400, true), "{e}");
    let (status, e) = bad(
        "POST",
        "/api/v1/tasks",
        Some(json!({ "name": "x", "plugin": "notifier-attendance", "schedule": "cron 0 99 * * *" })),
    );
    assert_eq!((status, e.contains("invalid cron expression")), (400, true), "{e}");
    let (status, e) = bad(
        "POST",
        "/api/v1/tasks",
        Some(json!({ "name": "x", "plugin": "notifier-attendance", "schedul": "daily at 07:00" })),
    );
    assert_eq!((status, e.contains("unknown field `schedul`")), (400, true), "{e}");
    let (status, e) = bad("GET", "/api/v1/tasks/nope", None);
    assert_eq!((status, e.as_str()), (404, "no task named `nope`; `schoolbell task list` shows the tasks"));
    let (status, e) = bad("GET", "/api/v1/runs/abc", None);
    assert_eq!((status, e.as_str()), (400, "`abc` is not a run id (a whole number)"));
    let (status, next) = api.json(
        "GET",
        "/api/v1/schedule/next?schedule=monthly%20on%20last%20at%2018:00&tz=UTC&from=2028-02-01%2000:00&count=2",
        &admin,
        None,
    );
    assert_eq!(status, 200, "{next}");
    assert_eq!(next["fires"][0]["utc"], "2028-02-29T18:00:00+00:00");
    assert_eq!(api.call("GET", "/api/v1/schedule/next?schedule=daily%20at%2007:00", None, None).0, 401);
    for extreme in [
        "schedule=every%201%20minutes&from=262142-12-31%2023:59",
        "schedule=every%201%20minutes&from=1000-01-01%2000:00",
        "schedule=once%209999-01-01%2000:00",
    ] {
        let (status, e) = api.json("GET", &format!("/api/v1/schedule/next?{extreme}"), &admin, None);
        assert_eq!(status, 400, "{extreme}: {e}");
        let said = e["error"].as_str().unwrap();
        assert!(said.contains("outside the years 1970 to 2999") || said.contains("is not a date"), "{e}");
    }

    let status = server.terminate();
    assert!(status.success(), "serve should exit cleanly on SIGTERM: {status}");
    assert!(!sb.data().join("serve.json").exists());
}

#[test]
fn sigterm_leaves_a_running_run_interrupted_not_lost() {
    let (sb, admin, _, _) = setup();
    sb.file("data/schoolbell.toml", "[sandbox]\ncancel_grace_secs = 1\n");
    let server = sb.serve();
    let api = Api::new(&server.url);
    let spec = json!({ "name": "spin", "plugin": "test-hostile", "schedule": "daily at 07:00", "params": { "behaviour": "loop" } });
    assert_eq!(api.json("POST", "/api/v1/tasks", &admin, Some(spec)).0, 201);
    let (_, run) = api.json("POST", "/api/v1/tasks/spin/run-now", &admin, None);
    let id = run["id"].as_u64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while api.json("GET", &format!("/api/v1/runs/{id}"), &admin, None).1["status"] != "running" {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    let started = Instant::now();
    assert!(server.terminate().success());
    assert!(started.elapsed() < Duration::from_secs(15), "shutdown took {:?}", started.elapsed());
    let shown: Value = serde_json::from_str(&sb.ok(&["runs", "show", &id.to_string(), "--json"])).unwrap();
    assert_eq!(shown["status"], "interrupted", "{shown}");
}

#[test]
fn a_fire_never_gives_two_runs_across_sigkill() {
    let (sb, admin, _, _) = setup();
    // Short runs that take a while: each loops until its 1 s deadline.
    // Short leases, so a killed host's runs on a shared store lapse soon.
    sb.file(
        "data/schoolbell.toml",
        "[sandbox]\ntimeout_secs = 1\ncancel_grace_secs = 1\n[scheduler]\nworkers = 2\n[store]\nlease_secs = 3\n",
    );
    let tasks = 10;
    for i in 0..tasks {
        let at = format!("once 2026-01-01 08:{i:02}");
        sb.ok(&[
            "task",
            "add",
            &format!("t{i}"),
            "--plugin",
            "test-hostile",
            "--param",
            "behaviour=loop",
            "--schedule",
            &at,
            "--zone",
            "UTC",
        ]);
    }
    // Kill the server at varied moments while fires are queued and running.
    let mut rng = support::Xorshift(0x2545_f491_4f6c_dd1d);
    for _ in 0..6 {
        let server = sb.serve();
        std::thread::sleep(Duration::from_millis(200 + rng.next() % 1500));
        server.kill();
    }
    // Let the last process finish everything that is left.
    let server = sb.serve();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        std::thread::sleep(Duration::from_millis(250));
        let (status, body) = Api::new(&server.url).call("GET", "/api/v1/runs?limit=1000", Some(&admin), None);
        assert_eq!(status, 200);
        let runs: Vec<Value> = serde_json::from_str(&body).unwrap();
        let open = runs.iter().filter(|r| ["queued", "running"].contains(&r["status"].as_str().unwrap())).count();
        if runs.len() >= tasks && open == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "runs did not settle: {body}");
    }
    assert!(server.terminate().success());
    let runs: Vec<Value> = serde_json::from_str(&sb.ok(&["runs", "list", "--json", "--limit", "1000"])).unwrap();
    for i in 0..tasks {
        let mut of_task: Vec<&Value> = runs.iter().filter(|r| r["task"] == format!("t{i}")).collect();
        of_task.sort_by_key(|r| r["id"].as_u64());
        let fire = format!("2026-01-01T08:{i:02}:00Z");
        assert!(of_task.iter().all(|r| r["fire_time"] == fire), "task t{i} ran for another fire: {of_task:?}");
        if support::on_postgres() {
            // On a shared store the killed host's run is settled when its
            // lease lapses and, the misfire policy being "run once", its
            // work is queued again: interrupted runs, one after another,
            // then at most one that ran to its end.
            let (last, before) = of_task.split_last().expect("every fire has a run");
            assert!(before.iter().all(|r| r["status"] == "interrupted"), "task t{i} ran twice: {of_task:?}");
            assert!(["failed", "interrupted"].contains(&last["status"].as_str().unwrap()), "{last:?}");
            for pair in of_task.windows(2) {
                let (Some(ended), Some(began)) = (pair[0]["finished_at"].as_str(), pair[1]["started_at"].as_str())
                else {
                    continue;
                };
                let at = |t: &str| chrono::DateTime::parse_from_rfc3339(t).unwrap();
                assert!(at(ended) <= at(began), "task t{i}'s runs overlapped: {of_task:?}");
            }
        } else {
            // One process: the run a kill cut short is settled at the next
            // start, and the fire is not run a second time.
            assert_eq!(of_task.len(), 1, "task t{i} must have exactly one run: {of_task:?}");
            assert!(["failed", "interrupted"].contains(&of_task[0]["status"].as_str().unwrap()), "{:?}", of_task[0]);
        }
    }
}

#[test]
fn imports_are_tested_previewed_and_committed_over_the_api() {
    let (sb, admin, _, _) = setup();
    sb.ok(&["plugin", "install", "--grant-all", s(&plugin("import-csv-roster"))]);
    let batch = sb.folder_source("sis", "[scheduler]\npickup_settle_ms = 50\n");
    std::fs::write(
        batch.join("IC_Roster.csv"),
        "Student ID,Last Name,First Name,Birth Date\nS1,Ng,Ann,2010-01-02\nS2,Li,Bo,2011-03-04\n",
    )
    .unwrap();
    let server = sb.serve();
    let api = Api::new(&server.url);
    let task = json!({
        "name": "roster", "plugin": "import-csv-roster", "schedule": "daily at 22:00",
        "params": { "columns": "student-id=Student ID; last-name=Last Name; first-name=First Name; birth-date=Birth Date:date" },
        "import": { "source": "sis", "prefix": "IC_Roster", "collection": "students", "key_field": "student-id", "match_rule": "match_student" }
    });
    assert_eq!(api.json("POST", "/api/v1/tasks", &admin, Some(task)).0, 201);
    let (status, run) = api.json("POST", "/api/v1/tasks/roster/test-import", &admin, None);
    assert_eq!(status, 202, "{run}");
    let id = run["id"].as_u64().unwrap();
    let done = wait_finished(&api, &admin, id);
    assert_eq!((done["status"].as_str(), done["dry_run"].as_bool()), (Some("succeeded"), Some(true)), "{done}");
    let (status, plan) = api.json("GET", &format!("/api/v1/runs/{id}/plan?type=new"), &admin, None);
    assert_eq!(status, 200, "{plan}");
    assert_eq!(plan["counts"]["new"], 2);
    assert_eq!(plan["rows"][0], json!({ "line": 2, "outcome": { "new": { "key": "S1" } } }));
    assert!(batch.join("IC_Roster.csv").exists(), "a test import leaves the file");
    let (status, committed) = api.json("POST", &format!("/api/v1/runs/{id}/commit"), &admin, None);
    assert_eq!(status, 200, "{committed}");
    assert_eq!(committed["summary"]["written"], 2);
    assert!(!batch.join("IC_Roster.csv").exists(), "a committed file is renamed");
    let (status, again) = api.json("POST", &format!("/api/v1/runs/{id}/commit"), &admin, None);
    assert_eq!(status, 409, "{again}");
    let (status, e) =
        api.json("POST", &format!("/api/v1/runs/{id}/confirm"), &admin, Some(json!({ "coment": "typo" })));
    assert_eq!(status, 400, "{e}");
    assert!(server.terminate().success());
}

#[test]
fn rules_saved_through_the_api_take_effect_in_the_running_server() {
    let (sb, admin, sam, _) = setup_in(Sb::with_own_rules());
    sb.file("data/schoolbell.toml", "[email]\nallowed_domains = [\"example.org\"]\n");
    let server = sb.serve();
    let api = Api::new(&server.url);
    let task = json!({ "name": "absences", "plugin": "notifier-attendance", "schedule": "daily at 07:00", "rules": ["attendance_threshold"],
        "params": { "threshold": 5 }, "notify": { "group": ["office@example.org"] } });
    assert_eq!(api.json("POST", "/api/v1/tasks", &admin, Some(task)).0, 201);
    let notifications = || {
        let (status, run) = api.json("POST", "/api/v1/tasks/absences/run-now", &admin, None);
        assert_eq!(status, 202, "{run}");
        let done = wait_finished(&api, &admin, run["id"].as_u64().unwrap());
        assert_eq!(done["status"], "succeeded", "{done}");
        done["summary"]["notifications"].as_u64().unwrap()
    };
    // Ann has 7 absences: the shipped rule (absences >= threshold) picks her.
    assert_eq!(notifications(), 1);

    let (status, list) = api.json("GET", "/api/v1/rules", &sam, None);
    assert_eq!(status, 200);
    assert!(list.as_array().unwrap().iter().any(|r| r["name"] == "attendance_threshold"), "{list}");
    let (status, shown) = api.json("GET", "/api/v1/rules/attendance_threshold", &sam, None);
    assert_eq!(status, 200);
    assert!(shown["source"].as_str().unwrap().contains("absences >= params.threshold"), "{shown}");
    assert_eq!(api.json("GET", "/api/v1/rules/nope", &sam, None).0, 404);

    // The workbench tries a draft over sample rows and saves nothing; it
    // runs the draft over data, as saving would, so it is the owner's.
    let stricter = "absences >= params.threshold * 2";
    let sample = json!([{ "absences": 7 }, { "absences": 12 }]);
    let body = json!({ "source": stricter, "sample": sample, "params": { "threshold": 5 } });
    let (status, _) = api.json("POST", "/api/v1/rules/attendance_threshold/test", &sam, Some(body.clone()));
    assert_eq!(status, 403);
    let (status, tried) = api.json("POST", "/api/v1/rules/attendance_threshold/test", &admin, Some(body));
    assert_eq!(status, 200, "{tried}");
    assert_eq!(tried["matched"], 1);
    assert_eq!(tried["rows"][0]["matched"], false);
    assert!(tried["rows"][1]["reason"].as_str().unwrap().contains("absences=12"), "{tried}");
    let (_, again) = api.json("GET", "/api/v1/rules/attendance_threshold", &sam, None);
    assert_eq!(again["hash"], shown["hash"]);

    // Staff may not save; a broken rule is refused with its line and nothing changes.
    let (status, body) =
        api.json("PUT", "/api/v1/rules/attendance_threshold", &sam, Some(json!({ "source": stricter })));
    assert_eq!(status, 403, "{body}");
    let (status, body) = api.json(
        "PUT",
        "/api/v1/rules/attendance_threshold",
        &admin,
        Some(json!({ "source": "absences >=\n  (params.threshold" })),
    );
    assert_eq!(status, 400, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("attendance_threshold.rhai line 2") && error.contains("not saved"), "{error}");
    let on_disk = std::fs::read_to_string(sb.rules.join("attendance_threshold.rhai")).unwrap();
    assert_eq!(on_disk, shown["source"].as_str().unwrap());
    assert_eq!(notifications(), 1);

    // The owner saves the stricter rule: the next run uses it, no restart.
    let (status, saved) =
        api.json("PUT", "/api/v1/rules/attendance_threshold", &admin, Some(json!({ "source": stricter })));
    assert_eq!(status, 200, "{saved}");
    assert_ne!(saved["hash"], shown["hash"]);
    let on_disk = std::fs::read_to_string(sb.rules.join("attendance_threshold.rhai")).unwrap();
    if support::on_postgres() {
        // The database holds the rules; the folder only seeded it.
        assert_eq!(on_disk, shown["source"].as_str().unwrap());
    } else {
        assert_eq!(on_disk, stricter);
    }
    let (_, versions) = api.json("GET", "/api/v1/rules/attendance_threshold/versions", &sam, None);
    let newest = versions.as_array().unwrap().last().unwrap();
    assert_eq!((newest["saved_by"].as_str(), newest["source"].as_str()), (Some("admin"), Some(stricter)), "{versions}");
    assert_eq!(notifications(), 0);

    // The outbox through the API (no SMTP server: every email waits). The
    // owner sees every email, staff those of their own tasks.
    let task = json!({ "name": "sams", "plugin": "notifier-attendance", "schedule": "daily at 07:00", "rules": ["attendance_threshold"],
        "params": { "threshold": 3 }, "notify": { "group": ["sam@example.org"] } });
    assert_eq!(api.json("POST", "/api/v1/tasks", &sam, Some(task)).0, 201);
    let (_, run) = api.json("POST", "/api/v1/tasks/sams/run-now", &sam, None);
    assert_eq!(wait_finished(&api, &sam, run["id"].as_u64().unwrap())["status"], "succeeded");
    let to = |list: &serde_json::Value| -> Vec<String> {
        list.as_array().unwrap().iter().map(|e| e["entry"]["to"].as_str().unwrap().to_string()).collect()
    };
    let (status, all) = api.json("GET", "/api/v1/outbox?status=pending", &admin, None);
    assert_eq!(status, 200, "{all}");
    assert_eq!(to(&all), ["office@example.org", "sam@example.org"], "{all}");
    let (_, sams) = api.json("GET", "/api/v1/outbox", &sam, None);
    assert_eq!(to(&sams), ["sam@example.org"], "{sams}");
    assert_eq!(api.json("GET", "/api/v1/outbox?status=sent", &admin, None).1, json!([]));
    assert_eq!(to(&api.json("GET", "/api/v1/outbox?limit=1", &admin, None).1), ["sam@example.org"]);
    let (status, body) = api.json("GET", "/api/v1/outbox?status=lost", &admin, None);
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("pending, sent or failed"), "{body}");
    drop(server);
}

/// Tokens and records cross the network only inside TLS: a listen address
/// that is not loopback is refused without it, and with `[api] tls_cert`
/// the API answers HTTPS (checked with curl against the certificate).
#[test]
fn the_api_speaks_tls_and_refuses_clear_text_off_loopback() {
    let sb = Sb::new();
    let out = sb.run(&["serve", "--listen", "0.0.0.0:0"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refusing to serve tokens and student records in clear"), "{err}");

    support::self_signed(sb.dir.path());
    let (cert, key) = (sb.dir.path().join("cert.pem"), sb.dir.path().join("key.pem"));
    sb.file("data/schoolbell.toml", format!("[api]\ntls_cert = {:?}\ntls_key = {:?}\n", s(&cert), s(&key)));
    let token = sb.ok(&["user", "token", "admin"]).trim().to_string();
    let server = sb.serve();
    assert!(server.url.starts_with("https://"), "{}", server.url);
    let port = server.url.rsplit(':').next().unwrap().trim_end_matches('/').to_string();
    let curl = |extra: &[&str]| {
        std::process::Command::new("curl")
            .args(["-s", "--max-time", "10", "-H", &format!("Authorization: Bearer {token}")])
            .args(extra)
            .arg(format!("https://localhost:{port}/api/v1/runs"))
            .output()
            .unwrap()
    };
    let trusted = curl(&["--cacert", s(&cert)]);
    assert!(trusted.status.success(), "{}", String::from_utf8_lossy(&trusted.stderr));
    assert_eq!(String::from_utf8_lossy(&trusted.stdout).trim(), "[]");
    assert!(!curl(&[]).status.success(), "a client that does not trust the certificate gets nothing");
    server.terminate();
}

#[test]
fn the_console_and_the_api_live_under_the_base_path_behind_a_proxy() {
    let sb = Sb::new();
    sb.file("data/schoolbell.toml", "[api]\nbase_path = \"/schoolbell\"\n");
    let server = sb.serve();
    let api = Api::new(&server.url);
    // An anonymous visit is sent to sign in, under the base path.
    let (status, body) = api.call("GET", "/schoolbell/", None, None);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#"action="/schoolbell/login""#), "{body}");
    assert!(body.contains(r#"href="/schoolbell/assets/pico.min.css"#), "{body}");
    let (status, css) = api.call("GET", "/schoolbell/assets/console.css", None, None);
    assert_eq!(status, 200);
    assert!(css.contains("prefers-color-scheme") || css.contains(".visually-hidden"));
    let (status, _) = api.call("GET", "/schoolbell/api/v1/openapi.json", None, None);
    assert_eq!(status, 200);
    assert_eq!(api.call("GET", "/login", None, None).0, 404, "nothing is served outside the base path");
    let bad = Sb::new();
    bad.file("data/schoolbell.toml", "[api]\nbase_path = \"schoolbell/\"\n");
    let err = bad.fails(&["task", "list"]);
    assert!(err.contains("base_path `schoolbell/` must start with `/`"), "{err}");
}

#[test]
fn a_run_submitted_for_later_waits_in_the_batch_queue_until_its_time() {
    let sb = Sb::new();
    sb.ok(&["plugin", "install", "--grant-all", s(&plugin("notifier-attendance"))]);
    sb.ok(&["plugin", "grant", "notifier-attendance", "staff"]);
    sb.load_attendance(support::ONE_ATTENDANCE);
    sb.ok(&["user", "add", "sam", "--role", "staff", "--email", "sam@district.test"]);
    sb.ok(&["user", "add", "pri", "--role", "staff", "--email", "pri@district.test", "--permission", "set-priority"]);
    for (task, owner) in [("later", "sam"), ("urgent", "pri")] {
        sb.ok(&["--as", owner, "task", "add", task, "--plugin", "notifier-attendance", "--schedule", "daily at 07:00"]);
    }
    let server = sb.serve();
    let _ = &server;
    let run_of = |id: u64| -> Value {
        let runs: Value = serde_json::from_str(&sb.ok(&["runs", "list", "--json"])).unwrap();
        runs.as_array().unwrap().iter().find(|r| r["id"] == id).cloned().unwrap()
    };
    // A start a few seconds ahead, in RFC 3339 (the CLI also takes local time).
    let start = chrono::Utc::now() + chrono::Duration::seconds(3);
    let said = sb.ok(&["--as", "sam", "task", "run-now", "later", "--at", &start.to_rfc3339(), "--keep"]);
    assert!(said.contains("waits in the batch queue to start at"), "{said}");
    let id: u64 = said.split_whitespace().nth(1).unwrap().parse().unwrap();
    let waiting = run_of(id);
    assert_eq!(waiting["status"], "queued", "it waits: {waiting}");
    assert_eq!(waiting["keep"], true);
    assert!(sb.ok(&["runs", "list"]).contains("(starts "), "the queue shows when it starts");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let done = loop {
        let run = run_of(id);
        if run["status"] == "succeeded" {
            break run;
        }
        assert!(std::time::Instant::now() < deadline, "the run never ran: {run}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let started: chrono::DateTime<chrono::Utc> = done["started_at"].as_str().unwrap().parse().unwrap();
    assert!(started >= start, "it started at {started}, before its time {start}");
    // High priority is for those who hold the right.
    let refused = sb.fails(&["--as", "sam", "task", "run-now", "later", "--high-priority"]);
    assert!(refused.contains("needs the set-priority permission"), "{refused}");
    sb.ok(&["--as", "pri", "task", "run-now", "urgent", "--high-priority"]);
    // A run waiting for its time can be taken off the queue.
    let far = (chrono::Utc::now() + chrono::Duration::hours(5)).to_rfc3339();
    let said = sb.ok(&["--as", "sam", "task", "run-now", "later", "--at", &far]);
    let id: u64 = said.split_whitespace().nth(1).unwrap().parse().unwrap();
    sb.ok(&["--as", "sam", "runs", "cancel", &id.to_string()]);
    assert_eq!(run_of(id)["status"], "cancelled");
}

#[test]
fn a_command_that_waits_for_its_run_leaves_the_servers_running_runs_alone() {
    let sb = Sb::new();
    let batch = sb.folder_source("batch", "");
    sb.ok(&["plugin", "install", "--grant-all", s(&plugin("test-slow-import"))]);
    sb.ok(&["plugin", "install", "--grant-all", s(&plugin("notifier-attendance"))]);
    sb.ok(&[
        "task",
        "add",
        "slow",
        "--plugin",
        "test-slow-import",
        "--schedule",
        "daily at 22:00",
        "--source",
        "batch",
        "--prefix",
        "Slow_",
        "--collection",
        "students",
        "--key",
        "student-id",
    ]);
    sb.ok(&["task", "add", "quick", "--plugin", "notifier-attendance", "--schedule", "daily at 07:00"]);
    let line = "S000000,Someone\n";
    std::fs::write(
        batch.join("Slow_roster.csv"),
        format!("Student ID,Last Name\n{}", line.repeat(200 * 65536 / line.len())),
    )
    .unwrap();
    let _server = sb.serve();
    let said = sb.ok(&["task", "run-now", "slow"]);
    let id: u64 = said.split_whitespace().nth(1).unwrap().parse().unwrap();
    let status = |id: u64| -> String {
        let runs: Value = serde_json::from_str(&sb.ok(&["runs", "list", "--json"])).unwrap();
        runs.as_array().unwrap().iter().find(|r| r["id"] == id).unwrap()["status"].as_str().unwrap().to_string()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while status(id) != "running" {
        assert!(Instant::now() < deadline, "the slow import never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Forwarded to the server, a command that waits for its own run must
    // not take the server's running runs for a dead process's.
    sb.ok(&["task", "run-now", "quick", "--wait"]);
    assert_eq!(status(id), "running", "the server's running import was left alone");
    sb.ok(&["runs", "cancel", &id.to_string()]);
}

#[test]
fn a_rule_saved_on_one_host_takes_effect_on_another_sharing_the_database() {
    let first = Sb::on_database();
    let admin = first.ok(&["user", "token", "admin"]).trim().to_string();
    let second = Sb::sharing(&first);
    let (a, b) = (first.serve(), second.serve());
    let (on_a, on_b) = (Api::new(&a.url), Api::new(&b.url));
    let shipped = std::fs::read_to_string(first.rules.join("attendance_threshold.rhai")).unwrap();
    let stricter = "absences >= params.threshold * 2";
    let (status, saved) =
        on_a.json("PUT", "/api/v1/rules/attendance_threshold", &admin, Some(json!({ "source": stricter })));
    assert_eq!(status, 200, "{saved}");
    support::until(20, "the other host to take up the saved rule", || {
        (on_b.json("GET", "/api/v1/rules/attendance_threshold", &admin, None).1["source"] == stricter).then_some(())
    });
    // The other host decides with the saved rule: 7 absences are not 4 * 2.
    let sample = json!({ "sample": [{ "absences": 7 }], "params": { "threshold": 4 } });
    let (status, tried) = on_b.json("POST", "/api/v1/rules/attendance_threshold/test", &admin, Some(sample));
    assert_eq!((status, &tried["rows"][0]["matched"]), (200, &json!(false)), "{tried}");
    // Both versions are kept, the shipped one seeded from the folder; the
    // folder itself is left as it was.
    let (_, versions) = on_b.json("GET", "/api/v1/rules/attendance_threshold/versions", &admin, None);
    let versions = versions.as_array().unwrap();
    let seen: Vec<(u64, &str, &str)> = versions
        .iter()
        .map(|v| (v["version"].as_u64().unwrap(), v["saved_by"].as_str().unwrap(), v["source"].as_str().unwrap()))
        .collect();
    assert_eq!(seen, vec![(1, "rules folder", shipped.as_str()), (2, "admin", stricter)]);
    assert_eq!(std::fs::read_to_string(first.rules.join("attendance_threshold.rhai")).unwrap(), shipped);
    assert!(a.terminate().success() && b.terminate().success());
}
