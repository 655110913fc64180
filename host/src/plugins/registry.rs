//! The plugin registry: install, list, inspect, grant, revoke, remove.
//!
//! Components are stored by content hash; installing the same bytes twice
//! is a no-op. Grants are the admin's half of the two-key capability check
//! and survive upgrades for capabilities the new version still declares.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{Capability, Error, ParamSpec, PluginHost, PluginId, PluginKind, WorldPre, bindings};

/// An installed plugin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginEntry {
    /// Its name.
    pub name: String,
    /// Its own version.
    pub version: String,
    /// Its world.
    pub kind: PluginKind,
    /// One sentence for admins.
    pub description: String,
    /// SHA-256 of the component, hex.
    pub hash: String,
    /// The component's size in bytes.
    pub size: u64,
    /// The WIT version it was built against.
    pub wit_version: String,
    /// Its parameters.
    pub params: Vec<ParamSpec>,
    /// What it asks for.
    pub capabilities: Vec<Capability>,
    /// What an admin granted.
    pub granted: Vec<Capability>,
}

impl PluginEntry {
    /// Name and version, for messages.
    pub fn id(&self) -> PluginId {
        PluginId { name: self.name.clone(), version: self.version.clone() }
    }
}

/// What `install` did.
#[derive(Debug, Clone, PartialEq)]
pub enum InstallStatus {
    /// A new plugin.
    Installed,
    /// The same bytes were already installed: nothing changed.
    Unchanged,
    /// Replaced an earlier build of the same plugin.
    Replaced {
        /// The version it replaced.
        previous: String,
        /// Capabilities it asks for that the old build did not: not
        /// granted until an admin grants them.
        added: Vec<Capability>,
        /// Grants dropped because the new build no longer asks for them.
        dropped: Vec<Capability>,
    },
}

impl PluginHost {
    /// Installs a component file.
    pub fn install(&self, path: &Path) -> Result<(PluginEntry, InstallStatus), Error> {
        self.install_keeping(path, false)
    }

    /// [`PluginHost::install`]; with `keep_grants`, a component that
    /// replaces an installed plugin of its name keeps the grants it still
    /// asks for, and staff use. Without, it starts with none: a new
    /// component claiming a trusted plugin's name is not trusted for it.
    pub fn install_keeping(&self, path: &Path, keep_grants: bool) -> Result<(PluginEntry, InstallStatus), Error> {
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| Error::Io { path: path.into(), source })?;
        self.install_bytes(&shown, &bytes, keep_grants)
    }

    /// Installs a component from bytes; `shown` names it in messages.
    pub fn install_bytes(
        &self,
        shown: &str,
        bytes: &[u8],
        keep_grants: bool,
    ) -> Result<(PluginEntry, InstallStatus), Error> {
        // The same digest `load` checks the stored bytes against.
        let hash = super::sha256_hex(bytes);
        let (target, pre) = self.prepare(shown, &hash, bytes)?;
        let info = self.describe(shown, &pre)?;
        if info.kind != target.kind {
            return Err(Error::Invalid {
                plugin: shown.into(),
                message: format!("`describe` says kind {}, but the component exports world {}", info.kind, target.kind),
            });
        }
        if info.name.is_empty() || !info.name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(Error::Invalid {
                plugin: shown.into(),
                message: format!("name `{}` must be lowercase letters, digits and dashes", info.name),
            });
        }
        let previous = self.store.plugin(&info.name)?;
        if let Some(p) = &previous
            && p.hash == hash
        {
            return Ok((p.clone(), InstallStatus::Unchanged));
        }
        let granted = previous
            .as_ref()
            .filter(|_| keep_grants)
            .map(|p| p.granted.iter().filter(|g| g.owners_own() || info.capabilities.contains(g)).cloned().collect())
            .unwrap_or_default();
        let entry = PluginEntry {
            name: info.name,
            version: info.version,
            kind: info.kind,
            description: info.description,
            hash: hash.clone(),
            size: bytes.len() as u64,
            wit_version: target.version,
            params: info.params,
            capabilities: info.capabilities,
            granted,
        };
        self.store.put_blob(&hash, bytes)?;
        self.store.put_plugin(&entry)?;
        if let Some(p) = &previous
            && !self.list()?.iter().any(|e| e.hash == p.hash)
        {
            self.store.remove_blob(&p.hash)?;
        }
        self.store.flush()?;
        tracing::info!(plugin = %entry.name, version = %entry.version, hash = %entry.hash, "Plugin installed.");
        let status = match previous {
            Some(p) => InstallStatus::Replaced {
                added: entry.capabilities.iter().filter(|c| !p.capabilities.contains(c)).cloned().collect(),
                dropped: p.granted.iter().filter(|g| !entry.granted.contains(g)).cloned().collect(),
                previous: p.version,
            },
            None => InstallStatus::Installed,
        };
        Ok((entry, status))
    }

    fn describe(&self, shown: &str, pre: &WorldPre) -> Result<super::PluginInfo, Error> {
        // Before `describe` answers, the plugin has no name, version or
        // capabilities: it runs with the file's name and no grants.
        let unknown = PluginEntry {
            name: shown.into(),
            version: "(not yet described)".into(),
            kind: PluginKind::Notifier,
            description: String::new(),
            hash: String::new(),
            size: 0,
            wit_version: String::new(),
            params: vec![],
            capabilities: vec![],
            granted: vec![],
        };
        let mut store = self.new_store(&unknown, &super::RunRequest::default(), Default::default());
        // `describe` only says what the plugin is: it gets seconds, not a run's minutes.
        store.data_mut().timeout = std::time::Duration::from_millis(self.sandbox.config.describe_timeout_ms);
        let info = match pre {
            WorldPre::Notifier(p) => {
                p.instantiate(&mut store).and_then(|i| i.schoolbell_plugin_plugin().call_describe(&mut store))
            }
            WorldPre::Mapping(p) => {
                p.instantiate(&mut store).and_then(|i| i.schoolbell_plugin_plugin().call_describe(&mut store))
            }
        };
        info.map(bindings::info_from_wit).map_err(|trap| super::trap_error(&unknown.id(), &mut store, trap))
    }

    /// Every installed plugin, by name.
    pub fn list(&self) -> Result<Vec<PluginEntry>, Error> {
        Ok(self.store.all_plugins()?)
    }

    /// One installed plugin.
    pub fn entry(&self, name: &str) -> Result<PluginEntry, Error> {
        self.store.plugin(name)?.ok_or_else(|| Error::NotInstalled(name.into()))
    }

    /// Grants a capability the plugin declared.
    pub fn grant(&self, name: &str, cap: Capability) -> Result<PluginEntry, Error> {
        let mut entry = self.entry(name)?;
        if !cap.owners_own() && !entry.capabilities.contains(&cap) {
            let asks: Vec<String> = entry.capabilities.iter().map(|c| c.to_string()).collect();
            return Err(Error::Capability {
                plugin: name.into(),
                message: format!(
                    "it does not ask for {cap}, so it cannot be granted; it asks for: {}",
                    if asks.is_empty() { "nothing".into() } else { asks.join(", ") }
                ),
            });
        }
        if !entry.granted.contains(&cap) {
            // One staff grant: a new one replaces what staff were allowed.
            if cap.owners_own() {
                entry.granted.retain(|g| !g.owners_own());
            }
            entry.granted.push(cap);
            self.store.put_plugin(&entry)?;
            self.store.flush()?;
        }
        Ok(entry)
    }

    /// Grants everything the plugin declared.
    pub fn grant_all(&self, name: &str) -> Result<PluginEntry, Error> {
        let mut entry = self.entry(name)?;
        for cap in entry.capabilities.clone() {
            entry = self.grant(name, cap)?;
        }
        Ok(entry)
    }

    /// Takes back a grant.
    pub fn revoke(&self, name: &str, cap: &Capability) -> Result<PluginEntry, Error> {
        let mut entry = self.entry(name)?;
        // `staff` takes back staff use, whatever it allowed.
        entry.granted.retain(|g| g != cap && !(cap.owners_own() && g.owners_own()));
        self.store.put_plugin(&entry)?;
        self.store.flush()?;
        Ok(entry)
    }

    /// Removes a plugin and its component.
    pub fn remove(&self, name: &str) -> Result<PluginEntry, Error> {
        let entry = self.entry(name)?;
        self.store.remove_plugin(name)?;
        if !self.list()?.iter().any(|e| e.hash == entry.hash) {
            self.store.remove_blob(&entry.hash)?;
        }
        self.store.flush()?;
        self.loaded.lock().unwrap_or_else(|e| e.into_inner()).remove(&entry.hash);
        Ok(entry)
    }
}
