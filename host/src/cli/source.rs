//! `schoolbell source`: the account owner's import sources. A task names a
//! source; the source says where the files are.

use anyhow::Result;
use clap::Subcommand;
use schoolbell::app::App;
use schoolbell::sources::{Location, Source};
use schoolbell::users::User;

use super::{print_table, say};

#[derive(Subcommand)]
pub(super) enum SourceCmd {
    /// Define a folder source: a folder under `[sandbox.folders]`, or a subfolder of it.
    AddFolder {
        /// The source's name, which tasks use (`--source NAME`).
        name: String,
        /// The folder's name in `[sandbox.folders]`.
        #[arg(long)]
        folder: String,
        /// A subfolder inside it.
        #[arg(long)]
        path: Option<String>,
    },
    /// Define an SFTP source; `source test` then shows the server's host key to accept.
    AddSftp {
        /// The source's name, which tasks use (`--source NAME`).
        name: String,
        /// Host name or address.
        #[arg(long)]
        host: String,
        /// Port.
        #[arg(long, default_value_t = 22)]
        port: u16,
        /// Login name.
        #[arg(long)]
        user: String,
        /// The folder on the server, such as /exports.
        #[arg(long)]
        path: String,
        /// The stored secret with the private key (`schoolbell secret set NAME --file KEY`).
        #[arg(long)]
        credential: String,
    },
    /// List the sources.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Reach a source: the server's host key, and the files it would pick up.
    Test {
        /// The source.
        name: String,
        /// Count the files whose names start with this.
        #[arg(long, default_value = "")]
        prefix: String,
    },
    /// Accept an SFTP server's host key, as `source test` showed it.
    Accept {
        /// The source.
        name: String,
        /// The fingerprint, `SHA256:...`.
        fingerprint: String,
    },
    /// Remove a source no task uses.
    Remove {
        /// The source.
        name: String,
    },
}

fn row(s: &Source) -> Vec<String> {
    let key = match &s.location {
        Location::Sftp { host_key: Some(k), .. } => k.clone(),
        Location::Sftp { host_key: None, .. } => "not accepted yet".into(),
        Location::Folder { .. } => "-".into(),
    };
    vec![s.name.clone(), s.shown(), key, s.created_by.clone()]
}

pub(super) fn run(app: &App, by: &User, cmd: SourceCmd) -> Result<()> {
    let sources = app.sources();
    match cmd {
        SourceCmd::AddFolder { name, folder, path } => {
            let s = sources.add(by, &name, Location::Folder { folder, path })?;
            say!("source {} defined: {}", s.name, s.shown());
        }
        SourceCmd::AddSftp { name, host, port, user, path, credential } => {
            let s = sources.add(by, &name, Location::Sftp { host, port, user, path, credential, host_key: None })?;
            say!(
                "source {} defined: {}; `schoolbell source test {}` shows its host key to accept",
                s.name,
                s.shown(),
                s.name
            );
        }
        SourceCmd::List { json } => {
            let all = sources.list(by)?;
            if json {
                say!("{}", serde_json::to_string_pretty(&all)?);
            } else if all.is_empty() {
                say!(
                    "No sources. Define one with `schoolbell source add-folder NAME --folder F` or `source add-sftp`."
                );
            } else {
                print_table(&["NAME", "WHERE", "HOST KEY", "DEFINED BY"], &all.iter().map(row).collect::<Vec<_>>());
            }
        }
        SourceCmd::Test { name, prefix } => {
            let reached = sources.test(by, &name, &prefix)?;
            if reached.host_key_accepted == Some(false) {
                // Not usable until the owner accepts the key: a failure for scripts.
                anyhow::bail!("{}", reached.message);
            }
            say!("{}", reached.message);
        }
        SourceCmd::Accept { name, fingerprint } => {
            let s = sources.accept(by, &name, &fingerprint)?;
            say!("source {}: host key {} accepted", s.name, fingerprint.trim());
        }
        SourceCmd::Remove { name } => {
            sources.remove(by, &name)?;
            say!("source {name} removed");
        }
    }
    Ok(())
}
