//! `schoolbell source`: the account owner's import sources. A task names a
//! source; the source says where the files are.

use anyhow::Result;
use clap::Subcommand;
use schoolbell::app::App;
use schoolbell::sources::{FtpsTls, Location, Source};
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
    /// Define an FTPS source (FTP over TLS, passive mode). Its certificate
    /// must be one the system's roots vouch for, or pinned with `source accept`.
    AddFtps {
        /// The source's name, which tasks use (`--source NAME`).
        name: String,
        /// Host name or address.
        #[arg(long)]
        host: String,
        /// Port [default: 990 for implicit TLS, 21 for explicit].
        #[arg(long)]
        port: Option<u16>,
        /// How the server starts TLS.
        #[arg(long, value_enum, default_value_t = FtpsTls::Implicit)]
        tls: FtpsTls,
        /// Login name.
        #[arg(long)]
        user: String,
        /// The folder on the server, such as /exports.
        #[arg(long)]
        path: String,
        /// The stored secret with the password (`schoolbell secret set NAME`).
        #[arg(long)]
        credential: String,
    },
    /// Define an SMB source: a folder on a Windows or Samba share.
    AddSmb {
        /// The source's name, which tasks use (`--source NAME`).
        name: String,
        /// Host name or address.
        #[arg(long)]
        host: String,
        /// Port.
        #[arg(long, default_value_t = 445)]
        port: u16,
        /// The share's name, such as `exports`.
        #[arg(long)]
        share: String,
        /// The folder inside the share, such as /sis.
        #[arg(long, default_value = "/")]
        path: String,
        /// The user's domain (the `DISTRICT` of `DISTRICT\\user`).
        #[arg(long)]
        domain: Option<String>,
        /// Login name.
        #[arg(long)]
        user: String,
        /// The stored secret with the password (`schoolbell secret set NAME`).
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
    /// Accept an SFTP server's host key, or pin an FTPS server's
    /// certificate, as `source test` showed it.
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
        Location::Ftps { certificate: Some(c), .. } => format!("pinned {c}"),
        Location::Ftps { certificate: None, .. } => "system roots".into(),
        Location::Folder { .. } | Location::Smb { .. } => "-".into(),
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
        SourceCmd::AddFtps { name, host, port, tls, user, path, credential } => {
            let location = Location::Ftps { host, port, tls, user, path, credential, certificate: None };
            let s = sources.add(by, &name, location)?;
            say!("source {} defined: {}; `schoolbell source test {}` reaches it", s.name, s.shown(), s.name);
        }
        SourceCmd::AddSmb { name, host, port, share, path, domain, user, credential } => {
            let s = sources.add(by, &name, Location::Smb { host, port, share, path, domain, user, credential })?;
            say!("source {} defined: {}; `schoolbell source test {}` reaches it", s.name, s.shown(), s.name);
        }
        SourceCmd::List { json } => {
            let all = sources.list(by)?;
            if json {
                say!("{}", serde_json::to_string_pretty(&all)?);
            } else if all.is_empty() {
                say!(
                    "No sources. Define one with `schoolbell source add-folder NAME --folder F`, `add-sftp`, `add-ftps` or `add-smb`."
                );
            } else {
                print_table(
                    &["NAME", "WHERE", "HOST KEY OR CERTIFICATE", "DEFINED BY"],
                    &all.iter().map(row).collect::<Vec<_>>(),
                );
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
            match &s.location {
                Location::Ftps { certificate: Some(c), .. } => say!("source {}: certificate {c} pinned", s.name),
                _ => say!("source {}: host key {} accepted", s.name, fingerprint.trim()),
            }
        }
        SourceCmd::Remove { name } => {
            sources.remove(by, &name)?;
            say!("source {name} removed");
        }
    }
    Ok(())
}
