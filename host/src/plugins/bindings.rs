//! The WIT bindings of `schoolbell:plugin`, and the one adapter between
//! them and the host's own types.
//!
//! Bindings are generated for the newest WIT version only. Older versions
//! in the supported range are semver-compatible subsets of it, so
//! wasmtime's semver-aware linking (imports and exports) loads them as is;
//! `detect` decides, before anything is instantiated, whether a component's
//! version is in that range.

use crate::records::{Date, Record, Value};

use super::{Capability, MappedRow, Notification, ParamSpec, PluginInfo, PluginKind, Recipient, RowError, ValueType};

mod notifier_world {
    wasmtime::component::bindgen!({ world: "notifier", path: "../wit/since_v0.1.3" });
}

mod mapping_world {
    wasmtime::component::bindgen!({
        world: "import-mapping",
        path: "../wit/since_v0.1.3",
        with: {
            "schoolbell:plugin/types": super::notifier_world::schoolbell::plugin::types,
            "schoolbell:plugin/log": super::notifier_world::schoolbell::plugin::log,
        },
    });
}

pub(crate) use mapping_world::ImportMappingPre;
pub(crate) use mapping_world::exports::schoolbell::plugin::mapping as mapping_api;
pub(crate) use notifier_world::NotifierPre;
pub(crate) use notifier_world::exports::schoolbell::plugin::notify as notify_api;
pub(crate) use notifier_world::schoolbell::plugin::{
    files as files_api, host as host_api, log as log_api, types as wit,
};

/// The WIT package every plugin targets.
pub(crate) const PACKAGE: &str = "schoolbell:plugin";

/// The WIT versions this host loads, oldest first. Keep in step with the
/// `wit/since_v*` folders and the table in `wit/README.md`.
pub(crate) const SUPPORTED_VERSIONS: &[&str] = &["0.1.0", "0.1.1", "0.1.2", "0.1.3"];

/// What a component targets, read from its export and import names.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Target {
    pub(crate) kind: PluginKind,
    pub(crate) version: String,
}

/// Why a component cannot be loaded, before instantiation.
#[derive(Debug, PartialEq)]
pub(crate) enum Mismatch {
    /// It exports no Schoolbell world; the names it does export.
    NoWorld(Vec<String>),
    /// It targets a version outside the supported range.
    Version(String),
}

/// Reads which world and WIT version a component targets.
pub(crate) fn detect<'a>(
    exports: impl Iterator<Item = &'a str>,
    imports: impl Iterator<Item = &'a str>,
) -> Result<Target, Mismatch> {
    let prefix = format!("{PACKAGE}/");
    let mut all_exports = Vec::new();
    let mut kind = None;
    let mut version = None;
    let mut versions = Vec::new();
    for name in exports {
        all_exports.push(name.to_string());
        let Some(rest) = name.strip_prefix(&prefix) else {
            continue;
        };
        let (iface, v) = rest.split_once('@').unwrap_or((rest, ""));
        match iface {
            "notify" => kind = Some(PluginKind::Notifier),
            "mapping" => kind = Some(PluginKind::ImportMapping),
            _ => {}
        }
        if iface == "notify" || iface == "mapping" {
            version = Some(v.to_string());
        }
        versions.push(v.to_string());
    }
    for name in imports {
        if let Some(rest) = name.strip_prefix(&prefix) {
            versions.push(rest.split_once('@').map(|(_, v)| v.to_string()).unwrap_or_default());
        }
    }
    let (Some(kind), Some(version)) = (kind, version) else {
        return Err(Mismatch::NoWorld(all_exports));
    };
    if let Some(bad) = versions.iter().find(|v| !SUPPORTED_VERSIONS.contains(&v.as_str())) {
        return Err(Mismatch::Version(bad.clone()));
    }
    Ok(Target { kind, version })
}

// ----- WIT -> host -----

pub(crate) fn value_from_wit(v: wit::Value) -> Value {
    match v {
        wit::Value::Null => Value::Null,
        wit::Value::Boolean(b) => Value::Bool(b),
        wit::Value::Integer(n) => Value::Int(n),
        wit::Value::Float(x) => Value::Float(x),
        wit::Value::Text(s) => Value::Text(s),
        wit::Value::Date(d) => Value::Date(Date { year: d.year, month: d.month, day: d.day }),
    }
}

pub(crate) fn record_from_wit(fields: Vec<wit::Field>) -> Record {
    fields.into_iter().map(|f| (f.name, value_from_wit(f.value))).collect()
}

fn value_type_from_wit(t: wit::ValueType) -> ValueType {
    match t {
        wit::ValueType::Boolean => ValueType::Boolean,
        wit::ValueType::Integer => ValueType::Integer,
        wit::ValueType::Float => ValueType::Float,
        wit::ValueType::Text => ValueType::Text,
        wit::ValueType::Date => ValueType::Date,
    }
}

pub(crate) fn info_from_wit(info: wit::PluginInfo) -> PluginInfo {
    PluginInfo {
        name: info.name,
        version: info.version,
        kind: match info.kind {
            wit::PluginKind::ImportMapping => PluginKind::ImportMapping,
            wit::PluginKind::Notifier => PluginKind::Notifier,
        },
        description: info.description,
        params: info
            .params
            .into_iter()
            .map(|p| ParamSpec {
                name: p.name,
                description: p.description,
                value_type: value_type_from_wit(p.value_type),
                default: p.default.map(value_from_wit),
            })
            .collect(),
        capabilities: info
            .capabilities
            .into_iter()
            .map(|c| match c {
                wit::Capability::ReadCollection(c) => Capability::ReadCollection(c),
                wit::Capability::WriteCollection(c) => Capability::WriteCollection(c),
            })
            .collect(),
    }
}

pub(crate) fn guest_error(e: wit::PluginError) -> super::GuestError {
    use super::GuestError as G;
    match e {
        wit::PluginError::BadInput(m) => G::BadInput(m),
        wit::PluginError::Transient(m) => G::Transient(m),
        wit::PluginError::Permanent(m) => G::Permanent(m),
        wit::PluginError::Denied(m) => G::Denied(m),
    }
}

pub(crate) fn notification_from_wit(n: notify_api::Notification) -> Notification {
    Notification {
        recipient: match n.recipient {
            notify_api::Recipient::NotificationGroup => Recipient::NotificationGroup,
            notify_api::Recipient::Person(p) => Recipient::Person(p),
            notify_api::Recipient::LeadFaculty(s) => Recipient::LeadFaculty(s),
            notify_api::Recipient::Address(a) => Recipient::Address(a),
        },
        subject: n.subject,
        body: n.body,
        dedupe_key: n.dedupe_key,
    }
}

/// The caps on a mapped row: how many fields, how long a value.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RowCaps {
    pub(crate) fields: usize,
    pub(crate) field_bytes: usize,
}

/// A batch's rows and row errors. A row with an empty or repeated field
/// name, too many fields or too long a value becomes a row error: nothing
/// of it is silently dropped or overwritten.
pub(crate) fn batch_from_wit(b: mapping_api::Batch, caps: RowCaps) -> (Vec<MappedRow>, Vec<RowError>) {
    let mut errors: Vec<RowError> =
        b.errors.into_iter().map(|e| RowError { line: e.line, field: e.field, message: e.message }).collect();
    let mut rows = Vec::with_capacity(b.rows.len());
    for r in b.rows {
        match check_row(&r.fields, caps) {
            Ok(()) => rows.push(MappedRow { line: r.line, record: record_from_wit(r.fields) }),
            Err((field, message)) => errors.push(RowError { line: r.line, field, message }),
        }
    }
    (rows, errors)
}

fn check_row(fields: &[wit::Field], caps: RowCaps) -> Result<(), (Option<String>, String)> {
    if fields.len() > caps.fields {
        return Err((
            None,
            format!(
                "the mapping gave {} fields, over the {} a row may have ([sandbox] max_fields)",
                fields.len(),
                caps.fields
            ),
        ));
    }
    let mut seen = std::collections::HashSet::with_capacity(fields.len());
    for f in fields {
        if f.name.trim().is_empty() {
            return Err((None, "the mapping gave a field with no name; fix the plugin's column map".into()));
        }
        if !seen.insert(f.name.as_str()) {
            return Err((
                Some(f.name.clone()),
                format!("the mapping gave field `{}` twice; fix the plugin's column map", f.name),
            ));
        }
        if let wit::Value::Text(t) = &f.value
            && t.len() > caps.field_bytes
        {
            return Err((
                Some(f.name.clone()),
                format!(
                    "the value is {} bytes, over the {} a field may hold ([sandbox] max_field_bytes)",
                    t.len(),
                    caps.field_bytes
                ),
            ));
        }
    }
    Ok(())
}

// ----- host -> WIT -----

pub(crate) fn value_to_wit(v: &Value) -> wit::Value {
    match v {
        Value::Null => wit::Value::Null,
        Value::Bool(b) => wit::Value::Boolean(*b),
        Value::Int(n) => wit::Value::Integer(*n),
        Value::Float(x) => wit::Value::Float(*x),
        Value::Text(s) => wit::Value::Text(s.clone()),
        Value::Date(d) => wit::Value::Date(wit::Date { year: d.year, month: d.month, day: d.day }),
    }
}

pub(crate) fn record_to_wit(r: &Record) -> Vec<wit::Field> {
    r.iter().map(|(k, v)| wit::Field { name: k.clone(), value: value_to_wit(v) }).collect()
}

pub(crate) fn params_to_wit(p: &Record) -> Vec<wit::Param> {
    p.iter().map(|(k, v)| wit::Param { name: k.clone(), value: value_to_wit(v) }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_with_an_empty_repeated_or_oversized_field_is_a_row_error() {
        let field = |name: &str, value: &str| wit::Field { name: name.into(), value: wit::Value::Text(value.into()) };
        let caps = RowCaps { fields: 3, field_bytes: 8 };
        let row = |fields: Vec<wit::Field>| mapping_api::MappedRow { line: 2, fields };
        let batch = mapping_api::Batch {
            rows: vec![
                row(vec![field("id", "S1"), field("name", "Ann")]),
                row(vec![field("id", "S2"), field("", "x")]),
                row(vec![field("id", "S3"), field("id", "S4")]),
                row(vec![field("id", "S5"), field("note", "far too long")]),
                row(vec![field("a", ""), field("b", ""), field("c", ""), field("d", "")]),
            ],
            errors: vec![],
        };
        let (rows, errors) = batch_from_wit(batch, caps);
        assert_eq!(rows.len(), 1);
        let said: Vec<&str> = errors.iter().map(|e| e.message.as_str()).collect();
        assert!(said[0].contains("a field with no name"), "{said:?}");
        assert!(said[1].contains("field `id` twice"), "{said:?}");
        assert!(said[2].contains("[sandbox] max_field_bytes"), "{said:?}");
        assert!(said[3].contains("[sandbox] max_fields"), "{said:?}");
    }

    #[test]
    fn detects_world_and_version_from_export_names() {
        let t = detect(
            ["schoolbell:plugin/plugin@0.1.0", "schoolbell:plugin/notify@0.1.0"].into_iter(),
            ["schoolbell:plugin/host@0.1.0", "wasi:cli/stdout@0.2.6"].into_iter(),
        )
        .unwrap();
        assert_eq!(t, Target { kind: PluginKind::Notifier, version: "0.1.0".into() });
    }

    #[test]
    fn refuses_a_version_outside_the_range() {
        let e = detect(
            ["schoolbell:plugin/plugin@0.2.0", "schoolbell:plugin/mapping@0.2.0"].into_iter(),
            std::iter::empty(),
        );
        assert_eq!(e, Err(Mismatch::Version("0.2.0".into())));
        let e = detect(["schoolbell:plugin/notify@0.1.1"].into_iter(), ["schoolbell:plugin/host@0.1.9"].into_iter());
        assert_eq!(e, Err(Mismatch::Version("0.1.9".into())));
    }

    #[test]
    fn a_component_without_a_schoolbell_world_is_named_by_its_exports() {
        let e = detect(["wasi:cli/run@0.2.0"].into_iter(), std::iter::empty());
        assert_eq!(e, Err(Mismatch::NoWorld(vec!["wasi:cli/run@0.2.0".into()])));
    }
}
