//! `schoolbell store`: migrate the data to this build's schema, check the
//! indexes, back up the store.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Subcommand;
use schoolbell::app::App;
use schoolbell::users::User;

use super::say;

#[derive(Subcommand)]
pub(super) enum StoreCmd {
    /// Upgrade the data to this build's schema (also done at every start, after a backup).
    Migrate,
    /// Check every index against the records it indexes; list any drift.
    Check,
    /// Copy the store into DIR (new or empty), also while `serve` runs.
    Backup {
        /// Where the copy goes.
        #[arg(value_parser = super::path_arg)]
        dir: PathBuf,
    },
}

pub(super) fn run(app: &App, user: &User, cmd: StoreCmd) -> Result<()> {
    let storage = app.storage();
    match cmd {
        StoreCmd::Migrate => match storage.migrated() {
            Some(m) => say!(
                "migrated the store from schema {} to {} ({} values rewritten); the copy from before is in {}",
                m.from,
                m.to,
                m.values,
                m.backup.display()
            ),
            None => say!("the store is at schema {}, this build's; nothing to do", schoolbell::store::SCHEMA_VERSION),
        },
        StoreCmd::Check => {
            let drift = storage.check(user)?;
            if !drift.is_empty() {
                let lines: Vec<String> = drift.iter().map(|d| d.to_string()).collect();
                bail!("{} problems:\n{}", drift.len(), lines.join("\n"));
            }
            say!("ok: every index agrees with the records it indexes");
        }
        StoreCmd::Backup { dir } => {
            storage.backup(user, &dir)?;
            say!("store copied to {}", dir.display());
        }
    }
    Ok(())
}
