//! Status additions since the last run: every record of `status-changes`
//! added after the task's watermark. The watermark (the newest `added`
//! seen) is task state, which the host saves only if the run succeeds, in
//! the same transaction as its result: a failed run leaves it where it was,
//! so nothing is skipped.

use schoolbell_plugin_sdk::notifier::*;

struct Plugin;

impl PluginGuest for Plugin {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "notifier-status-since".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            kind: PluginKind::Notifier,
            description: "Notifies of status additions since the last run.".into(),
            params: vec![
                param_spec(
                    "status",
                    ValueType::Text,
                    Some(Value::Text(String::new())),
                    "Only this status; empty for all.",
                ),
                rule_param_spec(),
            ],
            capabilities: vec![Capability::ReadCollection("status-changes".into())],
        }
    }
}

impl NotifierGuest for Plugin {
    fn run(params: Vec<Param>) -> Result<Vec<Notification>, PluginError> {
        let only = text_param(&params, "status")?;
        let rule = text_param(&params, "rule")?;
        // `added` is an ISO 8601 timestamp: text order is time order.
        let since = host::state_get("last-added").unwrap_or_default();
        let mut newest = since.clone();
        let mut out = Vec::new();
        for record in records("status-changes") {
            let record = record?;
            let added = text(&record, "added").unwrap_or("").to_string();
            if added <= since {
                continue;
            }
            if added > newest {
                newest = added.clone();
            }
            let status = text(&record, "status").unwrap_or("");
            if (!only.is_empty() && status != only) || qualifies(&rule, &record)?.is_none() {
                continue;
            }
            let id = text(&record, "student-id").unwrap_or("?");
            let name =
                format!("{} {}", text(&record, "first-name").unwrap_or(""), text(&record, "last-name").unwrap_or(""));
            out.push(Notification {
                recipient: Recipient::NotificationGroup,
                subject: format!("Status added: {} is now {status}", name.trim()),
                body: format!("Status `{status}` was added for {} (student {id}) at {added}.", name.trim()),
                dedupe_key: format!("status:{id}:{status}:{added}"),
            });
        }
        if newest != since {
            host::state_set("last-added", Some(&newest));
        }
        log(Level::Info, &format!("{} status additions after `{since}`", out.len()));
        Ok(out)
    }
}

export_notifier!(Plugin);
