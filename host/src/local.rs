//! The CLI next to a running server. sled lets one process hold the store,
//! so while `schoolbell serve` runs, a CLI command is sent to it over a
//! Unix socket in the data directory (`cli.sock`, mode 0600: only the
//! account that runs the service can connect) and the server runs it, with
//! the same code and the same permission checks, against its own core.
//! What the command prints comes back, with its exit status.

use std::cell::RefCell;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;
use schoolbell::app::App;
use serde::{Deserialize, Serialize};

use crate::cli::Args;

/// The socket's file name in the data directory.
pub(crate) const SOCKET: &str = "cli.sock";

/// A command sent to the server.
#[derive(Serialize, Deserialize)]
pub(crate) struct Request {
    /// The command line, program name first.
    pub(crate) args: Vec<String>,
    /// The caller's working directory: relative paths are read from there.
    pub(crate) cwd: PathBuf,
    /// What the caller read from its terminal or standard input for the
    /// command (a new password), which the server cannot read itself.
    #[serde(default)]
    pub(crate) input: Option<String>,
}

/// The line this process read for its command (see [`Request::input`]).
static INPUT: std::sync::OnceLock<String> = std::sync::OnceLock::new();

thread_local! {
    /// A forwarded command's input line.
    static FORWARDED_INPUT: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Keeps the line read for this process's command.
pub(crate) fn set_input(line: String) {
    let _ = INPUT.set(line);
}

/// The line read for the command running here: the caller's, when forwarded.
pub(crate) fn input() -> Option<String> {
    FORWARDED_INPUT.with(|f| f.borrow().clone()).or_else(|| INPUT.get().cloned())
}

/// What the command printed, and how it ended.
#[derive(Serialize, Deserialize, Default)]
pub(crate) struct Response {
    pub(crate) stdout: String,
    pub(crate) stderr: String,
    pub(crate) code: i32,
}

thread_local! {
    /// While a forwarded command runs on this thread: its output, and the
    /// caller's working directory.
    static FORWARDED: RefCell<Option<(Vec<u8>, PathBuf)>> = const { RefCell::new(None) };
}

/// Whether this thread runs a forwarded command (no terminal to draw on).
pub(crate) fn forwarded() -> bool {
    FORWARDED.with(|f| f.borrow().is_some())
}

/// Where a forwarded command's output goes; false when none runs here.
pub(crate) fn capture(text: &std::fmt::Arguments<'_>) -> bool {
    FORWARDED.with(|f| match f.borrow_mut().as_mut() {
        Some((out, _)) => {
            let _ = out.write_fmt(*text);
            true
        }
        None => false,
    })
}

/// A path argument: relative to the caller's directory when forwarded.
pub(crate) fn path(arg: &str) -> PathBuf {
    FORWARDED.with(|f| match f.borrow().as_ref() {
        Some((_, cwd)) => cwd.join(arg),
        None => PathBuf::from(arg),
    })
}

/// Sends the command to the server holding `data`'s store; none when no
/// server listens there.
pub(crate) fn send(data: &Path) -> Option<Result<i32>> {
    let stream = UnixStream::connect(data.join(SOCKET)).ok()?;
    Some(exchange(stream))
}

/// Whether a server holding `data`'s store answers on its socket.
pub(crate) fn serving(data: &Path) -> bool {
    UnixStream::connect(data.join(SOCKET)).is_ok()
}

/// The command line as the server is to read it: with `--as` from this
/// process's `SCHOOLBELL_USER` (or the default) when it does not say, so
/// that the server never reads its own environment for who the caller is.
fn with_caller(mut args: Vec<String>, caller: Option<String>) -> Vec<String> {
    let named = args.iter().skip(1).any(|a| a == "--as" || a.starts_with("--as="));
    if !named {
        let user = caller.unwrap_or_else(|| "admin".into());
        args.splice(1.min(args.len())..1.min(args.len()), [format!("--as={user}")]);
    }
    args
}

fn exchange(mut stream: UnixStream) -> Result<i32> {
    let request = Request {
        args: with_caller(std::env::args().collect(), std::env::var("SCHOOLBELL_USER").ok()),
        cwd: std::env::current_dir().context("cannot read the working directory")?,
        input: INPUT.get().cloned(),
    };
    let mut line = serde_json::to_vec(&request)?;
    line.push(b'\n');
    stream.write_all(&line).context("cannot send the command to `schoolbell serve`")?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).context("`schoolbell serve` did not answer")?;
    let response: Response =
        serde_json::from_str(&answer).context("`schoolbell serve` answered in a form this CLI does not read")?;
    crate::output::write_out(format_args!("{}", response.stdout));
    eprint!("{}", response.stderr);
    Ok(response.code)
}

/// Runs a forwarded command on this thread against the server's core.
pub(crate) fn run(app: &Arc<App>, request: Request) -> Response {
    FORWARDED.with(|f| *f.borrow_mut() = Some((Vec::new(), request.cwd)));
    FORWARDED_INPUT.with(|f| *f.borrow_mut() = request.input);
    let outcome = Args::try_parse_from(&request.args)
        .map_err(|e| e.to_string())
        .and_then(|args| crate::cli::run_on(app, args).map_err(|e| format!("error: {e:#}\n")));
    FORWARDED_INPUT.with(|f| f.borrow_mut().take());
    let stdout = FORWARDED.with(|f| f.borrow_mut().take()).map(|(out, _)| out).unwrap_or_default();
    let stdout = String::from_utf8_lossy(&stdout).into_owned();
    match outcome {
        Ok(()) => Response { stdout, stderr: String::new(), code: 0 },
        Err(stderr) => Response { stdout, stderr, code: 1 },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_caller_is_named_on_the_forwarded_line() {
        let line = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let sam = Some("sam".to_string());
        assert_eq!(with_caller(line(&["sb", "task", "list"]), sam.clone()), line(&["sb", "--as=sam", "task", "list"]));
        let named = line(&["sb", "--as", "ann", "task", "list"]);
        assert_eq!(with_caller(named.clone(), sam), named);
        assert_eq!(with_caller(line(&["sb", "task", "list"]), None), line(&["sb", "--as=admin", "task", "list"]));
    }
}
