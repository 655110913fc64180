//! Notifier benchmark: the attendance notifier and its admin rule over
//! 1,000,000 records (records/s), the rule alone over the same records,
//! and emails/s from the outbox to real SMTP servers on loopback
//! (Postfix's smtp-sink and Debian's aiosmtpd), taking turns with a plain
//! client three times (once in quick mode) and comparing the medians.
//! Run with `cargo bench -p schoolbell --bench notify`
//! after `xtask/build-plugins`; the figures go in the README.

#[path = "figures.rs"]
mod figures;

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use schoolbell::notify::smtp::{EmailConfig, Mailer, TlsMode};
use schoolbell::notify::{MailKind, OutboxEntry};
use schoolbell::plugins::{PluginHost, RunRequest, SandboxConfig};
use schoolbell::records::{Record, Value};
use schoolbell::rules::RuleSet;
use schoolbell::store::prelude::*;
use schoolbell::store::{CollectionSpec, Finish, Store};

const RECORDS: usize = 1_000_000;
/// Emails sent to each server (a quarter in quick mode).
fn emails() -> u64 {
    figures::size(20_000, 5_000) as u64
}

/// Starts an SMTP server on a port.
type Starter = fn(u16) -> std::process::Command;

fn attendance(i: usize) -> Record {
    let text = |s: &str| Value::Text(s.to_string());
    Record::from([
        ("student-id".to_string(), Value::Text(format!("S{i:07}"))),
        ("first-name".to_string(), Value::Text(format!("First{}", i % 977))),
        ("last-name".to_string(), Value::Text(format!("Last{i}"))),
        ("absences".to_string(), Value::Int((i % 40) as i64)),
        ("division".to_string(), text(["Upper", "Lower"][i % 2])),
        ("campus".to_string(), text(["North", "South", "East"][i % 3])),
        ("department".to_string(), text("Math")),
        ("level".to_string(), text("10")),
    ])
}

fn main() {
    schoolbell::without_huge_pages();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let plugin = root.join("target/plugins/notifier-attendance.wasm");
    assert!(plugin.exists(), "run xtask/build-plugins first");
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_backend(&dir.path().join("store")).unwrap();
    let rules = Arc::new(RuleSet::load_dir(&root.join("rules"), Default::default()).unwrap());
    let host =
        PluginHost::new(store.clone(), rules.clone(), &dir.path().join("cache"), SandboxConfig::default()).unwrap();
    host.install(&plugin).unwrap();
    host.grant_all("notifier-attendance").unwrap();
    // `SCHOOLBELL_BENCH_EMAILS_ONLY=1` skips the million records.
    if std::env::var_os("SCHOOLBELL_BENCH_EMAILS_ONLY").is_none() {
        records_part(&*store, &host, &rules);
    }

    // Emails/s to real SMTP servers on loopback that accept and discard:
    // Postfix's smtp-sink and aiosmtpd, each beside a plain client's
    // ceiling on the same server.
    let servers: [(&str, Starter); 2] = [
        ("smtp-sink", |port| {
            let mut c = std::process::Command::new("/usr/sbin/smtp-sink");
            // As root it must be told whose privileges to drop to.
            let root = std::process::Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"));
            if root {
                c.args(["-u", "nobody"]);
            }
            c.args(["-c", &format!("127.0.0.1:{port}"), "1000"]);
            c
        }),
        ("aiosmtpd", |port| {
            let mut c = std::process::Command::new("/usr/bin/python3");
            c.args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}"), "-c", "aiosmtpd.handlers.Sink"]);
            c
        }),
    ];
    for (name, command) in servers {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let Ok(mut smtp) = command(port).stdout(std::process::Stdio::null()).spawn() else {
            println!("emails to {name}: not installed (Debian's postfix has smtp-sink; python3-aiosmtpd aiosmtpd)");
            continue;
        };
        let deadline = Instant::now() + std::time::Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "{name} did not start on port {port}");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let config = EmailConfig {
            smtp_host: "127.0.0.1".into(),
            smtp_port: port,
            tls: TlsMode::None,
            from: "Schoolbell <bell@district.test>".into(),
            ..EmailConfig::default()
        };
        // The plain client and the mailer take turns, and each side's
        // median counts: on this VM either side's figure moves by half
        // from one run to the next.
        let (mut ceilings, mut rates) = (Vec::new(), Vec::new());
        let mailer = Mailer::new(&config, None).unwrap().unwrap();
        for round in 1..=figures::size(3, 1) {
            let ceiling = plain_client(port, config.pool_size as usize);
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open_backend(&dir.path().join("store")).unwrap();
            fill_outbox(&*store);
            let started = Instant::now();
            let delivered = mailer.deliver_due(&*store, Utc::now()).unwrap();
            let t = started.elapsed();
            assert_eq!(delivered.sent, emails());
            let rate = delivered.sent as f64 / t.as_secs_f64();
            println!(
                "emails to {name}, round {round}: {} sent in {t:.2?} = {rate:.0} emails/s over {} connections, outcomes flushed per batch; a plain client: {ceiling:.0}/s; {:.0}% of it",
                delivered.sent,
                config.pool_size,
                100.0 * rate / ceiling
            );
            ceilings.push(ceiling);
            rates.push(rate);
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            figures::percentile(v, 0.5)
        };
        let (rate, ceiling) = (median(&mut rates), median(&mut ceilings));
        println!(
            "emails to {name}: {rate:.0} emails/s (median of {}), a plain client {ceiling:.0}/s (median): {:.0}% of it",
            rates.len(),
            100.0 * rate / ceiling
        );
        if name == "smtp-sink" {
            figures::record("emails_per_s", rate);
            figures::record("emails_over_plain_client", rate / ceiling);
        }
        drop(mailer);
        let _ = smtp.kill();
        let _ = smtp.wait();
    }
}

/// `EMAILS` notifications due now, as a notifier's run leaves them.
fn fill_outbox(store: &dyn Backend) {
    let now = Utc::now();
    let entries: Vec<(u64, chrono::DateTime<Utc>, OutboxEntry)> = (0..emails())
        .map(|i| {
            let entry = OutboxEntry::new(
                1,
                "bench",
                MailKind::Notification,
                format!("person{i}@district.test"),
                format!("Attendance: student {i}"),
                "Student S0000001 has 31 absences. Rule: absences=31, params.threshold=30.".into(),
                &format!("attendance:{i}"),
                now,
            );
            (store.next_sequence("outbox").unwrap(), now, entry)
        })
        .collect();
    let none: &[(String, Option<schoolbell::notify::LedgerEntry>)] = &[];
    let run =
        schoolbell::runs::Run::queued(1, "bench", "bench", "admin", schoolbell::runs::Trigger::User, None, now, false);
    store.finish_run(&run, now, &Finish { state: &[], ledger: none, outbox: &entries, messages: &[] }).unwrap();
}

/// The ceiling: `EMAILS` messages over `connections` plain sockets with
/// TCP_NODELAY, each `MAIL`/`RCPT`/`DATA`, the body and its `.` in one
/// write, then `RSET`, waiting for every reply; no store, no retries.
fn plain_client(port: u16, connections: usize) -> f64 {
    use std::io::{BufRead, BufReader, Write};
    let started = Instant::now();
    std::thread::scope(|scope| {
        for c in 0..connections {
            scope.spawn(move || {
                let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
                tcp.set_nodelay(true).unwrap();
                let mut out = tcp.try_clone().unwrap();
                let mut replies = BufReader::new(tcp);
                let mut reply = || loop {
                    let mut line = String::new();
                    replies.read_line(&mut line).unwrap();
                    assert!(line.starts_with('2') || line.starts_with('3'), "{line}");
                    if line.as_bytes().get(3) != Some(&b'-') {
                        break;
                    }
                };
                reply();
                out.write_all(b"EHLO bench\r\n").unwrap();
                reply();
                for i in (c..emails() as usize).step_by(connections) {
                    let body = format!(
                        "From: bell@district.test\r\nTo: person{i}@district.test\r\nSubject: Attendance: student {i}\r\n\r\nStudent S0000001 has 31 absences.\r\n.\r\n"
                    );
                    for command in
                        ["MAIL FROM:<bell@district.test>\r\n".to_string(), format!("RCPT TO:<person{i}@district.test>\r\n"), "DATA\r\n".into()]
                    {
                        out.write_all(command.as_bytes()).unwrap();
                        reply();
                    }
                    out.write_all(body.as_bytes()).unwrap();
                    reply();
                    out.write_all(b"RSET\r\n").unwrap();
                    reply();
                }
                out.write_all(b"QUIT\r\n").unwrap();
            });
        }
    });
    emails() as f64 / started.elapsed().as_secs_f64()
}

fn records_part(store: &dyn Backend, host: &PluginHost, rules: &RuleSet) {
    store.define_collection("attendance", &CollectionSpec { key_field: "student-id".into(), indexes: vec![] }).unwrap();
    let all: Vec<Record> = (0..RECORDS).map(attendance).collect();
    for chunk in all.chunks(100_000) {
        store.put_records("attendance", chunk).unwrap();
    }
    store.flush().unwrap();

    // The rule alone, in this process: what each record costs the engine.
    let rule = rules.get("attendance_threshold").unwrap();
    let params = Record::from([
        ("threshold".to_string(), Value::Int(35)),
        ("division".to_string(), Value::Text(String::new())),
        ("campus".to_string(), Value::Text("North".into())),
        ("department".to_string(), Value::Text(String::new())),
        ("level".to_string(), Value::Text(String::new())),
    ]);
    let started = Instant::now();
    let selector = rules.selector(rule, &params);
    let matched = selector.select(&all).unwrap().len();
    let t = started.elapsed();
    let rule_time = t;
    figures::record("rule_1m_records_s", t.as_secs_f64());
    println!(
        "rule alone: {RECORDS} records in {t:.2?} = {:.0} records/s ({matched} match) on {} threads",
        RECORDS as f64 / t.as_secs_f64(),
        rayon::current_num_threads()
    );

    // The same predicate as a native closure, on one thread: the floor.
    let started = Instant::now();
    fn text<'r>(r: &'r Record, f: &str) -> &'r str {
        match r.get(f) {
            Some(Value::Text(t)) => t.as_str(),
            _ => "",
        }
    }
    let native = all
        .iter()
        .filter(|r| {
            matches!(r.get("absences"), Some(Value::Int(n)) if *n >= 35)
                && ["division", "campus", "department", "level"].iter().all(|f| {
                    let wanted = text(&params, f);
                    wanted.is_empty() || wanted == text(r, f)
                })
        })
        .count();
    let t = started.elapsed();
    assert_eq!(native, matched);
    println!(
        "native closure: {RECORDS} records in {t:.2?} = {:.0} records/s; the rule takes {:.0}x its time",
        RECORDS as f64 / t.as_secs_f64(),
        rule_time.as_secs_f64() / t.as_secs_f64()
    );
    figures::record("rule_over_native", rule_time.as_secs_f64() / t.as_secs_f64());
    drop(all);

    // The notifier: the host selects the records through the rule
    // (select-records), the notifier makes the notifications.
    let request = RunRequest {
        task: "bench".into(),
        params: params.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        rules: vec!["attendance_threshold".into()],
        ..Default::default()
    };
    let started = Instant::now();
    let outcome = host.run_notifier("notifier-attendance", &request).unwrap();
    let t = started.elapsed();
    figures::record("notifier_1m_records_s", t.as_secs_f64());
    println!(
        "notifier + rule: {RECORDS} records in {t:.2?} = {:.0} records/s ({} notifications)",
        RECORDS as f64 / t.as_secs_f64(),
        outcome.notifications.len()
    );
}
