//! Console benchmark: the server's time to answer the runs grid at
//! 100,000 runs (`SCHOOLBELL_BENCH_RUNS` sets another count; the first
//! page, a page deep in the history by cursor, a rare status, a filter
//! that matches no run, a sort by finish time) and a run's Task Messages at
//! 1,000,000 messages (the first page, one deep in, a status), as p50 and
//! p99 over real HTTP requests with a session cookie. Run with
//! `cargo bench -p schoolbell --bench console`.

#[path = "figures.rs"]
mod figures;

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use schoolbell::app::{App, SystemClock};
use schoolbell::config::Config;
use schoolbell::plugins::{PluginHost, SandboxConfig};
use schoolbell::rules::RuleSet;
use schoolbell::runs::{Run, RunStatus, TaskMessage, Trigger};
use schoolbell::store::Store;
use schoolbell::users::User;

/// Runs seeded unless `SCHOOLBELL_BENCH_RUNS` says otherwise.
const RUNS: u64 = 100_000;
const MESSAGES: u64 = 1_000_000;
const REQUESTS: usize = 60;

fn main() {
    schoolbell::without_huge_pages();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_backend(&dir.path().join("store")).unwrap();
    let rules = Arc::new(RuleSet::new(&dir.path().join("rules"), Default::default()));
    let host =
        Arc::new(PluginHost::new(store.clone(), rules, &dir.path().join("cache"), SandboxConfig::default()).unwrap());
    let app = App::new(host, Arc::new(SystemClock), Config::default());
    let admin = User::local_owner();

    let started = Instant::now();
    let now = Utc::now();
    let runs: u64 = std::env::var("SCHOOLBELL_BENCH_RUNS").ok().and_then(|n| n.parse().ok()).unwrap_or(RUNS);
    for id in 1..=runs {
        let at = now - chrono::Duration::seconds((runs - id) as i64 * 60);
        let mut run =
            Run::queued(id, &format!("task-{}", id % 200), "plugin", "admin", Trigger::Schedule, Some(at), at, false);
        run.status = if id % 100 == 0 { RunStatus::Failed } else { RunStatus::Succeeded };
        run.started_at = Some(at);
        run.finished_at = Some(at + chrono::Duration::seconds(30));
        run.progress_done = 100;
        run.progress_total = Some(100);
        run.summary.insert("updated".into(), 100);
        store.put_run(&run, run.finished_at).unwrap();
    }
    let busy = runs;
    for chunk in 0..MESSAGES / 10_000 {
        let batch: Vec<(&str, TaskMessage)> = (0..10_000u64)
            .map(|i| {
                let seq = chunk * 10_000 + i;
                let status = if seq % 100 == 0 { "error" } else { "updated" };
                let message = format!("record S{seq:07} updated: grade: 10 → 11");
                (status, TaskMessage { seq, row: Some(seq + 2), status: status.into(), field: None, message })
            })
            .collect();
        let batch: Vec<(&str, &TaskMessage)> = batch.iter().map(|(s, m)| (*s, m)).collect();
        store.add_messages(busy, chunk * 10_000, &batch).unwrap();
    }
    store.flush().unwrap();
    println!("seeded {runs} runs and {MESSAGES} messages on run {busy} in {:.1?}", started.elapsed());

    app.users().set_password(&admin, "admin", "benchmark password").unwrap();
    let (_, token) = app.users().sign_in("admin", "benchmark password", "127.0.0.1").unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    let router = schoolbell::api::router(app.clone());
    runtime.spawn(async move { axum::serve(listener, router).await });

    let agent = ureq::Agent::config_builder().http_status_as_error(false).build().new_agent();
    let cookie = format!("sb_session={token}");
    let measure = |label: &str, path: &str| {
        let url = format!("http://{addr}{path}");
        let mut times = Vec::with_capacity(REQUESTS);
        let mut bytes = 0;
        for _ in 0..REQUESTS {
            let t = Instant::now();
            let mut response = agent.get(&url).header("Cookie", &cookie).call().unwrap();
            assert_eq!(response.status(), 200, "{path}");
            bytes = response.body_mut().read_to_string().unwrap().len();
            times.push(t.elapsed());
        }
        times.sort();
        println!(
            "| {label} | {:.1?} | {:.1?} | {} KiB |",
            figures::percentile(&times, 0.5),
            figures::percentile(&times, 0.99),
            bytes / 1024
        );
    };
    println!("| page | p50 | p99 | HTML |");
    println!("|---|---|---|---|");
    measure(&format!("grid, first page of {runs} runs"), "/");
    measure("grid, a page 90,000 runs deep (cursor)", &format!("/?before={}", runs - 90_000));
    measure("grid, status failed (1 in 100)", "/?status=failed");
    // The worst case of a filter: it matches no run, so the page reads its
    // whole budget (the newest 20,000 runs) and offers to go on.
    measure("grid, a task no run has (reads its budget)", "/?task=no-such-task");
    measure("grid, sorted by finish time, oldest first (the newest 10,000 matches)", "/?sort=finished&order=asc");
    measure("run, Task Messages, first page of 1,000,000", &format!("/runs/{busy}?tab=messages"));
    measure("run, Task Messages, at message 900,000", &format!("/runs/{busy}?tab=messages&after=900000"));
    measure(
        "run, Task Messages, errors (1 in 100) from the middle",
        &format!("/runs/{busy}?tab=messages&status=error&after=500000"),
    );
    let (css, js) = schoolbell::console::weight(true);
    println!("assets: {css} bytes of CSS, {js} bytes of JS (gzip not applied)");
}
