//! Notifications: who they go to, whether they were sent before (the dedupe
//! ledger), and the durable outbox the mailer drains.
//!
//! A notifier run's notifications are turned into outbox entries, one per
//! recipient address, and into dedupe-ledger changes; both are written in
//! the same transaction as the run's result (`Store::finish_run`), so a
//! crash keeps the run, its ledger and its mail together or loses all
//! three. Job-completion emails join the same transaction. The mailer
//! (`smtp`) sends what is due and marks each entry sent before it moves on.

pub mod smtp;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::plugins::{Notification, Recipient};
use crate::records::Value;
use crate::runs::{Run, RunStatus};
use crate::store::{self, Backend};
use crate::users::JobEmail;

/// How a task's notifications are deduped and addressed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct NotifySettings {
    /// The notification group: email addresses or user names.
    pub group: Vec<String>,
    /// When a notification with the same dedupe key is sent again.
    pub dedupe: Dedupe,
    /// With `until-cleared`: send again after this many days while the
    /// condition still holds.
    pub repeat_days: Option<u32>,
    /// Where a `person` recipient's record is, by key, with an `email` field.
    pub people: String,
    /// Where a `lead-faculty` recipient's section is, with a `lead-faculty`
    /// field holding the faculty member's key.
    pub sections: String,
    /// Where faculty records are, with an `email` field.
    pub faculty: String,
}

impl Default for NotifySettings {
    fn default() -> Self {
        NotifySettings {
            group: Vec::new(),
            dedupe: Dedupe::UntilCleared,
            repeat_days: None,
            people: "students".into(),
            sections: "sections".into(),
            faculty: "staff".into(),
        }
    }
}

/// When a dedupe key is notified again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Dedupe {
    /// Once per key, ever ("notify once per person").
    Once,
    /// Once while the condition holds: when a run no longer returns the key
    /// (the condition cleared), it is re-armed. Thresholds use this.
    UntilCleared,
    /// Every run sends everything.
    EveryRun,
}

impl std::str::FromStr for Dedupe {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "once" => Ok(Dedupe::Once),
            "until-cleared" => Ok(Dedupe::UntilCleared),
            "every-run" => Ok(Dedupe::EveryRun),
            _ => Err(format!("`{s}` is not a dedupe policy; use once, until-cleared or every-run")),
        }
    }
}

/// A dedupe key's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// When it was first notified.
    pub first: DateTime<Utc>,
    /// When it was last notified.
    pub last: DateTime<Utc>,
    /// How many times.
    pub count: u64,
}

/// Why an email is in the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MailKind {
    /// A notifier's notification.
    Notification,
    /// A run finished and its owner asked to hear about it.
    JobCompletion,
}

/// Where an outbox entry stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Delivery {
    /// Waiting for its (next) attempt.
    Pending,
    /// Accepted by the SMTP server.
    Sent,
    /// Refused for good, or out of attempts.
    Failed,
}

impl Delivery {
    /// The status as written in tables, filters and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Delivery::Pending => "pending",
            Delivery::Sent => "sent",
            Delivery::Failed => "failed",
        }
    }
}

impl std::fmt::Display for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Delivery {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "pending" => Ok(Delivery::Pending),
            "sent" => Ok(Delivery::Sent),
            "failed" => Ok(Delivery::Failed),
            _ => Err(format!("`{s}` is not an outbox status; use pending, sent or failed")),
        }
    }
}

/// The newest `limit` outbox entries that `keep` accepts, oldest first,
/// with their ids. Walks the outbox a page at a time and keeps no more than
/// `limit` entries in memory.
pub fn outbox_newest(
    store: &dyn Backend,
    limit: usize,
    keep: impl Fn(&OutboxEntry) -> bool,
) -> Result<Vec<(u64, OutboxEntry)>, store::Error> {
    let mut newest = std::collections::VecDeque::with_capacity(limit.min(1024));
    let mut after = None;
    loop {
        let page: Vec<(u64, OutboxEntry)> = store.outbox(after, 1000)?;
        let Some((last, _)) = page.last() else { break };
        after = Some(*last);
        for entry in page.into_iter().filter(|(_, e)| keep(e)) {
            if newest.len() == limit {
                newest.pop_front();
            }
            if limit > 0 {
                newest.push_back(entry);
            }
        }
    }
    Ok(newest.into())
}

/// One email to one recipient.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxEntry {
    /// The run that made it.
    pub run: u64,
    /// Its task.
    pub task: String,
    /// Why it exists.
    pub kind: MailKind,
    /// The recipient's address.
    pub to: String,
    /// Subject line.
    pub subject: String,
    /// Plain-text body.
    pub body: String,
    /// The notification's dedupe key (empty for job-completion emails).
    pub dedupe_key: String,
    /// When it was queued.
    pub created: DateTime<Utc>,
    /// Where it stands.
    pub status: Delivery,
    /// Attempts so far.
    pub attempts: u32,
    /// When the next attempt is due (pending entries).
    pub next_attempt: DateTime<Utc>,
    /// The last attempt's error.
    pub last_error: Option<String>,
    /// When the server accepted it.
    pub sent_at: Option<DateTime<Utc>>,
}

impl OutboxEntry {
    /// A new entry, due at `now`.
    #[allow(clippy::too_many_arguments)] // One per field of the email.
    pub fn new(
        run: u64,
        task: &str,
        kind: MailKind,
        to: String,
        subject: String,
        body: String,
        key: &str,
        now: DateTime<Utc>,
    ) -> Self {
        OutboxEntry {
            run,
            task: task.to_string(),
            kind,
            to,
            subject,
            body,
            dedupe_key: key.to_string(),
            created: now,
            status: Delivery::Pending,
            attempts: 0,
            next_attempt: now,
            last_error: None,
            sent_at: None,
        }
    }
}

/// What a run's notifications become: outbox entries, ledger changes, and
/// one message per notification for the run's Task Messages.
#[derive(Debug, Default)]
pub struct Planned {
    /// New outbox entries.
    pub outbox: Vec<OutboxEntry>,
    /// Ledger changes by dedupe key (none: re-armed).
    pub ledger: Vec<(String, Option<LedgerEntry>)>,
    /// Status word and message, per notification.
    pub messages: Vec<(&'static str, String)>,
}

/// What a run's mail may do: which raw addresses it may reach (written
/// into a notification group or returned by a plugin, rather than read
/// from a user or the district's records), and what is masked in it.
#[derive(Debug, Clone, Copy)]
pub struct MailPolicy<'a> {
    /// `[email] allowed_domains`.
    pub domains: &'a [String],
    /// Whether the plugin holds a granted `send:address`.
    pub plugin_addresses: bool,
    /// `[privacy]`: SSN-shaped text in subjects and bodies is masked.
    pub privacy: &'a crate::privacy::Privacy,
}

impl MailPolicy<'_> {
    /// Whether a raw address's domain is on the allowlist.
    pub fn domain(&self, address: &str) -> bool {
        address_allowed(self.domains, address)
    }
}

/// Whether `address`'s domain is one of `domains` (case does not matter).
pub fn address_allowed(domains: &[String], address: &str) -> bool {
    let Some((_, domain)) = address.trim().rsplit_once('@') else { return false };
    domains.iter().any(|d| d.trim().trim_start_matches('@').eq_ignore_ascii_case(domain))
}

/// Why a raw address is refused, for messages.
pub fn not_allowed(address: &str) -> String {
    format!(
        "`{address}` is not a user, and its domain is not in [email] allowed_domains in schoolbell.toml; add the domain there or name a user"
    )
}

/// Decides which notifications are sent (the ledger) and to which
/// addresses, without writing anything.
pub fn plan(
    store: &dyn Backend,
    settings: &NotifySettings,
    allowed: MailPolicy<'_>,
    run: &Run,
    notifications: &[Notification],
    now: DateTime<Utc>,
) -> Result<Planned, store::Error> {
    let mut ledger: std::collections::HashMap<String, LedgerEntry> = match settings.dedupe {
        Dedupe::EveryRun => Default::default(),
        _ => store.notified(&run.task)?.into_iter().collect(),
    };
    let mut planned = Planned::default();
    let mut returned = std::collections::HashSet::new();
    for n in notifications {
        returned.insert(n.dedupe_key.clone());
        let previous = ledger.get(&n.dedupe_key);
        let repeat_due = |e: &LedgerEntry| {
            settings.repeat_days.is_some_and(|d| now - e.last >= chrono::Duration::days(i64::from(d)))
        };
        let send = match (settings.dedupe, previous) {
            (Dedupe::EveryRun, _) | (_, None) => true,
            (Dedupe::Once, Some(_)) => false,
            (Dedupe::UntilCleared, Some(e)) => repeat_due(e),
        };
        if !send {
            let e = previous.expect("only a known key is held back");
            planned.messages.push((
                "deduped",
                format!("{}: already notified {} (key {}); not repeated", n.subject, e.last.to_rfc3339(), n.dedupe_key),
            ));
            continue;
        }
        let (addresses, problems) = addresses(store, settings, allowed, &n.recipient)?;
        let shown = if addresses.is_empty() {
            n.subject.clone()
        } else {
            format!("{} → {}", n.subject, addresses.join(", "))
        };
        planned.messages.push(("notification", shown));
        for problem in problems {
            planned.messages.push(("undeliverable", format!("{}: {problem}", n.subject)));
        }
        if addresses.is_empty() {
            // Not in the ledger: once the address is fixed, it goes out.
            continue;
        }
        for to in addresses {
            planned.outbox.push(OutboxEntry::new(
                run.id,
                &run.task,
                MailKind::Notification,
                to,
                allowed.privacy.text(&n.subject),
                allowed.privacy.text(&n.body),
                &n.dedupe_key,
                now,
            ));
        }
        if settings.dedupe != Dedupe::EveryRun {
            let entry = match previous {
                Some(e) => LedgerEntry { first: e.first, last: now, count: e.count + 1 },
                None => LedgerEntry { first: now, last: now, count: 1 },
            };
            ledger.insert(n.dedupe_key.clone(), entry.clone());
            planned.ledger.push((n.dedupe_key.clone(), Some(entry)));
        }
    }
    if settings.dedupe == Dedupe::UntilCleared {
        // A key this run did not return no longer meets the condition: the
        // next time it does, it is news again.
        let mut cleared: Vec<&String> = ledger.keys().filter(|k| !returned.contains(*k)).collect();
        cleared.sort();
        planned.ledger.extend(cleared.into_iter().map(|k| (k.clone(), None)));
    }
    Ok(planned)
}

/// The addresses a recipient resolves to, and what could not be resolved.
fn addresses(
    store: &dyn Backend,
    settings: &NotifySettings,
    allowed: MailPolicy<'_>,
    recipient: &Recipient,
) -> Result<(Vec<String>, Vec<String>), store::Error> {
    let mut found = Vec::new();
    let mut problems = Vec::new();
    let email_of = |collection: &str, key: &str| -> Result<Option<String>, store::Error> {
        Ok(store.get_record(collection, key)?.and_then(|r| match r.get("email") {
            Some(Value::Text(t)) if !t.trim().is_empty() => Some(t.trim().to_string()),
            _ => None,
        }))
    };
    match recipient {
        Recipient::Address(_) if !allowed.plugin_addresses => problems.push(
            "the plugin returned an email address, which needs the `send:address` capability granted".to_string(),
        ),
        Recipient::Address(a) if !allowed.domain(a) => problems.push(not_allowed(a)),
        Recipient::Address(a) => found.push(a.clone()),
        Recipient::NotificationGroup => {
            if settings.group.is_empty() {
                problems.push("the task's notification group is empty; set it with --notify".to_string());
            }
            for member in &settings.group {
                if member.contains('@') {
                    if allowed.domain(member) {
                        found.push(member.clone());
                    } else {
                        problems.push(not_allowed(member));
                    }
                    continue;
                }
                match store.user(member)? {
                    Some(u) if !u.email.is_empty() => found.push(u.email),
                    Some(_) => problems.push(format!("user {member} has no email address")),
                    None => problems.push(format!("the notification group names {member}, who is not a user")),
                }
            }
        }
        Recipient::Person(key) => match email_of(&settings.people, key)? {
            Some(e) => found.push(e),
            None => problems.push(format!("`{}` record {key} has no email", settings.people)),
        },
        Recipient::LeadFaculty(section) => {
            let lead = store.get_record(&settings.sections, section)?.and_then(|r| match r.get("lead-faculty") {
                Some(Value::Text(t)) if !t.is_empty() => Some(t.clone()),
                _ => None,
            });
            match lead {
                None => problems.push(format!("`{}` record {section} names no lead faculty", settings.sections)),
                Some(lead) => match email_of(&settings.faculty, &lead)? {
                    Some(e) => found.push(e),
                    None => problems.push(format!("`{}` record {lead} has no email", settings.faculty)),
                },
            }
        }
    }
    let (valid, invalid): (Vec<String>, Vec<String>) =
        found.into_iter().partition(|a| a.parse::<lettre::Address>().is_ok());
    problems.extend(invalid.into_iter().map(|a| format!("`{a}` is not an email address")));
    Ok((valid, problems))
}

/// The job-completion email for a finished run, if its owner wants one.
pub fn job_completion(store: &dyn Backend, run: &Run, now: DateTime<Utc>) -> Result<Option<OutboxEntry>, store::Error> {
    let owner = match crate::users::get(store, &run.owner) {
        Ok(u) => u,
        Err(crate::users::Error::Store(e)) => return Err(e),
        // The owner was removed: nobody to tell.
        Err(_) => return Ok(None),
    };
    let failed = matches!(run.status, RunStatus::Failed | RunStatus::Interrupted);
    let wanted = match owner.job_email {
        JobEmail::Always => true,
        JobEmail::OnFailure => failed,
        JobEmail::Never => false,
    };
    if !wanted || owner.email.is_empty() || owner.email.parse::<lettre::Address>().is_err() {
        return Ok(None);
    }
    let subject = format!("Schoolbell: {} {} (run {})", run.task, run.status, run.id);
    let mut body = format!("Task {} finished: {}.\n", run.task, run.status);
    if !run.summary.is_empty() {
        let list: Vec<String> = run.summary.iter().map(|(k, v)| format!("{k} {v}")).collect();
        body.push_str(&format!("Summary: {}.\n", list.join(", ")));
    }
    // A summary only: why it failed (what the plugin printed, what it
    // read) stays on the run, for those who may see it.
    if run.error.is_some() {
        body.push_str("It failed; the reason is on the run.\n");
    }
    body.push_str(&format!("Details: schoolbell runs show {}\n", run.id));
    Ok(Some(OutboxEntry::new(run.id, &run.task, MailKind::JobCompletion, owner.email, subject, body, "", now)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runs::Trigger;
    use crate::store::Finish;
    use crate::store::Store;
    #[allow(unused_imports)]
    use crate::store::prelude::*;

    fn notification(key: &str) -> Notification {
        Notification {
            recipient: Recipient::Address("office@district.test".into()),
            subject: format!("about {key}"),
            body: String::new(),
            dedupe_key: key.into(),
        }
    }

    #[test]
    fn raw_addresses_need_the_capability_and_an_allowed_domain() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let run = Run::queued(1, "t", "p", "admin", Trigger::User, None, Utc::now(), false);
        let domains = ["district.test".to_string()];
        let mut outside = notification("a");
        outside.recipient = Recipient::Address("someone@elsewhere.example".into());
        let settings = NotifySettings::default();
        for (n, plugin_addresses, problem) in [
            (notification("a"), false, "needs the `send:address` capability"),
            (outside, true, "not in [email] allowed_domains"),
        ] {
            let privacy = crate::privacy::Privacy::default();
            let allowed = MailPolicy { domains: &domains, plugin_addresses, privacy: &privacy };
            let planned = plan(&store, &settings, allowed, &run, &[n], Utc::now()).unwrap();
            assert!(planned.outbox.is_empty());
            assert!(planned.messages.iter().any(|(_, m)| m.contains(problem)), "{:?}", planned.messages);
        }
    }

    /// Plans a run at `now` returning `keys`, and commits what it planned
    /// as the scheduler does; the keys that were sent.
    fn run(store: &dyn Backend, settings: &NotifySettings, keys: &[&str], now: DateTime<Utc>) -> Vec<String> {
        let run = Run::queued(1, "t", "p", "admin", Trigger::User, None, now, false);
        let ns: Vec<Notification> = keys.iter().map(|k| notification(k)).collect();
        let domains = ["district.test".to_string()];
        let privacy = crate::privacy::Privacy::default();
        let allowed = MailPolicy { domains: &domains, plugin_addresses: true, privacy: &privacy };
        let planned = plan(store, settings, allowed, &run, &ns, now).unwrap();
        let outbox: Vec<(u64, DateTime<Utc>, OutboxEntry)> =
            planned.outbox.iter().map(|e| (store.next_sequence("outbox").unwrap(), now, e.clone())).collect();
        store
            .finish_run(&run, now, &Finish { state: &[], ledger: &planned.ledger, outbox: &outbox, messages: &[] })
            .unwrap();
        planned.outbox.into_iter().map(|e| e.dedupe_key).collect()
    }

    fn at(day: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_790_000_000 + day * 86_400, 0).unwrap()
    }

    #[test]
    fn until_cleared_re_arms_and_repeats_after_the_interval() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let settings = NotifySettings { repeat_days: Some(7), ..Default::default() };
        assert_eq!(run(&store, &settings, &["a", "b"], at(0)), ["a", "b"]);
        assert!(run(&store, &settings, &["a", "b"], at(1)).is_empty(), "held back while it holds");
        assert!(run(&store, &settings, &["b"], at(2)).is_empty(), "a cleared");
        assert_eq!(run(&store, &settings, &["a", "b"], at(3)), ["a"], "a is news again");
        assert_eq!(run(&store, &settings, &["a", "b"], at(7)), ["b"], "b repeats a week after it was sent");
        assert_eq!(run(&store, &settings, &["a", "b"], at(10)), ["a"]);
    }

    #[test]
    fn once_never_repeats_and_every_run_always_sends() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let once = NotifySettings { dedupe: Dedupe::Once, repeat_days: Some(1), ..Default::default() };
        assert_eq!(run(&store, &once, &["a"], at(0)), ["a"]);
        assert!(run(&store, &once, &[], at(1)).is_empty());
        assert!(run(&store, &once, &["a"], at(30)).is_empty(), "cleared and back, a month later: still not");
        let every = NotifySettings { dedupe: Dedupe::EveryRun, ..Default::default() };
        assert_eq!(run(&store, &every, &["a"], at(31)), ["a"]);
        assert_eq!(run(&store, &every, &["a"], at(31)), ["a"]);
    }
}

/// The outbox by status, as this process's changes move it: what the
/// `schoolbell_outbox_entries` gauge shows, kept as entries are queued,
/// sent, failed and purged rather than counted by reading the outbox at
/// each scrape. It is read from the store once, at the first scrape; where
/// hosts share a store, each host's figures move with its own changes and
/// are read again from the store at each retention sweep.
pub mod tally {
    use std::sync::Mutex;

    use super::Delivery;

    /// Pending, sent, failed; none until read from the store.
    static COUNTS: Mutex<Option<[i64; 3]>> = Mutex::new(None);

    /// Where `d` counts in the figures.
    pub fn slot(d: Delivery) -> usize {
        match d {
            Delivery::Pending => 0,
            Delivery::Sent => 1,
            Delivery::Failed => 2,
        }
    }

    fn change(f: impl FnOnce(&mut [i64; 3])) {
        if let Some(counts) = COUNTS.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            f(counts);
        }
    }

    /// `n` entries queued.
    pub fn queued(n: usize) {
        change(|c| c[0] += n as i64);
    }

    /// Entries that were pending ended as `ended` say (one lock a batch,
    /// not one an email: the mailer records thousands a second).
    pub fn ended(ended: impl IntoIterator<Item = Delivery>) {
        let mut delta = [0i64; 3];
        for to in ended {
            delta[slot(Delivery::Pending)] -= 1;
            delta[slot(to)] += 1;
        }
        change(|c| c.iter_mut().zip(delta).for_each(|(c, d)| *c += d));
    }

    /// An entry of `status` removed.
    pub fn removed(status: Delivery) {
        change(|c| c[slot(status)] -= 1);
    }

    /// The figures, when known.
    pub fn get() -> Option<[i64; 3]> {
        *COUNTS.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the figures from a count of the store.
    pub fn set(counts: [i64; 3]) {
        *COUNTS.lock().unwrap_or_else(|e| e.into_inner()) = Some(counts);
    }
}
