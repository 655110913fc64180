//! Test-only: `describe` loops forever. Installing it must fail within
//! `[sandbox] describe_timeout_ms`, not hold the installer for a run's
//! whole time limit.

use std::hint::black_box;

use schoolbell_plugin_sdk::notifier::*;

struct Plugin;

impl PluginGuest for Plugin {
    fn describe() -> PluginInfo {
        let mut n = 0u64;
        loop {
            n = black_box(n.wrapping_add(1));
        }
    }
}

impl NotifierGuest for Plugin {
    fn run(_params: Vec<Param>) -> Result<Vec<Notification>, PluginError> {
        Ok(vec![])
    }
}

export_notifier!(Plugin);
