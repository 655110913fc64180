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
        path: "../../wit/since_v0.1.3",
        additional_derives: [PartialEq],
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
        path: "../../wit/since_v0.1.3",
        additional_derives: [PartialEq],
        pub_export_macro: true,
        export_macro_name: "export_notifier",
        default_bindings_module: "schoolbell_plugin_sdk::notifier",
    });

    pub use exports::schoolbell::plugin::notify::{Guest as NotifierGuest, Notification, Recipient};
    pub use exports::schoolbell::plugin::plugin::Guest as PluginGuest;
    pub use schoolbell::plugin::log::{Level, write as log};
    pub use schoolbell::plugin::types::*;
    pub use schoolbell::plugin::{files, host};

    crate::value_helpers!();

    /// The date a run is about: the text parameter `name` (`YYYY-MM-DD`)
    /// when a task sets it, else the host's today in the district's zone.
    pub fn date_param(params: &[Param], name: &str) -> Result<Date, PluginError> {
        let text = text_param(params, name)?;
        if text.trim().is_empty() {
            return Ok(host::today());
        }
        parse_date(text.trim())
            .ok_or_else(|| PluginError::BadInput(format!("parameter `{name}`: `{text}` is not a date (YYYY-MM-DD)")))
    }

    /// The optional `rule` parameter: an admin rule that narrows who
    /// qualifies (see [`qualifies`]).
    pub fn rule_param_spec() -> ParamSpec {
        param_spec(
            "rule",
            ValueType::Text,
            Some(Value::Text(String::new())),
            "An admin rule that narrows who qualifies; empty for none.",
        )
    }

    /// The optional `date` parameter read by [`date_param`].
    pub fn date_param_spec() -> ParamSpec {
        param_spec(
            "date",
            ValueType::Text,
            Some(Value::Text(String::new())),
            "The day to look from (YYYY-MM-DD); empty for the district's today.",
        )
    }

    /// Whether `record` qualifies under the admin rule `rule`; an empty
    /// rule name lets every record through.
    pub fn qualifies(rule: &str, record: &[Field]) -> Result<Option<String>, PluginError> {
        if rule.is_empty() {
            return Ok(Some(String::new()));
        }
        let d = host::eval_rule(rule, record)?;
        Ok(d.matched.then_some(d.reason))
    }

    /// Iterates over the records of a collection that the admin rule `rule`
    /// qualifies, each with the values that decided. The host reads and
    /// decides them (`host.select-records`), so only the qualifying records
    /// cross into the plugin, a page at a time. Between pages it reports
    /// progress (records gone through, of the collection's count) and stops
    /// with an error once the run is cancelled. An empty rule name lets
    /// every record through, with an empty reason.
    pub fn selected(collection: &str, rule: &str) -> Selected {
        let (collection, rule) = (collection.to_string(), rule.to_string());
        let (mut scanned, mut total) = (0, None);
        Pages::new(move |after| {
            if host::cancelled() {
                return Err(PluginError::Transient("cancelled".into()));
            }
            let total = match total {
                Some(total) => total,
                None => *total.insert(host::count_records(&collection)?),
            };
            host::progress(scanned, Some(total));
            let (page, seen, next) = if rule.is_empty() {
                let page = host::read_records(&collection, after, 1_000)?;
                let seen = page.records.len() as u64;
                (page.records.into_iter().map(|r| (r, String::new())).collect(), seen, page.next)
            } else {
                let page = host::select_records(&collection, &rule, after, 10_000)?;
                let selected = page.selected.into_iter().map(|s| (s.record, s.reason)).collect();
                (selected, u64::from(page.scanned), page.next)
            };
            scanned += seen;
            if next.is_none() {
                host::progress(total, Some(total));
            }
            Ok((page, next))
        })
    }

    /// The iterator behind [`selected`].
    pub type Selected = Pages<(Fields, String)>;

    /// Iterates over every record of a collection, a page at a time, so a
    /// notifier never holds more than one page.
    pub fn records(collection: &str) -> Records {
        let collection = collection.to_string();
        Pages::new(move |after| {
            let page = host::read_records(&collection, after, 500)?;
            Ok((page.records, page.next))
        })
    }

    /// The iterator behind [`records`].
    pub type Records = Pages<Fields>;

    /// One page from the host, and the cursor for the next (none at the end).
    type Page<T> = Result<(Vec<T>, Option<String>), PluginError>;

    /// What fetches a page, given its cursor.
    type Fetch<T> = Box<dyn FnMut(Option<&str>) -> Page<T>>;

    /// Items fetched a page at a time: `fetch` is given the cursor (none
    /// for the first page). After an error it yields nothing more.
    pub struct Pages<T> {
        fetch: Fetch<T>,
        page: std::vec::IntoIter<T>,
        next: Option<String>,
        started: bool,
    }

    impl<T> Pages<T> {
        fn new(fetch: impl FnMut(Option<&str>) -> Page<T> + 'static) -> Pages<T> {
            Pages { fetch: Box::new(fetch), page: Vec::new().into_iter(), next: None, started: false }
        }
    }

    impl<T> Iterator for Pages<T> {
        type Item = Result<T, PluginError>;

        fn next(&mut self) -> Option<Self::Item> {
            loop {
                if let Some(item) = self.page.next() {
                    return Some(Ok(item));
                }
                if self.started && self.next.is_none() {
                    return None;
                }
                self.started = true;
                match (self.fetch)(self.next.as_deref()) {
                    Ok((page, next)) => {
                        self.next = next;
                        self.page = page.into_iter();
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

        /// A field's value as a date, if it is one.
        pub fn date(record: &[Field], name: &str) -> Option<Date> {
            match field(record, name) {
                Some(Value::Date(d)) => Some(*d),
                _ => None,
            }
        }

        /// A boolean parameter (false when unset).
        pub fn bool_param(params: &[Param], name: &str) -> Result<bool, PluginError> {
            match param(params, name) {
                Some(Value::Boolean(b)) => Ok(*b),
                Some(Value::Null) | None => Ok(false),
                Some(_) => Err(PluginError::BadInput(format!("parameter `{name}` must be true or false"))),
            }
        }

        /// Parses `YYYY-MM-DD`.
        pub fn parse_date(text: &str) -> Option<Date> {
            let mut parts = text.splitn(3, '-');
            let year: i32 = parts.next()?.parse().ok()?;
            let month: u8 = parts.next()?.parse().ok()?;
            let day: u8 = parts.next()?.parse().ok()?;
            let d = Date { year, month, day };
            (date_from_days(days(d)) == d).then_some(d)
        }

        /// Days since 1970-01-01 (negative before), for date arithmetic.
        pub fn days(d: Date) -> i64 {
            // Howard Hinnant's days_from_civil.
            let y = i64::from(d.year) - i64::from(d.month <= 2);
            let era = y.div_euclid(400);
            let yoe = y - era * 400;
            let m = i64::from(d.month);
            let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d.day) - 1;
            let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
            era * 146_097 + doe - 719_468
        }

        /// The date `n` days after 1970-01-01.
        pub fn date_from_days(n: i64) -> Date {
            let z = n + 719_468;
            let era = z.div_euclid(146_097);
            let doe = z - era * 146_097;
            let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
            let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
            let mp = (5 * doy + 2) / 153;
            let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
            let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
            let year = (yoe + era * 400 + i64::from(month <= 2)) as i32;
            Date { year, month, day }
        }

        /// `YYYY-MM-DD`.
        pub fn date_text(d: Date) -> String {
            format!("{:04}-{:02}-{:02}", d.year, d.month, d.day)
        }
    };
}
