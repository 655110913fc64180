//! Signing in: guesses wait after five a minute, their flood reaches the
//! audit log as counts, and a sign-in never sends the browser to another
//! site. Pages are not cached, and the session cookie is bound to its
//! origin when it is Secure.

use std::io::Write;

use crate::support::{Api, Sb};

const PASSWORD: &str = "a long enough password";

/// A client that does not follow redirects, so a test sees where a
/// sign-in sends the browser.
fn browser() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).max_redirects(0).build().new_agent()
}

fn sign_in(agent: &ureq::Agent, url: &str, user: &str, password: &str, next: &str) -> (u16, String) {
    let resp = agent
        .post(&format!("{url}/login"))
        .send_form([("username", user), ("password", password), ("next", next)])
        .unwrap();
    let location = resp.headers().get("location").map(|l| l.to_str().unwrap().to_string()).unwrap_or_default();
    (resp.status().as_u16(), location)
}

#[test]
fn guesses_wait_after_five_a_minute_and_are_audited_as_counts() {
    let sb = Sb::new();
    sb.ok(&["user", "add", "sam", "--role", "staff", "--email", "sam@district.test"]);
    sb.passwd("sam", "sam", PASSWORD);
    let server = sb.serve();
    let agent = browser();
    for _ in 0..5 {
        assert_eq!(sign_in(&agent, &server.url, "sam", "wrong guess", "/").0, 401);
    }
    // The sixth waits, the right password included.
    let (status, _) = sign_in(&agent, &server.url, "sam", PASSWORD, "/");
    assert_eq!(status, 429);
    // Bearer tokens meet the same count from the same address.
    let api = Api::new(&server.url);
    let (status, body) = api.call("GET", "/api/v1/tasks", Some("sb_not_a_token"), None);
    assert_eq!(status, 429, "{body}");

    // A name full of control characters and far too long is kept short and plain.
    let hostile = format!("\x1b[31m{}\x07", "x".repeat(500));
    let other = browser();
    let _ = sign_in(&other, &server.url, &hostile, "guess", "/");
    server.terminate();
    let audit = sb.ok(&["audit"]);
    assert!(!audit.chars().any(|c| c.is_control() && c != '\n'), "raw control characters in:\n{audit}");
    assert!(!audit.contains(&"x".repeat(100)), "an unbounded name in:\n{audit}");
    let failed = audit.lines().filter(|l| l.contains("sign-in.failed")).count();
    let throttled = audit.lines().filter(|l| l.contains("sign-in.throttled")).count();
    assert_eq!(throttled, 1, "{audit}");
    assert!(audit.contains("5 failed sign-ins from 127.0.0.1 within a minute"), "{audit}");
    assert!(failed <= 2, "each failure of the minute has its own entry:\n{audit}");
}

#[test]
fn sign_in_goes_back_only_to_this_site() {
    let sb = Sb::new();
    sb.ok(&["user", "add", "sam", "--role", "staff", "--email", "sam@district.test"]);
    sb.passwd("sam", "sam", PASSWORD);
    let server = sb.serve();
    for next in ["/\t/evil.example", "/\\evil.example", "//evil.example", "https://evil.example/", "/ /evil.example"] {
        let (status, location) = sign_in(&browser(), &server.url, "sam", PASSWORD, next);
        assert_eq!((status, location.as_str()), (303, "/"), "next = {next:?}");
    }
    let (_, location) = sign_in(&browser(), &server.url, "sam", PASSWORD, "/runs/1?x=1");
    assert_eq!(location, "/runs/1?x=1");
}

#[test]
fn pages_are_not_cached_and_a_secure_cookie_is_host_bound() {
    let sb = Sb::new();
    sb.file("data/schoolbell.toml", "[api]\nsecure_cookies = true\n");
    sb.ok(&["user", "add", "sam", "--role", "staff", "--email", "sam@district.test"]);
    sb.passwd("sam", "sam", PASSWORD);
    let server = sb.serve();
    let agent = browser();
    let resp = agent
        .post(&format!("{}/login", server.url))
        .send_form([("username", "sam"), ("password", PASSWORD), ("next", "/")])
        .unwrap();
    let cookie = resp.headers().get("set-cookie").unwrap().to_str().unwrap().to_string();
    assert!(
        cookie.starts_with("__Host-sb_session=") && cookie.contains("Path=/") && cookie.contains("Secure"),
        "{cookie}"
    );
    let token = sb.ok(&["user", "token", "admin"]).trim().to_string();
    let api = Api::new(&server.url);
    for path in ["/", "/login", "/api/v1/runs"] {
        let resp = agent
            .get(&format!("{}{path}", server.url))
            .header("Authorization", format!("Bearer {token}"))
            .call()
            .unwrap();
        let cache = resp.headers().get("cache-control").map(|v| v.to_str().unwrap().to_string());
        assert_eq!(cache.as_deref(), Some("no-store"), "{path}");
    }
    drop(api);
}

#[test]
fn a_client_dribbling_its_headers_is_cut_off() {
    use std::io::Read;
    let sb = Sb::new();
    sb.file("data/schoolbell.toml", "[api]\nheader_read_timeout_secs = 2\n");
    let server = sb.serve();
    let addr = server.url.trim_start_matches("http://").to_string();
    let mut tcp = std::net::TcpStream::connect(&addr).unwrap();
    // One byte a second, as a slowloris client sends: a header that would
    // take a minute to finish. After each byte the client waits up to a
    // second for the server to answer or close; that wait is its pace.
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(1))).unwrap();
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nX-Slow: {}\r\n\r\n", "x".repeat(40));
    let mut sent = 0;
    let mut closed = false;
    for byte in request.bytes() {
        if tcp.write_all(&[byte]).is_err() {
            closed = true;
            break;
        }
        sent += 1;
        let mut answer = [0u8; 256];
        match tcp.read(&mut answer) {
            // The server answered or closed before the header was done.
            Ok(_) => {
                closed = true;
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    assert!(closed, "the server waited for all {sent} bytes of a dribbled header");
    assert!(sent < request.len(), "cut off only after the whole header ({sent} bytes)");
}

/// A signed-in browser: the session cookie it sends.
struct Browser {
    agent: ureq::Agent,
    cookie: String,
}

impl Browser {
    fn sign_in(url: &str, user: &str, password: &str) -> Browser {
        let agent = browser();
        let resp = agent
            .post(&format!("{url}/login"))
            .send_form([("username", user), ("password", password), ("next", "/")])
            .unwrap();
        assert_eq!(resp.status().as_u16(), 303, "{user} could not sign in");
        let set = resp.headers().get("set-cookie").unwrap().to_str().unwrap();
        Browser { agent, cookie: set.split(';').next().unwrap().to_string() }
    }

    fn get(&self, url: &str) -> (u16, String) {
        let mut resp = self.agent.get(url).header("Cookie", &self.cookie).call().unwrap();
        (resp.status().as_u16(), resp.body_mut().read_to_string().unwrap_or_default())
    }

    fn post(&self, url: &str, form: &[(&str, &str)]) -> (u16, String) {
        let resp = self.agent.post(url).header("Cookie", &self.cookie).send_form(form.iter().copied()).unwrap();
        let location = resp.headers().get("location").map(|l| l.to_str().unwrap().to_string()).unwrap_or_default();
        (resp.status().as_u16(), location)
    }
}

#[test]
fn changing_a_password_asks_for_the_old_one_and_ends_the_other_sessions() {
    let sb = Sb::new();
    sb.ok(&["user", "add", "sam", "--role", "staff", "--email", "sam@district.test"]);
    sb.passwd("sam", "sam", PASSWORD);
    let token = sb.ok(&["user", "token", "sam"]).trim().to_string();
    let server = sb.serve();
    let (here, there) =
        (Browser::sign_in(&server.url, "sam", PASSWORD), Browser::sign_in(&server.url, "sam", PASSWORD));
    let profile = format!("{}/profile", server.url);
    let (_, page) = here.get(&profile);
    let csrf = page.split("name=\"csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_string();
    let change = |current: &str| {
        here.post(&profile, &[("csrf", csrf.as_str()), ("current", current), ("password", "another long password")])
    };
    // Without the current password, nothing changes.
    assert_eq!(change("a wrong guess").0, 403);
    assert_eq!(there.get(&profile).0, 200);
    let (status, landed) = change(PASSWORD);
    assert_eq!(status, 303);
    let (_, shown) = here.get(&format!("{}{landed}", server.url));
    assert!(shown.contains("Password changed. 2 other sessions and tokens of yours were ended."), "{shown}");
    // This session goes on; the other session and the API token end.
    assert_eq!(here.get(&profile).0, 200);
    assert_eq!(there.get(&profile).0, 303, "the other session was not ended");
    let api = Api::new(&server.url);
    assert_eq!(api.call("GET", "/api/v1/tasks", Some(&token), None).0, 401);

    // The owner's reset ends every session of the user.
    let out = sb.passwd("admin", "sam", PASSWORD);
    assert!(out.contains("1 sessions and tokens of sam ended"), "{out}");
    assert_eq!(here.get(&profile).0, 303, "the reset left a session open");
}

#[test]
fn console_sessions_end_when_idle_apart_from_api_tokens() {
    let sb = Sb::new();
    sb.file("data/schoolbell.toml", "[console]\nidle_minutes = 30\nmax_hours = 12\n");
    sb.ok(&["user", "add", "sam", "--role", "staff", "--email", "sam@district.test"]);
    sb.passwd("sam", "sam", PASSWORD);
    let token = sb.ok(&["user", "token", "sam"]).trim().to_string();
    let now = chrono::Utc::now();
    let server = sb.serve_with(&[("SCHOOLBELL_NOW", &now.to_rfc3339())], None);
    let session = Browser::sign_in(&server.url, "sam", PASSWORD);
    server.terminate();
    // An hour later, by the service's clock: past the console's 30 idle
    // minutes, well inside the API token's 90 days.
    let later = (now + chrono::Duration::hours(1)).to_rfc3339();
    let server = sb.serve_with(&[("SCHOOLBELL_NOW", &later)], None);
    assert_eq!(session.get(&format!("{}/profile", server.url)).0, 303, "an idle session went on");
    assert_eq!(Api::new(&server.url).call("GET", "/api/v1/tasks", Some(&token), None).0, 200);
}

#[test]
fn live_views_are_capped_per_user_and_end_with_their_session() {
    let sb = Sb::new();
    sb.ok(&["plugin", "install", "--grant-all", crate::support::s(&crate::support::plugin("notifier-attendance"))]);
    sb.ok(&["task", "add", "nudge", "--plugin", "notifier-attendance", "--schedule", "daily at 07:00"]);
    sb.ok(&["user", "add", "sam", "--role", "staff", "--email", "sam@district.test"]);
    sb.passwd("sam", "sam", PASSWORD);
    let server = sb.serve();
    let sam = Browser::sign_in(&server.url, "sam", PASSWORD);
    let events = format!("{}/runs/events", server.url);
    let open = || sam.agent.get(&events).header("Cookie", &sam.cookie).call().unwrap();
    let mut streams: Vec<_> = (0..4).map(|_| open()).collect();
    assert!(streams.iter().all(|s| s.status().as_u16() == 200));
    assert_eq!(open().status().as_u16(), 429, "a fifth live view for one user");

    // The owner resets sam's password: sam's sessions end, and so does the
    // stream, at the next update.
    let (tx, rx) = std::sync::mpsc::channel();
    let stream = streams.pop().unwrap();
    std::thread::spawn(move || {
        let mut body = stream.into_body().into_reader();
        let mut buf = [0u8; 4096];
        while matches!(std::io::Read::read(&mut body, &mut buf), Ok(n) if n > 0) {}
        let _ = tx.send(());
    });
    sb.passwd("admin", "sam", "another long password");
    sb.ok(&["task", "run-now", "nudge"]);
    rx.recv_timeout(std::time::Duration::from_secs(60)).expect("the revoked session's stream ended");
}

#[test]
fn the_audit_log_keeps_its_retention_and_says_so() {
    let sb = Sb::new();
    sb.file("data/schoolbell.toml", "[audit]\nretention_days = 400\n");
    sb.ok(&["user", "add", "sam", "--role", "staff", "--email", "sam@district.test"]);
    sb.ok(&["user", "add", "pat", "--role", "staff", "--email", "pat@district.test"]);
    assert!(sb.ok(&["audit"]).contains("user.put"));
    // 401 days on, by the service's clock: its first sweep prunes them.
    let later = (chrono::Utc::now() + chrono::Duration::days(401)).to_rfc3339();
    let server = sb.serve_with(&[("SCHOOLBELL_NOW", &later)], None);
    let audit = crate::support::until(60, "the audit retention to run", || {
        let audit = sb.ok(&["audit"]);
        audit.contains("audit.retention").then_some(audit)
    });
    assert!(!audit.contains("user.put"), "entries older than the retention stayed:\n{audit}");
    assert!(audit.contains("2 entries older than 400 days ([audit] retention_days) removed"), "{audit}");
    server.terminate();
}
