//! The plugin registry: install, list, inspect, grant, revoke, remove and
//! verify the vendors' components. Anyone signed in may look; changing
//! what is installed, or what a plugin may reach, is the account owner's.

use std::path::Path;

use super::{App, Error, Result, owner_only};
use crate::plugins::{self, Capability, InstallStatus, PluginEntry};
use crate::users::User;

/// The plugin registry service.
pub struct Registry<'a> {
    pub(super) app: &'a App,
}

fn plugin_error(e: plugins::Error) -> Error {
    match e {
        plugins::Error::NotInstalled(_) => Error::NotFound(e.to_string()),
        other => Error::Invalid(other.to_string()),
    }
}

impl Registry<'_> {
    /// Installs a component file (the account owner only); with
    /// `keep_grants`, a replacement keeps the grants of the plugin it
    /// replaces (see [`plugins::PluginHost::install_keeping`]).
    pub fn install(&self, user: &User, file: &Path, keep_grants: bool) -> Result<(PluginEntry, InstallStatus)> {
        owner_only(user, "install plugins")?;
        let installed = self.app.host.install_keeping(file, keep_grants).map_err(plugin_error)?;
        self.app.audit(&user.name, "plugin.install", &installed.0.name, Some(installed.0.hash.clone()))?;
        tracing::info!(plugin = %installed.0.name, by = %user.name, "Plugin installed.");
        Ok(installed)
    }

    /// Installs a component sent as bytes (an upload; the account owner
    /// only): written to a private file in the data directory's staging
    /// folder for the install, then removed.
    pub fn install_bytes(&self, user: &User, bytes: &[u8]) -> Result<(PluginEntry, InstallStatus)> {
        owner_only(user, "install plugins")?;
        let staging = &self.app.access().staging;
        let dir = if staging.as_os_str().is_empty() { std::env::temp_dir() } else { staging.clone() };
        crate::secrets::private_dir(&dir).map_err(|e| Error::Failed(format!("cannot make {}: {e}", dir.display())))?;
        let mut name = [0u8; 12];
        getrandom::fill(&mut name).map_err(|e| Error::Failed(format!("no randomness for a file name: {e}")))?;
        let path = dir.join(format!("upload-{}.wasm", hex::encode(name)));
        let written = crate::secrets::private_file(&path).and_then(|mut f| std::io::Write::write_all(&mut f, bytes));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&path);
            return Err(Error::Failed(format!("cannot stage the upload in {}: {e}", dir.display())));
        }
        let installed = self.install(user, &path, false);
        let _ = std::fs::remove_file(&path);
        installed
    }

    /// The installed plugins.
    pub fn list(&self, _user: &User) -> Result<Vec<PluginEntry>> {
        self.app.host.list().map_err(plugin_error)
    }

    /// One plugin.
    pub fn inspect(&self, _user: &User, name: &str) -> Result<PluginEntry> {
        self.app.host.entry(name).map_err(plugin_error)
    }

    /// Grants a capability the plugin declared (the account owner only).
    pub fn grant(&self, user: &User, name: &str, capability: Capability) -> Result<PluginEntry> {
        owner_only(user, "grant capabilities")?;
        let detail = capability.to_string();
        let entry = self.app.host.grant(name, capability).map_err(plugin_error)?;
        self.app.audit(&user.name, "plugin.grant", name, Some(detail))?;
        Ok(entry)
    }

    /// Grants everything the plugin declared (the account owner only).
    pub fn grant_all(&self, user: &User, name: &str) -> Result<PluginEntry> {
        owner_only(user, "grant capabilities")?;
        let entry = self.app.host.grant_all(name).map_err(plugin_error)?;
        let granted: Vec<String> = entry.granted.iter().map(|c| c.to_string()).collect();
        self.app.audit(&user.name, "plugin.grant", name, Some(granted.join(", ")))?;
        Ok(entry)
    }

    /// Revokes a capability (the account owner only).
    pub fn revoke(&self, user: &User, name: &str, capability: &Capability) -> Result<PluginEntry> {
        owner_only(user, "revoke capabilities")?;
        let entry = self.app.host.revoke(name, capability).map_err(plugin_error)?;
        self.app.audit(&user.name, "plugin.revoke", name, Some(capability.to_string()))?;
        Ok(entry)
    }

    /// Removes a plugin (the account owner only).
    pub fn remove(&self, user: &User, name: &str) -> Result<PluginEntry> {
        owner_only(user, "remove plugins")?;
        let entry = self.app.host.remove(name).map_err(plugin_error)?;
        self.app.audit(&user.name, "plugin.remove", name, None)?;
        Ok(entry)
    }

    /// Loads every installed plugin to check it still compiles and links;
    /// the problems, one line each.
    pub fn verify_all(&self, _user: &User) -> Result<(usize, Vec<String>)> {
        let list = self.app.host.list().map_err(plugin_error)?;
        let problems = list.iter().filter_map(|e| self.app.host.verify(&e.name).err()).map(|e| e.to_string()).collect();
        Ok((list.len(), problems))
    }
}
