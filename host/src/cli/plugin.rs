//! `schoolbell plugin`: install, list, inspect, grant, revoke, remove, and
//! scaffold a new one.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Subcommand;
use schoolbell::app::App;
use schoolbell::plugins::{Capability, InstallStatus, PluginEntry};
use schoolbell::users::User;

use super::{print_table, say};

#[derive(Subcommand)]
pub(super) enum PluginCmd {
    /// Scaffold a plugin crate: `plugin new notifier NAME`.
    New {
        /// The kind of plugin (notifier).
        kind: NewKind,
        /// The plugin's name: lowercase letters, digits, dashes.
        name: String,
        /// The folder to create it in.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// The plugin SDK (`plugins/sdk` in the Schoolbell checkout).
        #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../plugins/sdk"))]
        sdk: PathBuf,
    },
    /// Install component files (the same bytes twice is a no-op).
    Install {
        /// `.wasm` component files.
        #[arg(value_parser = super::path_arg, required = true)]
        files: Vec<PathBuf>,
        /// Also grant every capability the plugin asks for.
        #[arg(long)]
        grant_all: bool,
        /// When it replaces an installed plugin of its name, keep the grants
        /// it still asks for (and staff use); without, it starts with none.
        #[arg(long)]
        keep_grants: bool,
    },
    /// List installed plugins.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one plugin: parameters, capabilities, grants.
    Inspect {
        /// The plugin's name.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Grant a capability the plugin asks for (`read:COLLECTION`, `write:COLLECTION`, `send:address`), or
    /// offer it to staff with the parameter values they may use (`staff`, `staff:days=7|14;format=csv`).
    Grant {
        /// The plugin's name.
        name: String,
        /// The capability.
        capability: Capability,
    },
    /// Take back a grant.
    Revoke {
        /// The plugin's name.
        name: String,
        /// The capability.
        capability: Capability,
    },
    /// Remove a plugin.
    Remove {
        /// The plugin's name.
        name: String,
    },
}

/// What `plugin new` scaffolds.
#[derive(Clone, Copy, clap::ValueEnum)]
pub(super) enum NewKind {
    /// A notifier: reads records, returns notifications.
    Notifier,
}

/// `plugin new`: writes a one-file plugin crate; needs no data directory.
pub(super) fn new(kind: NewKind, name: &str, dir: &Path, sdk: &Path) -> Result<()> {
    let NewKind::Notifier = kind;
    let made = schoolbell::plugins::scaffold::new_notifier(name, dir, sdk)?;
    say!("created {}: src/lib.rs is the whole plugin", made.display());
    say!("build:   xtask/build-plugins {}   (in the Schoolbell checkout)", made.display());
    say!("install: schoolbell plugin install target/plugins/{name}.wasm");
    Ok(())
}

pub(super) fn run(app: &App, user: &User, cmd: PluginCmd) -> Result<()> {
    let registry = app.plugins();
    match cmd {
        PluginCmd::New { .. } => unreachable!("answered before the store is opened"),
        PluginCmd::Install { files, grant_all, keep_grants } => {
            for file in files {
                let (mut entry, status) = registry.install(user, &file, keep_grants)?;
                if grant_all {
                    entry = registry.grant_all(user, &entry.name)?;
                }
                let what = match status {
                    InstallStatus::Installed => "installed".to_string(),
                    InstallStatus::Unchanged => "already installed (same bytes); nothing changed".to_string(),
                    InstallStatus::Replaced { previous, added, dropped } => {
                        let list = |caps: &[schoolbell::plugins::Capability]| {
                            caps.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(", ")
                        };
                        let mut what = format!("installed, replacing {previous}");
                        if !added.is_empty() {
                            what.push_str(&format!("; it now also asks for {} (not granted)", list(&added)));
                        }
                        if !dropped.is_empty() {
                            what.push_str(&format!(
                                "; grants dropped (without --keep-grants a new component gets none): {}",
                                list(&dropped)
                            ));
                        }
                        what
                    }
                };
                say!("{} {} ({}, WIT {}): {what}", entry.name, entry.version, entry.kind, entry.wit_version);
            }
        }
        PluginCmd::List { json } => {
            let list = registry.list(user)?;
            if json {
                say!("{}", serde_json::to_string_pretty(&list)?);
            } else if list.is_empty() {
                say!("No plugins installed. Install one with `schoolbell plugin install FILE.wasm`.");
            } else {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|e| {
                        vec![
                            e.name.clone(),
                            e.version.clone(),
                            e.kind.to_string(),
                            e.wit_version.clone(),
                            caps(&e.capabilities),
                            caps(&e.granted),
                        ]
                    })
                    .collect();
                print_table(&["NAME", "VERSION", "KIND", "WIT", "ASKS FOR", "GRANTED"], &rows);
            }
        }
        PluginCmd::Inspect { name, json } => {
            let e = registry.inspect(user, &name)?;
            if json {
                say!("{}", serde_json::to_string_pretty(&e)?);
            } else {
                print_entry(&e);
            }
        }
        PluginCmd::Grant { name, capability } => {
            let e = registry.grant(user, &name, capability.clone())?;
            say!("{}: granted {capability}; now granted: {}", e.name, caps(&e.granted));
        }
        PluginCmd::Revoke { name, capability } => {
            let e = registry.revoke(user, &name, &capability)?;
            say!("{}: revoked {capability}; now granted: {}", e.name, caps(&e.granted));
        }
        PluginCmd::Remove { name } => {
            let e = registry.remove(user, &name)?;
            say!("{} {} removed", e.name, e.version);
        }
    }
    Ok(())
}

fn caps(c: &[Capability]) -> String {
    if c.is_empty() { "-".into() } else { c.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(", ") }
}

fn print_entry(e: &PluginEntry) {
    say!("{} {}  ({})", e.name, e.version, e.kind);
    say!("  {}", e.description);
    say!("  WIT:        schoolbell:plugin@{}", e.wit_version);
    say!("  component:  sha256 {} ({} bytes)", e.hash, e.size);
    say!("  asks for:   {}", caps(&e.capabilities));
    say!("  granted:    {}", caps(&e.granted));
    say!("  parameters:");
    for p in &e.params {
        let default = p.default.as_ref().map(|d| format!("default {d}")).unwrap_or_else(|| "required".into());
        say!("    {} ({}, {default}): {}", p.name, p.value_type, p.description);
    }
}
