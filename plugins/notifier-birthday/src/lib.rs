//! Birthdays: tells the notification group whose birthday it is, and with
//! `greet` also wishes the student a happy birthday. `age` keeps only the
//! students turning that age (for example 18); an admin rule may narrow it
//! further.

use schoolbell_plugin_sdk::notifier::*;

struct Plugin;

impl PluginGuest for Plugin {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "notifier-birthday".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            kind: PluginKind::Notifier,
            description: "Notifies of students' birthdays, and optionally greets them.".into(),
            params: vec![
                param_spec(
                    "greet",
                    ValueType::Boolean,
                    Some(Value::Boolean(false)),
                    "Also send the student a greeting.",
                ),
                param_spec(
                    "age",
                    ValueType::Integer,
                    Some(Value::Null),
                    "Only students turning this age; empty for all.",
                ),
                rule_param_spec(),
                date_param_spec(),
            ],
            capabilities: vec![Capability::ReadCollection("students".into())],
        }
    }
}

impl NotifierGuest for Plugin {
    fn run(params: Vec<Param>) -> Result<Vec<Notification>, PluginError> {
        let today = date_param(&params, "date")?;
        let greet = bool_param(&params, "greet")?;
        let only_age = integer_param(&params, "age")?;
        let rule = text_param(&params, "rule")?;
        let mut out = Vec::new();
        for record in records("students") {
            let record = record?;
            let Some(born) = date(&record, "birth-date") else { continue };
            // A 29 February birthday is kept on 28 February in other years.
            let leap_day = born.month == 2 && born.day == 29;
            let this_year = if leap_day && parse_date(&format!("{}-02-29", today.year)).is_none() {
                Date { year: today.year, month: 2, day: 28 }
            } else {
                Date { year: today.year, month: born.month, day: born.day }
            };
            if this_year != today {
                continue;
            }
            let age = i64::from(today.year - born.year);
            if only_age.is_some_and(|a| a != age) || qualifies(&rule, &record)?.is_none() {
                continue;
            }
            let id = text(&record, "student-id").unwrap_or("?").to_string();
            let first = text(&record, "first-name").unwrap_or("").to_string();
            let name = format!("{first} {}", text(&record, "last-name").unwrap_or("")).trim().to_string();
            let key = format!("birthday:{id}:{}", today.year);
            out.push(Notification {
                recipient: Recipient::NotificationGroup,
                subject: format!("Birthday: {name} turns {age} today"),
                body: format!("{name} (student {id}) turns {age} today, {}.", date_text(today)),
                dedupe_key: key.clone(),
            });
            if greet {
                out.push(Notification {
                    recipient: Recipient::Person(id.clone()),
                    subject: format!("Happy birthday, {first}!"),
                    body: format!("Happy {age}th birthday, {first}, from all of us at school."),
                    dedupe_key: format!("{key}:greeting"),
                });
            }
        }
        log(Level::Info, &format!("{} birthday notifications for {}", out.len(), date_text(today)));
        Ok(out)
    }
}

export_notifier!(Plugin);
