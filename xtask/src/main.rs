//! Project tooling that needs Rust rather than shell.
//!
//! `componentize IN OUT`: turns a core wasm module built for
//! `wasm32-unknown-unknown` with wit-bindgen (which embeds the world's type
//! information in a custom section) into a component. This is the last step
//! of the registry-only guest toolchain in `xtask/build-plugins`; the
//! standard `wasm32-wasip2` target produces components directly.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use wit_component::ComponentEncoder;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [cmd, input, output] if cmd == "componentize" => componentize(input.into(), output.into()),
        _ => bail!("usage: xtask componentize CORE.wasm COMPONENT.wasm"),
    }
}

fn componentize(input: PathBuf, output: PathBuf) -> Result<()> {
    let module = std::fs::read(&input).with_context(|| format!("cannot read {}", input.display()))?;
    let component = ComponentEncoder::default()
        .module(&module)
        .with_context(|| format!("{}: no component type information; was it built with wit-bindgen?", input.display()))?
        .validate(true)
        .encode()
        .with_context(|| format!("{}: cannot encode a component", input.display()))?;
    std::fs::write(&output, component).with_context(|| format!("cannot write {}", output.display()))?;
    Ok(())
}
