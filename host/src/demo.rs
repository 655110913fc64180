//! The demo: what the README's first command shows. Installs the shipped
//! plugins, imports the demo roster through the CSV mapping, loads demo
//! attendance, and runs the attendance notifier over it.

use std::path::Path;

use anyhow::{Context, Result, bail};
use schoolbell::imports::ImportTarget;
use schoolbell::plugins::RunRequest;
use schoolbell::tasks::TaskSpec;
use schoolbell::users::User;

use crate::cli::{Ctx, load_json, print_import, print_notifications};

const ROSTER: &str = include_str!("../demo/roster.csv");
const ATTENDANCE: &str = include_str!("../demo/attendance.json");

pub(crate) fn run(cx: &Ctx, plugins: &Path) -> Result<()> {
    let mut shipped: Vec<_> = std::fs::read_dir(plugins)
        .with_context(|| {
            format!("cannot read {}: build the plugins first with xtask/build-plugins", plugins.display())
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|e| e == "wasm")
                && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("test-"))
        })
        .collect();
    shipped.sort();
    if shipped.is_empty() {
        bail!("no plugins in {}: build them first with xtask/build-plugins", plugins.display());
    }
    println!("== Plugins");
    for path in &shipped {
        let (entry, _) = cx.host.install(path)?;
        // The demo district's admin trusts the shipped plugins with what they ask for.
        let entry = cx.host.grant_all(&entry.name)?;
        println!("  {} {} ({}, WIT {})", entry.name, entry.version, entry.kind, entry.wit_version);
    }

    let inputs = cx.data.join("demo-input");
    std::fs::create_dir_all(&inputs)?;
    let roster = inputs.join("roster.csv");
    let attendance = inputs.join("attendance.json");
    std::fs::write(&roster, ROSTER)?;
    std::fs::write(&attendance, ATTENDANCE)?;

    println!("\n== Import: {} through import-csv-roster", roster.display());
    let target = ImportTarget {
        source: roster.display().to_string(),
        prefix: None,
        full_roster: false,
        guard: Default::default(),
        collection: "students".into(),
        key_field: Some("student-id".into()),
        indexes: vec!["last-name+first-name+birth-date".into()],
        match_rule: Some("match_student".into()),
        ..Default::default()
    };
    let (plan, written) =
        schoolbell::imports::import_file(&cx.host, "import-csv-roster", &target, &RunRequest::default(), false)?;
    print_import(&plan, written);

    let n = load_json(cx, "attendance", &attendance, Some("student-id"), &[])?;
    println!("\n== Attendance: {n} records loaded");

    println!("\n== Notifier: notifier-attendance (rule rules/attendance_threshold.rhai)");
    let request = RunRequest { task: "demo-attendance".into(), ..Default::default() };
    let outcome = cx.host.run_notifier("notifier-attendance", &request)?;
    print_notifications("notifier-attendance", &outcome);

    println!("\n== Demo tasks");
    let admin = User::local_owner();
    let specs = [
        TaskSpec {
            name: "attendance-check".into(),
            plugin: "notifier-attendance".into(),
            schedule: "every 1 minutes".into(),
            rules: vec!["attendance_threshold".into()],
            ..TaskSpec::default()
        },
        TaskSpec {
            name: "attendance-morning".into(),
            plugin: "notifier-attendance".into(),
            schedule: "weekly on mon,tue,wed,thu,fri at 07:00".into(),
            zone: Some("America/Chicago".into()),
            rules: vec!["attendance_threshold".into()],
            params: [("threshold".to_string(), serde_json::json!(10))].into(),
            ..TaskSpec::default()
        },
        TaskSpec {
            name: "roster-nightly".into(),
            plugin: "import-csv-roster".into(),
            schedule: "daily at 22:00".into(),
            zone: Some("America/Chicago".into()),
            import: Some(target),
            ..TaskSpec::default()
        },
    ];
    for spec in specs {
        let name = spec.name.clone();
        let task = match cx.scheduler.task(&admin, &name) {
            Ok(task) => task,
            Err(_) => cx.scheduler.add_task(&admin, spec)?,
        };
        let next = task.next_fire.map(|t| t.to_rfc3339()).unwrap_or_else(|| "none".into());
        println!("  {name}: {} ({}), next fire {next}", task.schedule, task.zone);
    }
    Ok(())
}
