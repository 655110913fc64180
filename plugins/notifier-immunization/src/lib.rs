//! Immunization expiration: a notification for each immunization that has
//! expired or expires within `days_ahead` days. The dedupe key names the
//! student and the vaccine, so a task with `--dedupe once` notifies once
//! per person and vaccine, however many runs see it.

use schoolbell_plugin_sdk::notifier::*;

struct Plugin;

impl PluginGuest for Plugin {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "notifier-immunization".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            kind: PluginKind::Notifier,
            description: "Notifies, once per person, of immunizations that expire soon.".into(),
            params: vec![
                param_spec(
                    "days_ahead",
                    ValueType::Integer,
                    Some(Value::Integer(30)),
                    "Notify this many days before expiry.",
                ),
                param_spec("notify_person", ValueType::Boolean, Some(Value::Boolean(false)), "Also tell the student."),
                rule_param_spec(),
                date_param_spec(),
            ],
            capabilities: vec![Capability::ReadCollection("immunizations".into())],
        }
    }
}

impl NotifierGuest for Plugin {
    fn run(params: Vec<Param>) -> Result<Vec<Notification>, PluginError> {
        let today = date_param(&params, "date")?;
        let ahead = integer_param(&params, "days_ahead")?.unwrap_or(30);
        let to_person = bool_param(&params, "notify_person")?;
        let rule = text_param(&params, "rule")?;
        let mut out = Vec::new();
        for record in records("immunizations") {
            let record = record?;
            let Some(expires) = date(&record, "expires") else { continue };
            let left = days(expires) - days(today);
            if left > ahead || qualifies(&rule, &record)?.is_none() {
                continue;
            }
            let id = text(&record, "student-id").unwrap_or("?").to_string();
            let vaccine = text(&record, "vaccine").unwrap_or("immunization");
            let name =
                format!("{} {}", text(&record, "first-name").unwrap_or(""), text(&record, "last-name").unwrap_or(""));
            let when = if left < 0 {
                format!("expired on {}", date_text(expires))
            } else {
                format!("expires on {} ({left} days)", date_text(expires))
            };
            let subject = format!("Immunization: {} {vaccine} {when}", name.trim());
            let body = format!("The {vaccine} immunization of {} (student {id}) {when}.", name.trim());
            let key = format!("immunization:{id}:{vaccine}");
            if to_person {
                out.push(Notification {
                    recipient: Recipient::Person(id.clone()),
                    subject: subject.clone(),
                    body: body.clone(),
                    dedupe_key: format!("{key}:person"),
                });
            }
            out.push(Notification { recipient: Recipient::NotificationGroup, subject, body, dedupe_key: key });
        }
        Ok(out)
    }
}

export_notifier!(Plugin);
