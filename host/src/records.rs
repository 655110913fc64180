//! Records: the typed values and dynamic records that imports write, rules
//! read and notifiers receive, and their conversions to and from text.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A calendar date without time zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Date {
    /// The year.
    pub year: i32,
    /// The month, 1 to 12.
    pub month: u8,
    /// The day, 1 to 31.
    pub day: u8,
}

impl Date {
    /// Parses `YYYY-MM-DD`, checking the day against the month's length.
    pub fn parse(text: &str) -> Option<Date> {
        let mut parts = text.splitn(3, '-');
        let year: i32 = parts.next()?.parse().ok()?;
        let month: u8 = parts.next()?.parse().ok()?;
        let day: u8 = parts.next()?.parse().ok()?;
        let date = Date { year, month, day };
        (day >= 1 && day <= date.days_in_month()?).then_some(date)
    }

    /// The date of a chrono calendar date.
    pub fn from_chrono(d: chrono::NaiveDate) -> Date {
        use chrono::Datelike;
        Date { year: d.year(), month: d.month() as u8, day: d.day() as u8 }
    }

    /// The number of days in this date's month, or none for a bad month.
    pub fn days_in_month(&self) -> Option<u8> {
        let leap = (self.year % 4 == 0 && self.year % 100 != 0) || self.year % 400 == 0;
        Some(match self.month {
            1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
            4 | 6 | 9 | 11 => 30,
            2 if leap => 29,
            2 => 28,
            _ => return None,
        })
    }
}

impl fmt::Display for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

/// One typed value of a record field, as in the WIT `value` variant.
///
/// In JSON (the API, `--json`) a value is plain: text, number, boolean,
/// null, or a `YYYY-MM-DD` string for a date. In the store it keeps its
/// exact type (see the `Serialize` impl).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// No value.
    Null,
    /// True or false.
    Bool(bool),
    /// A whole number.
    Int(i64),
    /// A number with a fraction.
    Float(f64),
    /// Text.
    Text(String),
    /// A calendar date.
    Date(Date),
}

impl Value {
    /// The value's type, as admins read it in messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Int(_) => "integer",
            Value::Float(_) => "float",
            Value::Text(_) => "text",
            Value::Date(_) => "date",
        }
    }

    /// The value as text, for keys, indexes and reports. Text is returned
    /// as is; null is the empty string.
    pub fn to_key_text(&self) -> String {
        match self {
            Value::Null => String::new(),
            Value::Bool(b) => b.to_string(),
            Value::Int(n) => n.to_string(),
            Value::Float(x) => x.to_string(),
            Value::Text(s) => s.clone(),
            Value::Date(d) => d.to_string(),
        }
    }

    /// Converts a JSON value: strings that are `YYYY-MM-DD` dates become
    /// dates; arrays and objects are refused.
    pub fn from_json(json: &serde_json::Value) -> Option<Value> {
        Some(match json {
            serde_json::Value::Null => Value::Null,
            serde_json::Value::Bool(b) => Value::Bool(*b),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Value::Int(i),
                None => Value::Float(n.as_f64()?),
            },
            serde_json::Value::String(s) => match Date::parse(s) {
                Some(d) if s.len() == 10 => Value::Date(d),
                _ => Value::Text(s.clone()),
            },
            serde_json::Value::Array(_) | serde_json::Value::Object(_) => return None,
        })
    }

    /// The value as JSON, for `--json` output and the API.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Null => serde_json::Value::Null,
            Value::Bool(b) => (*b).into(),
            Value::Int(n) => (*n).into(),
            Value::Float(x) => (*x).into(),
            Value::Text(s) => s.clone().into(),
            Value::Date(d) => d.to_string().into(),
        }
    }
}

/// The store's exact form of a value, owned (see [`ValueRef`]).
#[derive(Deserialize)]
enum Stored {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
    Date(Date),
}

impl Serialize for Value {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            return self.to_json().serialize(s);
        }
        self.as_ref().serialize(s)
    }
}

/// A value as the store holds it, read in place: text borrowed from the
/// stored bytes rather than copied. Its variants are [`Stored`]'s, in
/// order, so both read and write the same bytes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum ValueRef<'a> {
    /// No value.
    Null,
    /// True or false.
    Bool(bool),
    /// A whole number.
    Int(i64),
    /// A number with a fraction.
    Float(f64),
    /// Text.
    Text(&'a str),
    /// A calendar date.
    Date(Date),
}

impl Value {
    /// The value, borrowed.
    pub fn as_ref(&self) -> ValueRef<'_> {
        match self {
            Value::Null => ValueRef::Null,
            Value::Bool(b) => ValueRef::Bool(*b),
            Value::Int(n) => ValueRef::Int(*n),
            Value::Float(x) => ValueRef::Float(*x),
            Value::Text(t) => ValueRef::Text(t),
            Value::Date(d) => ValueRef::Date(*d),
        }
    }
}

/// A record's fields, borrowed: what a rule reads.
pub type Fields<'a> = Vec<(&'a str, ValueRef<'a>)>;

/// A record's fields, borrowed from it.
pub fn fields(record: &Record) -> Fields<'_> {
    record.iter().map(|(k, v)| (k.as_str(), v.as_ref())).collect()
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let json = serde_json::Value::deserialize(d)?;
            return Value::from_json(&json)
                .ok_or_else(|| serde::de::Error::custom("a value must be text, a number, a boolean, null or a date"));
        }
        Ok(match Stored::deserialize(d)? {
            Stored::Null => Value::Null,
            Stored::Bool(b) => Value::Bool(b),
            Stored::Int(n) => Value::Int(n),
            Stored::Float(x) => Value::Float(x),
            Stored::Text(t) => Value::Text(t),
            Stored::Date(d) => Value::Date(d),
        })
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("null"),
            Value::Text(s) => write!(f, "{s:?}"),
            other => f.write_str(&other.to_key_text()),
        }
    }
}

/// A dynamic record: field names to typed values.
pub type Record = BTreeMap<String, Value>;

/// The prefix of a match key field compared folded (`folded("last-name")`
/// in a rule gives `folded:last-name`).
pub const FOLDED: &str = "folded:";

/// A match key field's record field, and whether it is compared folded.
pub fn key_field(spec: &str) -> (&str, bool) {
    match spec.strip_prefix(FOLDED) {
        Some(field) => (field, true),
        None => (spec, false),
    }
}

/// Text as people compare names: trimmed, lower case, without diacritics
/// (`García` and `GARCIA` fold alike).
pub fn fold(text: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    text.trim()
        .nfd()
        .filter(|c| !unicode_normalization::char::is_combining_mark(*c))
        .flat_map(char::to_lowercase)
        .collect()
}

/// A record as a JSON object.
pub fn record_to_json(record: &Record) -> serde_json::Value {
    serde_json::Value::Object(record.iter().map(|(k, v)| (k.clone(), v.to_json())).collect())
}

/// Why JSON is not records.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum JsonError {
    /// Not an array.
    #[error("expected a JSON array of objects")]
    NotArray,
    /// An item that is not an object (items count from 1).
    #[error("item {0} is not an object")]
    NotObject(usize),
    /// A field whose value no record can hold.
    #[error("field `{0}`: arrays and objects are not record values")]
    Field(String),
    /// A field at fault in an item (items count from 1).
    #[error("item {item}, {error}")]
    Item {
        /// The item.
        item: usize,
        /// What is wrong with it.
        error: Box<JsonError>,
    },
}

/// Records from a JSON array of objects (sample rows, seed data). The error
/// names the item (1-based) and the field at fault.
pub fn records_from_json(json: &serde_json::Value) -> Result<Vec<Record>, JsonError> {
    let items = json.as_array().ok_or(JsonError::NotArray)?;
    let mut records = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let obj = item.as_object().ok_or(JsonError::NotObject(i + 1))?;
        records.push(record_from_json(obj).map_err(|e| JsonError::Item { item: i + 1, error: Box::new(e) })?);
    }
    Ok(records)
}

/// Why a JSON file of records cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum JsonFileError {
    /// The file cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not JSON.
    #[error("{}: not valid JSON: {message}", path.display())]
    Parse {
        /// The file.
        path: std::path::PathBuf,
        /// Where and what, from the parser.
        message: String,
    },
    /// The JSON is not records.
    #[error("{}: {error}", path.display())]
    Records {
        /// The file.
        path: std::path::PathBuf,
        /// The item and field at fault.
        error: JsonError,
    },
}

/// Records from a file holding a JSON array of objects; the error names
/// the file, the item and the field.
pub fn read_json_file(path: &std::path::Path) -> Result<Vec<Record>, JsonFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| JsonFileError::Read { path: path.into(), source })?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| JsonFileError::Parse { path: path.into(), message: e.to_string() })?;
    records_from_json(&json).map_err(|error| JsonFileError::Records { path: path.into(), error })
}

/// A record from a JSON object; the error names the field at fault.
pub fn record_from_json(obj: &serde_json::Map<String, serde_json::Value>) -> Result<Record, JsonError> {
    obj.iter()
        .map(|(k, v)| {
            let value = Value::from_json(v).ok_or_else(|| JsonError::Field(k.clone()))?;
            Ok((k.clone(), value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_parse_only_when_the_day_exists() {
        assert_eq!(Date::parse("2024-02-29").map(|d| d.to_string()), Some("2024-02-29".into()));
        assert_eq!(Date::parse("2023-02-29"), None);
        assert_eq!(Date::parse("2023-13-01"), None);
        assert_eq!(Date::parse("2023-04-31"), None);
    }

    #[test]
    fn json_strings_that_are_dates_become_dates() {
        assert_eq!(Value::from_json(&"2010-05-01".into()), Some(Value::Date(Date { year: 2010, month: 5, day: 1 })));
        assert_eq!(Value::from_json(&"Ann".into()), Some(Value::Text("Ann".into())));
        assert_eq!(Value::from_json(&serde_json::json!(7)), Some(Value::Int(7)));
        assert_eq!(Value::from_json(&serde_json::json!([1])), None);
    }
}
