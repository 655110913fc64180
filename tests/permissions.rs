//! The CLI is the API's twin: the same permission matrix (owner, staff,
//! autopilot, authorize, outsider × every operation) through the CLI and
//! through the HTTP API of the same running server gives the same answers.
//! The CLI reaches the server over its local socket (it cannot open a
//! store that `serve` holds), so both faces meet one core.

mod support;

use serde_json::{Value, json};
use support::{Api, Sb, plugin, s};

/// One operation, as each face spells it.
struct Op {
    name: &'static str,
    cli: Vec<String>,
    method: &'static str,
    path: String,
    body: Option<Value>,
    /// What of a success both faces must agree on.
    answer: fn(&Value) -> Value,
}

fn op(
    name: &'static str,
    cli: &[&str],
    method: &'static str,
    path: &str,
    body: Option<Value>,
    answer: fn(&Value) -> Value,
) -> Op {
    Op { name, cli: cli.iter().map(|a| a.to_string()).collect(), method, path: path.into(), body, answer }
}

fn names(v: &Value) -> Value {
    let mut names: Vec<String> = v
        .as_array()
        .map(|a| a.iter().filter_map(|x| x["name"].as_str().or(x.as_str()).map(str::to_string)).collect())
        .unwrap_or_default();
    names.sort();
    json!(names)
}

fn ids(v: &Value) -> Value {
    let mut ids: Vec<u64> =
        v.as_array().map(|a| a.iter().filter_map(|x| x["id"].as_u64()).collect()).unwrap_or_default();
    ids.sort();
    json!(ids)
}

fn task_name(v: &Value) -> Value {
    v["task"]["name"].clone()
}

fn run_id(v: &Value) -> Value {
    v["id"].clone()
}

fn nothing(_: &Value) -> Value {
    Value::Null
}

fn count(v: &Value) -> Value {
    json!(
        v.as_array().map(Vec::len).or(v["records"].as_array().map(Vec::len)).or(v["messages"].as_array().map(Vec::len))
    )
}

#[test]
fn the_cli_and_the_api_give_every_role_the_same_answers() {
    let sb = Sb::with_own_rules();
    sb.ok(&["plugin", "install", "--grant-all", s(&plugin("notifier-attendance"))]);
    // Offered to staff with its defaults: their own task below uses it.
    sb.ok(&["plugin", "grant", "notifier-attendance", "staff"]);
    sb.load_attendance(support::ONE_ATTENDANCE);
    let users = [("sam", vec![]), ("pat", vec!["autopilot"]), ("ann", vec!["authorize"]), ("olga", vec![])];
    for (name, permissions) in &users {
        let mut args = vec!["user", "add", name, "--role", "staff", "--email", "x@district.test"];
        for p in permissions {
            args.extend(["--permission", p]);
        }
        sb.ok(&args);
    }
    let task = |name: &str, user: &str| {
        sb.ok(&[
            "--as",
            user,
            "task",
            "add",
            name,
            "--plugin",
            "notifier-attendance",
            "--schedule",
            "daily at 07:00",
            "--notify",
            "sam",
        ])
    };
    task("owners", "admin");
    task("sams", "sam");
    sb.ok(&["--as", "sam", "task", "run-now", "sams", "--wait"]);
    let run: Value = serde_json::from_str(&sb.ok(&["runs", "list", "--json"])).unwrap();
    let run = run[0]["id"].as_u64().unwrap().to_string();
    let rule = sb.rules.join("attendance_threshold.rhai");
    let rule_source = std::fs::read_to_string(&rule).unwrap();
    let tokens: Vec<(String, String)> = ["admin", "sam", "pat", "ann", "olga"]
        .iter()
        .map(|u| (u.to_string(), sb.ok(&["user", "token", u]).trim().to_string()))
        .collect();

    let server = sb.serve();
    let api = Api::new(&server.url);
    let ops = [
        op("task list", &["task", "list", "--json"], "GET", "/api/v1/tasks", None, names),
        op("task show owners", &["task", "show", "owners", "--json"], "GET", "/api/v1/tasks/owners", None, task_name),
        op("task show sams", &["task", "show", "sams", "--json"], "GET", "/api/v1/tasks/sams", None, task_name),
        op("task disable sams", &["task", "disable", "sams"], "POST", "/api/v1/tasks/sams/disable", None, nothing),
        op("runs list", &["runs", "list", "--json"], "GET", "/api/v1/runs", None, ids),
        op("runs show", &["runs", "show", &run, "--json"], "GET", &format!("/api/v1/runs/{run}"), None, run_id),
        op(
            "runs messages",
            &["runs", "messages", &run, "--json"],
            "GET",
            &format!("/api/v1/runs/{run}/messages"),
            None,
            count,
        ),
        op("runs cancel", &["runs", "cancel", &run], "POST", &format!("/api/v1/runs/{run}/cancel"), None, nothing),
        op("import preview", &["import", "preview", &run], "GET", &format!("/api/v1/runs/{run}/plan"), None, nothing),
        op("import code", &["import", "code", &run], "POST", &format!("/api/v1/runs/{run}/code"), None, nothing),
        op("rule list", &["rule", "list"], "GET", "/api/v1/rules", None, nothing),
        op(
            "rule save",
            &["rule", "save", "attendance_threshold", s(&rule)],
            "PUT",
            "/api/v1/rules/attendance_threshold",
            Some(json!({ "source": rule_source })),
            nothing,
        ),
        op("notify outbox", &["notify", "outbox", "--json"], "GET", "/api/v1/outbox", None, count),
        op("user list", &["user", "list", "--json"], "GET", "/api/v1/users", None, names),
        op("secret list", &["secret", "list"], "GET", "/api/v1/secrets", None, nothing),
        op("source list", &["source", "list", "--json"], "GET", "/api/v1/sources", None, names),
        op("plugin list", &["plugin", "list", "--json"], "GET", "/api/v1/plugins", None, names),
        op(
            "plugin grant",
            &["plugin", "grant", "notifier-attendance", "read:attendance"],
            "POST",
            "/api/v1/plugins/notifier-attendance/grant",
            Some(json!({ "capability": "read:attendance" })),
            nothing,
        ),
        op(
            "records list",
            &["records", "list", "attendance", "--json"],
            "GET",
            "/api/v1/collections/attendance",
            None,
            count,
        ),
        op("user token", &["user", "token", "sam"], "POST", "/api/v1/users/sam/tokens", None, nothing),
        op(
            "task run-now owners",
            &["task", "run-now", "owners"],
            "POST",
            "/api/v1/tasks/owners/run-now",
            None,
            nothing,
        ),
    ];

    let mut allowed = Vec::new();
    for op in &ops {
        for (user, token) in &tokens {
            let mut args = vec!["--as".to_string(), user.clone()];
            args.extend(op.cli.iter().cloned());
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = sb.run(&args);
            let cli_error = String::from_utf8_lossy(&out.stderr).trim().strip_prefix("error: ").map(str::to_string);
            let cli = match (out.status.success(), cli_error) {
                (true, _) => {
                    let stdout = String::from_utf8_lossy(&out.stdout);
                    Ok((op.answer)(&serde_json::from_str(&stdout).unwrap_or(Value::Null)))
                }
                (false, error) => Err(error.unwrap_or_else(|| "(no error line)".into())),
            };
            let (status, body) = api.json(op.method, &op.path, token, op.body.clone());
            let via_api = if (200..300).contains(&status) {
                Ok((op.answer)(&body))
            } else {
                Err(body["error"].as_str().unwrap_or("(no error)").to_string())
            };
            assert_eq!(cli, via_api, "{} as {user}: the CLI and the API disagree", op.name);
            if cli.is_ok() {
                allowed.push(format!("{} as {user}", op.name));
            }
        }
    }
    // The matrix is not vacuous: the owner may do everything, and the
    // other roles are refused the owner's operations.
    for op in &ops {
        if !["runs cancel", "import preview", "import code"].contains(&op.name) {
            assert!(allowed.contains(&format!("{} as admin", op.name)), "{} as admin: {allowed:?}", op.name);
        }
    }
    for refused in [
        "user list as sam",
        "rule save as sam",
        "plugin grant as pat",
        "records list as olga",
        "runs show as olga",
        "task show sams as olga",
    ] {
        assert!(!allowed.iter().any(|a| a == refused), "{refused} should be refused: {allowed:?}");
    }
    assert!(allowed.iter().any(|a| a == "runs show as sam"), "{allowed:?}");
    assert!(allowed.iter().any(|a| a == "task show sams as sam"), "{allowed:?}");
    server.terminate();
}
