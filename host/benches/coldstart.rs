//! Cold start: the time from starting `schoolbell serve` to its first
//! answered request, with 20 plugins installed (the 12 built ones, and 8
//! vendor notifiers scaffolded by `plugin new` and built once into
//! `target/bench-plugins`) and 100,000 tasks, on a compile-cache hit (a
//! start before has compiled and cached every component; nothing is
//! recompiled). Run with `cargo bench -p schoolbell --bench coldstart`
//! after `xtask/build-plugins` (`SCHOOLBELL_BENCH_QUICK=1`: 10,000 tasks).

#[path = "figures.rs"]
mod figures;

use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use schoolbell::app::App;
use schoolbell::tasks::TaskSpec;
use schoolbell::users::User;

/// Starts `serve` on `data` and returns the milliseconds until a request
/// is answered.
fn start(data: &Path) -> f64 {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_schoolbell"))
        .arg("--data")
        .arg(data)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let address = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("http://"))
        .unwrap_or_else(|| panic!("serve did not say where it listens: {line:?}"))
        .trim_end_matches('/')
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    let answered = loop {
        assert!(Instant::now() < deadline, "serve did not answer within 60 s");
        let Ok(mut tcp) = std::net::TcpStream::connect(&address) else {
            continue;
        };
        let request = format!("GET /api/v1/openapi.json HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
        let mut reply = String::new();
        if tcp.write_all(request.as_bytes()).is_ok() && tcp.read_to_string(&mut reply).is_ok() {
            assert!(reply.starts_with("HTTP/1.1 200"), "{}", reply.lines().next().unwrap_or(""));
            break started.elapsed();
        }
    };
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    child.wait().unwrap();
    answered.as_secs_f64() * 1000.0
}

/// Eight vendor notifiers, scaffolded as a vendor would and built with the
/// project's guest toolchain script; kept in `target/bench-plugins` for the
/// next run (the first build takes a few minutes).
fn vendor_plugins(root: &Path) -> Vec<PathBuf> {
    let out = root.join("target/bench-plugins");
    let sources = out.join("src");
    let names: Vec<String> = (1..=8).map(|i| format!("vendor-notifier-{i}")).collect();
    let missing: Vec<PathBuf> = names
        .iter()
        .filter(|n| !out.join(format!("{n}.wasm")).exists())
        .map(|n| {
            let _ = std::fs::remove_dir_all(sources.join(n));
            schoolbell::plugins::scaffold::new_notifier(n, &sources, &root.join("plugins/sdk")).unwrap()
        })
        .collect();
    if !missing.is_empty() {
        let status = Command::new(root.join("xtask/build-plugins"))
            .args(&missing)
            .env("SCHOOLBELL_PLUGIN_OUT", &out)
            .status()
            .unwrap();
        assert!(status.success(), "the vendor notifiers did not build");
    }
    names.iter().map(|n| out.join(format!("{n}.wasm"))).collect()
}

fn main() {
    schoolbell::without_huge_pages();
    let tasks = figures::size(100_000, 10_000);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut plugins = 0;
    {
        let app = App::open(&data, Some(&root.join("rules"))).unwrap();
        let admin = User::local_owner();
        let mut wasm: Vec<_> = std::fs::read_dir(root.join("target/plugins"))
            .expect("run xtask/build-plugins first")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "wasm"))
            .collect();
        wasm.sort();
        wasm.extend(vendor_plugins(&root));
        // test-slow-describe exists to time out on install.
        for path in wasm.iter().filter(|p| !p.ends_with("test-slow-describe.wasm")) {
            app.plugins().install(&admin, path, false).unwrap();
            plugins += 1;
        }
        for i in 0..tasks {
            let spec = TaskSpec {
                name: format!("t{i:06}"),
                plugin: "test-hostile".into(),
                schedule: "daily at 03:00".into(),
                params: [("behaviour".to_string(), serde_json::json!("well"))].into(),
                ..TaskSpec::default()
            };
            app.tasks().add(&admin, spec).unwrap();
        }
    }
    // The first start fills the compile cache where install did not.
    let first = start(&data);
    let starts: Vec<f64> = (0..3).map(|_| start(&data)).collect();
    let best = starts.iter().copied().fold(f64::INFINITY, f64::min);
    println!(
        "cold start with {plugins} plugins and {tasks} tasks: first {first:.0} ms, then {} ms (cache hit); best {best:.0} ms",
        starts.iter().map(|s| format!("{s:.0}")).collect::<Vec<_>>().join(", ")
    );
    figures::record("cold_start_ms", best);
}
