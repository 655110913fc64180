//! The two-person rule holds against one owner: a password the owner set
//! for an authorizer, or a token the owner issued them, does not let the
//! owner approve their own mass change in the authorizer's name.

use serde_json::json;

use crate::support::{Api, Sb, plugin, s};

#[test]
fn an_owner_cannot_approve_their_own_mass_change_as_an_authorizer() {
    let sb = Sb::new();
    let batch = sb.folder_source("sis", "[scheduler]\npickup_settle_ms = 10\n");
    sb.ok(&["plugin", "install", "--grant-all", s(&plugin("import-csv-roster"))]);
    sb.ok(&["user", "add", "ann", "--role", "staff", "--permission", "authorize", "--email", "ann@district.test"]);
    sb.roster_task("nightly", "sis", "IC_", &[]);
    let rows: String = (0..10).map(|i| format!("S{i},Ng,Ann,2010-01-02\n")).collect();
    std::fs::write(batch.join("IC_1.csv"), format!("Student ID,Last Name,First Name,Birth Date\n{rows}")).unwrap();
    let admin = sb.ok(&["user", "token", "admin"]).trim().to_string();
    // The owner resets ann's password, and issues a token for her.
    sb.passwd("admin", "ann", "the owner knows this one");
    let ann_token = sb.ok(&["user", "token", "ann"]).trim().to_string();
    let server = sb.serve();
    let api = Api::new(&server.url);

    let (_, run) = api.json("POST", "/api/v1/tasks/nightly/run-now", &admin, None);
    assert_eq!(api.settled(&admin, run["id"].as_u64().unwrap())["status"], "succeeded");
    // Ten new students beside the ten: held for authorization; the owner asks.
    let rows: String = (10..20).map(|i| format!("S{i},Li,Bo,2010-01-02\n")).collect();
    std::fs::write(batch.join("IC_2.csv"), format!("Student ID,Last Name,First Name,Birth Date\n{rows}")).unwrap();
    let (_, run) = api.json("POST", "/api/v1/tasks/nightly/run-now", &admin, None);
    let id = run["id"].as_u64().unwrap();
    assert_eq!(api.settled(&admin, id)["status"], "awaiting-authorization");
    let (status, body) =
        api.json("POST", &format!("/api/v1/runs/{id}/request"), &admin, Some(json!({ "comment": "new year" })));
    assert_eq!(status, 200, "{body}");

    // As ann, with the token and the password the owner made: refused.
    let approve = |token: &str, password: &str| {
        api.json("POST", &format!("/api/v1/runs/{id}/approve"), token, Some(json!({ "password": password })))
    };
    let (status, body) = approve(&ann_token, "the owner knows this one");
    assert_eq!(status, 403, "{body}");
    assert!(body["error"].as_str().unwrap().contains("your password was set by someone else"), "{body}");
    let (_, log) = api.json("GET", "/api/v1/audit", &admin, None);
    assert!(log.to_string().contains("import.approve.refused"), "the refusal is audited: {log}");
    assert_eq!(api.settled(&admin, id)["status"], "awaiting-authorization");

    // Once ann sets her own password, her approval stands.
    sb.passwd("ann", "ann", "ann's very own password");
    let ann_token = sb.ok(&["user", "token", "ann"]).trim().to_string();
    let (status, body) = approve(&ann_token, "ann's very own password");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "succeeded", "{body}");
}
