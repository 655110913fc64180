//! The `schoolbell` command: the CLI over the library. Errors become one
//! readable message and a non-zero exit here, at the edge.

mod cli;
mod demo;
mod local;
mod logging;
mod output;
mod serve;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    schoolbell::without_huge_pages();
    // Everything this process creates (the store, the secrets key, staged
    // downloads, sockets, backups) is its user's alone: files 0600,
    // folders 0700. The data directory holds student records.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let args = cli::Args::parse();
    let logging = logging::init(&args.log_config(), args.serving());
    match cli::run(args, logging) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
