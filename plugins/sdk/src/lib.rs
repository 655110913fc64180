//! The Schoolbell plugin SDK: the `schoolbell:plugin` WIT bindings plus the
//! helpers that make a plugin one file.
//!
//! Enable exactly one feature, `mapping` or `notifier`, then implement the
//! world's traits and call its export macro:
//!
//! ```ignore
//! use schoolbell_plugin_sdk::notifier::*;
//! struct Plugin;
//! impl PluginGuest for Plugin { fn describe() -> PluginInfo { /* ... */ } }
//! impl NotifierGuest for Plugin { fn run(params: Vec<Param>) -> Result<Vec<Notification>, PluginError> { /* ... */ } }
//! export_notifier!(Plugin);
//! ```

#[cfg(all(feature = "mapping", feature = "notifier"))]
compile_error!("enable one of the features `mapping` and `notifier`, not both: a plugin exports one world");

/// Bindings and helpers for import mappings (world `import-mapping`).
#[cfg(feature = "mapping")]
pub mod mapping {
    wit_bindgen::generate!({
        world: "import-mapping",
        path: "../../wit/since_v0.1.1",
        pub_export_macro: true,
        export_macro_name: "export_mapping",
        default_bindings_module: "schoolbell_plugin_sdk::mapping",
    });

    pub use exports::schoolbell::plugin::mapping::{
        Batch, Guest as MappingGuest, GuestMapper, HeaderError, MappedRow, Mapper, MappingError,
    };
    pub use exports::schoolbell::plugin::plugin::Guest as PluginGuest;
    pub use schoolbell::plugin::log::{Level, write as log};
    pub use schoolbell::plugin::types::*;

    crate::value_helpers!();
}

/// Bindings and helpers for notifiers (world `notifier`).
#[cfg(feature = "notifier")]
pub mod notifier {
    wit_bindgen::generate!({
        world: "notifier",
        path: "../../wit/since_v0.1.1",
        pub_export_macro: true,
        export_macro_name: "export_notifier",
        default_bindings_module: "schoolbell_plugin_sdk::notifier",
    });

    pub use exports::schoolbell::plugin::notify::{Guest as NotifierGuest, Notification, Recipient};
    pub use exports::schoolbell::plugin::plugin::Guest as PluginGuest;
    pub use schoolbell::plugin::host;
    pub use schoolbell::plugin::log::{Level, write as log};
    pub use schoolbell::plugin::types::*;

    crate::value_helpers!();

    /// Iterates over every record of a collection, a page at a time, so a
    /// notifier never holds more than one page.
    pub fn records(collection: &str) -> Records {
        Records { collection: collection.to_string(), page: Vec::new().into_iter(), next: None, started: false }
    }

    /// The iterator behind [`records`].
    pub struct Records {
        collection: String,
        page: std::vec::IntoIter<Fields>,
        next: Option<String>,
        started: bool,
    }

    impl Iterator for Records {
        type Item = Result<Fields, PluginError>;

        fn next(&mut self) -> Option<Self::Item> {
            loop {
                if let Some(record) = self.page.next() {
                    return Some(Ok(record));
                }
                if self.started && self.next.is_none() {
                    return None;
                }
                self.started = true;
                match host::read_records(&self.collection, self.next.as_deref(), 500) {
                    Ok(page) => {
                        self.next = page.next;
                        self.page = page.records.into_iter();
                    }
                    Err(e) => {
                        self.next = None;
                        return Some(Err(e));
                    }
                }
            }
        }
    }
}

/// Helpers shared by both worlds' generated types.
#[doc(hidden)]
#[macro_export]
macro_rules! value_helpers {
    () => {
        /// Finds a field's value by name.
        pub fn field<'a>(record: &'a [Field], name: &str) -> Option<&'a Value> {
            record.iter().find(|f| f.name == name).map(|f| &f.value)
        }

        /// A field's value as text, if it is text.
        pub fn text<'a>(record: &'a [Field], name: &str) -> Option<&'a str> {
            match field(record, name) {
                Some(Value::Text(s)) => Some(s),
                _ => None,
            }
        }

        /// A field's value as an integer, if it is one.
        pub fn integer(record: &[Field], name: &str) -> Option<i64> {
            match field(record, name) {
                Some(Value::Integer(n)) => Some(*n),
                _ => None,
            }
        }

        /// A parameter's value; the host has filled in defaults already.
        pub fn param<'a>(params: &'a [Param], name: &str) -> Option<&'a Value> {
            params.iter().find(|p| p.name == name).map(|p| &p.value)
        }

        /// A text parameter, or a `bad-input` error naming it.
        pub fn text_param(params: &[Param], name: &str) -> Result<String, PluginError> {
            match param(params, name) {
                Some(Value::Text(s)) => Ok(s.clone()),
                Some(Value::Null) | None => Ok(String::new()),
                Some(_) => Err(PluginError::BadInput(format!("parameter `{name}` must be text"))),
            }
        }

        /// An integer parameter, or a `bad-input` error naming it.
        pub fn integer_param(params: &[Param], name: &str) -> Result<Option<i64>, PluginError> {
            match param(params, name) {
                Some(Value::Integer(n)) => Ok(Some(*n)),
                Some(Value::Null) | None => Ok(None),
                Some(_) => Err(PluginError::BadInput(format!("parameter `{name}` must be an integer"))),
            }
        }

        /// A parameter spec, for `describe`.
        pub fn param_spec(name: &str, value_type: ValueType, default: Option<Value>, description: &str) -> ParamSpec {
            ParamSpec { name: name.into(), description: description.into(), value_type, default }
        }

        /// Builds a field.
        pub fn fld(name: &str, value: Value) -> Field {
            Field { name: name.into(), value }
        }
    };
}
