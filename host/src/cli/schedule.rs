//! `schoolbell schedule next`: a schedule's next fire times, before a task
//! is saved; needs no data directory.

use anyhow::Result;
use clap::Subcommand;

use super::say;

#[derive(Subcommand)]
pub(super) enum ScheduleCmd {
    /// Print a schedule's next fire times in its zone and in UTC, without creating a task.
    Next {
        /// The schedule phrase.
        schedule: String,
        /// IANA time zone.
        #[arg(long, default_value = "UTC")]
        tz: String,
        /// Start from this local time (`YYYY-MM-DD HH:MM`) instead of now.
        #[arg(long)]
        from: Option<String>,
        /// How many.
        #[arg(long, default_value_t = 5)]
        count: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

pub(super) fn run(cmd: &ScheduleCmd) -> Result<()> {
    let ScheduleCmd::Next { schedule, tz, from, count, json } = cmd;
    let preview = schoolbell::schedule::preview(schedule, tz, from.as_deref(), *count, chrono::Utc::now())?;
    if *json {
        say!("{}", serde_json::to_string_pretty(&preview)?);
    } else {
        say!("{} ({tz})", preview["schedule"].as_str().unwrap_or(""));
        for f in preview["fires"].as_array().into_iter().flatten() {
            say!("  {}   {}", f["local"].as_str().unwrap_or(""), f["utc"].as_str().unwrap_or(""));
        }
    }
    Ok(())
}
