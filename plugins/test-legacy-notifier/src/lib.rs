//! Test-only: a notifier built straight against the frozen `since_v0.1.0`
//! WIT (not the SDK, which follows the newest version). The host must load
//! and run it.

wit_bindgen::generate!({ world: "notifier", path: "../../wit/since_v0.1.0" });

use exports::schoolbell::plugin::notify::{Guest as Notifier, Notification, Recipient};
use exports::schoolbell::plugin::plugin::Guest as Plugin;
use schoolbell::plugin::host;
use schoolbell::plugin::types::{Capability, Param, PluginError, PluginInfo, PluginKind};

struct Legacy;

impl Plugin for Legacy {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "test-legacy-notifier".into(),
            version: "0.1.0".into(),
            kind: PluginKind::Notifier,
            description: "Built against schoolbell:plugin@0.1.0 (tests only).".into(),
            params: vec![],
            capabilities: vec![Capability::ReadCollection("attendance".into())],
        }
    }
}

impl Notifier for Legacy {
    fn run(_params: Vec<Param>) -> Result<Vec<Notification>, PluginError> {
        let page = host::read_records("attendance", None, 1000)?;
        Ok(vec![Notification {
            recipient: Recipient::NotificationGroup,
            subject: format!("legacy plugin saw {} records", page.records.len()),
            body: String::new(),
            dedupe_key: "legacy".into(),
        }])
    }
}

export!(Legacy);
