//! What every bench shares: whether it runs in quick mode, how a figure
//! is read off sorted samples, and where its figures go for `xtask/bench` (one JSON object per line, appended to the
//! file `SCHOOLBELL_BENCH_OUT` names, merged into `target/bench.json`).

#![allow(dead_code)] // Each bench uses what it needs.

use std::io::Write;

/// `SCHOOLBELL_BENCH_QUICK=1`: smaller sizes, for the regression guard.
pub(crate) fn quick() -> bool {
    std::env::var_os("SCHOOLBELL_BENCH_QUICK").is_some_and(|v| v == "1")
}

/// `full` normally, `quick` in quick mode.
pub(crate) fn size(full: usize, quick_size: usize) -> usize {
    if quick() { quick_size } else { full }
}

/// The sample at fraction `p` (0.5 for the median, 0.99 for p99) of
/// `sorted`, which must be sorted and not empty.
pub(crate) fn percentile<T: Copy>(sorted: &[T], p: f64) -> T {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Records a figure under `key` for `xtask/bench`.
pub(crate) fn record(key: &str, value: f64) {
    let Some(path) = std::env::var_os("SCHOOLBELL_BENCH_OUT") else {
        return;
    };
    let line = format!("{{\"{key}\": {value:.3}}}\n");
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        eprintln!("cannot write the figure {key} to {}: {e}", std::path::Path::new(&path).display());
    }
}
