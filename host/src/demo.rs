//! The demo: what the README's first command shows. Installs the shipped
//! plugins, imports the demo roster through the CSV mapping, loads demo
//! data dated around today (attendance, birthdays, immunizations, status
//! changes, sections and grades, an old processed file in the batch
//! folder) so that every shipped notifier fires, runs each once, and
//! schedules the demo tasks.

use std::path::Path;

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use schoolbell::app::{App, FileImport, NotifyOnce};
use schoolbell::imports::ImportTarget;
use schoolbell::notify::{Dedupe, NotifySettings};
use schoolbell::sources::Location;
use schoolbell::tasks::TaskSpec;
use schoolbell::users::User;

use crate::output::{Rows, print_file_import, print_notifications, say};

const ROSTER: &str = include_str!("../demo/roster.csv");
const ATTENDANCE: &str = include_str!("../demo/attendance.json");

pub(crate) fn run(app: &Arc<App>, admin: &User, plugins: &Path) -> Result<()> {
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
    say!("== Plugins");
    for path in &shipped {
        let (entry, _) = app.plugins().install(admin, path, false)?;
        // The demo district's admin trusts the shipped plugins with what they ask for.
        let entry = app.plugins().grant_all(admin, &entry.name)?;
        say!("  {} {} ({}, WIT {})", entry.name, entry.version, entry.kind, entry.wit_version);
    }

    let data = app.data_dir().context("the demo needs a data directory")?;
    let inputs = data.join("demo-input");
    std::fs::create_dir_all(&inputs)?;
    let roster = inputs.join("roster.csv");
    let attendance = inputs.join("attendance.json");
    std::fs::write(&roster, ROSTER)?;
    std::fs::write(&attendance, ATTENDANCE)?;

    say!("\n== Import: {} through import-csv-roster", roster.display());
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
    let job = FileImport {
        plugin: "import-csv-roster".into(),
        file: roster.clone(),
        target: target.clone(),
        params: Default::default(),
    };
    // Every row listed: the demo shows what an import reports.
    print_file_import(app.jobs().import_file(admin, job)?, false, Rows::All)?;

    let n = load(app, admin, "attendance", &attendance, "student-id")?;
    say!("\n== Attendance: {n} records loaded");

    let today = app.now().date_naive();
    for (collection, key, json) in dated_data(today) {
        let file = inputs.join(format!("{collection}.json"));
        std::fs::write(&file, json.to_string())?;
        let n = load(app, admin, collection, &file, key)?;
        say!("== {collection}: {n} records loaded");
    }
    let batch = app.config().sandbox.folders.get("batch").cloned();
    if let Some(batch) = &batch {
        std::fs::create_dir_all(batch)?;
        let old = batch.join("P_IC_Roster.csv_20250101T000000Z");
        std::fs::write(&old, "Student ID\n")?;
        let forty_days = std::time::Duration::from_secs(40 * 86_400);
        let now = std::time::SystemTime::from(app.now());
        std::fs::File::options().write(true).open(&old)?.set_modified(now - forty_days)?;
    }

    for (plugin, params) in [
        ("notifier-attendance", vec![]),
        ("notifier-birthday", vec![("greet", schoolbell::records::Value::Bool(true))]),
        ("notifier-immunization", vec![]),
        ("notifier-status-since", vec![]),
        ("notifier-blank-grades", vec![]),
        ("cleanup-batch-folder", vec![]),
        ("export-names-csv", vec![]),
    ] {
        if batch.is_none() && (plugin.starts_with("cleanup") || plugin.starts_with("export")) {
            say!("\n== {plugin}: skipped; set [sandbox.folders] batch in schoolbell.toml (xtask/demo does)");
            continue;
        }
        say!("\n== Notifier: {plugin}");
        let job = NotifyOnce {
            plugin: plugin.into(),
            task: format!("demo-{plugin}"),
            params: params.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            dry_run: false,
        };
        let report = app.jobs().notify_once(admin, job)?;
        match &report.notifications {
            Some(outcome) if report.run.status == schoolbell::runs::RunStatus::Succeeded => {
                print_notifications(plugin, outcome)
            }
            _ => bail!("{plugin}: {}", report.run.error.as_deref().unwrap_or("the run did not finish")),
        }
    }

    say!("\n== Demo tasks");
    // The school nurse is a user: a notification group names people the
    // district set up, not addresses typed into a task.
    let nurse = schoolbell::users::User {
        name: "nurse".into(),
        email: "nurse@district.example".into(),
        role: schoolbell::users::Role::Staff,
        permissions: vec![],
        job_email: schoolbell::users::JobEmail::Never,
    };
    app.users().put(admin, &nurse)?;
    let specs = [
        TaskSpec {
            name: "attendance-check".into(),
            plugin: "notifier-attendance".into(),
            schedule: "every 1 minutes".into(),
            rules: vec!["attendance_threshold".into()],
            notify: NotifySettings { group: vec!["admin".into()], ..Default::default() },
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
            name: "immunizations-weekly".into(),
            plugin: "notifier-immunization".into(),
            schedule: "weekly on mon at 06:30".into(),
            zone: Some("America/Chicago".into()),
            notify: NotifySettings { group: vec!["nurse".into()], dedupe: Dedupe::Once, ..Default::default() },
            ..TaskSpec::default()
        },
        TaskSpec {
            name: "batch-cleanup".into(),
            plugin: "cleanup-batch-folder".into(),
            kind: Some(schoolbell::tasks::TaskKind::Cleanup),
            schedule: "daily at 03:00".into(),
            zone: Some("America/Chicago".into()),
            ..TaskSpec::default()
        },
    ];
    let mut specs = Vec::from(specs);
    // The nightly roster import picks files up from the district's batch
    // folder, through a source the owner defines once.
    if batch.is_some() {
        if app.sources().show(admin, "sis").is_err() {
            app.sources().add(admin, "sis", Location::Folder { folder: "batch".into(), path: None })?;
        }
        specs.push(TaskSpec {
            name: "roster-nightly".into(),
            plugin: "import-csv-roster".into(),
            schedule: "daily at 22:00".into(),
            zone: Some("America/Chicago".into()),
            import: Some(ImportTarget { source: "sis".into(), prefix: Some("IC_Roster".into()), ..target }),
            ..TaskSpec::default()
        });
    } else {
        say!("  roster-nightly: skipped; set [sandbox.folders] batch in schoolbell.toml (xtask/demo does)");
    }
    for spec in specs {
        let name = spec.name.clone();
        let task = match app.tasks().show(admin, &name) {
            Ok(task) => task,
            Err(_) => app.tasks().add(admin, spec)?,
        };
        let next = task.upcoming(1).first().map(|t| t.to_rfc3339()).unwrap_or_else(|| "none".into());
        say!("  {name}: {} ({}), next fire {next}", task.schedule, task.zone);
    }
    Ok(())
}

/// Loads a demo JSON file into a collection.
fn load(app: &App, admin: &User, collection: &str, file: &Path, key: &str) -> Result<usize> {
    let records = schoolbell::records::read_json_file(file)?;
    Ok(app.collections().load(admin, collection, Some(key), &[], &records, &file.display().to_string())?)
}

/// Demo records dated around `today`, so that each notifier has something
/// to say whatever day the demo runs.
fn dated_data(today: chrono::NaiveDate) -> Vec<(&'static str, &'static str, serde_json::Value)> {
    use chrono::{Datelike, Duration};
    let day = |offset: i64| (today + Duration::days(offset)).format("%Y-%m-%d").to_string();
    let years_ago = |n: i32| {
        // Born on 29 February of a leap year when today is 29 February:
        // a birthday the notifier keeps on the 28th in common years.
        let year = today.year() - n;
        today
            .with_year(year)
            .or_else(|| chrono::NaiveDate::from_ymd_opt(year, 2, 28))
            .unwrap_or(today)
            .format("%Y-%m-%d")
            .to_string()
    };
    // Fixed times of day: a second demo run the same day adds nothing new.
    let stamp = |offset: i64, time: &str| format!("{}T{time}", day(offset));
    vec![
        (
            "students",
            "student-id",
            serde_json::json!([
                {"student-id": "S2001", "last-name": "Okafor", "first-name": "Ada", "birth-date": years_ago(16), "email": "ada.okafor@students.example"},
                {"student-id": "S2002", "last-name": "Novak", "first-name": "Jan", "birth-date": years_ago(18), "email": "jan.novak@students.example"}
            ]),
        ),
        (
            "immunizations",
            "id",
            serde_json::json!([
                {"id": "I1", "student-id": "S1001", "first-name": "Maria", "last-name": "Alvarez", "vaccine": "MMR", "expires": day(12)},
                {"id": "I2", "student-id": "S1002", "first-name": "Daniel", "last-name": "Brooks", "vaccine": "Tdap", "expires": day(200)}
            ]),
        ),
        (
            "status-changes",
            "change-id",
            serde_json::json!([
                {"change-id": "C1", "student-id": "S1003", "first-name": "Li", "last-name": "Chen", "status": "Honors", "added": stamp(-1, "14:30:00")},
                {"change-id": "C2", "student-id": "S1004", "first-name": "Amélie", "last-name": "Dubois", "status": "Probation", "added": stamp(0, "07:45:00")}
            ]),
        ),
        (
            "sections",
            "section-id",
            serde_json::json!([
                {"section-id": "ALG1-01", "course": "Algebra I", "end-date": day(-10), "lead-faculty": "F100"},
                {"section-id": "BIO-02", "course": "Biology", "end-date": day(30), "lead-faculty": "F200"}
            ]),
        ),
        (
            "grades",
            "grade-id",
            serde_json::json!([
                {"grade-id": "G1", "section-id": "ALG1-01", "student-id": "S1001", "grade": "A-"},
                {"grade-id": "G2", "section-id": "ALG1-01", "student-id": "S1002", "grade": ""},
                {"grade-id": "G3", "section-id": "BIO-02", "student-id": "S1003", "grade": ""}
            ]),
        ),
        (
            "staff",
            "staff-id",
            serde_json::json!([
                {"staff-id": "F100", "last-name": "Reyes", "first-name": "Pat", "email": "pat.reyes@district.example"},
                {"staff-id": "F200", "last-name": "Kim", "first-name": "Sam", "email": "sam.kim@district.example"}
            ]),
        ),
    ]
}
