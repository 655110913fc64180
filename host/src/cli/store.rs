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
    /// Copy this data directory's embedded store into an empty PostgreSQL schema (stop `serve` first), then set `[store] backend = "postgres"`.
    Copy {
        /// The database: `postgres://user@host/db`, or `host=/run/postgresql dbname=schoolbell`.
        #[arg(long)]
        to: String,
        /// The schema to fill (default: `[store] schema`, else `schoolbell`); `store copy` creates it.
        #[arg(long)]
        schema: Option<String>,
        /// A file holding the database password (default: `[store] password_file`).
        #[arg(long, value_parser = super::path_arg)]
        password_file: Option<PathBuf>,
    },
    /// Put the backup in DIR into this data directory, which must have no store yet (`--data NEW store restore DIR`).
    Restore {
        /// The backup (`store backup` wrote it).
        #[arg(value_parser = super::path_arg)]
        dir: PathBuf,
    },
}

/// Restores a backup into `data`, before anything opens a store there.
pub(super) fn restore(data: &std::path::Path, from: &std::path::Path) -> Result<()> {
    schoolbell::secrets::private_dir(data)?;
    schoolbell::store::Store::restore(from, &data.join("store"))?;
    say!("restored {} into {}", from.display(), data.join("store").display());
    if !data.join("secret.key").exists() {
        say!(
            "note: {} has no secret.key; copy the old data directory's key beside the store (or point `secret_key` at it), or the stored secrets cannot be opened",
            data.display()
        );
    }
    Ok(())
}

/// `store migrate` on a PostgreSQL store, before anything opens it (opening
/// needs the migrations); none for the embedded store, which is migrated
/// as it opens, after a backup.
pub(super) fn migrate_database(data: &std::path::Path, config: Option<&std::path::Path>) -> Option<Result<()>> {
    let path = config.map_or_else(|| data.join(schoolbell::config::FILE_NAME), std::path::Path::to_path_buf);
    let config = match schoolbell::config::Config::load_file(&path) {
        Ok(config) => config,
        Err(e) => return Some(Err(e.into())),
    };
    if config.store.backend != schoolbell::store::BackendKind::Postgres {
        return None;
    }
    Some(schoolbell::store::PgStore::migrate(&config.store, data).map_err(Into::into).map(|(from, to)| {
        if from == to {
            say!("the PostgreSQL schema `{}` has every migration ({to}); nothing to do", config.store.schema);
        } else {
            say!("migrated the PostgreSQL schema `{}` from {from} to {to}", config.store.schema);
        }
    }))
}

/// `store copy`: the embedded store, read while nothing else holds it, into
/// a PostgreSQL schema that `store migrate` has made (this does it).
pub(super) fn copy(
    data: &std::path::Path,
    config: Option<&std::path::Path>,
    to: &str,
    schema: Option<&str>,
    password_file: Option<&std::path::Path>,
) -> Result<()> {
    use schoolbell::store::{BackendKind, PgStore, Store};
    let path = config.map_or_else(|| data.join(schoolbell::config::FILE_NAME), std::path::Path::to_path_buf);
    let config = schoolbell::config::Config::load_file(&path)?;
    let target = schoolbell::store::StoreConfig {
        backend: BackendKind::Postgres,
        url: to.to_string(),
        schema: schema.map_or_else(|| config.store.schema.clone(), str::to_string),
        password_file: password_file.map(std::path::Path::to_path_buf).or(config.store.password_file.clone()),
        ..config.store.clone()
    };
    if !data.join("store").exists() {
        anyhow::bail!("{} has no embedded store to copy", data.display());
    }
    let from = Store::open(&data.join("store")).map_err(|e| match e {
        schoolbell::store::Error::Open { .. } => {
            anyhow::anyhow!("{e}; stop `schoolbell serve` on this data directory before copying it")
        }
        e => e.into(),
    })?;
    PgStore::migrate(&target, data)?;
    let counts = PgStore::open(&target, data)?.copy_from(&from)?;
    let shown: Vec<String> = counts.iter().map(|(table, n)| format!("{n} {table}")).collect();
    say!(
        "copied {} into the PostgreSQL schema `{}`: {}",
        data.join("store").display(),
        target.schema,
        shown.join(", ")
    );
    say!(
        "next: set [store] backend = \"postgres\", url and schema in {} (every host shares secret.key), then start the service",
        path.display()
    );
    Ok(())
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
        StoreCmd::Restore { .. } | StoreCmd::Copy { .. } => unreachable!("answered before the store opens"),
    }
    Ok(())
}
