//! Name CSV export: writes the students' names (and any other fields the
//! task lists) as a CSV file into the district's batch folder.

use schoolbell_plugin_sdk::notifier::*;

struct Plugin;

const FOLDER: &str = "batch";

impl PluginGuest for Plugin {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "export-names-csv".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            kind: PluginKind::Notifier,
            description: "Writes students' names as CSV into the batch folder.".into(),
            params: vec![
                param_spec(
                    "file",
                    ValueType::Text,
                    Some(Value::Text("names.csv".into())),
                    "The file name in the batch folder.",
                ),
                param_spec(
                    "fields",
                    ValueType::Text,
                    Some(Value::Text("student-id,last-name,first-name".into())),
                    "The fields, in column order, separated by commas.",
                ),
            ],
            capabilities: vec![
                Capability::ReadCollection("students".into()),
                Capability::WriteCollection(format!("folder:{FOLDER}")),
            ],
        }
    }
}

/// One CSV cell, quoted when it must be.
fn cell(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) { format!("\"{}\"", text.replace('"', "\"\"")) } else { text.to_string() }
}

fn show(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::Text(t)) => t.clone(),
        Some(Value::Integer(n)) => n.to_string(),
        Some(Value::Float(x)) => x.to_string(),
        Some(Value::Boolean(b)) => b.to_string(),
        Some(Value::Date(d)) => date_text(*d),
    }
}

impl NotifierGuest for Plugin {
    fn run(params: Vec<Param>) -> Result<Vec<Notification>, PluginError> {
        let name = text_param(&params, "file")?;
        let fields: Vec<String> =
            text_param(&params, "fields")?.split(',').map(|f| f.trim().to_string()).filter(|f| !f.is_empty()).collect();
        if fields.is_empty() {
            return Err(PluginError::BadInput("parameter `fields` names no field".into()));
        }
        let mut csv = fields.iter().map(|f| cell(f)).collect::<Vec<_>>().join(",");
        csv.push_str("\r\n");
        let mut rows = 0;
        for record in records("students") {
            let record = record?;
            let line: Vec<String> = fields.iter().map(|f| cell(&show(field(&record, f)))).collect();
            csv.push_str(&line.join(","));
            csv.push_str("\r\n");
            rows += 1;
        }
        files::write_file(FOLDER, &name, csv.as_bytes())?;
        log(Level::Info, &format!("exported {rows} students to {name}"));
        Ok(Vec::new())
    }
}

export_notifier!(Plugin);
