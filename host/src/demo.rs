//! The demo: what the README's first command shows. Installs the shipped
//! plugins, imports the demo roster through the CSV mapping, loads demo
//! attendance, and runs the attendance notifier over it.

use std::path::Path;

use anyhow::{Context, Result, bail};
use schoolbell::plugins::RunRequest;

use crate::cli::{Ctx, import_file, load_json, print_import, print_notifications};

const ROSTER: &str = include_str!("../demo/roster.csv");
const ATTENDANCE: &str = include_str!("../demo/attendance.json");

pub(crate) fn run(cx: &Ctx, plugins: &Path) -> Result<()> {
    let mut shipped: Vec<_> = std::fs::read_dir(plugins)
        .with_context(|| {
            format!(
                "cannot read {}: build the plugins first with xtask/build-plugins",
                plugins.display()
            )
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|e| e == "wasm")
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("test-"))
        })
        .collect();
    shipped.sort();
    if shipped.is_empty() {
        bail!(
            "no plugins in {}: build them first with xtask/build-plugins",
            plugins.display()
        );
    }
    println!("== Plugins");
    for path in &shipped {
        let (entry, _) = cx.host.install(path)?;
        // The demo district's admin trusts the shipped plugins with what they ask for.
        let entry = cx.host.grant_all(&entry.name)?;
        println!(
            "  {} {} ({}, WIT {})",
            entry.name, entry.version, entry.kind, entry.wit_version
        );
    }

    let inputs = cx.data.join("demo-input");
    std::fs::create_dir_all(&inputs)?;
    let roster = inputs.join("roster.csv");
    let attendance = inputs.join("attendance.json");
    std::fs::write(&roster, ROSTER)?;
    std::fs::write(&attendance, ATTENDANCE)?;

    println!(
        "\n== Import: {} through import-csv-roster",
        roster.display()
    );
    let report = import_file(
        cx,
        "import-csv-roster",
        &roster,
        "students",
        Some("student-id"),
        &["last-name+first-name+birth-date".to_string()],
        &RunRequest::default(),
    )?;
    print_import(&report);

    let n = load_json(cx, "attendance", &attendance, Some("student-id"), &[])?;
    println!("\n== Attendance: {n} records loaded");

    println!("\n== Notifier: notifier-attendance (rule rules/attendance_threshold.rhai)");
    let request = RunRequest {
        task: "demo-attendance".into(),
        ..Default::default()
    };
    let outcome = cx.host.run_notifier("notifier-attendance", &request)?;
    print_notifications("notifier-attendance", &outcome);
    Ok(())
}
