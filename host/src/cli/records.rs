//! `schoolbell records`: load a JSON array of records, list a collection.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Subcommand;
use schoolbell::app::App;
use schoolbell::records::{Value, record_to_json};
use schoolbell::users::User;

use super::{print_table, say};

#[derive(Subcommand)]
pub(super) enum RecordsCmd {
    /// Load records from a JSON array of objects (all or nothing).
    Load {
        /// The collection.
        collection: String,
        /// The JSON file.
        #[arg(value_parser = super::path_arg)]
        file: PathBuf,
        /// The key field (needed when the collection is new).
        #[arg(long)]
        key: Option<String>,
        /// A secondary index: fields joined by `+` (repeatable).
        #[arg(long = "index")]
        indexes: Vec<String>,
    },
    /// Print records.
    List {
        /// The collection.
        collection: String,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

pub(super) fn run(app: &App, user: &User, cmd: RecordsCmd) -> Result<()> {
    match cmd {
        RecordsCmd::Load { collection, file, key, indexes } => {
            let n = load_json(app, user, &collection, &file, key.as_deref(), &indexes)?;
            say!("{n} records loaded into `{collection}` from {}", file.display());
        }
        RecordsCmd::List { collection, limit, json } => {
            let page = app.collections().page(user, &collection, limit)?;
            if json {
                let list: Vec<_> = page.records.iter().map(record_to_json).collect();
                say!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                let mut headers: Vec<String> = Vec::new();
                for r in &page.records {
                    for k in r.keys() {
                        if !headers.contains(k) {
                            headers.push(k.clone());
                        }
                    }
                }
                let rows: Vec<Vec<String>> = page
                    .records
                    .iter()
                    .map(|r| headers.iter().map(|h| r.get(h).map(Value::to_key_text).unwrap_or_default()).collect())
                    .collect();
                let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
                print_table(&headers, &rows);
                say!("({} of {} records)", page.records.len(), page.total);
            }
        }
    }
    Ok(())
}

/// Loads a JSON array of objects into a collection, all or nothing.
fn load_json(
    app: &App,
    user: &User,
    collection: &str,
    file: &Path,
    key: Option<&str>,
    indexes: &[String],
) -> Result<usize> {
    let records = schoolbell::records::read_json_file(file)?;
    Ok(app.collections().load(user, collection, key, indexes, &records, &file.display().to_string())?)
}
