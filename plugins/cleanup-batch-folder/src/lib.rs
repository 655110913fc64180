//! Batch folder cleanup: deletes the files in the district's batch folder
//! that are at least `days` days old and whose names start with `prefix`
//! (default `P_`, the files imports have finished with).

use schoolbell_plugin_sdk::notifier::*;

struct Plugin;

const FOLDER: &str = "batch";

impl PluginGuest for Plugin {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "cleanup-batch-folder".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            kind: PluginKind::Notifier,
            description: "Deletes files older than N days from the batch folder.".into(),
            params: vec![
                param_spec(
                    "days",
                    ValueType::Integer,
                    Some(Value::Integer(30)),
                    "Delete files at least this many days old.",
                ),
                param_spec(
                    "prefix",
                    ValueType::Text,
                    Some(Value::Text("P_".into())),
                    "Only files whose names start with this; empty for all.",
                ),
            ],
            capabilities: vec![
                Capability::ReadCollection(format!("folder:{FOLDER}")),
                Capability::WriteCollection(format!("folder:{FOLDER}")),
            ],
        }
    }
}

impl NotifierGuest for Plugin {
    fn run(params: Vec<Param>) -> Result<Vec<Notification>, PluginError> {
        let days = integer_param(&params, "days")?.unwrap_or(30);
        if days < 0 {
            return Err(PluginError::BadInput("parameter `days` must not be negative".into()));
        }
        let prefix = text_param(&params, "prefix")?;
        let files = files::list_files(FOLDER)?;
        let old: Vec<_> =
            files.iter().filter(|f| i64::from(f.age_days) >= days && f.name.starts_with(&prefix)).collect();
        for (done, f) in old.iter().enumerate() {
            host::progress(done as u64, Some(old.len() as u64));
            files::delete_file(FOLDER, &f.name)?;
        }
        log(
            Level::Info,
            &format!("deleted {} of {} files (older than {days} days, named {prefix}*)", old.len(), files.len()),
        );
        Ok(Vec::new())
    }
}

export_notifier!(Plugin);
