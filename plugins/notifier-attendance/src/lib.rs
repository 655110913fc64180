//! Attendance threshold: a notification for each student whose absences
//! reach the task's threshold. Which students qualify is the admin's rule
//! (`rules/attendance_threshold.rhai`), which also applies the division,
//! campus, department and level filters.

use schoolbell_plugin_sdk::notifier::*;

struct Plugin;

impl PluginGuest for Plugin {
    fn describe() -> PluginInfo {
        let filter = |name: &str, what: &str| {
            param_spec(
                name,
                ValueType::Text,
                Some(Value::Text(String::new())),
                &format!("Only students of this {what}; empty for all."),
            )
        };
        PluginInfo {
            name: "notifier-attendance".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            kind: PluginKind::Notifier,
            description: "Notifies when a student's absences reach a threshold.".into(),
            params: vec![
                param_spec("threshold", ValueType::Integer, Some(Value::Integer(5)), "Absences at which to notify."),
                param_spec(
                    "rule",
                    ValueType::Text,
                    Some(Value::Text("attendance_threshold".into())),
                    "The admin rule that decides who qualifies.",
                ),
                filter("division", "division"),
                filter("campus", "campus"),
                filter("department", "department"),
                filter("level", "level"),
            ],
            capabilities: vec![Capability::ReadCollection("attendance".into())],
        }
    }
}

impl NotifierGuest for Plugin {
    fn run(params: Vec<Param>) -> Result<Vec<Notification>, PluginError> {
        let rule = text_param(&params, "rule")?;
        let mut notifications = Vec::new();
        for selected in selected("attendance", &rule) {
            let (record, reason) = selected?;
            let id = text(&record, "student-id").unwrap_or("?");
            let name =
                format!("{} {}", text(&record, "first-name").unwrap_or(""), text(&record, "last-name").unwrap_or(""));
            let absences = integer(&record, "absences").unwrap_or(0);
            notifications.push(Notification {
                recipient: Recipient::NotificationGroup,
                subject: format!("Attendance: {} has {absences} absences", name.trim()),
                body: format!("Student {id} ({}) has {absences} absences. Rule: {reason}.", name.trim()),
                dedupe_key: format!("attendance:{id}"),
            });
        }
        log(Level::Info, &format!("{} students reached the threshold", notifications.len()));
        Ok(notifications)
    }
}

export_notifier!(Plugin);
