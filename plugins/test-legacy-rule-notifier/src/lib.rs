//! Test-only: a notifier built straight against the frozen `since_v0.1.2`
//! WIT, as notifiers were before `select-records` (0.1.3): it pages through
//! the records itself and asks `eval-rule` about each one. The host must
//! load and run it, with the same decisions as a selection in the host.

wit_bindgen::generate!({ world: "notifier", path: "../../wit/since_v0.1.2" });

use exports::schoolbell::plugin::notify::{Guest as Notifier, Notification, Recipient};
use exports::schoolbell::plugin::plugin::Guest as Plugin;
use schoolbell::plugin::host;
use schoolbell::plugin::types::{Capability, Param, ParamSpec, PluginError, PluginInfo, PluginKind, Value, ValueType};

struct Legacy;

impl Plugin for Legacy {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "test-legacy-rule-notifier".into(),
            version: "0.1.0".into(),
            kind: PluginKind::Notifier,
            description: "Built against schoolbell:plugin@0.1.2; decides with eval-rule (tests only).".into(),
            // notifier-attendance's parameters, so one task suits both.
            params: ["rule", "division", "campus", "department", "level"]
                .into_iter()
                .map(|name| ParamSpec {
                    name: name.into(),
                    description: String::new(),
                    value_type: ValueType::Text,
                    default: Some(Value::Text(String::new())),
                })
                .chain([ParamSpec {
                    name: "threshold".into(),
                    description: String::new(),
                    value_type: ValueType::Integer,
                    default: Some(Value::Integer(5)),
                }])
                .collect(),
            capabilities: vec![Capability::ReadCollection("attendance".into())],
        }
    }
}

impl Notifier for Legacy {
    fn run(_params: Vec<Param>) -> Result<Vec<Notification>, PluginError> {
        let mut notifications = Vec::new();
        let mut after = None;
        loop {
            let page = host::read_records("attendance", after.as_deref(), 100)?;
            for record in page.records {
                let decision = host::eval_rule("attendance_threshold", &record)?;
                if !decision.matched {
                    continue;
                }
                let id = record.iter().find(|f| f.name == "student-id").map(|f| match &f.value {
                    Value::Text(t) => t.clone(),
                    _ => String::new(),
                });
                let id = id.unwrap_or_default();
                notifications.push(Notification {
                    recipient: Recipient::NotificationGroup,
                    subject: format!("legacy rule: {id}"),
                    body: format!("Rule: {}.", decision.reason),
                    dedupe_key: format!("legacy-rule:{id}"),
                });
            }
            after = page.next;
            if after.is_none() {
                return Ok(notifications);
            }
        }
    }
}

export!(Legacy);
