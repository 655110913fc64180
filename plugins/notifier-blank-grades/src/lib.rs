//! Blank grades: `days_after` days after a section ends, its lead faculty
//! hears how many of its grades are still blank.

use std::collections::BTreeMap;

use schoolbell_plugin_sdk::notifier::*;

struct Plugin;

impl PluginGuest for Plugin {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "notifier-blank-grades".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            kind: PluginKind::Notifier,
            description: "Notifies the lead faculty of blank grades N days after a course ends.".into(),
            params: vec![
                param_spec(
                    "days_after",
                    ValueType::Integer,
                    Some(Value::Integer(7)),
                    "Days after the section's end date.",
                ),
                date_param_spec(),
            ],
            capabilities: vec![
                Capability::ReadCollection("sections".into()),
                Capability::ReadCollection("grades".into()),
            ],
        }
    }
}

impl NotifierGuest for Plugin {
    fn run(params: Vec<Param>) -> Result<Vec<Notification>, PluginError> {
        let today = date_param(&params, "date")?;
        let after = integer_param(&params, "days_after")?.unwrap_or(7);
        // Sections past their grace period: id -> (course, end date).
        let mut due = BTreeMap::new();
        for section in records("sections") {
            let section = section?;
            let (Some(id), Some(end)) = (text(&section, "section-id"), date(&section, "end-date")) else { continue };
            if days(today) - days(end) >= after {
                due.insert(id.to_string(), (text(&section, "course").unwrap_or(id).to_string(), end, 0u64));
            }
        }
        if due.is_empty() {
            return Ok(Vec::new());
        }
        for grade in records("grades") {
            let grade = grade?;
            let blank = match field(&grade, "grade") {
                None | Some(Value::Null) => true,
                Some(Value::Text(t)) => t.trim().is_empty(),
                Some(_) => false,
            };
            if let (true, Some(entry)) = (blank, text(&grade, "section-id").and_then(|s| due.get_mut(s))) {
                entry.2 += 1;
            }
        }
        Ok(due
            .into_iter()
            .filter(|(_, (_, _, blank))| *blank > 0)
            .map(|(id, (course, end, blank))| Notification {
                recipient: Recipient::LeadFaculty(id.clone()),
                subject: format!("{blank} blank grades in {course}"),
                body: format!(
                    "Section {id} ({course}) ended on {}; {blank} of its grades are still blank. Please enter them.",
                    date_text(end)
                ),
                dedupe_key: format!("blank-grades:{id}"),
            })
            .collect())
    }
}

export_notifier!(Plugin);
