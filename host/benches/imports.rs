//! Import benchmark: a 1,000,000-row CSV matched against 1,000,000 existing
//! records, end to end from pickup to commit with its report, beside a
//! native baseline that does the same parse, match and write with no
//! component and no rules. Run with `cargo bench -p schoolbell --bench imports`
//! (`SCHOOLBELL_BENCH_STORE=postgres`: on a throwaway PostgreSQL cluster).

#[path = "figures.rs"]
mod figures;
#[path = "stores.rs"]
mod stores;

const ROWS: usize = 1_000_000;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use schoolbell::imports::{self, Guard, ImportTarget};
use schoolbell::plugins::{PluginHost, RunRequest, SandboxConfig};
use schoolbell::records::{Date, Record, Value};
use schoolbell::rules::RuleSet;
use schoolbell::store::prelude::*;
use schoolbell::store::{CollectionSpec, Lookup};
use stores::Stores;

const HEADER: &str = "Student ID,Last Name,First Name,Birth Date,Gender,Grade\n";

fn student(i: usize, grade: i64) -> Record {
    let mut r = Record::new();
    r.insert("student-id".into(), Value::Text(format!("S{i:07}")));
    r.insert("last-name".into(), Value::Text(format!("Last{i}")));
    r.insert("first-name".into(), Value::Text(format!("First{}", i % 977)));
    r.insert(
        "birth-date".into(),
        Value::Date(Date { year: 2005 + (i % 10) as i32, month: 1 + (i % 12) as u8, day: 1 + (i % 28) as u8 }),
    );
    r.insert("gender".into(), Value::Text(["F", "M", "X"][i % 3].into()));
    r.insert("grade".into(), Value::Int(grade));
    r
}

/// The file: every existing student, one in twenty a grade up, plus 1% new.
fn csv() -> String {
    let mut out = String::with_capacity(ROWS * 60);
    out.push_str(HEADER);
    for i in 0..ROWS {
        let grade = 6 + (i % 7) as i64 + if i % 20 == 0 { 1 } else { 0 };
        let id = if i % 100 == 99 { i + ROWS } else { i };
        out.push_str(&format!(
            "S{id:07},Last{id},First{},{}-{:02}-{:02},{},{grade}\n",
            id % 977,
            2005 + id % 10,
            1 + id % 12,
            1 + id % 28,
            ["F", "M", "X"][id % 3]
        ));
    }
    out
}

fn seed(store: &dyn Backend) -> Duration {
    let spec = CollectionSpec {
        key_field: "student-id".into(),
        indexes: vec![
            vec!["ssn".into()],
            vec!["last-name".into(), "first-name".into(), "birth-date".into(), "gender".into()],
            vec!["last-name".into(), "first-name".into(), "birth-date".into()],
        ],
    };
    store.define_collection("students", &spec).unwrap();
    let started = Instant::now();
    for chunk in (0..ROWS).collect::<Vec<_>>().chunks(100_000) {
        let records: Vec<Record> = chunk.iter().map(|&i| student(i, 6 + (i % 7) as i64)).collect();
        store.put_records("students", &records).unwrap();
    }
    store.flush().unwrap();
    started.elapsed()
}

/// Parse with `csv`, match by key, write what changed: no component, no rules.
fn native(store: &dyn Backend, path: &Path) -> (usize, usize) {
    let mut reader = csv::Reader::from_path(path).unwrap();
    let mut writes = Vec::new();
    let mut rows = 0;
    let mut batch = Vec::new();
    // Looked up a thousand rows at a time, as the pipeline does: one round
    // trip per batch on PostgreSQL.
    let settle = |batch: &mut Vec<Record>, writes: &mut Vec<Record>| {
        let wanted: Vec<(String, &Record)> = batch.iter().map(|r| (r["student-id"].to_key_text(), r)).collect();
        let looked = store.lookup_records("students", &wanted).unwrap();
        for (r, looked) in batch.drain(..).zip(looked) {
            if !matches!(looked, Lookup::Same) {
                writes.push(r);
            }
        }
    };
    for row in reader.records() {
        let row = row.unwrap();
        rows += 1;
        let mut r = Record::new();
        r.insert("student-id".into(), Value::Text(row[0].to_string()));
        r.insert("last-name".into(), Value::Text(row[1].to_string()));
        r.insert("first-name".into(), Value::Text(row[2].to_string()));
        r.insert("birth-date".into(), Value::Date(Date::parse(&row[3]).unwrap()));
        r.insert("gender".into(), Value::Text(row[4].to_string()));
        r.insert("grade".into(), Value::Int(row[5].parse().unwrap()));
        batch.push(r);
        if batch.len() == 1000 {
            settle(&mut batch, &mut writes);
        }
    }
    settle(&mut batch, &mut writes);
    let n = writes.len();
    store.put_records("students", &writes).unwrap();
    store.flush().unwrap();
    (rows, n)
}

fn main() {
    schoolbell::without_huge_pages();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let plugin = root.join("target/plugins/import-csv-roster.wasm");
    assert!(plugin.exists(), "run xtask/build-plugins first");
    let body = csv();
    println!("file: {ROWS} rows, {} MB; 5% changed, 1% new", body.len() / 1_000_000);

    // The pipeline.
    let stores = Stores::new();
    println!("store: {}", stores.name());
    let dir = tempfile::tempdir().unwrap();
    let (store, schema) = stores.fresh(dir.path());
    let rules = Arc::new(RuleSet::load_dir(&root.join("rules"), Default::default()).unwrap());
    let host = PluginHost::new(store.clone(), rules, &dir.path().join("cache"), SandboxConfig::default()).unwrap();
    host.install(&plugin).unwrap();
    host.grant_all("import-csv-roster").unwrap();
    let mut params = Record::new();
    params.insert(
        "columns".into(),
        Value::Text("student-id=Student ID; last-name=Last Name; first-name=First Name; birth-date=Birth Date:date; gender=Gender; grade=Grade:integer".into()),
    );
    let request = RunRequest { task: "bench".into(), params, ..Default::default() };
    // The mapping alone, before the store is busy: the component's share.
    let started = Instant::now();
    let mut mapped = 0;
    host.run_mapping("import-csv-roster", "bench", std::io::Cursor::new(body.as_bytes()), &request, |rows| {
        mapped += rows.len();
        Ok(())
    })
    .unwrap();
    println!("mapping alone: {mapped} rows in {:.1?}", started.elapsed());
    let seeded = seed(&*store);
    println!("seeded {ROWS} existing records in {seeded:.1?}");
    // A service restarted over the seeded store, not one still writing
    // the million records it was just given.
    drop(host);
    drop(store);
    let store = stores.reopen(dir.path(), schema.as_deref());
    let rules = Arc::new(RuleSet::load_dir(&root.join("rules"), Default::default()).unwrap());
    let host = PluginHost::new(store.clone(), rules, &dir.path().join("cache"), SandboxConfig::default()).unwrap();
    let batch = dir.path().join("batch");
    std::fs::create_dir_all(&batch).unwrap();
    std::fs::write(batch.join("IC_Roster.csv"), &body).unwrap();
    let target = ImportTarget {
        source: "sis".into(),
        prefix: Some("IC_Roster".into()),
        guard: Guard { confirm_percent: 100.0, authorize_percent: 100.0 },
        collection: "students".into(),
        key_field: Some("student-id".into()),
        indexes: vec![],
        match_rule: Some("match_student".into()),
        ..Default::default()
    };
    let started = Instant::now();
    let sources =
        imports::Access { folders: [("batch".to_string(), batch.clone())].into(), ..imports::Access::default() };
    store
        .put_source(&schoolbell::sources::Source {
            name: "sis".into(),
            location: schoolbell::sources::Location::Folder { folder: "batch".into(), path: None },
            created_by: "bench".into(),
            created_at: chrono::Utc::now(),
        })
        .unwrap();
    let file = imports::pickup(&*store, &target, Duration::ZERO, &sources, 0).unwrap().file.unwrap();
    let picked = started.elapsed();
    let plan = imports::prepare(
        &host,
        "import-csv-roster",
        &target,
        &file,
        &request,
        &sources.limits,
        Some((1, &schoolbell::privacy::Privacy::default())),
    )
    .unwrap();
    let planned = started.elapsed();
    let written = imports::commit(&host, &plan, "bench", Some(&target), &sources).unwrap();
    let total = started.elapsed();
    let report_lines: usize = plan.rows.iter().map(|r| r.messages().len()).sum();
    println!(
        "pipeline: pickup+hash {picked:.1?}, map+match+diff {:.1?}, commit {:.1?}; total {total:.1?} = {:.0} rows/s; {written} written; counts {:?}; {report_lines} report lines",
        planned - picked,
        total - planned,
        ROWS as f64 / total.as_secs_f64(),
        plan.counts
    );
    drop(host);
    drop(store);

    // The native baseline, on a fresh store with the same records.
    let dir = tempfile::tempdir().unwrap();
    let (store, schema) = stores.fresh(dir.path());
    seed(&*store);
    // Reopened, as the pipeline's store was: the same cold start.
    drop(store);
    let store = stores.reopen(dir.path(), schema.as_deref());
    let path = dir.path().join("roster.csv");
    std::fs::write(&path, &body).unwrap();
    let started = Instant::now();
    let (rows, n) = native(&*store, &path);
    let native_time = started.elapsed();
    println!(
        "native: {native_time:.1?} = {:.0} rows/s ({rows} rows, {n} written)",
        ROWS as f64 / native_time.as_secs_f64()
    );
    println!("pipeline / native time: {:.2}x", total.as_secs_f64() / native_time.as_secs_f64());
    figures::record("import_1m_rows_per_s", ROWS as f64 / total.as_secs_f64());
    figures::record("import_over_native", total.as_secs_f64() / native_time.as_secs_f64());
}
