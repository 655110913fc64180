//! Notifications by email, through the real binary and a real SMTP server
//! on loopback (Debian's aiosmtpd): the outbox is written with the run,
//! the mailer retries with backoff while the server is down, sends each
//! email once, the dedupe ledger holds repeats back and re-arms when the
//! condition clears, and job-completion emails follow each user's choice.

mod support;

use support::{Sb, Smtp, free_port, plugin, s};

fn attendance(absences: [i64; 3]) -> String {
    let rows: Vec<String> = [("S1", "Ann", "Ng"), ("S2", "Bo", "Li"), ("S3", "Cy", "Ko")]
        .iter()
        .zip(absences)
        .map(|((id, first, last), n)| {
            format!(
                r#"{{"student-id": "{id}", "first-name": "{first}", "last-name": "{last}", "absences": {n}, "division": "", "campus": "North", "department": "", "level": ""}}"#
            )
        })
        .collect();
    format!("[{}]", rows.join(",\n"))
}

fn setup(port: u16) -> Sb {
    let sb = Sb::new();
    sb.file(
        "data/schoolbell.toml",
        format!(
            "[email]\nsmtp_host = \"127.0.0.1\"\nsmtp_port = {port}\ntls = \"none\"\nfrom = \"Schoolbell <bell@district.test>\"\nretry_base_secs = 1\nallowed_domains = [\"district.test\"]\n"
        ),
    );
    sb.ok(&["plugin", "install", "--grant-all", s(&plugin("notifier-attendance"))]);
    sb
}

fn load(sb: &Sb, absences: [i64; 3]) {
    sb.load_attendance(&attendance(absences));
}

/// The attendance notifier, daily, as `user`, with `extra` flags.
fn add_task_as(sb: &Sb, user: &str, task: &str, extra: &[&str]) {
    let mut args =
        vec!["--as", user, "task", "add", task, "--plugin", "notifier-attendance", "--schedule", "daily at 07:00"];
    args.extend(extra);
    sb.ok(&args);
}

/// The attendance notifier, daily, notifying `group`.
fn add_attendance_task(sb: &Sb, group: &str) {
    add_task_as(sb, "admin", "attendance", &["--notify", group]);
}

fn run(sb: &Sb) -> String {
    sb.ok(&["task", "run-now", "attendance", "--wait"])
}

fn pending(sb: &Sb) -> usize {
    let out = sb.ok(&["notify", "outbox", "--status", "pending", "--json"]);
    serde_json::from_str::<serde_json::Value>(&out).unwrap().as_array().unwrap().len()
}

#[test]
fn notifications_wait_in_the_outbox_until_the_server_answers_and_are_sent_once() {
    let port = free_port();
    let sb = setup(port);
    load(&sb, [7, 12, 1]);
    add_attendance_task(&sb, "counselor@district.test,head@district.test");
    let out = run(&sb);
    assert!(out.contains("succeeded"), "{out}");
    assert!(out.contains("emails 4"), "two students over the threshold, two addresses each: {out}");
    assert_eq!(pending(&sb), 4, "the outbox was written with the run");

    // No server yet: the attempt fails, is recorded, and waits its backoff.
    let out = sb.ok(&["notify", "send"]);
    assert!(out.starts_with("0 sent, 1 to retry, 0 failed"), "{out}");
    assert!(out.contains("could not be reached"), "{out}");
    let outbox: serde_json::Value = serde_json::from_str(&sb.ok(&["notify", "outbox", "--json"])).unwrap();
    let tried: Vec<&serde_json::Value> =
        outbox.as_array().unwrap().iter().filter(|e| e["entry"]["attempts"] == 1).collect();
    assert_eq!(tried.len(), 1, "{outbox}");
    assert!(tried[0]["entry"]["last_error"].as_str().unwrap().contains("onnect"), "{outbox}");

    let smtp = Smtp::start(port);
    // The three never tried go at once; the one tried goes once its backoff
    // (1 s) has passed.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut sent = 0;
    while sent < 4 {
        assert!(std::time::Instant::now() < deadline, "only {sent} of 4 emails went out");
        let out = sb.ok(&["notify", "send"]);
        assert!(out.contains(" sent, 0 to retry, 0 failed"), "{out}");
        sent += out.split(' ').next().unwrap().parse::<usize>().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(sent, 4);
    let messages = smtp.messages();
    assert_eq!(messages.len(), 4);
    let to_counselor: Vec<&String> = messages.iter().filter(|m| m.contains("To: counselor@district.test")).collect();
    assert_eq!(to_counselor.len(), 2, "{messages:?}");
    assert!(messages.iter().any(|m| m.contains("Subject: Attendance: Bo Li has 12 absences")), "{messages:?}");
    assert!(messages.iter().all(|m| m.contains("From: Schoolbell <bell@district.test>")), "{messages:?}");
    assert!(messages.iter().all(|m| m.contains("Message-ID: <outbox-")), "a stable id per email: {messages:?}");

    // Nothing is sent twice.
    let out = sb.ok(&["notify", "send"]);
    assert!(out.starts_with("0 sent"), "{out}");
    assert_eq!(smtp.messages().len(), 4);
    assert_eq!(pending(&sb), 0);

    // Until cleared: the same students are not notified again...
    let out = run(&sb);
    assert!(out.contains("deduped 2") && out.contains("emails 0"), "{out}");
    // ...until S1's absences drop below the threshold (re-armed)...
    load(&sb, [2, 12, 1]);
    let out = run(&sb);
    assert!(out.contains("emails 0"), "{out}");
    // ...and reach it again: news again.
    load(&sb, [9, 12, 1]);
    let out = run(&sb);
    assert!(out.contains("emails 2") && out.contains("deduped 1"), "{out}");
    let out = sb.ok(&["notify", "send"]);
    assert!(out.starts_with("2 sent"), "{out}");
    let messages = smtp.messages();
    assert_eq!(messages.iter().filter(|m| m.contains("Subject: Attendance: Ann Ng has 9 absences")).count(), 2);
}

#[test]
fn once_per_person_never_repeats_and_job_emails_follow_each_users_choice() {
    let port = free_port();
    let smtp = Smtp::start(port);
    let sb = setup(port);
    load(&sb, [7, 1, 1]);
    // Staff set up the tasks below; bea's names a rule that is not there.
    sb.ok(&["plugin", "grant", "notifier-attendance", "staff:rule=no_such_rule|attendance_threshold"]);
    sb.ok(&["user", "add", "ada", "--email", "ada@district.test", "--job-email", "always"]);
    sb.ok(&["user", "add", "bea", "--email", "bea@district.test", "--job-email", "on-failure"]);
    sb.ok(&["user", "add", "cal", "--email", "cal@district.test", "--job-email", "never"]);
    for (user, task) in [("ada", "a"), ("bea", "b"), ("cal", "c")] {
        add_task_as(&sb, user, task, &["--notify", "ada", "--dedupe", "once"]);
    }
    for (user, task) in [("ada", "a"), ("bea", "b"), ("cal", "c")] {
        sb.ok(&["--as", user, "task", "run-now", task, "--wait"]);
    }
    // Once per person: cleared and back, still not repeated.
    load(&sb, [1, 1, 1]);
    sb.ok(&["--as", "ada", "task", "run-now", "a", "--wait"]);
    load(&sb, [8, 1, 1]);
    let out = sb.ok(&["--as", "ada", "task", "run-now", "a", "--wait"]);
    assert!(out.contains("deduped 1") && out.contains("emails 0"), "{out}");
    // A failing run: the rule parameter names a rule that does not exist.
    for (user, task) in [("bea", "b"), ("cal", "c")] {
        sb.ok(&["task", "remove", task]);
        add_task_as(&sb, user, task, &["--param", "rule=no_such_rule"]);
        let out = sb.fails(&["--as", user, "task", "run-now", task, "--wait"]);
        assert!(out.contains("failed"), "{out}");
    }
    let out = sb.ok(&["notify", "send"]);
    assert!(out.contains(" 0 failed"), "{out}");
    let messages = smtp.messages();
    let count = |needle: &str| messages.iter().filter(|m| m.contains(needle)).count();
    // Three tasks notified ada (the group, by user name) once each.
    assert_eq!(count("Subject: Attendance: Ann Ng"), 3, "{messages:?}");
    // ada hears about every run of hers (three, all succeeded); bea only of her failure; cal never.
    assert_eq!(count("Subject: Schoolbell: a succeeded"), 3, "{messages:?}");
    assert_eq!(count("To: bea@district.test"), 1, "{messages:?}");
    assert_eq!(count("Subject: Schoolbell: b failed"), 1, "{messages:?}");
    assert_eq!(count("To: cal@district.test"), 0, "{messages:?}");
}

/// A server that pipelines: each message's envelope goes out with its
/// `DATA` and the `RSET` before it, every message arrives once, with its
/// own recipient, and a recipient the server refuses for good fails its
/// own message only.
#[test]
fn a_server_offering_pipelining_gets_every_message_once_over_one_connection() {
    let port = free_port();
    let smtp = Smtp::start_pipelining(port);
    let sb = setup(port);
    sb.file(
        "data/schoolbell.toml",
        format!(
            "[email]\nsmtp_host = \"127.0.0.1\"\nsmtp_port = {port}\ntls = \"none\"\nfrom = \"Schoolbell <bell@district.test>\"\npool_size = 1\nallowed_domains = [\"district.test\"]\n"
        ),
    );
    load(&sb, [7, 8, 9]);
    add_attendance_task(&sb, "ada@district.test,gone@district.test,bea@district.test,cal@district.test");
    let out = run(&sb);
    assert!(out.contains("emails 12"), "three students, four addresses each: {out}");
    let out = sb.ok(&["notify", "send"]);
    assert!(out.starts_with("9 sent, 0 to retry, 3 failed"), "{out}");
    let outbox: serde_json::Value = serde_json::from_str(&sb.ok(&["notify", "outbox", "--json"])).unwrap();
    for e in outbox.as_array().unwrap().iter().map(|e| &e["entry"]) {
        let gone = e["to"] == "gone@district.test";
        assert_eq!(e["status"], if gone { "failed" } else { "sent" }, "{e}");
        assert_eq!(e["attempts"], 1, "{e}");
        if gone {
            assert!(e["last_error"].as_str().unwrap().contains("(550): 5.1.1 No such user"), "{e}");
        }
    }
    let messages = smtp.messages();
    assert_eq!(messages.len(), 9, "{messages:?}");
    assert!(messages.iter().all(|m| !m.contains("gone@")), "{messages:?}");
    // lettre ends a connection after a refusal: each student's refused
    // message leaves one connection for the next, so 12 messages take 4
    // connections, and 8 RSETs between two messages on one.
    assert_eq!(smtp.rsets(), vec!["ahead"; 8], "an RSET between each two messages, each with the next envelope");
    assert_eq!(smtp.mails(), vec!["grouped"; 12], "each envelope in one write with its RCPT and DATA");
    for user in ["ada", "bea", "cal"] {
        for name in ["Ann Ng", "Bo Li", "Cy Ko"] {
            let to = format!("To: {user}@district.test");
            let about = format!("Subject: Attendance: {name}");
            let n = messages.iter().filter(|m| m.contains(&to) && m.contains(&about)).count();
            assert_eq!(n, 1, "{user} about {name}: {messages:?}");
        }
    }
}

/// Across SIGKILLs of the server: a run's emails survive a kill before the
/// server can reach SMTP, are delivered by the next server, and a server
/// killed after delivering does not deliver them again.
#[test]
fn a_killed_server_loses_no_email_and_sends_none_twice() {
    let port = free_port();
    let sb = setup(port);
    load(&sb, [7, 12, 1]);
    add_attendance_task(&sb, "counselor@district.test");
    sb.ok(&["task", "run-now", "attendance"]);
    let wait_for = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    };

    // The server runs the queued run; SMTP is down; the server dies hard.
    // (The CLI asks the running server over its socket.)
    let server = sb.serve();
    let succeeded = || sb.ok(&["runs", "list", "--status", "succeeded", "--json"]).contains("\"attendance\"");
    wait_for("the run to finish", &|| succeeded() && pending(&sb) == 2);
    server.kill();
    assert_eq!(pending(&sb), 2, "both emails were kept with the run");

    // The next server delivers them once SMTP answers.
    let smtp = Smtp::start(port);
    let server = sb.serve();
    wait_for("two emails", &|| smtp.messages().len() == 2);
    wait_for("the deliveries to be recorded", &|| pending(&sb) == 0);
    server.kill();

    // A server after that has nothing to send: asked to send now, it finds
    // nothing due.
    let server = sb.serve();
    let out = sb.ok(&["notify", "send"]);
    assert!(out.starts_with("0 sent, 0 to retry, 0 failed"), "{out}");
    assert!(server.terminate().success());
    assert_eq!(smtp.messages().len(), 2, "nothing was sent twice");
    assert_eq!(pending(&sb), 0);
}

/// The server's certificate is verified: a relay with a certificate no
/// root vouches for gets nothing, and the error says so; pinned in
/// `[email] tls_certificate`, it is trusted, and only it. With STARTTLS.
#[test]
fn an_smtp_server_with_an_untrusted_certificate_gets_no_mail() {
    let port = free_port();
    only_a_pinned_certificate_gets_mail(Smtp::start_tls(port), port, "starttls");
}

/// The same with TLS from the first byte (SMTPS, `tls = "tls"`).
#[test]
fn smtps_delivers_only_to_a_pinned_certificate() {
    let port = free_port();
    only_a_pinned_certificate_gets_mail(Smtp::start_smtps(port), port, "tls");
}

fn only_a_pinned_certificate_gets_mail(smtp: Smtp, port: u16, tls: &str) {
    let sb = Sb::new();
    let config = |pin: &str| {
        format!(
            "[email]\nsmtp_host = \"localhost\"\nsmtp_port = {port}\ntls = \"{tls}\"\nfrom = \"Schoolbell <bell@district.test>\"\nretry_base_secs = 0\nallowed_domains = [\"district.test\"]\n{pin}"
        )
    };
    sb.file("data/schoolbell.toml", config(""));
    sb.ok(&["plugin", "install", "--grant-all", s(&plugin("notifier-attendance"))]);
    load(&sb, [7, 1, 1]);
    add_attendance_task(&sb, "counselor@district.test");
    run(&sb);
    let out = sb.ok(&["notify", "send"]);
    assert!(out.starts_with("0 sent, 1 to retry"), "{out}");
    let outbox = sb.ok(&["notify", "outbox", "--json"]);
    assert!(outbox.to_lowercase().contains("certificate"), "the error names the certificate: {outbox}");
    assert!(smtp.messages().is_empty());

    sb.file(
        "data/schoolbell.toml",
        config(&format!("tls_certificate = {:?}\n", smtp.certificate().display().to_string())),
    );
    // The failed attempt waits out its backoff first.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let out = sb.ok(&["notify", "send"]);
        assert!(out.contains(" 0 to retry, 0 failed"), "{out}");
        if out.starts_with("1 sent") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the email never went out");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(smtp.messages().len(), 1);
}
