//! What a staff user, a careless task or a plugin may not do with the
//! district's data, each refusal exercised through the HTTP API of a
//! running server: sources, targets and recipients are the owner's; a mass
//! change takes two people; a collection's key stays.

#[path = "../support/mod.rs"]
mod support;

mod database_tls;
mod hostile_server;
mod removed_users;
mod rule_tests;
mod sessions;
mod sleeping_plugin;
mod staff_reach;
mod two_people;

use serde_json::{Value, json};
use support::{Api, Sb, plugin, s};

const COLUMNS: &str = "student-id=Student ID; last-name=Last Name; first-name=First Name; birth-date=Birth Date:date";

/// The password olga set herself.
const OLGA_PASSWORD: &str = "olga's own long password";

fn roster(rows: std::ops::Range<usize>) -> String {
    let body: String = rows.map(|i| format!("S{i:04},Last{i},First{i},2010-01-{:02}\n", 1 + i % 28)).collect();
    format!("Student ID,Last Name,First Name,Birth Date\n{body}")
}

struct District {
    sb: Sb,
    batch: std::path::PathBuf,
    admin: String,
    olga: String,
    sam: String,
}

fn district() -> District {
    let sb = Sb::new();
    let batch =
        sb.folder_source("sis", "[scheduler]\npickup_settle_ms = 10\n[email]\nallowed_domains = [\"district.test\"]\n");
    sb.ok(&["plugin", "install", "--grant-all", s(&plugin("import-csv-roster")), s(&plugin("notifier-attendance"))]);
    sb.ok(&["plugin", "grant", "notifier-attendance", "staff"]);
    sb.ok(&["user", "add", "sam", "--role", "staff", "--email", "sam@district.test"]);
    sb.ok(&["user", "add", "olga", "--role", "owner", "--email", "olga@district.test"]);
    let token = |u: &str| sb.ok(&["user", "token", u]).trim().to_string();
    let (admin, olga, sam) = (token("admin"), token("olga"), token("sam"));
    // Olga sets her own password (as she would on her profile).
    sb.passwd("olga", "olga", OLGA_PASSWORD);
    District { sb, batch, admin, olga, sam }
}

fn import_task(name: &str, source: &str, owner: Option<&str>) -> Value {
    json!({
        "name": name, "plugin": "import-csv-roster", "schedule": "daily at 22:00",
        "params": { "columns": COLUMNS }, "owner": owner,
        "import": { "source": source, "prefix": "IC_", "collection": "students", "key_field": "student-id" }
    })
}

#[test]
fn sources_and_import_targets_are_the_owners() {
    let d = district();
    let server = d.sb.serve();
    let api = Api::new(&server.url);

    // A staff user can neither define a source nor see where they point.
    let folder = json!({ "folder": { "folder": "batch" } });
    let (status, body) = api.json("PUT", "/api/v1/sources/mine", &d.sam, Some(folder.clone()));
    assert_eq!(status, 403, "{body}");
    assert_eq!(api.json("GET", "/api/v1/sources", &d.sam, None).0, 403);

    // Nor can the owner point a source outside the district's folders.
    let (status, body) =
        api.json("PUT", "/api/v1/sources/etc", &d.admin, Some(json!({ "folder": { "folder": "etc" } })));
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("no folder `etc` under [sandbox.folders]"), "{body}");
    let (status, body) = api.json(
        "PUT",
        "/api/v1/sources/up",
        &d.admin,
        Some(json!({ "folder": { "folder": "batch", "path": "../../etc" } })),
    );
    assert_eq!(status, 400, "{body}");

    // A task names a source; a path is not one.
    let (status, body) = api.json("POST", "/api/v1/tasks", &d.admin, Some(import_task("leak", "/proc/self", None)));
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("no source named `/proc/self`"), "{body}");

    // Staff may not set up an import: where rows go and when a mass change is held is the owner's.
    let (status, body) = api.json("POST", "/api/v1/tasks", &d.sam, Some(import_task("mine", "sis", None)));
    assert_eq!(status, 403, "{body}");
    assert!(body["error"].as_str().unwrap().contains("only the account owner may set up an import"), "{body}");

    // The owner sets one up for sam, who may test and run it, but not remove its source.
    let (status, body) = api.json("POST", "/api/v1/tasks", &d.admin, Some(import_task("nightly", "sis", Some("sam"))));
    assert_eq!(status, 201, "{body}");
    std::fs::write(d.batch.join("IC_1.csv"), roster(0..5)).unwrap();
    let (status, run) = api.json("POST", "/api/v1/tasks/nightly/test-import", &d.sam, None);
    assert_eq!(status, 202, "{run}");
    let done = api.settled(&d.sam, run["id"].as_u64().unwrap());
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(api.json("DELETE", "/api/v1/sources/sis", &d.sam, None).0, 403);
    let (status, body) = api.json("DELETE", "/api/v1/sources/sis", &d.admin, None);
    assert_eq!(status, 409, "a source in use stays: {body}");

    // An existing collection's key cannot be changed by another import.
    let mut rekey = import_task("rekey", "sis", None);
    rekey["import"]["key_field"] = json!("last-name");
    let (status, body) = api.json("POST", "/api/v1/tasks", &d.admin, Some(rekey));
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("cannot change its key"), "{body}");
    server.terminate();
}

#[test]
fn a_mass_change_takes_two_people() {
    let d = district();
    let server = d.sb.serve();
    let api = Api::new(&server.url);
    let (status, body) = api.json("POST", "/api/v1/tasks", &d.admin, Some(import_task("nightly", "sis", Some("sam"))));
    assert_eq!(status, 201, "{body}");
    std::fs::write(d.batch.join("IC_1.csv"), roster(0..100)).unwrap();
    let (_, run) = api.json("POST", "/api/v1/tasks/nightly/run-now", &d.sam, None);
    assert_eq!(api.settled(&d.sam, run["id"].as_u64().unwrap())["status"], "succeeded");

    // 15 of 100 renamed: held for confirmation.
    let renamed: String = (0..15).map(|i| format!("S{i:04},Renamed{i},First{i},2010-01-{:02}\n", 1 + i % 28)).collect();
    std::fs::write(d.batch.join("IC_2.csv"), format!("Student ID,Last Name,First Name,Birth Date\n{renamed}")).unwrap();
    let (_, run) = api.json("POST", "/api/v1/tasks/nightly/run-now", &d.sam, None);
    let id = run["id"].as_u64().unwrap();
    assert_eq!(api.settled(&d.sam, id)["status"], "awaiting-confirmation");
    let (status, body) = api.json("POST", &format!("/api/v1/runs/{id}/confirm"), &d.sam, Some(json!({})));
    assert_eq!(status, 403, "the requester may not confirm their own run: {body}");
    // A token is not the person: confirming takes olga's own password.
    let (status, body) = api.json("POST", &format!("/api/v1/runs/{id}/confirm"), &d.olga, Some(json!({})));
    assert_eq!(status, 403, "{body}");
    let (status, body) =
        api.json("POST", &format!("/api/v1/runs/{id}/confirm"), &d.olga, Some(json!({ "password": OLGA_PASSWORD })));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "succeeded");

    // Removing 60 of 100 (a full roster of 40) goes to authorization, like adding 60 would.
    let (status, body) = api.json(
        "POST",
        "/api/v1/tasks",
        &d.admin,
        Some({
            let mut t = import_task("full", "sis", None);
            t["import"]["full_roster"] = json!(true);
            t["import"]["missing"] = json!("remove");
            t["import"]["prefix"] = json!("FULL_");
            t
        }),
    );
    assert_eq!(status, 201, "{body}");
    std::fs::write(d.batch.join("FULL_1.csv"), roster(0..40)).unwrap();
    let (_, run) = api.json("POST", "/api/v1/tasks/full/run-now", &d.admin, None);
    let id = run["id"].as_u64().unwrap();
    let held = api.settled(&d.admin, id);
    assert_eq!(held["status"], "awaiting-authorization", "{held}");
    assert_eq!(api.json("POST", &format!("/api/v1/runs/{id}/confirm"), &d.olga, Some(json!({}))).0, 409);
    server.terminate();
}

#[test]
fn mail_goes_only_to_users_and_allowed_domains() {
    let d = district();
    let server = d.sb.serve();
    let api = Api::new(&server.url);
    let notifier = |group: &[&str]| json!({ "name": "absences", "plugin": "notifier-attendance", "schedule": "daily at 07:00", "notify": { "group": group } });
    let (status, body) = api.json("POST", "/api/v1/tasks", &d.sam, Some(notifier(&["me@elsewhere.example"])));
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("not in [email] allowed_domains"), "{body}");
    let (status, body) = api.json("POST", "/api/v1/tasks", &d.sam, Some(notifier(&["olga", "office@district.test"])));
    assert_eq!(status, 201, "users and allowed domains are fine: {body}");
    server.terminate();
}

#[test]
fn access_can_be_taken_away_and_every_change_is_recorded() {
    let d = district();
    d.sb.ok(&["user", "add", "pat", "--role", "staff"]);
    // Issued a year ago: past the default 90 days.
    let old =
        d.sb.command().args(["user", "token", "pat"]).env("SCHOOLBELL_NOW", "2025-11-01T00:00:00Z").output().unwrap();
    let stale = String::from_utf8(old.stdout).unwrap().trim().to_string();
    let server = d.sb.serve();
    let api = Api::new(&server.url);

    let (status, body) = api.json("GET", "/api/v1/runs", &stale, None);
    assert_eq!(status, 401, "{body}");
    assert!(body["error"].as_str().unwrap().contains("expired"), "{body}");
    assert_eq!(api.json("GET", "/api/v1/runs", &d.sam, None).0, 200);
    let (_, tokens) = api.json("GET", "/api/v1/tokens", &d.admin, None);
    let sams: Vec<&Value> = tokens.as_array().unwrap().iter().filter(|t| t["user"] == "sam").collect();
    assert_eq!(sams.len(), 1, "{tokens}");
    assert!(sams[0]["last_used_at"].is_string(), "the use was noted: {tokens}");
    assert!(!tokens.to_string().contains(&d.sam), "a token is never shown again");
    assert_eq!(api.json("GET", "/api/v1/tokens", &d.sam, None).0, 403);

    // Revoked: refused at once.
    let id = sams[0]["id"].as_str().unwrap().to_string();
    assert_eq!(api.json("DELETE", &format!("/api/v1/tokens/{id}"), &d.admin, None).0, 200);
    assert_eq!(api.json("GET", "/api/v1/runs", &d.sam, None).0, 401);

    // A removed user's tokens go with them.
    assert_eq!(api.json("GET", "/api/v1/runs", &d.olga, None).0, 200);
    assert_eq!(api.json("DELETE", "/api/v1/users/olga", &d.admin, None).0, 200);
    assert_eq!(api.json("GET", "/api/v1/runs", &d.olga, None).0, 401);
    assert_eq!(api.json("DELETE", "/api/v1/users/admin", &d.admin, None).0, 400, "nobody removes themselves");

    let (status, log) = api.json("GET", "/api/v1/audit", &d.admin, None);
    assert_eq!(status, 200, "{log}");
    let actions: Vec<String> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{} {} {}",
                e["entry"]["user"].as_str().unwrap(),
                e["entry"]["action"].as_str().unwrap(),
                e["entry"]["target"].as_str().unwrap()
            )
        })
        .collect();
    for expected in [
        "admin source.add sis",
        "admin user.put sam",
        "admin token.issue sam",
        "admin token.revoke sam",
        "admin user.remove olga",
    ] {
        assert!(actions.iter().any(|a| a == expected), "{expected} missing from {actions:?}");
    }
    // Three bad tokens from one address within a minute: one entry, the
    // first; the rest are counted, not written one by one.
    assert_eq!(actions.iter().filter(|a| a.starts_with("- sign-in.failed")).count(), 1, "{actions:?}");
    assert_eq!(api.json("GET", "/api/v1/audit", &d.sam, None).0, 401);
    server.terminate();
    // The CLI reads the same log; deleting runs does not touch it.
    let out = d.sb.ok(&["audit", "--limit", "1000"]);
    assert!(out.contains("token.revoke"), "{out}");
}

#[test]
fn approval_codes_are_long_secret_and_die_after_five_wrong_tries() {
    let d = district();
    let server = d.sb.serve();
    let api = Api::new(&server.url);
    d.sb.ok(&["user", "add", "ana", "--role", "staff", "--permission", "authorize"]);
    let ana = d.sb.ok(&["user", "token", "ana"]).trim().to_string();
    let (status, body) = api.json("POST", "/api/v1/tasks", &d.admin, Some(import_task("nightly", "sis", Some("sam"))));
    assert_eq!(status, 201, "{body}");
    std::fs::write(d.batch.join("IC_1.csv"), roster(0..10)).unwrap();
    let (_, run) = api.json("POST", "/api/v1/tasks/nightly/run-now", &d.sam, None);
    api.settled(&d.sam, run["id"].as_u64().unwrap());
    std::fs::write(d.batch.join("IC_2.csv"), roster(10..20)).unwrap();
    let (_, run) = api.json("POST", "/api/v1/tasks/nightly/run-now", &d.sam, None);
    let id = run["id"].as_u64().unwrap();
    assert_eq!(api.settled(&d.sam, id)["status"], "awaiting-authorization");
    let request = json!({ "comment": "new campus" });
    assert_eq!(api.json("POST", &format!("/api/v1/runs/{id}/request"), &d.sam, Some(request)).0, 200);

    let (status, issued) = api.json("POST", &format!("/api/v1/runs/{id}/code"), &ana, None);
    assert_eq!(status, 200, "{issued}");
    let code = issued["code"].as_str().unwrap().to_string();
    assert!(code.len() >= 32, "at least 128 bits: {code}");
    let (_, shown) = api.json("GET", &format!("/api/v1/runs/{id}"), &d.sam, None);
    assert!(!shown.to_string().contains("approval_code"), "the run shows nothing of the code: {shown}");
    let (status, body) = api.json("POST", &format!("/api/v1/runs/{id}/approve"), &ana, Some(json!({ "code": code })));
    assert_eq!(status, 403, "whoever issued a code does not use it: {body}");

    for _ in 0..5 {
        let wrong = json!({ "code": "0".repeat(32) });
        assert_eq!(api.json("POST", &format!("/api/v1/runs/{id}/approve"), &d.sam, Some(wrong)).0, 403);
    }
    let (status, body) = api.json("POST", &format!("/api/v1/runs/{id}/approve"), &d.sam, Some(json!({ "code": code })));
    assert_eq!(status, 403, "five wrong tries void the code: {body}");
    assert!(body["error"].as_str().unwrap().contains("none is outstanding"), "{body}");
    server.terminate();
}

#[test]
fn sensitive_fields_are_masked_where_people_read_about_records() {
    let sb = Sb::new();
    sb.ok(&["plugin", "install", "--grant-all", s(&plugin("import-csv-roster"))]);
    let first = sb.import_roster("first.csv", "match_student", "S1,Ng,Ann,2010-01-02,F,9,111-22-3333\n", &[]);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let no_guard = ["--confirm-percent", "1000", "--authorize-percent", "1000"];
    let out = sb.import_roster("second.csv", "match_student", "S1,Ng,Ann,2010-01-02,F,9,444-55-6666\n", &no_guard);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.contains("ssn: \"***-**-3333\" → \"***-**-6666\""), "{text}");
    assert!(!text.contains("111-22-3333") && !text.contains("444-55-6666"), "{text}");
    let runs: Value = serde_json::from_str(&sb.ok(&["runs", "list", "--json"])).unwrap();
    let id = runs[0]["id"].as_u64().unwrap().to_string();
    let messages = sb.ok(&["runs", "messages", &id, "--json"]);
    assert!(messages.contains("***-**-6666") && !messages.contains("444-55-6666"), "{messages}");
    // The record itself is whole.
    let records = sb.ok(&["records", "list", "students", "--json"]);
    assert!(records.contains("444-55-6666"), "{records}");
}

#[test]
fn a_plugin_cannot_address_mail_itself_without_send_address() {
    let d = district();
    d.sb.ok(&["plugin", "install", "--grant-all", s(&plugin("test-hostile"))]);
    let server = d.sb.serve();
    let api = Api::new(&server.url);
    let task = json!({ "name": "chooser", "plugin": "test-hostile", "schedule": "daily at 07:00", "params": { "behaviour": "address" } });
    assert_eq!(api.json("POST", "/api/v1/tasks", &d.admin, Some(task)).0, 201);
    let (_, run) = api.json("POST", "/api/v1/tasks/chooser/run-now", &d.admin, None);
    let id = run["id"].as_u64().unwrap();
    let done = api.settled(&d.admin, id);
    assert_eq!(done["summary"]["emails"].as_u64().unwrap_or(0), 0, "{done}");
    let (_, messages) = api.json("GET", &format!("/api/v1/runs/{id}/messages"), &d.admin, None);
    assert!(messages.to_string().contains("needs the `send:address` capability granted"), "{messages}");
    let (_, outbox) = api.json("GET", "/api/v1/outbox", &d.admin, None);
    assert_eq!(outbox, json!([]), "nothing was queued");
    server.terminate();
}

/// What the service writes is its user's alone: the data directory 0700,
/// the store's files and the secrets key 0600.
#[test]
fn the_data_directory_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let sb = Sb::new();
    sb.ok(&["secret", "set", "k", "--file", s(&sb.file("k.txt", "secret"))]);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&sb.data()), 0o700);
    assert_eq!(mode(&sb.data().join("secret.key")), 0o600);
    for entry in std::fs::read_dir(sb.data().join("store")).unwrap() {
        let path = entry.unwrap().path();
        let m = mode(&path);
        assert_eq!(m & 0o077, 0, "{} is mode {m:o}", path.display());
    }
}
