//! `schoolbell user` and `schoolbell secret`: users, API tokens and the
//! encrypted secrets, all the account owner's.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use schoolbell::app::App;
use schoolbell::users::{JobEmail, Permission, Role, User};

use super::{print_table, say};

#[derive(Subcommand)]
pub(super) enum UserCmd {
    /// Add or replace a user.
    Add {
        /// Login name.
        name: String,
        /// owner or staff.
        #[arg(long, default_value = "staff")]
        role: Role,
        /// Email address.
        #[arg(long, default_value = "")]
        email: String,
        /// autopilot or authorize (repeatable).
        #[arg(long = "permission")]
        permissions: Vec<Permission>,
        /// Job-completion emails: always, on-failure or never.
        #[arg(long, default_value = "on-failure")]
        job_email: JobEmail,
    },
    /// List users.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Issue an API token (printed once; only its hash is stored).
    Token {
        /// The user.
        name: String,
    },
    /// List the API tokens: id, user, issued, last used (never the token).
    Tokens {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke an API token by its id (`user tokens` lists them).
    Revoke {
        /// The token's id.
        id: String,
    },
    /// Set a user's console password: prompted for on a terminal (twice),
    /// else read as one line from standard input.
    Passwd {
        /// The user.
        name: String,
    },
    /// Remove a user and their tokens (their tasks and runs stay).
    Remove {
        /// The user.
        name: String,
        /// Hand their tasks to this user instead of disabling them.
        #[arg(long)]
        to: Option<String>,
    },
}

#[derive(Subcommand)]
pub(super) enum SecretCmd {
    /// Store (or replace) a secret from a file, such as a private key.
    Set {
        /// Its name, used by tasks (`--credential NAME`).
        name: String,
        /// The file holding it.
        #[arg(value_parser = super::path_arg, long)]
        file: PathBuf,
    },
    /// List the secrets' names (never their values).
    List,
}

pub(super) fn run(app: &App, by: &User, cmd: UserCmd) -> Result<()> {
    let accounts = app.users();
    match cmd {
        UserCmd::Add { name, role, email, permissions, job_email } => {
            accounts.put(by, &User { name: name.clone(), email, role, permissions, job_email })?;
            say!("user {name} ({role}) saved");
        }
        UserCmd::List { json } => {
            let list = accounts.list(by)?;
            if json {
                say!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|u| {
                        let perms: Vec<String> =
                            u.permissions.iter().map(|p| format!("{p:?}").to_lowercase()).collect();
                        vec![u.name.clone(), u.role.to_string(), u.email.clone(), perms.join(", ")]
                    })
                    .collect();
                print_table(&["NAME", "ROLE", "EMAIL", "PERMISSIONS"], &rows);
            }
        }
        UserCmd::Token { name } => say!("{}", accounts.issue_token(by, &name)?),
        UserCmd::Tokens { json } => {
            let tokens = accounts.tokens(by)?;
            if json {
                say!("{}", serde_json::to_string_pretty(&tokens)?);
            } else {
                let when = |t: Option<chrono::DateTime<chrono::Utc>>| {
                    t.map(|t| t.format("%Y-%m-%d %H:%M").to_string()).unwrap_or_else(|| "never".into())
                };
                let rows: Vec<Vec<String>> = tokens
                    .iter()
                    .map(|t| vec![t.id.clone(), t.user.clone(), when(Some(t.created_at)), when(t.last_used_at)])
                    .collect();
                print_table(&["ID", "USER", "ISSUED (UTC)", "LAST USED (UTC)"], &rows);
            }
        }
        UserCmd::Revoke { id } => {
            let token = accounts.revoke_token(by, &id)?;
            say!("token {} of {} revoked", token.id, token.user);
        }
        UserCmd::Passwd { name } => {
            let password = crate::local::input().context("no password was read")?;
            let ended = accounts.set_password(by, &name, &password)?;
            say!("password of {name} set; they sign in to the console with it");
            if ended > 0 {
                say!("{ended} sessions and tokens of {name} ended");
            }
        }
        UserCmd::Remove { name, to } => {
            let removal = accounts.remove(by, &name, to.as_deref())?;
            say!("user {name} removed, with their tokens and sessions");
            match (&removal.handed_to, removal.tasks.is_empty()) {
                (_, true) => say!("they had no tasks"),
                (Some(to), false) => say!("their tasks, now {to}'s: {}", removal.tasks.join(", ")),
                (None, false) => say!("their tasks, disabled: {}", removal.tasks.join(", ")),
            }
            say!(
                "{} finished runs kept as {}; {} queued or running runs cancelled",
                removal.runs,
                schoolbell::users::removed_name(&name),
                removal.cancelled
            );
        }
    }
    Ok(())
}

pub(super) fn secret(app: &App, by: &User, cmd: SecretCmd) -> Result<()> {
    match cmd {
        SecretCmd::Set { name, file } => {
            let value = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            app.users().set_secret(by, &name, &value)?;
            say!("secret {name} stored (encrypted)");
        }
        SecretCmd::List => {
            for name in app.users().secret_names(by)? {
                say!("{name}");
            }
        }
    }
    Ok(())
}

/// Reads a new password before the command runs (here or on the server):
/// prompted twice on a terminal, one line from standard input otherwise.
pub(super) fn read_password(cmd: &UserCmd) -> Result<()> {
    let UserCmd::Passwd { name } = cmd else { return Ok(()) };
    use std::io::IsTerminal;
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password(format!("New console password for {name}: "))?;
        let again = rpassword::prompt_password("Again: ")?;
        anyhow::ensure!(first == again, "the two passwords differ; nothing was changed");
        first
    } else {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).context("cannot read the password from standard input")?;
        line.trim_end_matches(['\n', '\r']).to_string()
    };
    crate::local::set_input(password);
    Ok(())
}
