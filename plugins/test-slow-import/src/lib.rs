//! Test-only: maps `id,last name` lines into student records, spinning
//! over each chunk the host feeds it, so an import lasts long enough for a
//! test to watch its progress move and to cancel it.

use std::cell::RefCell;
use std::hint::black_box;

use schoolbell_plugin_sdk::mapping::*;

struct Plugin;

impl PluginGuest for Plugin {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "test-slow-import".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            kind: PluginKind::ImportMapping,
            description: "Imports slowly on purpose (tests only).".into(),
            params: vec![param_spec(
                "spin",
                ValueType::Integer,
                Some(Value::Integer(100_000_000)),
                "loop iterations spent on each chunk",
            )],
            capabilities: vec![Capability::WriteCollection("students".into())],
        }
    }
}

impl MappingGuest for Plugin {
    type Mapper = Slow;
}

struct Slow(RefCell<(u64, Vec<u8>, u64)>);

impl Slow {
    fn lines(&self, chunk: &[u8], last: bool) -> Batch {
        let mut state = self.0.borrow_mut();
        let (spin, pending, line) = &mut *state;
        let mut n = 0u64;
        for _ in 0..*spin {
            n = black_box(n.wrapping_add(1));
        }
        pending.extend_from_slice(chunk);
        let mut batch = Batch { rows: Vec::new(), errors: Vec::new() };
        let text = std::mem::take(pending);
        let mut rest: &[u8] = &text;
        loop {
            let end = match rest.iter().position(|b| *b == b'\n') {
                Some(end) => end,
                None if last && !rest.is_empty() => rest.len(),
                None => break,
            };
            *line += 1;
            let record = String::from_utf8_lossy(&rest[..end]).trim().to_string();
            rest = rest.get(end + 1..).unwrap_or_default();
            if *line == 1 {
                continue;
            }
            if let Some((id, name)) = record.split_once(',') {
                let text = |s: &str| Value::Text(s.trim().to_string());
                batch.rows.push(MappedRow {
                    line: *line,
                    fields: vec![
                        Field { name: "student-id".into(), value: text(id) },
                        Field { name: "last-name".into(), value: text(name) },
                    ],
                });
            }
        }
        *pending = rest.to_vec();
        batch
    }
}

impl GuestMapper for Slow {
    fn open(params: Vec<Param>) -> Result<Mapper, PluginError> {
        let spin = match params.iter().find(|p| p.name == "spin").map(|p| &p.value) {
            Some(Value::Integer(n)) => (*n).max(0) as u64,
            _ => 100_000_000,
        };
        Ok(Mapper::new(Slow(RefCell::new((spin, Vec::new(), 0)))))
    }

    fn feed(&self, chunk: Vec<u8>) -> Result<Batch, MappingError> {
        Ok(self.lines(&chunk, false))
    }

    fn finish(&self) -> Result<Batch, MappingError> {
        Ok(self.lines(&[], true))
    }
}

export_mapping!(Plugin);
