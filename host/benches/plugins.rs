//! Plugin runtime benchmark: component compile time, cached load time,
//! instantiation p50/p99, and a 100k-row CSV mapping through the component
//! beside the same parse done natively. Run with
//! `cargo bench -p schoolbell --bench plugins`; the figures go in the
//! README's Performance section.

#[path = "figures.rs"]
mod figures;

use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use schoolbell::plugins::{PluginHost, RunRequest, SandboxConfig};
use schoolbell::records::{Date, Record, Value};
use schoolbell::rules::RuleSet;
use schoolbell::store::Store;

const ROWS: usize = 100_000;

fn host(dir: &Path) -> PluginHost {
    let store = Store::open_backend(&dir.join("store")).unwrap();
    let rules = Arc::new(RuleSet::new(&dir.join("rules"), Default::default()));
    PluginHost::new(store, rules, &dir.join("cache"), SandboxConfig::default()).unwrap()
}

fn plugin(name: &str) -> std::path::PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugins").join(format!("{name}.wasm"));
    assert!(p.exists(), "{} is missing: run xtask/build-plugins first", p.display());
    p
}

fn roster() -> Vec<u8> {
    let mut csv = String::from("Student ID,Last Name,First Name,Birth Date,Gender,Grade,Campus,SSN\n");
    for i in 0..ROWS {
        csv.push_str(&format!(
            "S{i:07},Last{i},First{},20{:02}-{:02}-{:02},{},{},{},\n",
            i % 977,
            5 + i % 10,
            1 + i % 12,
            1 + i % 28,
            ["F", "M", "X"][i % 3],
            6 + i % 7,
            ["North", "South"][i % 2]
        ));
    }
    csv.into_bytes()
}

/// The same parse and typing as import-csv-roster's default column map,
/// done natively with the `csv` crate.
fn native(bytes: &[u8]) -> usize {
    let mut reader = csv::Reader::from_reader(bytes);
    let headers = reader.headers().unwrap().clone();
    let col = |name: &str| headers.iter().position(|h| h == name).unwrap();
    let cols = [
        ("student-id", col("Student ID"), 't'),
        ("last-name", col("Last Name"), 't'),
        ("first-name", col("First Name"), 't'),
        ("birth-date", col("Birth Date"), 'd'),
        ("gender", col("Gender"), 't'),
        ("grade", col("Grade"), 'i'),
        ("campus", col("Campus"), 't'),
        ("ssn", col("SSN"), 't'),
    ];
    let mut rows = 0;
    for row in reader.records() {
        let row = row.unwrap();
        let mut record = Record::new();
        for (field, i, kind) in cols {
            let text = row[i].trim();
            let value = match (kind, text) {
                (_, "") => Value::Null,
                ('d', t) => Value::Date(Date::parse(t).unwrap()),
                ('i', t) => Value::Int(t.parse().unwrap()),
                (_, t) => Value::Text(t.to_string()),
            };
            record.insert(field.to_string(), value);
        }
        std::hint::black_box(&record);
        rows += 1;
    }
    rows
}

fn main() {
    schoolbell::without_huge_pages();
    let machine = format!(
        "{} cores, {}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| c.lines().find(|l| l.starts_with("model name")).map(|l| l
                .split(':')
                .nth(1)
                .unwrap_or("")
                .trim()
                .to_string()))
            .unwrap_or_else(|| "unknown CPU".into())
    );
    println!("machine: {machine}");

    // Compile: a fresh data directory has an empty cache.
    let mut compile = Vec::new();
    for _ in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        let h = host(dir.path());
        let t = Instant::now();
        h.install(&plugin("import-csv-roster")).unwrap();
        compile.push(t.elapsed());
        assert_eq!(h.cache_stats().compiled, 1);
    }
    compile.sort();
    println!("compile (install, cold cache), import-csv-roster: median {:?}", compile[1]);

    // Cached load: a new host (a restart) over a warm cache.
    let dir = tempfile::tempdir().unwrap();
    host(dir.path()).install(&plugin("import-csv-roster")).unwrap();
    let mut load = Vec::new();
    for _ in 0..10 {
        let h = host(dir.path());
        let t = Instant::now();
        h.verify("import-csv-roster").unwrap();
        load.push(t.elapsed());
        assert_eq!(h.cache_stats(), schoolbell::plugins::CacheStats { compiled: 0, cached: 1 });
    }
    load.sort();
    println!("cached load after restart: median {:?}", load[5]);

    // Instantiation: fresh store + instance from the InstancePre.
    let h = host(dir.path());
    h.install(&plugin("import-csv-roster")).unwrap();
    for _ in 0..100 {
        h.instantiate_only("import-csv-roster").unwrap();
    }
    let mut inst: Vec<Duration> = (0..2000)
        .map(|_| {
            let t = Instant::now();
            h.instantiate_only("import-csv-roster").unwrap();
            t.elapsed()
        })
        .collect();
    inst.sort();
    println!(
        "instantiate: p50 {:?}, p99 {:?} (n = {})",
        figures::percentile(&inst, 0.5),
        figures::percentile(&inst, 0.99),
        inst.len()
    );

    // 100k-row mapping through the component vs natively.
    let bytes = roster();
    h.grant_all("import-csv-roster").unwrap();
    let mut wasm_best = Duration::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        let mut rows = 0;
        let outcome = h
            .run_mapping("import-csv-roster", "bench.csv", Cursor::new(&bytes), &RunRequest::default(), |batch| {
                rows += batch.len();
                std::hint::black_box(&batch);
                Ok(())
            })
            .unwrap();
        wasm_best = wasm_best.min(t.elapsed());
        assert_eq!(rows, ROWS, "errors: {:?}", outcome.errors.first());
        assert!(outcome.errors.is_empty(), "{:?}", &outcome.errors[..1]);
    }
    let mut native_best = Duration::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        assert_eq!(native(&bytes), ROWS);
        native_best = native_best.min(t.elapsed());
    }
    let rate = |d: Duration| ROWS as f64 / d.as_secs_f64();
    println!(
        "map {ROWS} rows ({} MB): component {:?} ({:.0} rows/s), native {:?} ({:.0} rows/s), component/native time {:.2}x",
        bytes.len() / 1_000_000,
        wasm_best,
        rate(wasm_best),
        native_best,
        rate(native_best),
        wasm_best.as_secs_f64() / native_best.as_secs_f64()
    );
    figures::record("mapping_component_over_native", wasm_best.as_secs_f64() / native_best.as_secs_f64());
}
