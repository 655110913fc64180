//! Scheduler benchmark: 100,000 scheduled tasks. Reports fire lateness
//! (p50/p99 of queued-at minus fire time) for the fires due in a 20 s
//! window, resident memory with all tasks loaded, idle CPU while nothing is
//! due, the batch queue's throughput of no-op runs (a plugin call that
//! returns at once, with its run record, messages and flush, durable before
//! it counts), and the 06:00 rush: 1,000 tasks firing at the same minute.
//! Run with `cargo bench -p schoolbell --bench scheduler`
//! (`SCHOOLBELL_BENCH_QUICK=1`: 10,000 tasks, shorter windows;
//! `SCHOOLBELL_BENCH_STORE=postgres`: on a throwaway PostgreSQL cluster,
//! where the queue is also drained by 2 and 3 hosts;
//! `SCHOOLBELL_BENCH_LATE_SECONDS=1`: the least and most late fire of
//! each second of the window, which tells a late tick from a slow one).

#[path = "figures.rs"]
mod figures;
#[path = "stores.rs"]
mod stores;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use schoolbell::app::{App, SchedulerConfig, SystemClock};
use schoolbell::config::Config;
use schoolbell::plugins::{PluginHost, SandboxConfig};
use schoolbell::rules::RuleSet;
use schoolbell::runs::{Run, RunStatus, TaskMessage};
use schoolbell::store::Backend;
use schoolbell::tasks::TaskSpec;
use schoolbell::users::User;
use stores::Stores;

/// How many no-op runs the queue drains.
fn noop_runs() -> usize {
    figures::size(20_000, 4_000)
}
/// Tasks firing at the same minute.
const RUSH: usize = 1_000;

fn proc_field(file: &str, key: &str) -> Option<u64> {
    std::fs::read_to_string(file).ok()?.lines().find(|l| l.starts_with(key))?.split_whitespace().nth(1)?.parse().ok()
}

/// User + system CPU time of this process, in clock ticks (1/100 s).
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    fields.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
        + fields.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
}

/// An app over a fresh store in `dir`, with the no-op plugin installed.
fn app(stores: &Stores, dir: &Path, workers: usize) -> (Arc<App>, Arc<dyn Backend>, Option<String>) {
    let (store, schema) = stores.fresh(dir);
    let (app, store) = app_over(store, dir, workers);
    (app, store, schema)
}

fn app_over(store: Arc<dyn Backend>, dir: &Path, workers: usize) -> (Arc<App>, Arc<dyn Backend>) {
    let rules = Arc::new(RuleSet::new(&dir.join("rules"), Default::default()));
    let host = Arc::new(PluginHost::new(store.clone(), rules, &dir.join("cache"), SandboxConfig::default()).unwrap());
    let plugin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugins/test-hostile.wasm");
    assert!(plugin.exists(), "run xtask/build-plugins first");
    host.install(&plugin).unwrap();
    let config = SchedulerConfig { workers, ..SchedulerConfig::default() };
    (App::new(host, Arc::new(SystemClock), Config { scheduler: config, ..Config::default() }), store)
}

/// A daily task running the no-op plugin, first due at `start`.
fn noop_task(name: String, start: chrono::DateTime<Utc>) -> TaskSpec {
    TaskSpec {
        name,
        plugin: "test-hostile".into(),
        schedule: "every 1440 minutes".into(),
        start: Some(start.to_rfc3339()),
        params: [("behaviour".to_string(), serde_json::json!("well"))].into(),
        ..TaskSpec::default()
    }
}

fn main() {
    schoolbell::without_huge_pages();
    // What the engine logs (warnings by default; `RUST_LOG` for more).
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let tasks = figures::size(100_000, 10_000);
    let in_window = figures::size(2_000, 500);
    let window_s = figures::size(20, 5) as i64;
    let workers = std::env::var("SCHOOLBELL_BENCH_WORKERS").ok().and_then(|w| w.parse().ok()).unwrap_or(2);
    let dir = tempfile::tempdir().unwrap();
    let stores = Stores::new();
    let (sched, store, _) = app(&stores, dir.path(), workers);
    let admin = User::local_owner();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    // `SCHOOLBELL_BENCH_QUEUE_ONLY=1`: the queue alone, to work on it.
    if std::env::var_os("SCHOOLBELL_BENCH_QUEUE_ONLY").is_some() {
        queue(&runtime, &stores, workers);
        return;
    }

    // 100k tasks, each firing daily: the last IN_WINDOW added first fire
    // 5-25 s after they are added, the rest over the next day.
    let add = |i: usize, start: chrono::DateTime<Utc>| {
        sched.tasks().add(&admin, noop_task(format!("t{i:06}"), start)).unwrap();
    };
    let started = Instant::now();
    let later = Utc::now() + chrono::Duration::hours(1);
    for i in in_window..tasks {
        add(i, later + chrono::Duration::seconds((i as i64 * 82_800) / tasks as i64));
    }
    let t0 = Utc::now() + chrono::Duration::seconds(5);
    for i in 0..in_window {
        add(i, t0 + chrono::Duration::milliseconds((i as i64 * window_s * 1000) / in_window as i64));
    }
    assert!(Utc::now() < t0, "adding the window's tasks took too long for the measurement");
    let add_time = started.elapsed();
    let rss_mib = proc_field("/proc/self/status", "VmRSS:").unwrap_or(0) / 1024;
    println!(
        "added {tasks} tasks in {add_time:.1?} ({:.0} tasks/s); resident memory {rss_mib} MiB",
        tasks as f64 / add_time.as_secs_f64()
    );

    // Serve through the window, then measure idle CPU with nothing due.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let serving = runtime.spawn(sched.engine().serve(stop_rx));
    let window_end = t0 + chrono::Duration::seconds(window_s + 2);
    while Utc::now() < window_end {
        std::thread::sleep(Duration::from_millis(200));
    }
    while sched.engine().pending() > 0 {
        std::thread::sleep(Duration::from_millis(200));
    }
    let runs: Vec<Run> = sched.runs().list(&admin, None, None, usize::MAX).unwrap();
    let mut late: Vec<i64> =
        runs.iter().filter_map(|r| Some((r.queued_at - r.fire_time?).num_milliseconds())).collect();
    late.sort();
    if std::env::var_os("SCHOOLBELL_BENCH_LATE_SECONDS").is_some() {
        let mut by_second = std::collections::BTreeMap::<i64, (i64, i64)>::new();
        for r in &runs {
            if let Some(f) = r.fire_time {
                let l = (r.queued_at - f).num_milliseconds();
                let e = by_second.entry((f - t0).num_seconds()).or_insert((i64::MAX, 0));
                *e = (e.0.min(l), e.1.max(l));
            }
        }
        println!("worst per second from t0: {by_second:?}");
    }
    println!(
        "fire lateness over {} fires with {tasks} tasks scheduled: p50 {} ms, p99 {} ms, max {} ms",
        late.len(),
        figures::percentile(&late, 0.5),
        figures::percentile(&late, 0.99),
        late.last().unwrap()
    );
    figures::record("fire_lateness_p99_ms", figures::percentile(&late, 0.99) as f64);
    let rss_mib = proc_field("/proc/self/status", "VmRSS:").unwrap_or(0) / 1024;
    let idle_s = figures::size(10, 2) as u64;
    let before = cpu_ticks();
    std::thread::sleep(Duration::from_secs(idle_s));
    let idle = (cpu_ticks() - before) as f64 / idle_s as f64;
    println!("idle (next fire in ~1 h): {idle:.2}% of one core over {idle_s} s; resident memory {rss_mib} MiB");

    let _ = stop_tx.send(true);
    runtime.block_on(serving).unwrap();
    queue(&runtime, &stores, workers);
    if figures::quick() || stores.on_postgres() {
        return;
    }

    // A run with a million messages: paging and filtering stay cheap.
    let run_id = 9_999_999;
    let started = Instant::now();
    for chunk in 0..100u64 {
        let batch: Vec<(&str, TaskMessage)> = (0..10_000u64)
            .map(|i| {
                let seq = chunk * 10_000 + i;
                let status = if seq % 100 == 0 { "error" } else { "updated" };
                (
                    status,
                    TaskMessage {
                        seq,
                        row: Some(seq + 2),
                        status: status.into(),
                        field: None,
                        message: format!("row {seq}"),
                    },
                )
            })
            .collect();
        let batch: Vec<(&str, &TaskMessage)> = batch.iter().map(|(s, m)| (*s, m)).collect();
        store.add_messages(run_id, chunk * 10_000, &batch).unwrap();
    }
    let write = started.elapsed();
    let time = |f: &dyn Fn() -> usize| {
        let t = Instant::now();
        let n = f();
        (t.elapsed(), n)
    };
    let (first, n1) = time(&|| store.messages(run_id, None, None, 100).unwrap().0.len());
    let (deep, n2) = time(&|| store.messages(run_id, None, Some(900_000), 100).unwrap().0.len());
    let (errors, n3) = time(&|| store.messages(run_id, Some("error"), Some(500_000), 100).unwrap().0.len());
    assert_eq!((n1, n2, n3), (100, 100, 100));
    println!(
        "1,000,000 messages on one run: written in {write:.1?}; a 100-message page at the start {first:.1?}, at row 900,000 {deep:.1?}; 100 errors (1 in 100) from the middle {errors:.1?}"
    );
}

/// Queue throughput with `hosts` hosts (apps with stores of their own) on
/// one PostgreSQL schema, all in this process: no-op runs queued by one,
/// drained by all.
fn several_hosts(runtime: &tokio::runtime::Runtime, stores: &Stores, schema: &str, hosts: usize, workers: usize) {
    let admin = User::local_owner();
    let dirs: Vec<tempfile::TempDir> = (0..hosts).map(|_| tempfile::tempdir().unwrap()).collect();
    let apps: Vec<Arc<App>> =
        dirs.iter().map(|d| app_over(stores.open(d.path(), schema), d.path(), workers).0).collect();
    let name = format!("noop{hosts}");
    apps[0].tasks().add(&admin, noop_task(name.clone(), Utc::now() + chrono::Duration::days(1))).unwrap();
    for _ in 0..noop_runs() {
        apps[0].tasks().run_now(&admin, &name).unwrap();
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let started = Utc::now();
    let serving: Vec<_> = apps.iter().map(|a| runtime.spawn(a.engine().serve(stop_rx.clone()))).collect();
    let drain = drained(&apps, &name, started);
    let rate = noop_runs() as f64 / drain.as_secs_f64();
    println!(
        "queue, {hosts} hosts on one database: {} no-op runs done in {drain:.1?}: {rate:.0} runs/s with {workers} workers each",
        noop_runs()
    );
    figures::record(&format!("queue_runs_per_s_{hosts}_hosts"), rate);
    let _ = stop_tx.send(true);
    for s in serving {
        runtime.block_on(s).unwrap();
    }
}

/// Waits, within `secs` seconds, until `ready` holds, every engine is
/// idle, and `expected` succeeded runs are ones `chosen` picks; returns
/// them. The engines looking idle is not enough: a run may be between the
/// queue and a worker.
fn settled(
    apps: &[Arc<App>],
    secs: u64,
    ready: impl Fn() -> bool,
    chosen: impl Fn(&Run) -> bool,
    expected: usize,
) -> Vec<Run> {
    let admin = User::local_owner();
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if ready() && apps.iter().all(|a| a.engine().is_idle().unwrap()) {
            let runs = apps[0].runs().list(&admin, Some(RunStatus::Succeeded), None, usize::MAX).unwrap();
            let done: Vec<Run> = runs.into_iter().filter(|r| chosen(r)).collect();
            assert!(done.len() <= expected, "{} runs ran, {expected} expected: one ran twice", done.len());
            if done.len() == expected {
                return done;
            }
        }
        assert!(Instant::now() < deadline, "the runs did not settle within {secs} s");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// How long after `started` the last of the `noop_runs()` runs of task
/// `name` finished.
fn drained(apps: &[Arc<App>], name: &str, started: chrono::DateTime<Utc>) -> Duration {
    let done = settled(apps, 600, || true, |r| r.task == name, noop_runs());
    let last = done.iter().filter_map(|r| r.finished_at).max().unwrap();
    (last - started).to_std().unwrap_or_default()
}

/// Queue throughput, on a store of its own: no-op runs queued before the
/// engine starts (from 8 threads, whose flushes group), then drained; and
/// the 06:00 rush, RUSH tasks due at one moment, each fired, queued, run
/// and flushed.
fn queue(runtime: &tokio::runtime::Runtime, stores: &Stores, workers: usize) {
    if stores.on_postgres() {
        for hosts in [2, 3] {
            // Each drain on a schema of its own, as the one host's below:
            // a drain leaves its queue's deleted entries to the next until
            // the database vacuums them, and the one-host figure, measured
            // last after 40,000 runs, came out at 467-662 runs/s against
            // 852 on a schema of its own (2026-12-02).
            let dir = tempfile::tempdir().unwrap();
            let schema = stores.fresh(dir.path()).1.expect("a PostgreSQL store has a schema");
            several_hosts(runtime, stores, &schema, hosts, workers);
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let (sched, store, _) = app(stores, dir.path(), workers);
    let admin = User::local_owner();
    sched.tasks().add(&admin, noop_task("noop".into(), Utc::now() + chrono::Duration::days(1))).unwrap();
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| {
                for _ in 0..noop_runs() / 8 {
                    sched.tasks().run_now(&admin, "noop").unwrap();
                }
            });
        }
    });
    let enqueue = started.elapsed();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let started = Utc::now();
    let cpu = cpu_ticks();
    let serving = runtime.spawn(sched.engine().serve(stop_rx));
    let drain = drained(std::slice::from_ref(&sched), "noop", started);
    let rate = noop_runs() as f64 / drain.as_secs_f64();
    // CPU time (10 ms ticks) per run: steadier than the rate on a shared machine.
    let cpu_us = (cpu_ticks() - cpu) as f64 * 10_000.0 / noop_runs() as f64;
    println!(
        "queue: {} no-op runs queued in {enqueue:.1?}, then done and flushed in {drain:.1?}: {rate:.0} runs/s with {workers} workers, {cpu_us:.0} µs of CPU a run",
        noop_runs()
    );
    figures::record("queue_runs_per_s", rate);

    // On a whole second: schedules keep whole seconds, so a start between
    // two would fire before it and the rush would look instant.
    let rush_at = chrono::DateTime::from_timestamp(Utc::now().timestamp() + 4, 0).unwrap();
    for i in 0..RUSH {
        sched.tasks().add(&admin, noop_task(format!("rush{i:04}"), rush_at)).unwrap();
    }
    assert!(Utc::now() < rush_at, "adding the rush's tasks took too long for the measurement");
    // Done when every rush task has fired (the next due time is a day
    // on), nothing is queued or running, and every run is in the list: a
    // queue that looks empty just after the moment may not have fired yet,
    // and a run may be between the queue and the workers.
    let fired = || store.next_due().unwrap().is_some_and(|next| next > rush_at);
    let rush = settled(std::slice::from_ref(&sched), 300, fired, |r| r.task.starts_with("rush"), RUSH);
    assert_eq!(rush.len(), RUSH, "every task of the rush ran once");
    let last = rush.iter().filter_map(|r| r.finished_at).max().unwrap();
    let due = rush.iter().filter_map(|r| r.fire_time).min().unwrap();
    assert_eq!(due, rush_at, "the rush fired at its moment");
    let took = (last - due).num_milliseconds().max(1);
    let rate = RUSH as f64 * 1000.0 / took as f64;
    println!("the rush: {RUSH} tasks due at one moment, all run {took} ms after it: {rate:.0} runs/s");
    figures::record("rush_runs_per_s", rate);
    let _ = stop_tx.send(true);
    runtime.block_on(serving).unwrap();
}
