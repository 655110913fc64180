//! A CSV student roster, mapped through a column map the task configures.
//!
//! The file streams through `csv-core`, so only the current row is held
//! between chunks whatever the file's size. Quoted fields, CRLF line ends
//! and a UTF-8 byte-order mark are handled; Windows-1252 files are decoded
//! when the task says so.

use std::cell::RefCell;

use csv_core::{ReadFieldResult, Reader, ReaderBuilder};
use schoolbell_plugin_sdk::mapping::*;

const DEFAULT_COLUMNS: &str = "student-id=Student ID; last-name=Last Name; first-name=First Name; \
     birth-date=Birth Date:date; gender=Gender?; grade=Grade:integer?; campus=Campus?; ssn=SSN?";

struct Plugin;

impl PluginGuest for Plugin {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "import-csv-roster".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            kind: PluginKind::ImportMapping,
            description: "Maps a CSV student roster into student records.".into(),
            params: vec![
                param_spec(
                    "columns",
                    ValueType::Text,
                    Some(Value::Text(DEFAULT_COLUMNS.into())),
                    "Column map: `field=Header[:type][?]` entries separated by `;`. Types: text (default), integer, date. `?` marks a column optional.",
                ),
                param_spec(
                    "delimiter",
                    ValueType::Text,
                    Some(Value::Text(",".into())),
                    "The field separator: one character.",
                ),
                param_spec(
                    "encoding",
                    ValueType::Text,
                    Some(Value::Text("utf-8".into())),
                    "The file's encoding: `utf-8` (a byte-order mark is allowed) or `windows-1252`.",
                ),
                param_spec(
                    "max-field-bytes",
                    ValueType::Integer,
                    Some(Value::Integer(DEFAULT_MAX_FIELD as i64)),
                    "The longest field read, in bytes; a longer one fails its row with its line and column.",
                ),
            ],
            capabilities: vec![Capability::WriteCollection("students".into())],
        }
    }
}

impl MappingGuest for Plugin {
    type Mapper = Roster;
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Text,
    Integer,
    Date,
}

struct Column {
    field: String,
    header: String,
    kind: Kind,
    required: bool,
    /// The column's position in the file, once the header is read.
    index: Option<usize>,
}

#[derive(Clone, Copy, PartialEq)]
enum Encoding {
    Utf8,
    Windows1252,
}

/// The state of one file. Lives in a `RefCell` because WIT resources are
/// called through `&self`.
pub struct Roster(RefCell<State>);

/// The longest field kept by default: 1 MiB.
const DEFAULT_MAX_FIELD: u64 = 1 << 20;

struct State {
    reader: Reader,
    /// The longest field kept; the bytes of a longer one are counted, not kept.
    max_field: u64,
    /// Bytes of the field being read, kept or not.
    field_len: u64,
    /// The first field of the record being read that was too long: its
    /// position in the record and its size.
    oversized: Option<(usize, u64)>,
    /// The header row's names, for messages about columns not mapped.
    header_names: Vec<String>,
    /// Quote bytes read since the record began.
    quotes: u64,
    columns: Vec<Column>,
    encoding: Encoding,
    header_read: bool,
    at_start: bool,
    field: Vec<u8>,
    record: Vec<Vec<u8>>,
    /// `\n` bytes consumed so far.
    newlines: u64,
    ended_on_newline: bool,
    /// The input has ended: a record ending now may be an unclosed quote.
    at_eof: bool,
}

fn parse_columns(spec: &str) -> Result<Vec<Column>, PluginError> {
    let mut columns = Vec::new();
    for entry in spec.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let (field, rest) = entry.split_once('=').ok_or_else(|| {
            PluginError::BadInput(format!("parameter `columns`: entry `{entry}` has no `=`; write `field=Header`"))
        })?;
        let (rest, required) = match rest.trim().strip_suffix('?') {
            Some(r) => (r, false),
            None => (rest.trim(), true),
        };
        let (header, kind) = match rest.rsplit_once(':') {
            Some((h, "date")) => (h, Kind::Date),
            Some((h, "integer")) => (h, Kind::Integer),
            Some((h, "text")) => (h, Kind::Text),
            Some((_, other)) => {
                return Err(PluginError::BadInput(format!(
                    "parameter `columns`: entry `{entry}` has unknown type `{other}`; use text, integer or date"
                )));
            }
            None => (rest, Kind::Text),
        };
        columns.push(Column { field: field.trim().into(), header: header.trim().into(), kind, required, index: None });
    }
    if columns.is_empty() {
        return Err(PluginError::BadInput("parameter `columns` maps no column".into()));
    }
    Ok(columns)
}

impl GuestMapper for Roster {
    fn open(params: Vec<Param>) -> Result<Mapper, PluginError> {
        let columns = parse_columns(&text_param(&params, "columns")?)?;
        let delimiter = match text_param(&params, "delimiter")?.as_bytes() {
            [b] => *b,
            b"\\t" => b'\t',
            _ => {
                return Err(PluginError::BadInput("parameter `delimiter` must be one ASCII character".into()));
            }
        };
        let encoding = match text_param(&params, "encoding")?.to_ascii_lowercase().as_str() {
            "utf-8" | "utf8" => Encoding::Utf8,
            "windows-1252" | "cp1252" => Encoding::Windows1252,
            other => {
                return Err(PluginError::BadInput(format!(
                    "parameter `encoding`: `{other}` is not supported; use utf-8 or windows-1252"
                )));
            }
        };
        let mut state = State::new(columns, delimiter, encoding);
        state.max_field = match params.iter().find(|p| p.name == "max-field-bytes").map(|p| &p.value) {
            Some(Value::Integer(n)) if *n > 0 => *n as u64,
            Some(Value::Integer(_)) => {
                return Err(PluginError::BadInput("parameter `max-field-bytes` must be at least 1".into()));
            }
            _ => DEFAULT_MAX_FIELD,
        };
        Ok(Mapper::new(Roster(RefCell::new(state))))
    }

    fn feed(&self, chunk: Vec<u8>) -> Result<Batch, MappingError> {
        let mut state = self.0.borrow_mut();
        let mut input = &chunk[..];
        if state.at_start && !input.is_empty() {
            state.at_start = false;
            input = input.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(input);
        }
        state.read(input, false)
    }

    fn finish(&self) -> Result<Batch, MappingError> {
        let mut state = self.0.borrow_mut();
        let batch = state.read(&[], true)?;
        if !state.header_read {
            return Err(MappingError::Header(HeaderError {
                column: state.columns[0].header.clone(),
                message: "the file is empty: it has no header row".into(),
            }));
        }
        Ok(batch)
    }
}

impl State {
    fn new(columns: Vec<Column>, delimiter: u8, encoding: Encoding) -> State {
        State {
            reader: ReaderBuilder::new().delimiter(delimiter).build(),
            max_field: DEFAULT_MAX_FIELD,
            field_len: 0,
            oversized: None,
            header_names: Vec::new(),
            quotes: 0,
            columns,
            encoding,
            header_read: false,
            at_start: true,
            field: Vec::new(),
            record: Vec::new(),
            newlines: 0,
            ended_on_newline: false,
            at_eof: false,
        }
    }

    fn read(&mut self, mut input: &[u8], eof: bool) -> Result<Batch, MappingError> {
        let mut batch = Batch { rows: Vec::new(), errors: Vec::new() };
        self.at_eof = eof;
        let mut out = [0u8; 4096];
        loop {
            // csv-core reads an empty input as the end of the file, so a
            // chunk that is used up must wait for the next one.
            if input.is_empty() && !eof {
                return Ok(batch);
            }
            let (result, nin, nout) = self.reader.read_field(input, &mut out);
            let consumed = &input[..nin];
            self.newlines += consumed.iter().filter(|&&b| b == b'\n').count() as u64;
            self.quotes += consumed.iter().filter(|&&b| b == b'"').count() as u64;
            // A record ends on `\n`, on the `\r` of a CRLF (whose `\n` the
            // next read consumes), or at the end of the file.
            self.ended_on_newline = consumed.last() == Some(&b'\n');
            input = &input[nin..];
            // A field past the limit is counted, not kept: the mapping's
            // memory stays small and the row says which field it was.
            self.field_len += nout as u64;
            if self.field_len <= self.max_field {
                self.field.extend_from_slice(&out[..nout]);
            } else if !self.field.is_empty() {
                self.field = Vec::new();
            }
            match result {
                ReadFieldResult::InputEmpty | ReadFieldResult::OutputFull => {}
                ReadFieldResult::Field { record_end } => {
                    if self.field_len > self.max_field && self.oversized.is_none() {
                        self.oversized = Some((self.record.len(), self.field_len));
                    }
                    self.field_len = 0;
                    let field = std::mem::take(&mut self.field);
                    self.record.push(field);
                    if record_end {
                        self.end_record(&mut batch)?;
                    }
                }
                ReadFieldResult::End => return Ok(batch),
            }
        }
    }

    fn end_record(&mut self, batch: &mut Batch) -> Result<(), MappingError> {
        let record = std::mem::take(&mut self.record);
        let quotes = std::mem::take(&mut self.quotes);
        // The line the record ends on: the same as where it starts, except
        // for a quoted field that spans lines.
        let line = if self.ended_on_newline { self.newlines } else { self.newlines + 1 };
        // A blank line is one empty field: skip it, as spreadsheets write them.
        if record.len() == 1 && record[0].is_empty() {
            return Ok(());
        }
        if let Some((index, size)) = self.oversized.take() {
            let column = match self.header_names.get(index) {
                Some(name) if !name.is_empty() => format!("`{name}`"),
                _ => format!("number {}", index + 1),
            };
            let message = format!(
                "a field of {} is larger than the limit of {} (max-field-bytes); the row is not imported",
                size_text(size),
                size_text(self.max_field)
            );
            if !self.header_read {
                let message = format!("line {line}, column {column}: {message}");
                return Err(MappingError::Header(HeaderError { column, message }));
            }
            let field = self.header_names.get(index).cloned();
            batch.errors.push(RowError { line, field, message });
            return Ok(());
        }
        if !self.header_read {
            self.header_read = true;
            return self.read_header(&record);
        }
        // A quote that never closes reads the rest of the file into one
        // field: say where it opened and how much it swallowed, rather
        // than lose the rows after it without a word.
        // Quotes come in pairs (`""` inside a field): an odd count in the
        // last record means one opened and never closed.
        let spanned: u64 = record.iter().map(|f| f.iter().filter(|&&b| b == b'\n').count() as u64).sum();
        if self.at_eof && quotes % 2 == 1 {
            let start = line.saturating_sub(spanned);
            // It swallowed everything after it: it is the record's last field.
            let open = record.len().saturating_sub(1);
            // The file's own last line end is not a swallowed line.
            let swallowed = spanned - u64::from(record.last().is_some_and(|f| f.ends_with(b"\n")));
            let header = self.header_names.get(open).cloned();
            let after = match swallowed {
                0 => "the rest of its line was read as one field".to_string(),
                n => format!("the {n} lines after it, to the end of the file, were read as one field"),
            };
            batch.errors.push(RowError {
                line: start,
                field: header,
                message: format!(
                    "a quote opens on line {start} and never closes: {after}; close the quote (write \"\" for a quote inside a field) and import again"
                ),
            });
            return Ok(());
        }
        let mut fields = Vec::with_capacity(self.columns.len());
        let mut row_ok = true;
        for column in &self.columns {
            let Some(index) = column.index else { continue };
            let raw = match record.get(index) {
                Some(raw) => raw,
                None => {
                    batch.errors.push(RowError {
                        line,
                        field: Some(column.header.clone()),
                        message: format!("the row has {} fields; column `{}` is missing", record.len(), column.header),
                    });
                    row_ok = false;
                    continue;
                }
            };
            match self.value(column, raw) {
                Ok(value) => fields.push(Field { name: column.field.clone(), value }),
                Err(message) => {
                    batch.errors.push(RowError { line, field: Some(column.header.clone()), message });
                    row_ok = false;
                }
            }
        }
        if row_ok {
            batch.rows.push(MappedRow { line, fields });
        }
        Ok(())
    }

    fn read_header(&mut self, record: &[Vec<u8>]) -> Result<(), MappingError> {
        let names: Vec<String> =
            record.iter().map(|raw| self.decode(raw).unwrap_or_default().trim().to_string()).collect();
        self.header_names = names.clone();
        for column in &mut self.columns {
            let mut found = names.iter().enumerate().filter(|(_, n)| n.eq_ignore_ascii_case(&column.header));
            column.index = found.next().map(|(i, _)| i);
            if found.next().is_some() {
                return Err(MappingError::Header(HeaderError {
                    column: column.header.clone(),
                    message: format!("column `{}` appears more than once in the header", column.header),
                }));
            }
            if column.index.is_none() && column.required {
                return Err(MappingError::Header(HeaderError {
                    column: column.header.clone(),
                    message: format!(
                        "required column `{}` is missing from the header (found: {})",
                        column.header,
                        names.join(", ")
                    ),
                }));
            }
        }
        Ok(())
    }

    fn decode(&self, raw: &[u8]) -> Result<String, String> {
        match self.encoding {
            Encoding::Utf8 => String::from_utf8(raw.to_vec()).map_err(|e| {
                format!(
                    "invalid UTF-8 at byte {}; if the file comes from Excel on Windows, set the task's encoding to windows-1252",
                    e.utf8_error().valid_up_to()
                )
            }),
            Encoding::Windows1252 => Ok(raw.iter().map(|&b| windows_1252(b)).collect()),
        }
    }

    fn value(&self, column: &Column, raw: &[u8]) -> Result<Value, String> {
        let text = self.decode(raw)?;
        let text = text.trim();
        if text.is_empty() {
            return if column.required {
                Err(format!("required field `{}` is empty", column.header))
            } else {
                Ok(Value::Null)
            };
        }
        match column.kind {
            Kind::Text => Ok(Value::Text(text.to_string())),
            Kind::Integer => text
                .parse()
                .map(Value::Integer)
                .map_err(|_| format!("`{text}` in `{}` is not a whole number", column.header)),
            Kind::Date => parse_date(text).map(Value::Date).ok_or_else(|| {
                format!("`{text}` in `{}` is not a date; write YYYY-MM-DD or MM/DD/YYYY", column.header)
            }),
        }
    }
}

/// A size for people: `20 MB`, `1 MB`, `512 KB`, `300 bytes`.
fn size_text(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{} MB", b >> 20),
        b if b >= 1 << 10 => format!("{} KB", b >> 10),
        b => format!("{b} bytes"),
    }
}

fn parse_date(text: &str) -> Option<Date> {
    let (year, month, day) = if let Some((y, rest)) = text.split_once('-') {
        let (m, d) = rest.split_once('-')?;
        (y.parse().ok()?, m.parse().ok()?, d.parse().ok()?)
    } else {
        let mut parts = text.split('/');
        let (m, d, y) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        (y.parse().ok()?, m.parse().ok()?, d.parse().ok()?)
    };
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    (1..=days).contains(&day).then_some(Date { year, month, day })
}

/// Windows-1252 differs from Latin-1 only in 0x80..=0x9F.
fn windows_1252(b: u8) -> char {
    const HIGH: [char; 32] = [
        '€', '\u{81}', '‚', 'ƒ', '„', '…', '†', '‡', 'ˆ', '‰', 'Š', '‹', 'Œ', '\u{8D}', 'Ž', '\u{8F}', '\u{90}', '‘',
        '’', '“', '”', '•', '–', '—', '˜', '™', 'š', '›', 'œ', '\u{9D}', 'ž', 'Ÿ',
    ];
    match b {
        0x80..=0x9F => HIGH[(b - 0x80) as usize],
        _ => b as char,
    }
}

export_mapping!(Plugin);

/// The parser, natively, under generated input: it never panics, every
/// row and error points at a line of the file, and where the file is cut
/// into chunks changes nothing. `PROPTEST_CASES` sets how many files are
/// tried (`xtask/fuzz` tries many).
#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn state() -> State {
        let columns = parse_columns(
            "student-id=Student ID; last-name=Last Name?; grade=Grade:integer?; birth-date=Birth Date:date?",
        )
        .unwrap();
        State::new(columns, b',', Encoding::Utf8)
    }

    /// Everything the parser says about `file` read in chunks cut at `cuts`.
    fn parse(file: &[u8], cuts: &[usize]) -> Result<(Vec<(u64, usize)>, Vec<(u64, String)>), String> {
        let mut s = state();
        let mut rows = Vec::new();
        let mut errors = Vec::new();
        let mut take = |b: Batch| {
            rows.extend(b.rows.iter().map(|r| (r.line, r.fields.len())));
            errors.extend(b.errors.into_iter().map(|e| (e.line, e.message)));
        };
        let mut at = 0;
        for &cut in cuts.iter().chain(std::iter::once(&file.len())) {
            let cut = cut.clamp(at, file.len());
            take(s.read(&file[at..cut], false).map_err(|e| format!("{e:?}"))?);
            at = cut;
        }
        take(s.read(&[], true).map_err(|e| format!("{e:?}"))?);
        Ok((rows, errors))
    }

    fn cell() -> impl Strategy<Value = String> {
        prop_oneof![
            "[A-Za-z0-9 ]{0,8}",
            Just("\"".to_string()),
            Just("\"a,b\"".to_string()),
            Just("\"two\nlines\"".to_string()),
            Just("2010-01-02".to_string()),
            Just("12".to_string()),
            "\\PC{0,4}",
        ]
    }

    fn file() -> impl Strategy<Value = Vec<u8>> {
        let row = prop::collection::vec(cell(), 0..6).prop_map(|c| c.join(","));
        (prop::collection::vec(row, 0..12), prop::bool::ANY, prop::bool::ANY).prop_map(|(rows, crlf, last)| {
            let end = if crlf { "\r\n" } else { "\n" };
            let mut text = format!("Student ID,Last Name,Grade,Birth Date{end}");
            text.push_str(&rows.join(end));
            if last {
                text.push_str(end);
            }
            text.into_bytes()
        })
    }

    #[test]
    fn a_quote_left_open_on_the_last_line_is_named_and_a_closed_one_is_not() {
        let header = "Student ID,Last Name,Grade,Birth Date\n";
        let (rows, errors) =
            parse(format!("{header}S1,Ng,9,2010-01-02\nS2,\"Li,8,2011-03-04").as_bytes(), &[]).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].0, 3);
        assert!(
            errors[0].1.starts_with("a quote opens on line 3 and never closes: the rest of its line"),
            "{errors:?}"
        );
        let (rows, errors) = parse(format!("{header}S1,\"Ng\nNg\",9,2010-01-02\n").as_bytes(), &[]).unwrap();
        assert_eq!((rows.len(), errors.len()), (1, 0), "{errors:?}");
    }

    proptest! {
        #[test]
        fn chunks_change_nothing_and_every_line_is_in_the_file(
            file in file(),
            cuts in prop::collection::vec(0usize..400, 0..6),
        ) {
            let mut cuts = cuts;
            cuts.sort_unstable();
            let whole = parse(&file, &[]);
            let chunked = parse(&file, &cuts);
            prop_assert_eq!(&whole, &chunked);
            let lines = file.iter().filter(|&&b| b == b'\n').count() as u64 + 1;
            if let Ok((rows, errors)) = whole {
                for (line, _) in rows.iter().map(|(l, n)| (*l, *n)) {
                    prop_assert!(line >= 2 && line <= lines, "row at line {line} of {lines}");
                }
                for (line, _) in &errors {
                    prop_assert!(*line >= 1 && *line <= lines, "error at line {line} of {lines}");
                }
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(file in prop::collection::vec(any::<u8>(), 0..600), cut in 0usize..600) {
            let _ = parse(&file, &[cut]);
        }
    }
}
