//! Embeds the console's third-party assets, which `xtask/console-assets`
//! installs from npm (pinned by `host/console/package-lock.json`). A build
//! without them still works: the console says how to install them.

use std::path::Path;

const ASSETS: &[(&str, &str)] = &[("pico.min.css", "console/node_modules/@picocss/pico/css/pico.min.css")];

fn main() {
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    println!("cargo:rerun-if-changed=console/package-lock.json");
    for (name, from) in ASSETS {
        println!("cargo:rerun-if-changed={from}");
        let to = Path::new(&out).join(name);
        match std::fs::read(from) {
            Ok(bytes) => std::fs::write(&to, bytes).expect("OUT_DIR is writable"),
            Err(_) => {
                println!(
                    "cargo:warning=the console's {name} is not installed; run xtask/console-assets and build again"
                );
                std::fs::write(&to, b"/* not installed: run xtask/console-assets and build again */")
                    .expect("OUT_DIR is writable");
            }
        }
    }
}
