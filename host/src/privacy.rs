//! Masking personal data where it is not needed. The records themselves
//! are kept whole; what people read about them (run messages, import
//! previews, plugin logs, emails) shows a sensitive field's value masked
//! to its last four digits or letters, as `***-**-1234`.

use serde::{Deserialize, Serialize};

use crate::records::Value;

/// The `[privacy]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Privacy {
    /// Fields whose values are masked in run messages, import previews,
    /// logs and emails (the stored record keeps them whole).
    pub sensitive_fields: Vec<String>,
}

impl Default for Privacy {
    fn default() -> Self {
        Privacy { sensitive_fields: vec!["ssn".into(), "birth-date".into()] }
    }
}

impl Privacy {
    /// Whether `field` is sensitive.
    pub fn is_sensitive(&self, field: &str) -> bool {
        self.sensitive_fields.iter().any(|f| f.eq_ignore_ascii_case(field))
    }

    /// `value` as people may see it under `field`.
    pub fn value(&self, field: &str, value: &Value) -> Value {
        match value {
            Value::Null => Value::Null,
            v if self.is_sensitive(field) => Value::Text(mask(&v.to_key_text())),
            v => v.clone(),
        }
    }

    /// Free text (a plugin's log line, a notification) with anything
    /// shaped like an SSN masked.
    pub fn text(&self, text: &str) -> String {
        mask_ssns(text)
    }
}

/// Every letter and digit but the last four replaced by `*`, separators
/// kept: `111-22-3333` → `***-**-3333`, `2010-01-02` → `****-01-02`.
pub fn mask(text: &str) -> String {
    let total = text.chars().filter(|c| c.is_alphanumeric()).count();
    let mut seen = 0;
    text.chars()
        .map(|c| {
            if !c.is_alphanumeric() {
                return c;
            }
            seen += 1;
            if seen + 4 > total { c } else { '*' }
        })
        .collect()
}

/// Masks what looks like an SSN or a date of birth in free text, each
/// not inside a longer run of digits: `ddd-dd-dddd` and nine digits in a
/// row keep their last four (`***-**-3333`, `*****3333`); a date
/// (`yyyy-mm-dd`, `mm/dd/yyyy`) at least three years back, which in a
/// school's messages is a birth date far more often than an event, keeps
/// only what [`mask`] keeps of a birth date field.
pub fn mask_ssns(text: &str) -> String {
    use chrono::Datelike;
    let recent = chrono::Utc::now().year() - 3;
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        let fits = |shape: &[u8]| {
            i + shape.len() <= bytes.len()
                && shape.iter().zip(&bytes[i..]).all(|(s, b)| if *s == b'd' { b.is_ascii_digit() } else { b == s })
                && (i == 0 || !bytes[i - 1].is_ascii_digit())
                && bytes.get(i + shape.len()).is_none_or(|b| !b.is_ascii_digit())
        };
        let year = |at: usize| text[at..at + 4].parse::<i32>().unwrap_or(i32::MAX);
        let masked = if fits(b"ddd-dd-dddd") {
            Some((11, format!("***-**-{}", &text[i + 7..i + 11])))
        } else if fits(b"ddddddddd") {
            Some((9, format!("*****{}", &text[i + 5..i + 9])))
        } else if fits(b"dddd-dd-dd") && year(i) <= recent {
            Some((10, mask(&text[i..i + 10])))
        } else if fits(b"dd/dd/dddd") && year(i + 6) <= recent {
            Some((10, format!("**/**/{}", &text[i + 6..i + 10])))
        } else {
            None
        };
        match masked {
            Some((len, shown)) => {
                out.push_str(&shown);
                i += len;
            }
            None => {
                let c = text[i..].chars().next().expect("inside the text");
                out.push(c);
                i += c.len_utf8();
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_keep_their_last_four() {
        assert_eq!(mask("111-22-3333"), "***-**-3333");
        assert_eq!(mask("2010-01-02"), "****-01-02");
        assert_eq!(mask("12"), "12");
        let p = Privacy::default();
        assert_eq!(p.value("SSN", &Value::Text("111223333".into())), Value::Text("*****3333".into()));
        assert_eq!(p.value("grade", &Value::Int(7)), Value::Int(7));
    }

    #[test]
    fn ssn_shaped_text_is_masked() {
        let p = Privacy::default();
        assert_eq!(p.text("Ann 111-22-3333, call 555-1234"), "Ann ***-**-3333, call 555-1234");
        assert_eq!(mask_ssns("SSN 111223333 on file"), "SSN *****3333 on file");
        assert_eq!(mask_ssns("id 1112233334 is ten digits"), "id 1112233334 is ten digits");
        assert_eq!(mask_ssns("born 2010-01-02 (01/02/2010)"), "born ****-01-02 (**/**/2010)");
        assert_eq!(p.text("id 9111-22-33334"), "id 9111-22-33334");
        assert_eq!(p.text("é 123-45-6789é"), "é ***-**-6789é");
    }
}
