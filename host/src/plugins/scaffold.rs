//! `schoolbell plugin new notifier NAME`: a vendor's starting point, one
//! crate with one source file that builds with `xtask/build-plugins DIR`
//! and installs with `schoolbell plugin install`.

use std::path::{Path, PathBuf};

use super::Error;

const CARGO_TOML: &str = include_str!("../../templates/notifier/Cargo.toml.tmpl");
const LIB_RS: &str = include_str!("../../templates/notifier/lib.rs.tmpl");

/// Writes a new notifier crate `NAME` in `parent`, depending on the SDK at
/// `sdk`. Refuses to touch a folder that exists.
pub fn new_notifier(name: &str, parent: &Path, sdk: &Path) -> Result<PathBuf, Error> {
    let valid = !name.is_empty()
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        return Err(Error::Invalid {
            plugin: name.into(),
            message: "a plugin name is lowercase letters, digits and dashes, starting with a letter".into(),
        });
    }
    let dir = parent.join(name);
    if dir.exists() {
        return Err(Error::Invalid {
            plugin: name.into(),
            message: format!("{} already exists; pick another name or folder", dir.display()),
        });
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    let sdk = sdk.canonicalize().map_err(io(sdk))?;
    std::fs::create_dir_all(dir.join("src")).map_err(io(&dir))?;
    let fill = |template: &str| {
        template
            .replace("{{name}}", name)
            .replace("{{sdk}}", &sdk.display().to_string())
            .replace("{{dir}}", &dir.display().to_string())
    };
    std::fs::write(dir.join("Cargo.toml"), fill(CARGO_TOML)).map_err(io(&dir.join("Cargo.toml")))?;
    std::fs::write(dir.join("src/lib.rs"), fill(LIB_RS)).map_err(io(&dir.join("src/lib.rs")))?;
    Ok(dir)
}
