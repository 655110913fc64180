//! The demo: what the README's first command shows. Installs the shipped
//! plugins, imports the demo roster through the CSV mapping, loads demo
//! data dated around today (attendance, birthdays, immunizations, status
//! changes, sections and grades, an old processed file in the batch
//! folder) so that every shipped notifier fires, runs each once, and
//! schedules the demo tasks.

use std::path::Path;

use anyhow::{Context, Result, bail};
use schoolbell::imports::ImportTarget;
use schoolbell::notify::{Dedupe, NotifySettings};
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

    let today = chrono::Utc::now().date_naive();
    for (collection, key, json) in dated_data(today) {
        let file = inputs.join(format!("{collection}.json"));
        std::fs::write(&file, json.to_string())?;
        let n = load_json(cx, collection, &file, Some(key), &[])?;
        println!("== {collection}: {n} records loaded");
    }
    let batch = cx.config.sandbox.folders.get("batch").cloned();
    if let Some(batch) = &batch {
        std::fs::create_dir_all(batch)?;
        let old = batch.join("P_IC_Roster.csv_20250101T000000Z");
        std::fs::write(&old, "Student ID\n")?;
        let forty_days = std::time::Duration::from_secs(40 * 86_400);
        std::fs::File::options().write(true).open(&old)?.set_modified(std::time::SystemTime::now() - forty_days)?;
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
            println!("\n== {plugin}: skipped; set [sandbox.folders] batch in schoolbell.toml (xtask/demo does)");
            continue;
        }
        println!("\n== Notifier: {plugin}");
        let request = RunRequest {
            task: format!("demo-{plugin}"),
            params: params.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            ..Default::default()
        };
        let outcome = cx.host.run_notifier(plugin, &request)?;
        cx.host.store().apply_task_state(&request.task, &outcome.state_writes)?;
        print_notifications(plugin, &outcome);
    }

    println!("\n== Demo tasks");
    let admin = User::local_owner();
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
            notify: NotifySettings {
                group: vec!["nurse@district.example".into()],
                dedupe: Dedupe::Once,
                ..Default::default()
            },
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

/// Demo records dated around `today`, so that each notifier has something
/// to say whatever day the demo runs.
fn dated_data(today: chrono::NaiveDate) -> Vec<(&'static str, &'static str, serde_json::Value)> {
    use chrono::{Datelike, Duration};
    let day = |offset: i64| (today + Duration::days(offset)).format("%Y-%m-%d").to_string();
    let years_ago = |n: i32| {
        today
            .with_year(today.year() - n)
            .unwrap_or(today - Duration::days(365 * i64::from(n)))
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
