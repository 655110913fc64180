//! The whole embedded store read out as rows of the PostgreSQL tables, for
//! `schoolbell store copy`: each tree's key layout taken apart into the
//! columns the tables have, values passed on as the same bytes.

use std::collections::HashMap;

use super::{SEP, Store, decode, io};
use crate::store::{Cell, Result, Row};

/// The id in the first eight bytes of a key.
fn id(k: &[u8]) -> i64 {
    k.get(..8).and_then(|b| b.try_into().ok()).map_or(0, u64::from_be_bytes) as i64
}

fn text(b: &[u8]) -> Cell {
    Cell::Text(String::from_utf8_lossy(b).into_owned())
}

/// The parts of a key joined by the separator.
fn parts(k: &[u8]) -> Vec<&[u8]> {
    k.split(|b| *b == SEP).collect()
}

/// An instant key's milliseconds (the sign bit flipped back).
fn millis(k: &[u8]) -> i64 {
    k.get(..8).and_then(|b| b.try_into().ok()).map_or(0, |b| (u64::from_be_bytes(b) ^ (1 << 63)) as i64)
}

impl Store {
    /// Hands every row to `out`, table by table (parents before children).
    pub(in crate::store) fn export(&self, out: &mut dyn FnMut(Row) -> Result<()>) -> Result<()> {
        let row =
            |table: &'static str, columns: &'static [&'static str], values: Vec<Cell>| Row { table, columns, values };
        for item in self.meta.iter() {
            let (k, v) = item.map_err(io("meta"))?;
            if let Some(name) = k.strip_prefix(b"seq:") {
                let n = v.as_ref().try_into().map_or(0, u64::from_be_bytes) as i64;
                out(row("sequences", &["name", "value"], vec![text(name), Cell::Int(n)]))?;
            }
        }
        // Collections with their counts; records; the import ledger. Index
        // entries are not copied: the other side builds its own.
        let mut counts: HashMap<Vec<u8>, i64> = HashMap::new();
        for item in self.records.scan_prefix([b'c', SEP]) {
            let (k, v) = item.map_err(io("records"))?;
            counts.insert(k[2..].to_vec(), v.as_ref().try_into().map_or(0, u64::from_be_bytes) as i64);
        }
        for item in self.collections.tree.iter() {
            let (k, v) = item.map_err(io("collections"))?;
            let count = counts.get(k.as_ref()).copied().unwrap_or(0);
            out(row(
                "collections",
                &["name", "spec", "count"],
                vec![text(&k), Cell::Bytes(v.to_vec()), Cell::Int(count)],
            ))?;
        }
        for item in self.records.iter() {
            let (k, v) = item.map_err(io("records"))?;
            let p = parts(&k);
            match (p.first().copied(), p.len()) {
                (Some(b"r"), 3) => out(row(
                    "records",
                    &["collection", "key", "value"],
                    vec![text(p[1]), text(p[2]), Cell::Bytes(v.to_vec())],
                ))?,
                (Some(b"l"), 2) => out(row("import_ledger", &["key", "entry"], vec![text(p[1]), text(&v)]))?,
                _ => {}
            }
        }
        let mut due: HashMap<Vec<u8>, i64> = HashMap::new();
        for item in self.due.iter() {
            let (k, _) = item.map_err(io("tasks_by_due"))?;
            due.insert(k[8..].to_vec(), millis(&k));
        }
        for item in self.tasks.iter() {
            let (k, v) = item.map_err(io("tasks"))?;
            let at = due.get(k.as_ref()).map_or(Cell::Null, |t| Cell::Int(*t));
            out(row("tasks", &["name", "value", "due_ms"], vec![text(&k), Cell::Bytes(v.to_vec()), at]))?;
        }
        let mut finished: HashMap<i64, i64> = HashMap::new();
        for item in self.finished.iter() {
            let (k, _) = item.map_err(io("runs_by_finish"))?;
            finished.insert(id(&k[8..]), millis(&k));
        }
        let mut tasks_of: HashMap<i64, String> = HashMap::new();
        for item in self.runs.iter() {
            let (k, v) = item.map_err(io("runs"))?;
            let run: crate::runs::Run = decode("runs", &k, &v)?;
            tasks_of.insert(id(&k), run.task);
            let at = finished.get(&id(&k)).map_or(Cell::Null, |t| Cell::Int(*t));
            out(row("runs", &["id", "value", "finished_ms"], vec![Cell::Int(id(&k)), Cell::Bytes(v.to_vec()), at]))?;
        }
        for item in self.queue.iter() {
            let (k, v) = item.map_err(io("queue"))?;
            let run = id(&v);
            let task = tasks_of.get(&run).cloned().unwrap_or_default();
            out(row(
                "queue",
                &["key", "run_id", "task"],
                vec![Cell::Bytes(k.to_vec()), Cell::Int(run), Cell::Text(task)],
            ))?;
        }
        let mut statuses: HashMap<(i64, i64), Vec<u8>> = HashMap::new();
        for item in self.message_status.iter() {
            let (k, _) = item.map_err(io("run_messages_by_status"))?;
            let rest = &k[8..];
            if let Some(end) = rest.iter().position(|b| *b == 0) {
                statuses.insert((id(&k), id(&rest[end + 1..])), rest[..end].to_vec());
            }
        }
        for item in self.messages.iter() {
            let (k, v) = item.map_err(io("run_messages"))?;
            let (run, seq) = (id(&k), id(&k[8..]));
            let status = statuses.get(&(run, seq)).map_or_else(|| Cell::Text(String::new()), |s| text(s));
            out(row(
                "run_messages",
                &["run", "seq", "status", "value"],
                vec![Cell::Int(run), Cell::Int(seq), status, Cell::Bytes(v.to_vec())],
            ))?;
        }
        for item in self.message_rows.tree.iter() {
            let (k, v) = item.map_err(io("run_message_chunks"))?;
            out(row(
                "run_message_rows",
                &["run", "first_line", "value"],
                vec![Cell::Int(id(&k)), Cell::Int(id(&k[8..])), Cell::Bytes(v.to_vec())],
            ))?;
        }
        for (table, tree) in [("import_plans", &self.plans), ("approvals", &self.approvals.tree)] {
            for item in tree.iter() {
                let (k, v) = item.map_err(io(table))?;
                out(row(table, &["run", "value"], vec![Cell::Int(id(&k)), Cell::Bytes(v.to_vec())]))?;
            }
        }
        for item in self.state.iter() {
            let (k, v) = item.map_err(io("task_state"))?;
            let p = parts(&k);
            out(row(
                "task_state",
                &["task", "key", "value"],
                vec![text(p[0]), text(p.get(1).unwrap_or(&&b""[..])), text(&v)],
            ))?;
        }
        for item in self.notified.iter() {
            let (k, v) = item.map_err(io("notified"))?;
            let p = parts(&k);
            out(row(
                "notified",
                &["task", "key", "value"],
                vec![text(p[0]), text(p.get(1).unwrap_or(&&b""[..])), Cell::Bytes(v.to_vec())],
            ))?;
        }
        let mut outbox_due: HashMap<i64, i64> = HashMap::new();
        for item in self.outbox_due.iter() {
            let (k, _) = item.map_err(io("outbox_by_due"))?;
            outbox_due.insert(id(&k[8..]), millis(&k));
        }
        for item in self.outbox.iter() {
            let (k, v) = item.map_err(io("outbox"))?;
            let at = outbox_due.get(&id(&k)).map_or(Cell::Null, |t| Cell::Int(*t));
            out(row("outbox", &["id", "value", "due_ms"], vec![Cell::Int(id(&k)), Cell::Bytes(v.to_vec()), at]))?;
        }
        for item in self.tokens.tree.iter() {
            let (k, v) = item.map_err(io("tokens"))?;
            let token: crate::users::Token = decode("tokens", &k, &v)?;
            out(row(
                "tokens",
                &["hash", "user_name", "value"],
                vec![text(&k), Cell::Text(token.user), Cell::Bytes(v.to_vec())],
            ))?;
        }
        for item in self.passwords.tree.iter() {
            let (k, v) = item.map_err(io("passwords"))?;
            let hash: String = decode("passwords", &k, &v)?;
            out(row("passwords", &["user_name", "hash"], vec![text(&k), Cell::Text(hash)]))?;
        }
        for item in self.views.tree.iter() {
            let (k, v) = item.map_err(io("views"))?;
            let p = parts(&k);
            out(row(
                "views",
                &["user_name", "name", "value"],
                vec![text(p[0]), text(p.get(1).unwrap_or(&&b""[..])), Cell::Bytes(v.to_vec())],
            ))?;
        }
        for item in self.audit.tree.iter() {
            let (k, v) = item.map_err(io("audit"))?;
            out(row("audit", &["id", "value"], vec![Cell::Int(id(&k)), Cell::Bytes(v.to_vec())]))?;
        }
        for item in self.rules.tree.iter() {
            let (k, v) = item.map_err(io("rule_versions"))?;
            let version: crate::rules::RuleVersion = decode("rule_versions", &k, &v)?;
            out(row(
                "rule_versions",
                &["name", "version", "value"],
                vec![Cell::Text(version.name), Cell::Int(version.version as i64), Cell::Bytes(v.to_vec())],
            ))?;
        }
        // Trees of one value by name.
        for (table, column, tree) in [
            ("users", "value", &self.users),
            ("secrets", "sealed", &self.secrets),
            ("sources", "value", &self.sources.tree),
            ("plugins", "value", &self.plugins),
        ] {
            let columns: &'static [&'static str] =
                if column == "sealed" { &["name", "sealed"] } else { &["name", "value"] };
            for item in tree.iter() {
                let (k, v) = item.map_err(io(table))?;
                out(row(table, columns, vec![text(&k), Cell::Bytes(v.to_vec())]))?;
            }
        }
        for item in self.blobs.iter() {
            let (k, v) = item.map_err(io("blobs"))?;
            out(row("blobs", &["hash", "bytes"], vec![text(&k), Cell::Bytes(v.to_vec())]))?;
        }
        Ok(())
    }
}
